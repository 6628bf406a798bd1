"""The TRAIN-phase net as Caffe builds it: layer filtering, the learnable-param table, shapes.

This reproduces three parts of ``Net<Dtype>::Init`` (BVLC/caffe ``src/caffe/net.cpp`` at
9b891540, identical to Debian's 1.0.0+git20180821.99bd997 for this file):

* ``FilterNet``/``StateMeetsRule`` (net.cpp:260-353): which layers exist for a NetState.
* ``AppendParam`` (net.cpp:141-156, 422-515): every blob of every layer becomes a *param*; an
  unnamed blob, or the first blob with a given ``param { name }``, is a new *learnable* param
  (an owner, in ``learnable_params_`` order); later blobs with that name alias the owner.
* ``Layer::SetUp`` of each layer, for the blob shapes (see :mod:`caffe2tf.caffe.shapes`).

Caffe's fatal checks on the way become :class:`InputError` with the layer's location: both
include and exclude rules, unknown bottom, a top produced twice, propagate_down and loss_weight
counts, bottom/top counts, each layer's own ``CHECK``s (via ``shapes.ShapeError``), too many
``param {}`` blocks, BatchNorm statistics with a non-zero lr_mult, and a shared param with
mismatched shape (STRICT) / count (PERMISSIVE) / explicit multipliers. Where a shape cannot be
known (data read from files, fork or Python layers) it is ``None`` ("?") and a Note says why;
assumptions made to go on (4-D input, fork normalisations keep the shape) are Notes too.

Checked against the real Caffe by tests/test_net_oracle.py (param table, multipliers, every top
shape, rejected nets).

The NetState used for the train net is built like ``Solver::InitTrainNet`` (solver.cpp:106-114):
start from ``phase: TRAIN``, merge the net's own ``state``, then the solver's ``train_state``
(a later ``phase`` set explicitly wins; ``stage`` lists are concatenated by protobuf merging).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from caffe2tf.caffe import shapes as shp
from caffe2tf.caffe.model import DataFeed, LayerInfo, NetSpec, ParamBlob
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

TRAIN, TEST = 0, 1  # caffe.proto ``enum Phase``

#: Layer types of BVLC Caffe with no shape rule of their own here but known to Caffe.
OPAQUE_KNOWN = frozenset({"Python"})

#: Fork layer types that are known to own learnable blobs (beyond their ``param {}`` blocks).
FORK_TYPES_WITH_PARAMS = {
    "BN": 2,  # SegNet / yjxiong caffe: scale and shift
    "Normalize": 1,  # SSD: channel scale
    "ConvolutionDepthwise": None,
    "DepthwiseConvolution": None,
}

#: Fork layer types whose top has the shape of their bottom (per-channel normalisations).
FORK_SHAPE_PRESERVING = frozenset({"BN", "Normalize"})


# ---------------------------------------------------------------------------------------------
# NetState and include/exclude rules


def train_state(net: Any, state: Any | None = None) -> Any:
    """The NetState of the train net (solver.cpp:106-114): phase TRAIN, then ``net.state``
    merged in, then the solver's ``train_state`` (highest precedence)."""
    result = type(net.state)()
    result.phase = TRAIN
    result.MergeFrom(net.state)
    if state is not None:
        result.MergeFrom(state)
    return result


