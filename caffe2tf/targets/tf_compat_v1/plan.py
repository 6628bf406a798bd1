"""UpdateRule -> TfV1Plan: the TF1 graph that reproduces Caffe's update, and why.

Pure data, no TensorFlow import. The emitted ``build_train_op(loss, var_list=None)`` builds
Caffe's fixed order with the runtime's ``caffe_train_op`` (accumulate, clip, normalize, decay,
the rate of ``global_step`` x lr_mult, the solver step, ``global_step += 1``) and asks the
registries for the pieces:

* :data:`~caffe2tf.targets.tf_compat_v1.solvers.SOLVER_MAPPINGS`: a ``tf.compat.v1.train``
  optimizer (one per lr_mult, through ``compute_gradients``-style gradients and
  ``apply_gradients``) where exact, else the runtime's ``caffe_<solver>`` graph step;
* :data:`~caffe2tf.targets.tf_compat_v1.schedules.BUILTIN_SCHEDULES`: a ``tf.compat.v1.train``
  decay of ``global_step`` where exact, else the runtime's ``caffe_<policy>_rate``;
* the decay: Caffe's L2 as ``weight_decay x decay_mult x tf.nn.l2_loss(w)`` terms of the loss
  when no clip comes between the gradient and the decay (``tf.nn.l2_loss`` has the 1/2, so the
  coefficient is Caffe's own); else, and for L1, added to the gradient after the clip.

Variables are found by name (docs/tf-compat-v1-target.md#variables):
``<caffe layer>/weights|kernel`` is blob 0 and ``<caffe layer>/biases|bias`` blob 1, under any
outer scope (tf.compat.v1.layers and tf.contrib.layers / slim naming).
"""

from __future__ import annotations

from collections.abc import Mapping

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import AddDecay, ClipByGlobalNorm, UpdateRule
from caffe2tf.targets.common import CallSpec, f32, fmt, untranslatable
from caffe2tf.targets.tf_compat_v1.model import TfV1Blob, TfV1Plan, note
from caffe2tf.targets.tf_compat_v1.schedules import CUSTOM_POLICIES, tf_schedule
from caffe2tf.targets.tf_compat_v1.solvers import SOLVER_MAPPINGS, TfV1Context

#: the runtime block of each custom step
_CUSTOM_BLOCKS = {
    "caffe_sgd": "custom_sgd",
    "caffe_adagrad": "custom_adagrad",
    "caffe_rmsprop": "custom_rmsprop",
    "caffe_adadelta": "custom_adadelta",
    "caffe_adam": "custom_adam",
}


