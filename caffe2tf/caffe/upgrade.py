"""Caffe's upgrades of old prototxt, done the way Caffe does them, each recorded as a Note.

Citations are to ``src/caffe/util/upgrade_proto.cpp`` of BVLC/caffe ``9b891540`` (identical in
Debian bullseye's Caffe 1.0 build):

* solver: ``solver_type`` enum -> ``type`` string (``UpgradeSolverType``, ``:1042-1078``); both
  set is fatal (``:1043-1045``). Run by ``ReadSolverParamsFromTextFileOrDie`` (``:1119-1125``).
* nets read from a file (``UpgradeNetAsNeeded``, ``:23-86``), in this order:

  1. V0 -> V1 (``UpgradeV0Net`` ``:115-140``): "padding" layers are folded into the conv/pool
     layer that reads them (``UpgradeV0PaddingLayers`` ``:142-199``), V0 fields move to the V1
     layer's sub-parameters (``UpgradeV0LayerParameter`` ``:201-551``), V0 type names map to V1
     enums (``UpgradeV0LayerType`` ``:553-606``). Only ``name``, ``layers``, ``input``,
     ``input_dim`` and ``force_backward`` survive at net level (``:122-139``).
  2. data transformation fields of V1 Data/ImageData/WindowData layers move to
     ``transform_param`` (``:608-667``).
  3. V1 -> V2 (``UpgradeV1Net`` ``:669-689``, ``UpgradeV1LayerParameter`` ``:691-874``):
     ``layers`` -> ``layer``, type enum -> string (``UpgradeV1LayerType`` ``:876-962``),
     ``param[i]`` -> ``ParamSpec.name``, ``blob_share_mode[i]`` -> ``share_mode``,
     ``blobs_lr[i]`` -> ``lr_mult``, ``weight_decay[i]`` -> ``decay_mult`` (``:716-745``).
     A net with both ``layer`` and ``layers`` is refused (``:670-676``).
  4. ``input``/``input_dim``/``input_shape`` -> an ``Input`` layer named "input" placed first
     (``UpgradeNetInput`` ``:964-1003``).
  5. BatchNorm layers with exactly three ``param`` blocks get ``lr_mult: 0`` and
     ``decay_mult: 0`` on all three (``UpgradeNetBatchNorm`` ``:1005-1032``).

Inline ``net_param``/``train_net_param`` in a solver are *not* upgraded by Caffe
(``solver.cpp:86-105`` copies them as they are); :func:`inline_net_notes` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caffe2tf.caffe.parse import Parsed
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Exactness, Note, Severity

__all__ = [
    "SOLVER_TYPE_NAMES",
    "UpgradedNet",
    "inline_net_notes",
    "net_needs_upgrade",
    "upgrade_net",
    "upgrade_solver",
]

#: ``SolverParameter.SolverType`` number -> ``type`` string (``upgrade_proto.cpp:1050-1069``).
SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}
# NVIDIA Caffe's enum adds SAG = 6 (NVIDIA/caffe src/caffe/util/upgrade_proto.cpp:1027-1028)
SOLVER_TYPE_NAMES[6] = "SAG"

#: ``V1LayerParameter.LayerType`` enum name -> V2 type string (``upgrade_proto.cpp:876-962``).
V1_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

#: V0 type string -> V1 enum name (``upgrade_proto.cpp:553-606``).
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type (or "*" for any): (V1 sub-message, field, how)}; how is "set", "add"
# (repeated) or "copy" (message). Transcribes upgrade_proto.cpp:220-549.
_V0_FIELDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output", "set"),
        "innerproduct": ("inner_product_param", "num_output", "set"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term", "set"),
        "innerproduct": ("inner_product_param", "bias_term", "set"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler", "copy"),
        "innerproduct": ("inner_product_param", "weight_filler", "copy"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler", "copy"),
        "innerproduct": ("inner_product_param", "bias_filler", "copy"),
    },
    "pad": {"conv": ("convolution_param", "pad", "add"), "pool": ("pooling_param", "pad", "set")},
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size", "add"),
        "pool": ("pooling_param", "kernel_size", "set"),
    },
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {
        "conv": ("convolution_param", "stride", "add"),
        "pool": ("pooling_param", "stride", "set"),
    },
    "pool": {"pool": ("pooling_param", "pool", "set")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": {
        "data": ("data_param", "source", "set"),
        "hdf5_data": ("hdf5_data_param", "source", "set"),
        "images": ("image_data_param", "source", "set"),
        "window_data": ("window_data_param", "source", "set"),
        "infogain_loss": ("infogain_loss_param", "source", "set"),
    },
    "scale": {"*": ("transform_param", "scale", "set")},
    "meanfile": {"*": ("transform_param", "mean_file", "set")},
    "batchsize": {
        "data": ("data_param", "batch_size", "set"),
        "hdf5_data": ("hdf5_data_param", "batch_size", "set"),
        "images": ("image_data_param", "batch_size", "set"),
        "window_data": ("window_data_param", "batch_size", "set"),
    },
    "cropsize": {"*": ("transform_param", "crop_size", "set")},
    "mirror": {"*": ("transform_param", "mirror", "set")},
    "rand_skip": {
        "data": ("data_param", "rand_skip", "set"),
        "images": ("image_data_param", "rand_skip", "set"),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "", "copy")},
}

#: The V1 sub-parameters that ``UpgradeV1LayerParameter`` copies (``upgrade_proto.cpp:749-868``).
_V1_COPIED_PARAMS = (
    "accuracy_param",
    "argmax_param",
    "concat_param",
    "contrastive_loss_param",
    "convolution_param",
    "data_param",
    "dropout_param",
    "dummy_data_param",
    "eltwise_param",
    "exp_param",
    "hdf5_data_param",
    "hdf5_output_param",
    "hinge_loss_param",
    "image_data_param",
    "infogain_loss_param",
    "inner_product_param",
    "lrn_param",
    "memory_data_param",
    "mvn_param",
    "pooling_param",
    "power_param",
    "relu_param",
    "sigmoid_param",
    "softmax_param",
    "slice_param",
    "tanh_param",
    "threshold_param",
    "window_data_param",
    "transform_param",
    "loss_param",
)


def _note(
    code: str,
    message: str,
    loc: SourceLocation | None,
    *,
    severity: Severity = Severity.INFO,
    affects: bool = False,
    exactness: Exactness | None = None,
) -> Note:
    return Note(
        code=code,
        message=message,
        severity=severity,
        location=loc,
        affects_training=affects,
        exactness=exactness,
    )


# ---------------------------------------------------------------------------------------------
# Solver


def upgrade_solver(parsed: Parsed) -> tuple[Any, dict[str, SourceLocation], tuple[Note, ...]]:
    """Apply ``UpgradeSolverType`` to ``parsed.message`` (in place).

    Returns the message, the location map (``type`` points at ``solver_type`` when it came from
    the enum) and the notes. Both fields set -> :class:`InputError` with Caffe's reason.
    """
    msg = parsed.message
    locations = dict(parsed.locations)
    notes: list[Note] = []
    if "type" not in msg.DESCRIPTOR.fields_by_name:  # TSN's fork: solver_type only
        msg, fork_notes = _tsn_solver_as_bvlc(parsed)
        notes.extend(fork_notes)
    if msg.HasField("solver_type"):
        where = parsed.location("solver_type")
        if msg.HasField("type"):
            raise InputError(
                "Failed to upgrade solver: old solver_type field (enum) and new type field "
                "(string) cannot be both specified in solver proto text "
                "(upgrade_proto.cpp:1043-1045)",
                where,
            )
        enum_name = (
            msg.DESCRIPTOR.fields_by_name["solver_type"]
            .enum_type.values_by_number[msg.solver_type]
            .name
        )
        msg.type = SOLVER_TYPE_NAMES[msg.solver_type]
        msg.ClearField("solver_type")
        if where is not None:
            locations["type"] = where
        notes.append(
            _note(
                "upgrade.solver_type",
                f'upgraded deprecated solver_type: {enum_name} to type: "{msg.type}" '
                "as Caffe does (upgrade_proto.cpp:1042-1078)",
                where,
            )
        )
    return msg, locations, tuple(notes)


def copy_by_name(src: Any, dst: Any, path: str = "") -> list[str]:
    """Copy ``src`` (a fork's message) into ``dst`` (the same message of BVLC's schema) field
    by field, by NAME: a fork may reuse a field number that BVLC gives another field (TSN's
    ``bn_param`` is 137, BVLC's ``embed_param``), so bytes cannot be copied. A single value
    goes into BVLC's repeated field of the same name (an older ``kernel_size: 3`` is BVLC's
    ``kernel_size: [3]``); a repeated one into a single field when it holds one value. Returns
    the paths of the fields BVLC's schema has no place for, which are not copied."""
    skipped: list[str] = []
    declared = dst.DESCRIPTOR.fields_by_name
    for fd, value in src.ListFields():
        where = f"{path}{fd.name}"
        target = declared.get(fd.name)
        if target is None or (fd.message_type is None) != (target.message_type is None):
            skipped.append(where)
            continue
        items = list(value) if fd.is_repeated else [value]
        if not target.is_repeated and len(items) > 1:
            skipped.append(where)
            continue
        field = getattr(dst, fd.name)
        for i, item in enumerate(items):
            sub_path = f"{where}[{i}]." if fd.is_repeated else f"{where}."
            if target.message_type is not None:
                sub = field.add() if target.is_repeated else field
                skipped += copy_by_name(item, sub, sub_path)
            elif target.is_repeated:
                field.append(item)
            else:
                setattr(dst, fd.name, item)
    return skipped