def state_meets_rule(state: Any, rule: Any) -> bool:
    """``Net::StateMeetsRule`` (net.cpp:290-353): the rule's phase (if set) must equal the
    state's; min_level <= level <= max_level where set; the state must hold ALL of the rule's
    ``stage``s and NONE of its ``not_stage``s."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(state: Any, layer: Any) -> bool:
    """``Net::FilterNet`` (net.cpp:266-286) for one layer: with no include rules a layer is in
    unless an exclude rule is met; with include rules it is in only if one is met. Both kinds on
    one layer is fatal in Caffe (net.cpp:269-270); the caller checks that first."""
    if len(layer.include) == 0:
        return not any(state_meets_rule(state, r) for r in layer.exclude)
    return any(state_meets_rule(state, r) for r in layer.include)


def filter_layers(
    net: Any, state: Any, path: str, layer_locations: Sequence[SourceLocation | None] = ()
) -> list[int]:
    """Indices (into ``net.layer``) of the layers that exist for ``state``."""
    kept = []
    for i, layer in enumerate(net.layer):
        if len(layer.include) and len(layer.exclude):
            raise InputError(
                f"layer '{layer.name}': Specify either include rules or exclude rules; not both.",
                _loc(layer_locations, i, path),
            )
        if layer_included(state, layer):
            kept.append(i)
    return kept


def _loc(locations: Sequence[SourceLocation | None], i: int, path: str) -> SourceLocation:
    if i < len(locations) and locations[i] is not None:
        return locations[i]  # type: ignore[return-value]
    return SourceLocation(path)


# ---------------------------------------------------------------------------------------------
# the param table


@dataclass
class _Owner:
    key: str
    layer: str
    layer_type: str
    index: int
    shape: shp.Shape
    lr_mult: float
    decay_mult: float
    lr_explicit: bool
    decay_explicit: bool
    share_name: str
    location: SourceLocation | None
    sharers: list[str] = field(default_factory=list)

    def freeze(self) -> ParamBlob:
        shape = self.shape if shp.known(self.shape) else None
        return ParamBlob(
            key=self.key,
            layer=self.layer,
            layer_type=self.layer_type,
            index=self.index,
            shape=shape,  # type: ignore[arg-type]
            lr_mult=self.lr_mult,
            decay_mult=self.decay_mult,
            share_name=self.share_name,
            sharers=tuple(self.sharers),
            lr_mult_explicit=self.lr_explicit,
            decay_mult_explicit=self.decay_explicit,
            location=self.location,
        )


@dataclass(frozen=True)
class _Spec:
    """A ParamSpec as AppendParam sees it: values and whether they were set explicitly."""

    name: str = ""
    permissive: bool = False
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    lr_explicit: bool = False
    decay_explicit: bool = False


def _spec(ps: Any) -> _Spec:
    return _Spec(
        name=ps.name,
        permissive=ps.share_mode == 1,  # ParamSpec.DimCheckMode PERMISSIVE = 1
        lr_mult=float(ps.lr_mult),
        decay_mult=float(ps.decay_mult),
        lr_explicit=ps.HasField("lr_mult"),
        decay_explicit=ps.HasField("decay_mult"),
    )


def _tsn_bn_specs(layer: Any, specs: list[_Spec], n_blobs: int) -> list[_Spec]:
    """TSN's BN/SyncBN edit their LayerParameter before Net reads it: ParamSpecs are appended
    up to 4, the two running statistics (blobs 2, 3) get lr_mult 0 and decay_mult 0, and with
    ``bn_param { frozen: true }`` (BN only) so do the slope and bias (blobs 0, 1), whatever was
    written (yjxiong/caffe bn_layer.cpp:49-68, sync_bn_layer.cpp:35-42); the slope and bias
    otherwise keep their param blocks (default lr_mult 1, decay_mult 1)."""
    specs = specs + [_Spec() for _ in range(len(specs), max(n_blobs, 4))]
    # read with TSN's schema into BVLC's, a frozen BN's slope and bias already carry the
    # zeros (caffe/upgrade.py); a TSN-schema layer still has its bn_param
    bn_param = getattr(layer, "bn_param", None) if hasattr(layer, "bn_param") else None
    frozen = layer.type == "BN" and bn_param is not None and bn_param.frozen
    for i in range(4):
        if i >= 2 or frozen:
            specs[i] = _Spec(
                name=specs[i].name,
                permissive=specs[i].permissive,
                lr_mult=0.0,
                decay_mult=0.0,
                lr_explicit=True,
                decay_explicit=True,
            )
    return specs


def layer_specs(
    layer: Any, n_blobs: int, loc: SourceLocation, dialect: str = "bvlc"
) -> list[_Spec]:
    """The ParamSpecs AppendParam reads for each blob of ``layer`` (net.cpp:440-442): param[i]
    if present, else the default (lr_mult 1, decay_mult 1, both implicit).

    BatchNorm first edits its own copy of the LayerParameter (batch_norm_layer.cpp:37-48): each
    blob without a ParamSpec gets ``param { lr_mult: 0 }`` appended, and an existing ParamSpec
    whose lr_mult (default 1) is not 0 is fatal. NVIDIA Caffe's BatchNorm instead sets
    lr_mult 0 and decay_mult 0 on the three statistics, whatever was written, and lr_mult 1
    and decay_mult 1 on its scale and bias (NVIDIA/caffe batch_norm_layer.cpp:89-109)."""
    specs = [_spec(ps) for ps in layer.param]
    if layer.type in ("BN", "SyncBN") and dialect == "tsn":
        return _tsn_bn_specs(layer, specs, n_blobs)
    if layer.type == "BatchNorm" and dialect == "nvidia":
        specs += [_Spec() for _ in range(len(specs), n_blobs)]
        for i in range(min(n_blobs, 5)):
            mult = 0.0 if i < 3 else 1.0
            specs[i] = _Spec(
                name=specs[i].name,
                permissive=specs[i].permissive,
                lr_mult=mult,
                decay_mult=mult,
                lr_explicit=True,
                decay_explicit=True,
            )
        return specs
    if layer.type == "BatchNorm":
        for i in range(n_blobs):
            if i == len(specs):
                specs.append(_Spec(lr_mult=0.0, lr_explicit=True))
            elif specs[i].lr_mult != 0.0:
                raise InputError(
                    f"layer '{layer.name}': Cannot configure batch normalization statistics as "
                    f"layer parameters (param {i} has lr_mult {specs[i].lr_mult:g}; BatchNorm "
                    "requires lr_mult: 0, batch_norm_layer.cpp:44-46)",
                    loc,
                )
    while len(specs) < n_blobs:
        specs.append(_Spec())
    return specs


def _fmt(shape: shp.Shape) -> str:
    if shape is None:
        return "?"
    return " ".join("?" if d is None else str(d) for d in shape) + f" ({shp.prod(shape) or '?'})"


class _ParamTable:
    """``Net::AppendParam`` state: owners in learnable order and the name index."""

    def __init__(self) -> None:
        self.owners: list[_Owner] = []
        self.by_name: dict[str, _Owner] = {}

    def append(
        self,
        layer: Any,
        index: int,
        shape: shp.Shape,
        spec: _Spec,
        loc: SourceLocation,
        notes: list[Note],
    ) -> None:
        key = f"{layer.name}/{index}"
        owner = self.by_name.get(spec.name) if spec.name else None
        if owner is None:  # net.cpp:443-458: a new learnable param
            new = _Owner(
                key=key,
                layer=layer.name,
                layer_type=layer.type,
                index=index,
                shape=shape,
                lr_mult=spec.lr_mult,
                decay_mult=spec.decay_mult,
                lr_explicit=spec.lr_explicit,
                decay_explicit=spec.decay_explicit,
                share_name=spec.name,
                location=loc,
            )
            self.owners.append(new)
            if spec.name:
                self.by_name[spec.name] = new
            return
        # net.cpp:459-514: share the owner's blob
        where = (
            f"Cannot share param '{spec.name}' owned by layer '{owner.layer}' with layer "
            f"'{layer.name}'"
        )
        if (
            shape is not None
            and owner.shape is not None
            and (shp.known(shape) and shp.known(owner.shape))
        ):
            if spec.permissive:  # net.cpp:475-483: counts only
                if shp.prod(shape) != shp.prod(owner.shape):
                    raise InputError(
                        f"{where}; count mismatch.  Owner layer param shape is "
                        f"{_fmt(owner.shape)}; sharing layer shape is {_fmt(shape)}",
                        loc,
                    )
            elif tuple(shape) != tuple(owner.shape):  # net.cpp:484-491: all dims
                raise InputError(
                    f"{where}; shape mismatch.  Owner layer param shape is {_fmt(owner.shape)}; "
                    f"sharing layer expects shape {_fmt(shape)}",
                    loc,
                )
        else:
            notes.append(
                Note(
                    "net.share_unchecked",
                    f"layer '{layer.name}' shares param '{spec.name}' with layer '{owner.layer}'"
                    " but a shape is unknown, so Caffe's shape check could not be repeated",
                    Severity.WARNING,
                    loc,
                )
            )
            if not shp.known(owner.shape) and shp.known(shape) and not spec.permissive:
                owner.shape = shape  # STRICT sharing: Caffe requires the same shape
        # net.cpp:495-513: explicit multipliers must agree; an explicit one replaces an
        # implicit (default) one of the owner.
        if spec.lr_explicit:
            if owner.lr_explicit:
                if spec.lr_mult != owner.lr_mult:
                    raise InputError(
                        f"Shared param '{spec.name}' has mismatched lr_mult "
                        f"(layer '{owner.layer}': {owner.lr_mult:g}, layer '{layer.name}': "
                        f"{spec.lr_mult:g})",
                        loc,
                    )
            else:
                owner.lr_explicit = True
                owner.lr_mult = spec.lr_mult
        if spec.decay_explicit:
            if owner.decay_explicit:
                if spec.decay_mult != owner.decay_mult:
                    raise InputError(
                        f"Shared param '{spec.name}' has mismatched decay_mult "
                        f"(layer '{owner.layer}': {owner.decay_mult:g}, layer '{layer.name}': "
                        f"{spec.decay_mult:g})",
                        loc,
                    )
            else:
                owner.decay_explicit = True
                owner.decay_mult = spec.decay_mult
        owner.sharers.append(key)


# ---------------------------------------------------------------------------------------------
# the whole net


@dataclass
class _Walk:
    """What one pass over the TRAIN-phase layers produces."""

    layers: list[LayerInfo]
    table: _ParamTable
    notes: list[Note]
    blob_shapes: dict[str, shp.Shape]
    feeds: list[DataFeed] = field(default_factory=list)


_SKIPPED_IN_LAYER = re.compile(r"skipped (?:unknown \w+ )?layer\[(\d+)\]\.")


def relax_skipped_fields(
    notes: tuple[Note, ...], net: Any, owners: Sequence[_Owner]
) -> tuple[Note, ...]:
    """A field ``--lenient`` skipped inside a layer that owns no learnable blob of the train
    net (a loss, a Python or ROI-pooling layer, a fork's data transform, a layer of the TEST
    phase) shapes the model's forward and backward pass, never the update rule: its note no
    longer counts as changing training (issue 11: such layers never block a translation)."""
    learning = {o.layer for o in owners}
    learning |= {key.rpartition("/")[0] for o in owners for key in o.sharers}
    out = []
    for n in notes:
        found = _SKIPPED_IN_LAYER.match(n.message) if n.code.startswith("lenient.") else None
        index = int(found.group(1)) if found else -1
        if found and n.affects_training and index < len(net.layer):
            layer = net.layer[index]
            if layer.name not in learning:
                n = dataclasses.replace(
                    n,
                    affects_training=False,
                    message=f"{n.message}; but layer '{layer.name}' ({layer.type}) owns no "
                    "learnable blob of the train net, so the update rule does not depend on it",
                )
        out.append(n)
    return tuple(out)


def build_net_spec(
    net: Any,
    *,
    path: str,
    layer_locations: Sequence[SourceLocation | None] = (),
    notes: Sequence[Note] = (),
    legacy_format: str = "V2",
    state: Any | None = None,
    lenient: bool = False,
    dialect: str = "bvlc",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> NetSpec:
    """Build the TRAIN-phase :class:`NetSpec` of an (already V2-upgraded) ``NetParameter``.

    ``layer_locations[i]`` is the source location of ``net.layer[i]``; ``state`` is the solver's
    ``train_state``; ``notes`` are carried into the result first. Caffe's fatal checks raise
    :class:`InputError`; with ``lenient`` unknown layer types and dangling bottoms become notes.
    ``dialect`` is the Caffe that runs the net (``"nvidia"``: NVIDIA's BatchNorm, see
    :func:`layer_specs`). ``input_shapes`` (``--input-shape TOP=N,C,H,W``) sets the shape of
    the named tops, whatever their layers say; the tops of data layers that stay unknown get
    the conventional shape (:func:`caffe2tf.caffe.shapes.conventional_tops`), each assumed
    dimension named in a note.
    """
    walk = _walk_with_conventions(
        net, path, layer_locations, list(notes), state, lenient, dialect, dict(input_shapes or {})
    )
    return NetSpec(
        path=path,
        name=net.name,
        layers=tuple(walk.layers),
        params=tuple(o.freeze() for o in walk.table.owners),
        legacy_format=legacy_format,
        message=net,
        notes=relax_skipped_fields(tuple(walk.notes), net, walk.table.owners),
        dialect=dialect,
        feeds=tuple(walk.feeds),
    )


def blob_shapes(
    net: Any,
    *,
    path: str = "<net>",
    state: Any | None = None,
    lenient: bool = False,
) -> dict[str, shp.Shape]:
    """The shape of every named blob of the TRAIN-phase net after the last layer that writes it
    (None or None dims where unknown): what pycaffe's ``net.blobs`` reports, minus the split
    blobs Caffe inserts."""
    return _walk(net, path, (), [], state, lenient).blob_shapes


def _walk_with_conventions(
    net: Any,
    path: str,
    layer_locations: Sequence[SourceLocation | None],
    out_notes: list[Note],
    state: Any | None,
    lenient: bool,
    dialect: str,
    input_shapes: dict[str, tuple[int, ...]],
) -> _Walk:
    """:func:`_walk` with the unknown channel count of the data layers set to the first of
    :data:`~caffe2tf.caffe.shapes.CHANNEL_GUESSES` that makes a net Caffe would build (a
    siamese net slices a 2-channel pair: 3 would make its shared blobs disagree). When none
    does, the net is walked with those dimensions unknown, as the prototxt leaves them."""
    errors: list[InputError] = []
    for channels in (*shp.CHANNEL_GUESSES, None):
        try:
            return _walk(
                net,
                path,
                layer_locations,
                list(out_notes),
                state,
                lenient,
                dialect,
                input_shapes,
                channels,
            )
        except InputError as err:
            if "--input-shape" in err.message:  # a bad override, not a guess of ours
                raise
            errors.append(err)
    raise errors[-1]  # the net as the prototxt leaves it: Caffe's own verdict


def _walk(
    net: Any,
    path: str,
    layer_locations: Sequence[SourceLocation | None],
    out_notes: list[Note],
    state: Any | None,
    lenient: bool,
    dialect: str = "bvlc",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    channels: int | None = shp.CONVENTIONAL_CHANNELS,
) -> _Walk:
    """One pass over the TRAIN-phase layers. ``channels``: the channel count assumed where a
    data layer's is unknown (None: assume nothing, leave the data shapes unknown)."""
    overrides = dict(input_shapes or {})
    used: set[str] = set()
    feeds: list[DataFeed] = []
    st = train_state(net, state)
    if st.phase != TRAIN:
        out_notes.append(
            Note(
                "net.phase_test",
                "the net's state / the solver's train_state set phase: TEST; Caffe builds the "
                "train net with that phase (solver.cpp:110-114), so TEST-phase layers are used",
                Severity.WARNING,
                SourceLocation(path),
                affects_training=True,
            )
        )
    kept = filter_layers(net, st, path, layer_locations)
    tops_so_far: dict[str, shp.Shape] = dict(_legacy_inputs(net))
    for name in [t for t in tops_so_far if t in overrides]:  # a legacy net-level input
        tops_so_far[name] = overrides[name]
        used.add(name)
    table = _ParamTable()
    infos: list[LayerInfo] = []
    named: set[str] = set()
    for i in kept:
        layer = net.layer[i]
        loc = _loc(layer_locations, i, path)
        infos.append(LayerInfo(layer.name, layer.type, tuple(layer.bottom), tuple(layer.top), loc))
        bottoms: list[shp.Shape] = []
        for b_i, b in enumerate(layer.bottom):
            if b not in tops_so_far:  # insert_splits.cpp:27-31, net.cpp:400-406
                msg = f"Unknown bottom blob '{b}' (layer '{layer.name}', bottom index {b_i})"
                if not lenient:
                    raise InputError(msg, loc)
                out_notes.append(Note("net.unknown_bottom", msg, Severity.WARNING, loc))
            bottoms.append(tops_so_far.get(b))
        for t_i, t in enumerate(layer.top):  # net.cpp:358-379 AppendTop
            in_place = t_i < len(layer.bottom) and layer.bottom[t_i] == t
            if t in tops_so_far and not in_place and not lenient:
                raise InputError(f"Top blob '{t}' produced by multiple sources.", loc)
        if len(layer.propagate_down) and len(layer.propagate_down) != len(layer.bottom):
            # net.cpp:78-83
            msg = (
                f"layer '{layer.name}': propagate_down param must be specified either 0 or "
                f"bottom_size times ({len(layer.propagate_down)} vs {len(layer.bottom)} bottoms)"
            )
            if not lenient:
                raise InputError(msg, loc)
            out_notes.append(Note("net.layer_rejected", msg, Severity.WARNING, loc))
        _check_loss_weights(layer, loc, lenient, out_notes)
        result, n_blobs, opaque = _layer_shapes(layer, bottoms, loc, lenient, out_notes, dialect)
        if shp.feeds_the_net(layer) or any(t in overrides for t in layer.top):
            result = _fed_shapes(layer, result, overrides, used, loc, out_notes, channels)
            if shp.feeds_the_net(layer):
                feeds.append(DataFeed(layer.name, layer.type, tuple(layer.top), result.tops))
        for t_i, t in enumerate(layer.top):
            tops_so_far[t] = result.tops[t_i] if t_i < len(result.tops) else None
        if len(layer.param) > n_blobs:  # net.cpp:141-144
            raise InputError(
                f"Too many params specified for layer {layer.name} ({len(layer.param)} param "
                f"blocks for {n_blobs} blobs)",
                loc,
            )
        if n_blobs and layer.name in named:
            out_notes.append(
                Note(
                    "net.duplicate_layer_name",
                    f"layer name '{layer.name}' is used twice; Caffe accepts it, but the blob "
                    f"keys '{layer.name}/i' of both layers collide (pycaffe's net.params keeps "
                    "only one of them)",
                    Severity.WARNING,
                    loc,
                )
            )
        if n_blobs:
            named.add(layer.name)
        specs = layer_specs(layer, n_blobs, loc, dialect)
        tops_so_far_l = list(result.blobs) + [None] * (n_blobs - len(result.blobs))
        for b_i in range(n_blobs):
            table.append(layer, b_i, tops_so_far_l[b_i], specs[b_i], loc, out_notes)
        if result.assumed:
            out_notes.append(
                Note(
                    "net.shape_assumed",
                    f"layer '{layer.name}' ({layer.type}): {result.assumed}",
                    Severity.INFO,
                    loc,
                )
            )
        if n_blobs and not opaque and not all(shp.known(s) for s in tops_so_far_l):
            out_notes.append(
                Note(
                    "net.param_shape_unknown",
                    f"layer '{layer.name}' ({layer.type}): learnable blob shape unknown "
                    f"({result.unknown or 'input shape unknown'}); shown as ?",
                    Severity.INFO,
                    loc,
                )
            )
        elif layer.type in shp.DATA_DEPENDENT and result.unknown:
            out_notes.append(
                Note(
                    "net.data_shape_unknown",
                    f"layer '{layer.name}' ({layer.type}): top shape not fully known "
                    f"({result.unknown}); shapes that depend on it are shown as ?",
                    Severity.INFO,
                    loc,
                )
            )
    unused = sorted(set(overrides) - used)
    if unused:
        raise InputError(
            f"--input-shape {unused[0]}=...: no layer of the train net (TRAIN phase) has a top "
            f"named {unused[0]!r}"
            + (f" (nor {', '.join(repr(u) for u in unused[1:5])})" if len(unused) > 1 else ""),
            SourceLocation(path),
        )
    return _Walk(infos, table, out_notes, tops_so_far, feeds)


