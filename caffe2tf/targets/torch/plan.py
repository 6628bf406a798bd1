"""UpdateRule -> TorchPlan: which PyTorch objects reproduce Caffe's update, and why.

Pure data, no torch import. The emitted module always wraps the solver step in the runtime's
``CaffeSolver`` (Caffe's fixed order: accumulate iter_size passes, clip the raw sum,
normalize, decay, then the optimizer with the group's rate), so that ``step()`` holds the
whole update and the user calls nothing else. Inside it, the planner asks the registries:

* :data:`~caffe2tf.targets.torch.solvers.SOLVER_MAPPINGS` for the optimizer: a
  ``torch.optim`` built-in where it is exact here, else the runtime's ``Caffe<X>`` class;
* :data:`~caffe2tf.targets.torch.schedules.BUILTIN_SCHEDULES` for the scheduler;
* the decay: L2 goes into each group's coupled ``weight_decay`` (torch.optim adds it to the
  gradient before the step, after CaffeSolver's clip, where Caffe adds it); L1, which no
  torch optimizer has, is added by CaffeSolver (sign(0) = 0 as in Caffe).

Parameters are found by name (docs/torch-target.md#parameters): Caffe layer name = submodule
name (``model.get_parameter``, dots walk into submodules), blob 0 = ``weight``, blob 1 =
``bias``; a Scale after a BatchNorm (the rule's ``scale_pairs``) is the affine weight/bias of
the ``nn.BatchNormNd`` named like the BatchNorm layer, whose statistics are buffers.
Every choice leaves a note marked exact / approx / unsupported.
"""

from __future__ import annotations

from collections.abc import Mapping

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import AddDecay, ClipByGlobalNorm, UpdateRule
from caffe2tf.targets.common import CallSpec, f32, fmt, untranslatable
from caffe2tf.targets.torch.model import TORCH_ATTR_OF_BLOB, TorchBlob, TorchPlan, note
from caffe2tf.targets.torch.schedules import torch_schedule
from caffe2tf.targets.torch.solvers import SOLVER_MAPPINGS, TorchContext


