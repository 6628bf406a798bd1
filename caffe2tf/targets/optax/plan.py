"""UpdateRule -> OptaxPlan: the optax chain that reproduces Caffe's update, and why.

Pure data, no JAX import. The emitted ``build_optimizer()`` returns one
``optax.GradientTransformation`` for a params tree ``{caffe_layer: [blob0, blob1, ...]}``
(Caffe's blob layout), applied once per forward/backward pass. Caffe's order
(docs/caffe-semantics.md#update-order) as a chain of built-ins wherever they are exact:

* ``optax.MultiSteps(..., every_k_schedule=iter_size, use_grad_mean=False)`` around it all when
  iter_size > 1: it SUMS the passes' gradients (the default mean would clip the mean) and
  advances the inner state only on the pass that completes an update;
* ``optax.masked(optax.set_to_zero(), ...)`` on the blobs whose gradient Caffe never computes
  (lr_mult 0 without force_backward, BatchNorm statistics), so that they add nothing to
* ``optax.clip_by_global_norm(clip_gradients)`` on the raw sum;
* ``optax.scale(fl(1 / iter_size))``;
* ``optax.multi_transform`` with one chain per (lr_mult, decay_mult): the decay
  (``optax.add_decayed_weights(weight_decay * decay_mult)`` for L2 -- before the solver, so it
  is coupled like Caffe's -- or the inlined ``add_caffe_l1_decay``), then the solver's chain
  from :data:`~caffe2tf.targets.optax.solvers.SOLVER_MAPPINGS` with
  ``optax.scale_by_learning_rate`` over the schedule of
  :data:`~caffe2tf.targets.optax.schedules.BUILTIN_SCHEDULES` times lr_mult; lr_mult 0 blobs
  get ``optax.set_to_zero()``.
"""

from __future__ import annotations

from collections.abc import Mapping

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import AddDecay, ClipByGlobalNorm, UpdateRule
from caffe2tf.targets.common import f32, fmt, untranslatable
from caffe2tf.targets.optax.model import OptaxBlob, OptaxPlan, note
from caffe2tf.targets.optax.schedules import CUSTOM_POLICIES, optax_schedule
from caffe2tf.targets.optax.solvers import SOLVER_MAPPINGS


def _blobs(rule: UpdateRule, layer_map: Mapping[str, str]) -> list[OptaxBlob]:
    out = []
    for g in rule.params:
        no_gradient = g.layer_type == "BatchNorm" or (not g.trainable and not rule.force_backward)
        out.append(
            OptaxBlob(
                caffe_key=g.key,
                layer=layer_map.get(g.layer, g.layer),
                blob=g.index,
                lr_mult=f32(g.lr_mult),
                decay_mult=f32(g.decay_mult),
                gets_gradient=not no_gradient,
            )
        )
    return out