#: why each kind of data layer leaves dimensions unknown (for the note)
_DECIDED_BY = {
    "Data": "the database decides them",
    "ImageData": "the image files decide them",
    "HDF5Data": "the HDF5 files decide them",
    "Python": "the Python layer decides them",
    "Input": "the Input layer declares no shape",
}


def _guesses() -> str:
    return ", ".join(str(c) for c in shp.CHANNEL_GUESSES[1:])


def _fed_shapes(
    layer: Any,
    result: shp.LayerShapes,
    overrides: Mapping[str, tuple[int, ...]],
    used: set[str],
    loc: SourceLocation,
    notes: list[Note],
    channels: int | None,
) -> shp.LayerShapes:
    """The tops of a layer with ``--input-shape`` overrides applied and, for a layer that feeds
    the net, every dimension still unknown set to the conventional value (one INFO note naming
    each such dimension, and how to set it)."""
    tops = list(result.tops) + [None] * (len(layer.top) - len(result.tops))
    old_batch = tops[0][0] if tops and tops[0] else None
    for i, t in enumerate(layer.top):
        if t in overrides:
            tops[i] = tuple(overrides[t])
            used.add(t)
    new_batch = tops[0][0] if tops and tops[0] else None
    if shp.feeds_the_net(layer) and len(layer.top) and layer.top[0] in overrides:
        # the other tops (labels) of a data layer follow a new batch size of its first top
        for i, t in enumerate(layer.top[1:], 1):
            top = tops[i]
            if t not in overrides and top and top[0] in (old_batch, None):
                tops[i] = (new_batch, *top[1:])
    if shp.feeds_the_net(layer) and channels is not None:
        first = tops[0] if tops else None
        batch = first[0] if first else None
        tops, said = shp.conventional_tops(layer, tops, batch, channels)  # type: ignore[assignment]
        if said:
            top0 = layer.top[0] if len(layer.top) else "data"
            notes.append(
                Note(
                    "net.shape_assumed",
                    f"layer '{layer.name}' ({layer.type}): assumed {'; '.join(said)} "
                    f"({_DECIDED_BY.get(layer.type, 'the data decide them')}; the convention is "
                    f"3 channels, else the first of {_guesses()} that makes a net Caffe builds, "
                    "and 224 x 224); only the shapes of learnable blobs after it depend on them, "
                    f"the same for both update rules; give --input-shape {top0}=N,C,H,W to set "
                    "them",
                    Severity.INFO,
                    loc,
                )
            )
    unknown = "" if all(shp.known(t) for t in tops) else result.unknown
    return dataclasses.replace(result, tops=tuple(tops), unknown=unknown)


