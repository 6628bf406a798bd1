"""UpdateRule -> KerasPlan: which Keras 3 objects reproduce Caffe's update, and why.

Pure data, no Keras import. Caffe's order is fixed (clip -> normalize -> decay -> lr x lr_mult
-> solver step); this module walks it and asks the registries for each piece:
:data:`~caffe2tf.targets.keras.solvers.SOLVER_MAPPINGS` (one mapping per solver step type) and
:data:`~caffe2tf.targets.keras.schedules.BUILTIN_SCHEDULES` (one per lr_policy). Three routes
(docs/keras-target.md#routes):

* ``builtin``: one Keras optimizer (SGD / Nesterov SGD / Adam / Adadelta, or Adam(beta_1=0)
  with a correcting schedule for RMSProp), a Keras schedule, and Caffe's weight decay as
  per-variable regularizers (``L2(weight_decay*decay_mult/2)``: Keras' L2 has no 1/2).
* ``multi``: the same, inside ``keras.optimizers.MultiOptimizer`` with one sub-optimizer per
  distinct ``lr_mult`` whose schedule is scaled by it (exact for every solver: the local rate
  multiplies the whole step in Caffe, ``sgd_solver.cpp:228``).
* ``custom``: a subclass of the runtime's ``CaffeOptimizer`` (Caffe's fixed order plus the
  solver's own step), used where no built-in is exact: no built-in for the solver step (AdaGrad:
  Keras puts epsilon inside the root and starts at 0.1), any ``clip_gradients`` (Keras clips
  the regularized gradient; MultiOptimizer clips per group; ``global_clipnorm`` multiplies
  unclipped gradients by c*(1/c), which is not always 1 in float32), ``iter_size > 1`` (Keras
  averages before clipping and evaluates the schedule per micro-step) and L1 decay (the JAX
  backend differentiates |w| at 0 as 1, Caffe uses 0). The decay then happens inside the
  optimizer, after the clip, and the model carries no regularizers.

Every choice leaves a :class:`~caffe2tf.notes.Note` marked exact / approx / unsupported.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import AddDecay, ClipByGlobalNorm, Momentum, NvidiaDecay, UpdateRule
from caffe2tf.targets.keras.layers import (
    SUPPORTED_LAYER_TYPES,
    keras_layer_name,
    keras_layer_names,
    renamed_layers,
)
from caffe2tf.targets.keras.model import (
    KERAS_NAME,
    Arg,
    BlobBinding,
    CallSpec,
    KerasPlan,
    Route,
    f32,
    fmt,
    note,
)
from caffe2tf.targets.keras.schedules import keras_schedule
from caffe2tf.targets.keras.solvers import SOLVER_MAPPINGS


def _bindings(
    rule: UpdateRule,
    layer_map: Mapping[str, str],
    decay: AddDecay | None,
    decay_route: str,
) -> tuple[list[BlobBinding], list[Note]]:
    notes: list[Note] = []
    pairs = dict(rule.scale_pairs)
    given = layer_map
    layer_map = keras_layer_names([g.layer for g in rule.params], rule.layers, given, pairs)
    renamed = renamed_layers(layer_map, given)
    if renamed:
        shown = list(renamed.items())
        notes.append(
            note(
                "layers.renamed",
                f"{len(renamed)} Caffe layer name(s) are not valid Keras/TensorFlow names "
                "('/', spaces, non-ASCII...): their Keras layers are named "
                + ", ".join(f"{k!r} -> {v!r}" for k, v in shown[:10])
                + ("..." if len(shown) > 10 else "")
                + " (every character outside [A-Za-z0-9_.>-] becomes '_', a name in use gets "
                "_2, _3...; docs/keras-target.md#layer-names); build the model with these names "
                "(the blob table of optimizer.py and train_config.yaml lists them), or give "
                "--layer-map",
            )
        )
    out: list[BlobBinding] = []
    unsupported_types: set[str] = set()
    for group in rule.params:
        layer, index = group.layer, group.index
        if group.layer_type == "BatchNorm" and index < 3:
            continue  # mean/variance/factor: moving statistics in Keras, never optimized
        if group.layer_type in ("BN", "SyncBN") and index >= 2:
            # TSN's BN (docs/forks.md#tsn): slope, bias are gamma, beta (blobs 0, 1, as the
            # binder names them); its running mean/variance are Keras' moving statistics
            continue
        if group.layer_type == "BatchNorm":
            # NVIDIA Caffe's scale and bias (blobs 3, 4; docs/nvidia-caffe.md#batchnorm) are
            # the gamma and beta of the Keras BatchNormalization named like the layer
            index -= 3
        if group.layer_type and group.layer_type not in SUPPORTED_LAYER_TYPES:
            unsupported_types.add(group.layer_type)
        keras_layer = keras_layer_name(layer, layer_map, pairs)
        reg = None
        if (
            decay_route == "regularizer"
            and decay is not None
            and group.decay_mult != 0.0
            and group.trainable
        ):
            coef = float(np.float32(decay.weight_decay)) * float(np.float32(group.decay_mult))
            reg = ("L2", f32(coef / 2.0)) if decay.kind == "L2" else ("L1", f32(coef))
        out.append(
            BlobBinding(
                caffe_key=group.key,
                caffe_layer=layer,
                blob=index,
                keras_layer=keras_layer,
                layer_type=group.layer_type,
                lr_mult=f32(group.lr_mult),
                decay_mult=f32(group.decay_mult),
                trainable=group.trainable,
                regularizer=reg,
                momentum=None if group.momentum is None else f32(group.momentum),
            )
        )
    if pairs:
        notes.append(
            note(
                "layers.bn_scale",
                f"{len(pairs)} Caffe BatchNorm+Scale pair(s): the "
                "Scale's gamma/beta live in the Keras BatchNormalization's gamma/beta "
                "(named after the BatchNorm layer); Caffe's BatchNorm statistics are "
                "Keras' non-trainable moving mean/variance.",
            )
        )
    for t in sorted(unsupported_types):
        notes.append(
            note(
                "layers.unsupported_type",
                f"Caffe layer type {t!r} has learnable "
                "blobs that prepare_model cannot place on Keras variables.",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        )
    odd = sorted({b.keras_layer for b in out if not KERAS_NAME.match(b.keras_layer)})
    if odd:
        notes.append(
            note(
                "layers.names",
                f"{len(odd)} Keras layer name(s) taken from the "
                "net are not valid Keras/TensorFlow names (Keras forbids '/', "
                "TensorFlow scopes allow only letters, digits and _.->): give "
                "those layers other names and map them with --layer-map: "
                + ", ".join(repr(n) for n in odd[:10])
                + ("..." if len(odd) > 10 else ""),
                exactness=None,
                severity=Severity.WARNING,
            )
        )
    shared = [g for g in rule.params if g.sharers]
    if shared:
        notes.append(
            note(
                "layers.shared",
                f"{len(shared)} blob(s) are shared between Caffe "
                "layers: reuse one Keras layer, named like the owner, for them.",
            )
        )
    frozen = [b for b in out if not b.trainable]
    if frozen:
        notes.append(
            note(
                "layers.frozen",
                f"{len(frozen)} blob(s) have lr_mult 0: "
                "prepare_model sets variable.trainable = False on them (Caffe never "
                "updates them, and their zero gradient adds nothing to the clip norm).",
            )
        )
    return out, notes


def thawed_by_loading(rule: UpdateRule) -> list[str]:
    """Keys of the frozen (``lr_mult: 0``) blobs that ``keras.models.load_model`` would make
    trainable again: Keras saves a layer's ``trainable`` flag but no variable's, so only a
    layer whose blobs are all frozen stays frozen (``keep_frozen_layers`` in ``runtime.py``),
    and never a BatchNormalization (its flag also switches it to the moving statistics).
    These blobs go to a zero-rate sub-optimizer of the ``multi`` route instead."""
    pairs = {scale for scale, _ in rule.scale_pairs}
    by_layer: dict[str, list] = {}
    for group in rule.params:
        if group.layer_type == "BatchNorm" and group.index < 3:
            continue  # moving statistics, never optimized
        by_layer.setdefault(group.layer, []).append(group)
    out = []
    for layer, groups in by_layer.items():
        batch_norm = layer in pairs or groups[0].layer_type == "BatchNorm"
        if batch_norm or any(g.trainable for g in groups):
            out += [g.key for g in groups if not g.trainable]
    return out


def _decay_count(rule: UpdateRule) -> str:
    if not rule.params:
        return "every trainable variable, biases included (the net is unknown)"
    decayed = [g for g in rule.params if g.trainable and g.decay_mult != 0.0]
    biases = [g for g in decayed if g.key.endswith("/1")]
    return (
        f"each of the {len(decayed)} blobs Caffe decays here ({len(biases)} of them "
        "biases: Caffe decays a bias unless its decay_mult is 0)"
    )


def _momentum_notes(rule: UpdateRule, route: Route) -> list[Note]:
    """Per-blob momentum (cuda-convnet's momW/momB, :attr:`ParamGroup.momentum`): one
    keras.optimizers.SGD per (lr_mult, momentum) inside the MultiOptimizer; the custom
    optimizers hold one momentum, so that route cannot carry it."""
    if not rule.per_blob_momentum:
        return []
    step = rule.step(Momentum)
    assert isinstance(step, Momentum)
    momenta = sorted({f32(g.momentum_or(step.momentum)) for g in rule.params if g.trainable})
    if route == "custom":
        return [
            note(
                "momentum.per_blob",
                "a momentum per blob ("
                + ", ".join(fmt(m) for m in momenta)
                + ") cannot ride on the custom route's one CaffeOptimizer",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        ]
    bad = [m for m in momenta if not 0.0 <= m <= 1.0]
    if bad:
        return [
            note(
                "momentum.range",
                f"momentum {', '.join(fmt(m) for m in bad)} outside [0, 1], which "
                "keras.optimizers.SGD rejects",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        ]
    return [
        note(
            "momentum.per_blob",
            f"momentum per blob ({', '.join(fmt(m) for m in momenta)}): the MultiOptimizer "
            "holds one keras.optimizers.SGD per (lr_mult, momentum) pair, each variable routed "
            "to the one of its blob (CAFFE_MOMENTA in optimizer.py).",
        )
    ]


def plan(
    rule: UpdateRule,
    *,
    layer_map: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> KerasPlan:
    """Choose the Keras 3 objects that reproduce ``rule`` (see the module docstring).

    ``layer_map`` maps Caffe layer names to Keras layer names. Without a train net
    (``rule.net_known`` false) the per-blob multipliers are unknown: an APPROX note.
    """
    layer_map = dict(layer_map or {})
    notes: list[Note] = []
    solver_step = rule.solver_step
    mapping = SOLVER_MAPPINGS[type(solver_step)]
    clip = rule.step(ClipByGlobalNorm)
    decay = rule.step(AddDecay)
    scheduled = rule.step(NvidiaDecay)  # NVIDIA's weight_decay_policy "poly"
    if scheduled is not None:
        decay = scheduled  # type: ignore[assignment]
    if decay is not None and decay.weight_decay == 0.0 and scheduled is None:
        decay = None
    trainable_mults = sorted(
        {f32(g.lr_mult) for g in rule.params if g.trainable}
        | ({f32(rule.default_group.lr_mult)} if not rule.params else set())
    )
    builtin = mapping.builtin(solver_step, rule.solver)
    reasons: list[str] = [builtin] if isinstance(builtin, str) else []
    if clip is not None:
        reasons.append(
            f"clip_gradients {fmt(clip.threshold)}: Caffe clips the raw gradient "
            "sum before weight decay; Keras would clip the regularized gradient "
            "(and MultiOptimizer per group)"
        )
    if rule.iter_size > 1:
        reasons.append(
            f"iter_size {rule.iter_size}: Keras' gradient accumulation averages "
            "before clipping and advances the schedule per micro-batch"
        )
    if isinstance(scheduled, NvidiaDecay):
        reasons.append(
            "weight_decay_policy 'poly' changes the decay every update, which no Keras "
            "regularizer does"
        )
    if decay is not None and decay.kind == "L1":
        reasons.append(
            "L1 decay: Caffe uses sign(0) = 0, the JAX backend differentiates |w| at 0 as 1"
        )
    per_blob = rule.per_blob_momentum
    thawed = thawed_by_loading(rule)
    route: Route
    if reasons:
        route = "custom"
    elif (
        per_blob
        or len(trainable_mults) > 1
        or (trainable_mults and trainable_mults[0] != 1.0)
        or thawed
    ):
        route = "multi"
    else:
        route = "builtin"

    decay_route = "none" if decay is None else ("optimizer" if route == "custom" else "regularizer")
    schedule, sched_note = keras_schedule(
        rule.schedule,
        iter_size=rule.iter_size,
        rms_decay=None if route == "custom" else mapping.schedule_factor(solver_step),
        force_custom=route == "custom",
    )
    notes.append(sched_note)

    if route == "custom":
        custom = mapping.custom(solver_step)
        args = list(custom.args)
        if decay is not None:
            args += [
                Arg("weight_decay", f32(decay.weight_decay), "weight_decay"),
                Arg("regularization_type", decay.kind, "regularization_type"),
            ]
            if isinstance(scheduled, NvidiaDecay):
                args += [
                    Arg("weight_decay_policy", "poly", "weight_decay_policy"),
                    Arg("max_weight_decay", f32(scheduled.max_weight_decay), "max_weight_decay"),
                    Arg("weight_decay_power", f32(scheduled.power), "weight_decay_power"),
                    Arg("max_iter", int(scheduled.max_iter), "max_iter"),
                ]
        if clip is not None:
            args.append(Arg("clip_gradients", f32(clip.threshold), "clip_gradients"))
        if rule.iter_size > 1:
            args.append(Arg("iter_size", int(rule.iter_size), "iter_size"))
        optimizer = CallSpec(custom.cls, tuple(args))
        notes.append(
            note(
                "optimizer.custom",
                f"Caffe {rule.solver} becomes the inlined {custom.cls} (CaffeOptimizer, a "
                "keras.optimizers.Optimizer subclass that follows Caffe's order: clip the raw "
                "gradient sum, normalize, decay, lr x lr_mult, then the solver step) because "
                + "; ".join(reasons)
                + ".",
            )
        )
        if decay is not None:
            notes.append(
                note(
                    "decay.optimizer",
                    f"weight_decay {fmt(decay.weight_decay)} ({decay.kind}) is added inside "
                    f"{custom.cls} after the clip; prepare_model removes regularizers from the "
                    "mapped variables.",
                )
            )
        if rule.iter_size > 1:
            notes.append(
                note(
                    "accumulation",
                    f"iter_size {rule.iter_size}: call apply_gradients once per micro-batch; "
                    f"each group of {rule.iter_size} calls ends with one Caffe update on the "
                    "raw sum of their gradients (optimizer.iterations counts Caffe updates).",
                )
            )
    else:
        assert not isinstance(builtin, str)
        optimizer, opt_note = builtin
        notes.append(opt_note)
        if decay is not None:
            notes.append(
                note(
                    "decay.regularizer",
                    f"Caffe's weight_decay {fmt(decay.weight_decay)} becomes "
                    + (
                        f"L2({fmt(decay.weight_decay / 2)}) x decay_mult: Keras' L2 "
                        "penalty has no 1/2"
                        if decay.kind == "L2"
                        else f"L1({fmt(decay.weight_decay)}) x decay_mult"
                    )
                    + "; prepare_model puts it on "
                    + _decay_count(rule)
                    + ". A custom loop must add sum(model.losses) to the loss.",
                )
            )
        if len(trainable_mults) > 1 or (trainable_mults and trainable_mults[0] != 1.0):
            notes.append(
                note(
                    "lr_mult.multi",
                    f"lr_mult values {', '.join(fmt(m) for m in trainable_mults)} become a "
                    "keras.optimizers.MultiOptimizer with one sub-optimizer per lr_mult whose "
                    "learning rate is the schedule x lr_mult.",
                )
            )
        if thawed:
            notes.append(
                note(
                    "lr_mult.frozen_route",
                    f"{len(thawed)} lr_mult 0 blob(s) share a layer with a trained blob (or "
                    "sit in a BatchNormalization), so Keras cannot save them as frozen: "
                    "MultiOptimizer routes every lr_mult 0 blob to keras.optimizers.SGD("
                    "learning_rate=0.0), which leaves it unchanged when keras.models.load_model "
                    "has made it trainable again: "
                    + ", ".join(thawed[:10])
                    + ("..." if len(thawed) > 10 else ""),
                )
            )
    notes += _momentum_notes(rule, route)
    if not rule.net_known and not rule.params:
        # Without the net the per-blob multipliers are a guess (Caffe's defaults): the Keras
        # side cannot be shown to do what Caffe does, so convert only writes it with
        # --allow-approx.
        notes.append(
            note(
                "net.unknown",
                "per-blob lr_mult/decay_mult unknown: the train net was not found; Caffe's "
                "defaults (lr_mult 1, decay_mult 1 on every blob, biases included) assumed -- "
                "give --net NET",
                Exactness.APPROX,
                severity=Severity.WARNING,
            )
        )
    elif not rule.params:
        notes.append(
            note(
                "net.no_params",
                "the train net has no learnable blob: every trainable Keras variable gets "
                "Caffe's defaults (lr_mult 1, decay_mult 1).",
                severity=Severity.WARNING,
            )
        )

    bindings, layer_notes = _bindings(rule, layer_map, decay, decay_route)
    notes.extend(layer_notes)
    default_reg = None
    if decay_route == "regularizer" and not rule.params and decay is not None:
        wd = float(np.float32(decay.weight_decay))
        default_reg = ("L2", f32(wd / 2)) if decay.kind == "L2" else ("L1", f32(wd))
    default = BlobBinding(
        caffe_key="*",
        caffe_layer="*",
        blob=-1,
        keras_layer="*",
        layer_type="",
        lr_mult=f32(rule.default_group.lr_mult),
        decay_mult=f32(rule.default_group.decay_mult) if not rule.params else 0.0,
        trainable=True,
        regularizer=default_reg,
    )
    return KerasPlan(
        route=route,
        solver=rule.solver,
        optimizer=optimizer,
        schedule=schedule,
        blobs=tuple(bindings),
        default_blob=default,
        decay_kind=decay.kind if decay else "L2",
        weight_decay=f32(decay.weight_decay) if decay else 0.0,
        decay_route=decay_route,
        clip_gradients=f32(clip.threshold) if clip else -1.0,
        iter_size=rule.iter_size,
        max_iter=rule.max_iter,
        lr_mults=tuple(trainable_mults) or (1.0,),
        notes=tuple(notes),
        source=dict(source or {}),
    )


__all__ = ["plan"]