def _bindings(
    rule: UpdateRule, layer_map: Mapping[str, str]
) -> tuple[list[TorchBlob], list[str], list[Note]]:
    pairs = dict(rule.scale_pairs)
    out: list[TorchBlob] = []
    skipped: list[str] = []
    notes: list[Note] = []
    odd: list[str] = []
    for group in rule.params:
        if group.layer_type == "BatchNorm":
            skipped.append(group.key)
            continue
        layer = group.layer
        module = layer_map.get(layer, layer)
        if layer in pairs and layer not in layer_map:
            module = layer_map.get(pairs[layer], pairs[layer])
        attr = TORCH_ATTR_OF_BLOB.get(group.index)
        if attr is None:
            odd.append(group.key)
            continue
        out.append(
            TorchBlob(
                caffe_key=group.key,
                caffe_layer=layer,
                blob=group.index,
                module=module,
                attr=attr,
                layer_type=group.layer_type,
                lr_mult=f32(group.lr_mult),
                decay_mult=f32(group.decay_mult),
            )
        )
    if odd:
        notes.append(
            note(
                "layers.blob_index",
                f"{len(odd)} blob(s) beyond weight and bias (index 2 or more, e.g. LSTM): the "
                "torch contract names only blob 0 (weight) and blob 1 (bias)",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        )
    if skipped:
        notes.append(
            note(
                "layers.batchnorm",
                f"{len(skipped)} Caffe BatchNorm statistic blob(s) are buffers of nn.BatchNormNd "
                "(running_mean/running_var), never optimized (Caffe forces their lr_mult to 0)"
                + (
                    f"; the {len(pairs)} Scale layer(s) after a BatchNorm are the affine "
                    "weight/bias of the nn.BatchNormNd named like the BatchNorm layer"
                    if pairs
                    else ""
                )
                + ".",
            )
        )
    bad = sorted({b.module for b in out if not all(b.module.split("."))})
    if bad:
        notes.append(
            note(
                "layers.names",
                f"{len(bad)} Caffe layer name(s) cannot be torch submodule paths (an empty "
                "part between dots): name those submodules otherwise and map them with "
                "--layer-map",
                exactness=None,
                severity=Severity.WARNING,
            )
        )
    frozen = [b for b in out if not b.trainable]
    if frozen:
        notes.append(
            note(
                "layers.frozen",
                f"{len(frozen)} blob(s) have lr_mult 0: they join no param group (Caffe never "
                "moves them)"
                + (
                    ", but force_backward puts their gradients into the clip norm, as in Caffe"
                    if rule.force_backward
                    else "; their gradients are ignored, as Caffe computes none"
                )
                + ".",
            )
        )
    return out, skipped, notes


def plan(
    rule: UpdateRule,
    *,
    layer_map: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
    builtins: bool = True,
) -> TorchPlan:
    """Choose the torch objects that reproduce ``rule`` (see the module docstring).

    ``builtins=False`` takes the runtime's ``Caffe<X>`` class even where a ``torch.optim``
    built-in is exact (the tests run both)."""
    layer_map = dict(layer_map or {})
    notes: list[Note] = [
        note("rule.unsupported", why + ".", Exactness.UNSUPPORTED, Severity.ERROR)
        for why in untranslatable(rule, SOLVER_MAPPINGS)
    ]
    schedule = rule.schedule
    step = rule.solver_step
    mapping = SOLVER_MAPPINGS.get(type(step))
    ctx = TorchContext(constant_rate=schedule.policy == "fixed", base_lr=schedule.base_lr)
    found = mapping.builtin(step, ctx) if builtins and mapping else "built-ins turned off"
    extra: tuple[str, ...] = ()
    if mapping is None:
        optimizer = CallSpec("unsupported")
    elif isinstance(found, str):
        optimizer = mapping.custom(step)
        notes.append(
            note(
                "optimizer.custom",
                f"Caffe {rule.solver} becomes the inlined {optimizer.cls} (a torch.optim."
                f"Optimizer subclass doing Caffe's step) because {found}.",
            )
        )
    else:
        optimizer, opt_note, extra = found
        notes.append(opt_note)
    sched, sched_note = torch_schedule(schedule)
    notes.append(sched_note)

    clip = rule.step(ClipByGlobalNorm)
    decay = rule.step(AddDecay)
    if decay is not None and decay.weight_decay == 0.0:
        decay = None
    decay_route = "none"
    if decay is not None:
        decay_route = "optimizer" if decay.kind == "L2" else "wrapper"
        notes.append(
            note(
                "decay.optimizer" if decay_route == "optimizer" else "decay.wrapper",
                f"weight_decay {fmt(decay.weight_decay)} ({decay.kind}) x decay_mult "
                + (
                    "becomes each param group's weight_decay, which torch.optim adds to the "
                    "gradient (coupled, no 1/2) before the step, after CaffeSolver's clip"
                    if decay_route == "optimizer"
                    else "is added by CaffeSolver after the clip (torch has no L1 decay; "
                    "sign(0) = 0 as in Caffe)"
                )
                + ": Caffe decays biases too unless their decay_mult is 0.",
            )
        )
    if clip is not None:
        notes.append(
            note(
                "clip",
                f"clip_gradients {fmt(clip.threshold)}: CaffeSolver scales the raw gradient sum "
                "by c / norm when its global norm exceeds c, before the decay "
                "(torch.nn.utils.clip_grad_norm_ divides by norm + 1e-6 and clips per call).",
            )
        )
    if rule.iter_size > 1:
        notes.append(
            note(
                "accumulation",
                f"iter_size {rule.iter_size}: call step() once per forward/backward pass; every "
                f"{rule.iter_size}th call applies one Caffe update to the raw sum of the last "
                f"{rule.iter_size} gradients times 1/{rule.iter_size} (the schedule counts "
                "updates, not passes).",
            )
        )
    if not rule.net_known and not rule.params:
        notes.append(
            note(
                "net.unknown",
                "per-blob lr_mult/decay_mult unknown: the train net was not found; Caffe's "
                "defaults (lr_mult 1, decay_mult 1 on every parameter, biases included) "
                "assumed -- give --net NET",
                Exactness.APPROX,
                Severity.WARNING,
            )
        )
    blobs, skipped, layer_notes = _bindings(rule, layer_map)
    pairs = list(dict.fromkeys((b.lr_mult, b.decay_mult) for b in blobs if b.trainable))
    if pairs:
        notes.append(
            note(
                "multipliers",
                f"{len(pairs)} param group(s), one per (lr_mult, decay_mult) "
                + ", ".join(f"({fmt(lr)}, {fmt(dm)})" for lr, dm in pairs)
                + ": each group's lr is the scheduled rate x lr_mult (Caffe's local rate, "
                "sgd_solver.cpp:228) and its decay weight_decay x decay_mult.",
            )
        )
    notes.extend(layer_notes)
    mults = (f32(rule.default_group.lr_mult), f32(rule.default_group.decay_mult))
    if rule.params:  # parameters outside the net: trained, never decayed (as Keras does)
        mults = (mults[0], 0.0)
    return TorchPlan(
        solver=rule.solver,
        optimizer=optimizer,
        builtin=not isinstance(found, str),
        schedule=sched,
        blobs=tuple(blobs),
        default_mults=mults,
        base_lr=f32(schedule.base_lr),
        weight_decay=f32(decay.weight_decay) if decay else 0.0,
        decay_kind=decay.kind if decay else "L2",
        decay_route=decay_route,  # type: ignore[arg-type]
        clip_gradients=f32(clip.threshold) if clip else -1.0,
        iter_size=int(rule.iter_size),
        force_backward=rule.force_backward,
        skipped=tuple(skipped),
        extra_blocks=extra,
        notes=tuple(notes),
        source=dict(source or {}),
    )


__all__ = ["plan"]