def plan(
    rule: UpdateRule,
    *,
    layer_map: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
    builtins: bool = True,
) -> TfV1Plan:
    """Choose the TF1 graph pieces that reproduce ``rule`` (see the module docstring).
    ``builtins=False`` takes the runtime's graph steps even where a built-in is exact."""
    layer_map = dict(layer_map or {})
    notes: list[Note] = [
        note("rule.unsupported", why + ".", Exactness.UNSUPPORTED, Severity.ERROR)
        for why in untranslatable(rule, SOLVER_MAPPINGS)
    ]
    blocks = ["binder", "train_op"]
    step = rule.solver_step
    mapping = SOLVER_MAPPINGS.get(type(step))
    ctx = TfV1Context(constant_rate=rule.schedule.policy == "fixed", iter_size=rule.iter_size)
    found = mapping.builtin(step, ctx) if mapping and builtins else "built-ins turned off"
    if mapping is None:
        solver = CallSpec("unsupported")
    elif isinstance(found, str):
        solver = mapping.custom(step)
        blocks.append(_CUSTOM_BLOCKS[solver.cls])
        notes.append(
            note(
                "optimizer.custom",
                f"Caffe {rule.solver} becomes the inlined {solver.cls} graph step because {found}.",
            )
        )
    else:
        solver, solver_note = found
        blocks.append("builtin")
        notes.append(solver_note)
    schedule, sched_note = tf_schedule(rule.schedule)
    notes.append(sched_note)
    if rule.schedule.policy in CUSTOM_POLICIES and schedule.cls.startswith("caffe_"):
        blocks.append(f"policy_{rule.schedule.policy}")

    clip = rule.step(ClipByGlobalNorm)
    decay = rule.step(AddDecay)
    if decay is not None and decay.weight_decay == 0.0:
        decay = None
    decay_in_loss = decay is not None and decay.kind == "L2" and clip is None
    if decay is not None:
        notes.append(
            note(
                "decay.loss" if decay_in_loss else "decay.update",
                f"weight_decay {fmt(decay.weight_decay)} ({decay.kind}) x decay_mult "
                + (
                    "becomes weight_decay x decay_mult x tf.nn.l2_loss(w) terms added to the "
                    "loss by build_train_op: l2_loss has the 1/2, so its gradient is Caffe's "
                    "weight_decay x w (a regularizer of 2 x that, or l2_regularizer(2 x wd), "
                    "would decay twice as hard)"
                    if decay_in_loss
                    else "is added to the gradient after the clip, as Caffe does "
                    + ("(a loss term would be clipped with it)" if clip else "(sign(0) = 0)")
                )
                + "; Caffe decays biases too unless their decay_mult is 0.",
            )
        )
    if clip is not None:
        notes.append(
            note(
                "clip",
                f"clip_gradients {fmt(clip.threshold)}: the raw gradient sum is scaled by "
                "c / norm when its global norm exceeds c, before the decay "
                "(tf.clip_by_global_norm would also scale when the norm equals c).",
            )
        )
    if clip is not None and rule.force_backward and any(not g.trainable for g in rule.params):
        notes.append(
            note(
                "clip.force_backward",
                "force_backward puts the gradients of lr_mult 0 blobs into Caffe's clip norm; "
                "build_train_op differentiates the trained variables only",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        )
    if rule.iter_size > 1:
        notes.append(
            note(
                "accumulation",
                f"iter_size {rule.iter_size}: one session.run(train_op) per forward/backward "
                f"pass; every {rule.iter_size}th applies one Caffe update to the raw sum of the "
                "passes' gradients (kept in variables) times 1/iter_size, inside a tf.cond; "
                "global_step counts updates.",
            )
        )
    if not rule.net_known and not rule.params:
        notes.append(
            note(
                "net.unknown",
                "per-blob lr_mult/decay_mult unknown: the train net was not found; Caffe's "
                "defaults (lr_mult 1, decay_mult 1 on every variable) assumed -- give --net NET",
                Exactness.APPROX,
                Severity.WARNING,
            )
        )
    blobs = []
    beyond = []
    for g in rule.params:
        if g.layer_type == "BatchNorm":
            continue  # moving statistics in TF, never optimized
        if g.index > 1:
            beyond.append(g.key)
            continue
        pairs = dict(rule.scale_pairs)
        layer = pairs.get(g.layer, g.layer) if g.layer not in layer_map else g.layer
        blobs.append(
            TfV1Blob(
                caffe_key=g.key,
                layer=layer_map.get(layer, layer),
                blob=g.index,
                lr_mult=f32(g.lr_mult),
                decay_mult=f32(g.decay_mult),
            )
        )
    if beyond:
        notes.append(
            note(
                "layers.blob_index",
                f"{len(beyond)} blob(s) beyond weights and biases (index 2 or more): the TF1 "
                "contract names only <layer>/weights|kernel and <layer>/biases|bias",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        )
    pairs = list(dict.fromkeys((b.lr_mult, b.decay_mult) for b in blobs if b.lr_mult))
    if pairs:
        notes.append(
            note(
                "multipliers",
                f"{len(pairs)} (lr_mult, decay_mult) pair(s) "
                + ", ".join(f"({fmt(lr)}, {fmt(dm)})" for lr, dm in pairs)
                + ": each variable's rate is Caffe's rate x lr_mult (a built-in optimizer is "
                "made once per lr_mult); lr_mult 0 variables get no update.",
            )
        )
    mults = (f32(rule.default_group.lr_mult), f32(rule.default_group.decay_mult))
    if rule.params:
        mults = (mults[0], 0.0)
    return TfV1Plan(
        solver_type=rule.solver,
        solver=solver,
        builtin=not isinstance(found, str),
        schedule=schedule,
        blobs=tuple(blobs),
        default_mults=mults,
        weight_decay=f32(decay.weight_decay) if decay else 0.0,
        decay_kind=decay.kind if decay else "L2",
        decay_in_loss=decay_in_loss,
        clip_gradients=f32(clip.threshold) if clip else -1.0,
        iter_size=int(rule.iter_size),
        blocks=tuple(blocks),
        notes=tuple(notes),
        source=dict(source or {}),
    )


__all__ = ["plan"]