def _check_loss_weights(layer: Any, loc: SourceLocation, lenient: bool, notes: list[Note]) -> None:
    """``Layer::SetLossWeights`` (include/caffe/layer.hpp:388-402): ``loss_weight`` must be given
    0 times or once per top. A loss layer with none gets one (``LossLayer::LayerSetUp``,
    loss_layer.cpp:10-14), so a loss layer with two tops must list both weights."""
    n = len(layer.loss_weight)
    tops = len(layer.top)
    if layer.type in shp.LOSS_TYPES:
        n = n or 1
        tops = max(tops, 1)  # AutoTopBlobs adds the missing loss top (net.cpp:108-121)
    msg = ""
    if n and n != tops:
        msg = (
            f"layer '{layer.name}': loss_weight must be unspecified or specified once per top "
            f"blob ({tops} tops, {n} loss weights"
            + (", counting the implicit 1 of a loss layer" if not len(layer.loss_weight) else "")
            + ")"
        )
    elif layer.type == "SoftmaxWithLoss" and n > 1:
        # softmax_loss_layer.cpp:14-21: the internal Softmax layer is a copy of this layer's
        # parameters, loss weights included, with one top: more than one weight fails there.
        msg = (
            f"layer '{layer.name}': loss_weight must be unspecified or specified once per top "
            f"blob (SoftmaxWithLoss passes its {n} loss weights to its internal one-top Softmax)"
        )
    if msg:
        if not lenient:
            raise InputError(msg, loc)
        notes.append(Note("net.layer_rejected", msg, Severity.WARNING, loc))