def plan(
    rule: UpdateRule,
    *,
    layer_map: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> OptaxPlan:
    """Choose the optax chain that reproduces ``rule`` (see the module docstring).
    ``layer_map`` renames Caffe layers to the keys of the params tree."""
    layer_map = dict(layer_map or {})
    notes: list[Note] = [
        note("rule.unsupported", why + ".", Exactness.UNSUPPORTED, Severity.ERROR)
        for why in untranslatable(rule, SOLVER_MAPPINGS)
    ]
    mapping = SOLVER_MAPPINGS.get(type(rule.solver_step))
    chain: tuple = ()
    blocks: tuple[str, ...] = ()
    if mapping is not None:
        chain, solver_note, blocks = mapping.chain(rule.solver_step)
        notes.append(solver_note)
    schedule, sched_note = optax_schedule(rule.schedule)
    notes.append(sched_note)
    all_blocks = ["labels", *blocks]
    if rule.schedule.policy in CUSTOM_POLICIES:
        all_blocks.append(f"policy_{rule.schedule.policy}")

    decay = rule.step(AddDecay)
    if decay is not None and decay.weight_decay == 0.0:
        decay = None
    if decay is not None:
        if decay.kind == "L1":
            all_blocks.append("l1_decay")
        notes.append(
            note(
                "decay",
                f"weight_decay {fmt(decay.weight_decay)} ({decay.kind}) x decay_mult becomes "
                + (
                    "optax.add_decayed_weights(weight_decay x decay_mult) at the head of each "
                    "group's chain: before the solver, so it is coupled as in Caffe (no 1/2)"
                    if decay.kind == "L2"
                    else "the inlined add_caffe_l1_decay at the head of each group's chain "
                    "(optax has no L1 decay; sign(0) = 0 as in Caffe)"
                )
                + "; Caffe decays biases too unless their decay_mult is 0.",
            )
        )
    clip = rule.step(ClipByGlobalNorm)
    if clip is not None:
        notes.append(
            note(
                "clip",
                f"clip_gradients {fmt(clip.threshold)} becomes optax.clip_by_global_norm on the "
                "raw gradient sum, before the decay, as Caffe clips (it leaves the gradient alone "
                "below the threshold and scales by c / norm otherwise).",
            )
        )
    if rule.iter_size > 1:
        notes.append(
            note(
                "accumulation",
                f"iter_size {rule.iter_size} becomes optax.MultiSteps(every_k_schedule="
                f"{rule.iter_size}, use_grad_mean=False) with optax.scale(1/{rule.iter_size}) "
                "after the clip: Caffe sums the passes and clips the sum; the default "
                "use_grad_mean=True would clip the mean. Apply one update per pass.",
            )
        )
    if not rule.net_known and not rule.params:
        notes.append(
            note(
                "net.unknown",
                "per-blob lr_mult/decay_mult unknown: the train net was not found; Caffe's "
                "defaults (lr_mult 1, decay_mult 1 on every blob, biases included) assumed -- "
                "give --net NET",
                Exactness.APPROX,
                Severity.WARNING,
            )
        )
    blobs = _blobs(rule, layer_map)
    pairs = list(dict.fromkeys((b.lr_mult, b.decay_mult) for b in blobs if b.lr_mult))
    if pairs:
        notes.append(
            note(
                "multipliers",
                f"optax.multi_transform with {len(pairs)} group chain(s), one per (lr_mult, "
                "decay_mult) "
                + ", ".join(f"({fmt(lr)}, {fmt(dm)})" for lr, dm in pairs)
                + ": the rate is the schedule with init_value base_lr x lr_mult (Caffe's local "
                "rate, sgd_solver.cpp:228), the decay weight_decay x decay_mult.",
            )
        )
    masked = [b for b in blobs if not b.gets_gradient]
    if masked:
        notes.append(
            note(
                "layers.no_gradient",
                f"{len(masked)} blob(s) never get a gradient in Caffe (lr_mult 0 without "
                "force_backward, BatchNorm statistics): optax.masked(optax.set_to_zero()) "
                "zeroes whatever gradient the params tree has for them before the clip norm.",
            )
        )
    if any(not b.lr_mult for b in blobs):
        notes.append(
            note(
                "layers.frozen",
                "lr_mult 0 blobs get optax.set_to_zero() in the multi_transform: Caffe never "
                "moves them.",
            )
        )
    if any(g.sharers for g in rule.params):
        notes.append(
            note(
                "layers.shared",
                "shared blobs live once, under the owner layer; a sharer layer's list holds "
                "None at that blob's position.",
            )
        )
    mults = (f32(rule.default_group.lr_mult), f32(rule.default_group.decay_mult))
    if rule.params:
        mults = (mults[0], 0.0)
    return OptaxPlan(
        solver=rule.solver,
        solver_chain=chain,
        schedule=schedule,
        blobs=tuple(blobs),
        default_mults=mults,
        weight_decay=f32(decay.weight_decay) if decay else 0.0,
        decay_kind=decay.kind if decay else "L2",
        clip_gradients=f32(clip.threshold) if clip else -1.0,
        iter_size=int(rule.iter_size),
        blocks=tuple(all_blocks),
        notes=tuple(notes),
        source=dict(source or {}),
    )


__all__ = ["plan"]