def _tsn_solver_as_bvlc(parsed: Parsed) -> tuple[Any, list[Note]]:
    """TSN's fork (yjxiong/caffe, ``proto/tsn_caffe.proto``) read into BVLC's
    ``SolverParameter`` by name (:func:`copy_by_name`): its fields are BVLC's less ``type``
    (its ``solver_type`` enum is upgraded next, as BVLC does) and plus three that do not change
    the update, each noted: ``richness`` caps cuDNN's workspace when it picks convolution
    algorithms (``src/caffe/layers/cudnn_conv_layer.cpp:124-193``), a repeated ``device_id``
    lists the GPUs of an MPI run, whose gradients the fork sums and scales by 1/ranks before
    the update (``net.cpp:696``, ``solver.cpp:284-321``), as BVLC's multi-GPU training
    averages them, and ``group_id`` groups those ranks."""
    from caffe2tf.caffe._proto import caffe_pb2

    msg = parsed.message
    out = caffe_pb2.SolverParameter()
    devices = list(msg.device_id)
    skipped = copy_by_name(msg, out)
    notes: list[Note] = []
    if len(devices) > 1:
        out.device_id = devices[0]
        notes.append(
            _note(
                "upgrade.tsn_devices",
                f"device_id lists {len(devices)} GPUs: TSN's fork trains with one MPI rank per "
                "GPU, each on the net's batch_size, and averages their gradients before one "
                f"update (net.cpp:696, solver.cpp:284-321); one Keras batch is {len(devices)} "
                "x batch_size",
                parsed.location("device_id"),
            )
        )
    for name in skipped:
        if name == "device_id":
            continue
        top = name.split(".")[0].split("[")[0]
        reason = {
            "richness": "it caps the memory cuDNN may use when TSN's fork picks convolution "
            "algorithms (cudnn_conv_layer.cpp:124-193)",
            "group_id": "it groups the MPI ranks of a TSN run (yjxiong/caffe caffe.proto:187)",
        }.get(name)
        notes.append(
            _note(
                f"upgrade.tsn_{top}",
                f"{name} does not change the update: {reason}"
                if reason
                else f"{name}: BVLC's schema has no such field; an inline net's fork fields "
                "are not translated",
                parsed.location(top),
                severity=Severity.INFO if reason else Severity.WARNING,
                affects=reason is None,
                exactness=None if reason else Exactness.APPROX,
            )
        )
    return out, notes