def _legacy_inputs(net: Any) -> list[tuple[str, shp.Shape]]:
    """Net-level ``input`` blobs left in a net (Caffe's upgrade turns them into an Input layer,
    upgrade_proto.cpp UpgradeNetInput): shapes from ``input_shape`` or 4 ``input_dim`` each."""
    out: list[tuple[str, shp.Shape]] = []
    dims = [int(d) for d in net.input_dim]
    for i, name in enumerate(net.input):
        shape: shp.Shape = None
        if i < len(net.input_shape):
            shape = tuple(int(d) for d in net.input_shape[i].dim)
        elif len(dims) >= 4 * (i + 1):
            shape = tuple(dims[4 * i : 4 * i + 4])
        out.append((name, shape))
    return out


def _layer_shapes(
    layer: Any,
    bottoms: list[shp.Shape],
    loc: SourceLocation,
    lenient: bool,
    notes: list[Note],
    dialect: str = "bvlc",
) -> tuple[shp.LayerShapes, int, bool]:
    """Shapes for one layer, the number of blobs it owns, and whether it is opaque to us.
    A fork's own layer types (NVIDIA Caffe's, the yolo fork's) are known to its dialect (no
    --lenient needed)."""
    from caffe2tf.caffe.dialect import DIALECTS

    own = DIALECTS[dialect]
    fork_layer = layer.type in own.layer_blobs
    fork_rule = shp.FORK_RULES.get(dialect, {}).get(layer.type)
    if fork_rule is not None:
        result = fork_rule(layer, list(bottoms))
        return result, len(result.blobs), False
    try:
        shp.check_blob_counts(layer)
        result = shp.infer(layer, bottoms)
    except shp.ShapeError as exc:
        if not lenient:
            raise InputError(f"layer '{layer.name}' ({layer.type}): {exc}", loc) from None
        notes.append(
            Note(
                "net.layer_rejected",
                f"layer '{layer.name}' ({layer.type}): Caffe would reject this layer: {exc}",
                Severity.WARNING,
                loc,
            )
        )
        result = None
    if result is not None:
        return result, len(result.blobs), False
    n_params = len(layer.param)
    tops = tuple(None for _ in layer.top)
    if shp.RULES.get(layer.type) is not None:  # a known type whose check failed (lenient)
        return shp.LayerShapes(tops), max(n_params, shp.blob_count(layer)), True
    if layer.type not in OPAQUE_KNOWN and not fork_layer and not lenient:
        raise InputError(
            f"Unknown layer type: {layer.type} (layer '{layer.name}'); BVLC Caffe has no such "
            "layer (use --lenient to read fork files)",
            loc,
        )
    fork_blobs = FORK_TYPES_WITH_PARAMS.get(layer.type, 0)
    owns = n_params > 0 or layer.type in FORK_TYPES_WITH_PARAMS
    if fork_layer:
        fork_blobs = own.layer_blobs[layer.type]
        owns = n_params > 0 or fork_blobs > 0
    n_blobs = max(n_params, fork_blobs or 0)
    what = "Python layer" if layer.type == "Python" else f"unknown layer type '{layer.type}'"
    if fork_layer:
        what = f"{own.short} layer type '{layer.type}'"
    if owns:
        msg = (
            f"layer '{layer.name}': {what} owns learnable blobs whose count and shapes are "
            f"unknown here; listed {n_blobs} (from its param blocks"
            + (" and the fork's known layout" if fork_blobs else "")
            + "); any further blob would train with lr_mult 1, decay_mult 1; in-place tops "
            "assumed unchanged in shape"
        )
    else:
        msg = (
            f"layer '{layer.name}': {what}: its tops' shapes are unknown (in-place tops assumed "
            "unchanged) and any learnable blobs it creates are not listed"
        )
    notes.append(
        Note(
            "net.python_layer" if layer.type == "Python" else "net.unknown_layer_type",
            msg,
            Severity.WARNING,
            loc,
            affects_training=owns,
        )
    )
    # An in-place top (top i == bottom i) of an opaque layer keeps its bottom's shape: Caffe
    # lets a layer write in place only over a blob of its own size (e.g. a fork's BN, ReLU-like
    # layers); an assumption, stated in the note above.
    # Fork normalisation layers (FORK_SHAPE_PRESERVING) likewise keep bottom i's shape.
    keep = layer.type in FORK_SHAPE_PRESERVING
    tops = tuple(
        bottoms[i]
        if i < len(layer.bottom) and (keep or layer.bottom[i] == t) and i < len(bottoms)
        else None
        for i, t in enumerate(layer.top)
    )
    return shp.LayerShapes(tops), n_blobs, True