#: a layer's fields that feed data to TSN's net (its data layers and their transformation):
#: they decide what the gradients are computed on, not how an update applies them
_TSN_DATA_FIELDS = frozenset(
    {"transform_param", "video_data_param", "seg_data_param", "data_param"}
)


def _tsn_net_as_bvlc(parsed: Parsed) -> tuple[Any, list[Note]]:
    """TSN's NetParameter read into BVLC's by name (:func:`copy_by_name`). Its ``BN`` layers
    edit their own ParamSpecs before the net reads them (yjxiong/caffe bn_layer.cpp:49-68):
    with ``bn_param { frozen: true }`` the slope and bias (blobs 0, 1) get lr_mult 0 and
    decay_mult 0, written here into the copy's param blocks; the statistics' zeros are
    applied for every BN/SyncBN by ``net.layer_specs``. Fields BVLC has no place for are noted:
    the fork's data-layer parameters (no learnable blob), and any other, which blocks."""
    from caffe2tf.caffe._proto import caffe_pb2

    net = parsed.message
    out = caffe_pb2.NetParameter()
    skipped = copy_by_name(net, out)
    for i, layer in enumerate(net.layer):
        if layer.type == "BN" and layer.bn_param.frozen:
            params = out.layer[i].param
            while len(params) < 2:
                params.add()
            for j in (0, 1):
                params[j].lr_mult = 0.0
                params[j].decay_mult = 0.0
    # one note per kind of field (its path without the layer index), naming the layers
    kinds: dict[str, list[str]] = {}
    for name in skipped:
        head, _, rest = name.partition(".")
        key = rest if head.startswith("layer[") else name
        kinds.setdefault(key, []).append(head)
    notes: list[Note] = []
    for key, where in kinds.items():
        top = key.split(".")[0]
        harmless = top in _TSN_DATA_FIELDS or top == "bn_param"
        layers = [net.layer[int(w[6:-1])].name for w in where if w.startswith("layer[")]
        shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
        notes.append(
            _note(
                "upgrade.tsn_field",
                f"{key}"
                + (f" (layers {shown})" if layers else "")
                + ": "
                + (
                    "BN's own parameter: its frozen flag is applied to the slope's and bias' "
                    "param blocks (bn_layer.cpp:60-68); momentum and eps do not change the update"
                    if top == "bn_param"
                    else "TSN's data-layer setting (augmentation, reading): not the update"
                    if harmless
                    else "BVLC's schema has no such field and caffe2tf does not model it"
                ),
                parsed.location(where[0]) if where[0].startswith("layer[") else None,
                severity=Severity.INFO if harmless else Severity.WARNING,
                affects=not harmless,
                exactness=None if harmless else Exactness.APPROX,
            )
        )
    return out, notes


def inline_net_notes(solver_parsed: Parsed) -> tuple[Note, ...]:
    """Notes for inline ``net_param``/``train_net_param``: Caffe uses them without upgrading."""
    msg = solver_parsed.message
    notes = []
    for fname in ("train_net_param", "net_param"):
        if not msg.HasField(fname):
            continue
        net = getattr(msg, fname)
        where = solver_parsed.location(fname)
        legacy = net_needs_upgrade(net)
        if legacy:
            notes.append(
                _note(
                    "upgrade.inline_not_upgraded",
                    f"inline {fname} uses legacy fields ({', '.join(legacy)}) that Caffe does NOT "
                    "upgrade for nets inside a solver (solver.cpp:86-105 copies them as written); "
                    "caffe2tf follows Caffe and reads it as written"
                    + (
                        "; V1 'layers' are ignored by Net::Init, so those layers do not exist"
                        if net.layers
                        else ""
                    ),
                    where,
                    severity=Severity.WARNING,
                    affects=True,
                )
            )
        else:
            notes.append(
                _note(
                    "upgrade.inline_not_upgraded",
                    f"inline {fname} is used as written: Caffe does not run its net upgrades on "
                    "nets inside a solver (solver.cpp:86-105); none were needed here",
                    where,
                )
            )
    return tuple(notes)


def net_needs_upgrade(net: Any) -> list[str]:
    """The legacy features present (``NetNeedsUpgrade``, ``upgrade_proto.cpp:17-21``)."""
    found = []
    if any(layer.HasField("layer") for layer in net.layers):
        found.append("V0 layer definitions")
    if len(net.layers):
        found.append("V1 'layers'")
    if _needs_data_upgrade(net):
        found.append("data-layer transformation fields")
    if len(net.input):
        found.append("'input' fields")
    if any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer):
        found.append("BatchNorm with three param blocks")
    return found


# ---------------------------------------------------------------------------------------------
# Net


@dataclass(frozen=True)
class UpgradedNet:
    """A V2 ``NetParameter`` plus, for each ``message.layer[i]``, where it was in the file."""

    message: Any
    layer_locations: tuple[SourceLocation | None, ...]
    notes: tuple[Note, ...]
    legacy_format: str  # "V0", "V1" or "V2"


def upgrade_net(parsed: Parsed, *, dialect: str = "bvlc") -> UpgradedNet:
    """``UpgradeNetAsNeeded`` (``upgrade_proto.cpp:23-86``) on ``parsed.message`` (a
    ``NetParameter`` read from a file). Fatal conditions raise :class:`InputError`.
    NVIDIA Caffe's version has no BatchNorm upgrade (NVIDIA/caffe upgrade_proto.cpp:20-75):
    its BatchNorm layer zeroes the statistics' multipliers itself (see net.layer_specs)."""
    net = parsed.message
    notes: list[Note] = []
    if net.DESCRIPTOR.full_name.startswith("tsncaffe."):  # TSN's schema: read into BVLC's
        net, tsn_notes = _tsn_net_as_bvlc(parsed)
        notes.extend(tsn_notes)
    legacy = "V2"
    # origin[i] = the location of what became net.layers[i] (V1 stage) or net.layer[i] (V2)
    v1_locs: list[SourceLocation | None] = [
        parsed.location(f"layers[{k}]") for k in range(len(net.layers))
    ]
    if any(layer.HasField("layer") for layer in net.layers):
        legacy = "V0"
        net, v1_locs = _upgrade_v0(parsed, notes)
    if _needs_data_upgrade(net):
        _upgrade_data_transformation(net, v1_locs, notes)
    v2_locs: list[SourceLocation | None] = [
        parsed.location(f"layer[{k}]") for k in range(len(net.layer))
    ]
    if len(net.layers):
        if legacy == "V2":
            legacy = "V1"
        if len(net.layer):
            raise InputError(
                "Refusing to upgrade inconsistent NetParameter input; the definition includes "
                "both 'layer' and 'layers' fields (upgrade_proto.cpp:670-676). Manually switch "
                "the definition to 'layer' format to continue.",
                parsed.location("layer"),
            )
        net, v2_locs = _upgrade_v1(net, v1_locs, parsed, notes)
    if len(net.input):
        v2_locs = _upgrade_input(net, v2_locs, parsed, notes)
    if dialect != "nvidia":
        _upgrade_batch_norm(net, v2_locs, notes)
    return UpgradedNet(net, tuple(v2_locs), tuple(notes), legacy)


def _needs_data_upgrade(net: Any) -> bool:
    kinds = {
        "DATA": "data_param",
        "IMAGE_DATA": "image_data_param",
        "WINDOW_DATA": "window_data_param",
    }
    for layer in net.layers:
        sub = kinds.get(_v1_type_name(layer))
        if sub is None:
            continue
        p = getattr(layer, sub)
        if any(p.HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror")):
            return True
    return False


def _v1_type_name(layer: Any) -> str:
    enum = layer.DESCRIPTOR.fields_by_name["type"].enum_type
    return enum.values_by_number[layer.type].name


def _upgrade_data_transformation(
    net: Any, locs: Sequence[SourceLocation | None], notes: list[Note]
) -> None:
    """``UpgradeNetDataTransformation`` (``upgrade_proto.cpp:635-667``)."""
    kinds = {
        "DATA": "data_param",
        "IMAGE_DATA": "image_data_param",
        "WINDOW_DATA": "window_data_param",
    }
    for k, layer in enumerate(net.layers):
        sub_name = kinds.get(_v1_type_name(layer))
        if sub_name is None:
            continue
        sub = getattr(layer, sub_name)
        moved = []
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if sub.HasField(f):
                setattr(layer.transform_param, f, getattr(sub, f))
                sub.ClearField(f)
                moved.append(f)
        if moved:
            notes.append(
                _note(
                    "upgrade.data_transformation",
                    f"layer '{layer.name}': moved {', '.join(moved)} from {sub_name} "
                    "to transform_param (upgrade_proto.cpp:635-667)",
                    locs[k] if k < len(locs) else None,
                )
            )


def _upgrade_v0(parsed: Parsed, notes: list[Note]) -> tuple[Any, list[SourceLocation | None]]:
    """``UpgradeV0Net``: fold padding layers, then move each V0 layer to V1 fields."""
    src = parsed.message
    cls = type(src)
    path_locs = [parsed.location(f"layers[{k}]") for k in range(len(src.layers))]
    # --- UpgradeV0PaddingLayers (upgrade_proto.cpp:142-199) ---
    padded = cls()
    padded.CopyFrom(src)
    padded.ClearField("layers")
    kept_locs: list[SourceLocation | None] = []
    last_top: dict[str, int] = {name: -1 for name in src.input}
    for i, conn in enumerate(src.layers):
        v0 = conn.layer
        if v0.type != "padding":
            padded.layers.add().CopyFrom(conn)
            kept_locs.append(path_locs[i])
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise InputError(
                    f"Unknown blob input {blob} to layer {j} (upgrade_proto.cpp:163-166)",
                    path_locs[i],
                )
            top_idx = last_top[blob]
            if top_idx == -1:
                continue
            source = src.layers[top_idx]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool"):
                    raise InputError(
                        "Padding layer input to non-convolutional / non-pooling "
                        f"layer type {v0.type} (upgrade_proto.cpp:177-180)",
                        path_locs[i],
                    )
                if len(conn.bottom) != 1:
                    raise InputError("Conv Layer takes a single blob as input.", path_locs[i])
                if len(source.bottom) != 1:
                    raise InputError(
                        "Padding Layer takes a single blob as input.", path_locs[top_idx]
                    )
                if len(source.top) != 1:
                    raise InputError(
                        "Padding Layer produces a single blob as output.", path_locs[top_idx]
                    )
                target = padded.layers[len(padded.layers) - 1]
                target.layer.pad = source.layer.pad
                target.bottom[j] = source.bottom[0]
                notes.append(
                    _note(
                        "upgrade.v0_padding",
                        f"V0 padding layer '{source.layer.name}' (pad "
                        f"{source.layer.pad}) folded into '{v0.name}' "
                        "(upgrade_proto.cpp:142-199)",
                        path_locs[top_idx],
                    )
                )
        for blob in conn.top:
            last_top[blob] = i
    # --- UpgradeV0Net / UpgradeV0LayerParameter ---
    out = cls()
    if padded.HasField("name"):
        out.name = padded.name
    dropped = [
        f.name
        for f, _ in padded.ListFields()
        if f.name not in ("name", "layers", "input", "input_dim", "force_backward")
    ]
    if dropped:
        notes.append(
            _note(
                "upgrade.v0_dropped",
                f"V0 net upgrade keeps only name/layers/input/input_dim/"
                f"force_backward; dropped: {', '.join(dropped)} "
                "(upgrade_proto.cpp:122-139)",
                SourceLocation(parsed.path),
                severity=Severity.WARNING,
            )
        )
    for k, conn in enumerate(padded.layers):
        _upgrade_v0_layer(conn, out.layers.add(), kept_locs[k], notes)
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    notes.append(
        _note(
            "upgrade.v0_to_v1",
            f"upgraded {len(out.layers)} V0 layer definitions to V1 (upgrade_proto.cpp:115-140)",
            SourceLocation(parsed.path),
        )
    )
    return out, kept_locs


def _upgrade_v0_layer(conn: Any, out: Any, loc: SourceLocation | None, notes: list[Note]) -> None:
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    vtype = v0.type
    if v0.HasField("type"):
        enum_name = V0_TYPE_NAMES.get(vtype)
        if enum_name is None:
            raise InputError(
                f"Unknown layer name: {vtype} (V0 layer type; upgrade_proto.cpp:603-604)", loc
            )
        out.type = out.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name[enum_name].number
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for fname, targets in _V0_FIELDS.items():
        if not v0.HasField(fname):
            continue
        target = targets.get(vtype) or targets.get("*")
        if target is None:
            notes.append(
                _note(
                    "upgrade.v0_incompatible",
                    f"V0 layer '{v0.name}': Caffe drops parameter {fname} for layer "
                    f"type {vtype} ('Unknown parameter', upgrade_proto.cpp:201-551)",
                    loc,
                    severity=Severity.WARNING,
                )
            )
            continue
        sub_name, field_name, how = target
        sub = getattr(out, sub_name)
        value = getattr(v0, fname)
        if how == "copy":
            (getattr(sub, field_name) if field_name else sub).CopyFrom(value)
        elif how == "add":
            getattr(sub, field_name).append(value)
        else:
            setattr(sub, field_name, value)


def _upgrade_v1(
    net: Any, v1_locs: Sequence[SourceLocation | None], parsed: Parsed, notes: list[Note]
) -> tuple[Any, list[SourceLocation | None]]:
    """``UpgradeV1Net`` / ``UpgradeV1LayerParameter`` (``upgrade_proto.cpp:669-874``)."""
    out = type(net)()
    out.CopyFrom(net)
    out.ClearField("layers")
    out.ClearField("layer")
    share_enum = (
        out.DESCRIPTOR.fields_by_name["layer"]
        .message_type.fields_by_name["param"]
        .message_type.fields_by_name["share_mode"]
        .enum_type
    )
    converted = 0
    for k, v1 in enumerate(net.layers):
        loc = v1_locs[k] if k < len(v1_locs) else None
        layer = out.layer.add()
        layer.bottom.extend(v1.bottom)
        layer.top.extend(v1.top)
        if v1.HasField("name"):
            layer.name = v1.name
        for rule in v1.include:
            layer.include.add().CopyFrom(rule)
        for rule in v1.exclude:
            layer.exclude.add().CopyFrom(rule)
        if v1.HasField("type"):
            layer.type = V1_TYPE_NAMES[_v1_type_name(v1)]
        for blob in v1.blobs:
            layer.blobs.add().CopyFrom(blob)

        def spec(i: int, layer: Any = layer) -> Any:
            while len(layer.param) <= i:
                layer.param.add()
            return layer.param[i]

        for i, name in enumerate(v1.param):
            spec(i).name = name
        v1_share = v1.DESCRIPTOR.fields_by_name["blob_share_mode"].enum_type
        for i, mode in enumerate(v1.blob_share_mode):
            spec(i).share_mode = share_enum.values_by_name[
                v1_share.values_by_number[mode].name
            ].number
        for i, lr in enumerate(v1.blobs_lr):
            spec(i).lr_mult = lr
        for i, decay in enumerate(v1.weight_decay):
            spec(i).decay_mult = decay
        layer.loss_weight.extend(v1.loss_weight)
        for sub in _V1_COPIED_PARAMS:
            if v1.HasField(sub):
                getattr(layer, sub).CopyFrom(getattr(v1, sub))
        if v1.HasField("layer"):
            notes.append(
                _note(
                    "upgrade.v1_v0_layer_ignored",
                    f"layer '{v1.name}': V1 layer also holds a V0 'layer'; Caffe "
                    "ignores it ('Input NetParameter has V0 layer -- ignoring.', "
                    "upgrade_proto.cpp:869-872)",
                    loc,
                    severity=Severity.WARNING,
                )
            )
        if len(v1.blobs_lr) or len(v1.weight_decay) or len(v1.param) or len(v1.blob_share_mode):
            converted += 1
            specs = " ".join(
                "param {"
                + "".join(
                    part
                    for part in (
                        f' name: "{p.name}"' if p.HasField("name") else "",
                        f" lr_mult: {p.lr_mult:g}" if p.HasField("lr_mult") else "",
                        f" decay_mult: {p.decay_mult:g}" if p.HasField("decay_mult") else "",
                        " share_mode: PERMISSIVE"
                        if p.HasField("share_mode") and p.share_mode == 1
                        else "",
                    )
                )
                + " }"
                for p in layer.param
            )
            olds = []
            if len(v1.blobs_lr):
                olds.append("blobs_lr " + ", ".join(f"{x:g}" for x in v1.blobs_lr))
            if len(v1.weight_decay):
                olds.append("weight_decay " + ", ".join(f"{x:g}" for x in v1.weight_decay))
            if len(v1.param):
                olds.append("param " + ", ".join(f'"{x}"' for x in v1.param))
            notes.append(
                _note(
                    "upgrade.v1_multipliers",
                    f"layer '{v1.name}': {'; '.join(olds)} -> {specs} (upgrade_proto.cpp:716-745)",
                    loc,
                )
            )
    notes.append(
        _note(
            "upgrade.v1_to_v2",
            f"upgraded {len(net.layers)} V1 'layers' to V2 'layer' as Caffe does "
            f"(upgrade_proto.cpp:669-874); {converted} had blobs_lr/weight_decay/param "
            "turned into param {} blocks",
            SourceLocation(parsed.path),
        )
    )
    return out, list(v1_locs)


def _upgrade_input(
    net: Any, locs: list[SourceLocation | None], parsed: Parsed, notes: list[Note]
) -> list[SourceLocation | None]:
    """``UpgradeNetInput`` (``upgrade_proto.cpp:968-1003``)."""
    where = parsed.location("input")
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    new_locs = list(locs)
    if has_shape or has_dim:
        n = len(net.input)
        if has_shape and len(net.input_shape) < n:
            raise InputError(
                f"{n} input blobs but only {len(net.input_shape)} input_shape "
                "entries (Caffe reads one per input, upgrade_proto.cpp:982-984)",
                parsed.location("input_shape") or where,
            )
        if not has_shape and len(net.input_dim) < 4 * n:
            raise InputError(
                f"{n} input blobs need {4 * n} input_dim values, found "
                f"{len(net.input_dim)} (upgrade_proto.cpp:986-991)",
                parsed.location("input_dim") or where,
            )
        layer = net.layer.add()
        layer.name = "input"
        layer.type = "Input"
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        # move the new layer to the front (upgrade_proto.cpp:994-997)
        layers = list(net.layer)
        copies = [type(x)() for x in layers]
        for c, x in zip(copies, layers, strict=True):
            c.CopyFrom(x)
        net.ClearField("layer")
        net.layer.add().CopyFrom(copies[-1])
        for c in copies[:-1]:
            net.layer.add().CopyFrom(c)
        new_locs = [where, *locs]
        shapes = "; ".join(
            f"{name}: {list(s.dim)}"
            for name, s in zip(net.layer[0].top, net.layer[0].input_param.shape, strict=True)
        )
        notes.append(
            _note(
                "upgrade.input",
                f"net-level input fields became an Input layer named 'input' "
                f"({shapes}) as Caffe does (upgrade_proto.cpp:968-1003)",
                where,
            )
        )
    else:
        notes.append(
            _note(
                "upgrade.input",
                "net-level 'input' without shapes is dropped, as Caffe does "
                "(upgrade_proto.cpp:970-972, 999-1002)",
                where,
                severity=Severity.WARNING,
            )
        )
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return new_locs


def _upgrade_batch_norm(net: Any, locs: Sequence[SourceLocation | None], notes: list[Note]) -> None:
    """``UpgradeNetBatchNorm`` (``upgrade_proto.cpp:1017-1032``)."""
    names = []
    first_loc = None
    for i, layer in enumerate(net.layer):
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            names.append(layer.name)
            if first_loc is None and i < len(locs):
                first_loc = locs[i]
    if names:
        shown = ", ".join(f"'{n}'" for n in names[:5]) + (" ..." if len(names) > 5 else "")
        notes.append(
            _note(
                "upgrade.batch_norm",
                f"{len(names)} BatchNorm layer(s) with exactly three param blocks "
                f"({shown}) set to lr_mult: 0 decay_mult: 0, as Caffe does "
                "(upgrade_proto.cpp:1005-1032)",
                first_loc,
            )
        )
