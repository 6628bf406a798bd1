"""One Keras mapping per Caffe lr_policy (no Keras import).

:data:`BUILTIN_SCHEDULES` maps a policy to a function that returns the exact
``keras.optimizers.schedules`` call with its note, or a reason why no built-in is exact for
this schedule. Where none is (or the optimizer needs Caffe's update count), the plan uses the
runtime's ``CaffeSchedule`` with the fields that the policy reads, taken from the rule's policy
table (:data:`caffe2tf.rule.schedules.POLICIES`). Why each built-in is exact:
docs/keras-target.md#learning-rate-schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from caffe2tf.notes import Note
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import POLICIES, boundaries, multifixed_bounds
from caffe2tf.targets.keras.model import F32_EXACT_STEPS, Arg, CallSpec, f32, fmt, note

Mapped = tuple[CallSpec, Note] | str


def _base(s: LrSchedule) -> Arg:
    return Arg("initial_learning_rate", f32(s.base_lr), "base_lr")


def _fixed(s: LrSchedule) -> Mapped:
    return CallSpec("constant", (Arg("learning_rate", f32(s.base_lr), "base_lr"),)), note(
        "schedule.fixed", f"lr_policy 'fixed': constant learning rate {fmt(s.base_lr)}."
    )


def _step(s: LrSchedule) -> Mapped:
    if s.max_iter >= F32_EXACT_STEPS:
        return (
            "lr_policy 'step' with max_iter >= 2^24: ExponentialDecay's float32 step / stepsize "
            "could switch one step early, so CaffeSchedule is used"
        )
    return CallSpec(
        "ExponentialDecay",
        (
            _base(s),
            Arg("decay_steps", int(s.stepsize), "stepsize"),
            Arg("decay_rate", f32(s.gamma), "gamma"),
            Arg("staircase", True, "lr_policy"),
        ),
    ), note(
        "schedule.step",
        f"lr_policy 'step' becomes ExponentialDecay(decay_steps={s.stepsize}, decay_rate="
        f"{fmt(s.gamma)}, staircase=True): lr = base_lr * gamma^floor(k / stepsize).",
    )


def _exp(s: LrSchedule) -> Mapped:
    return CallSpec(
        "ExponentialDecay",
        (_base(s), Arg("decay_steps", 1, "lr_policy"), Arg("decay_rate", f32(s.gamma), "gamma")),
    ), note(
        "schedule.exp",
        f"lr_policy 'exp' becomes ExponentialDecay(decay_steps=1, decay_rate={fmt(s.gamma)}): "
        "lr = base_lr * gamma^k.",
    )


def _inv(s: LrSchedule) -> Mapped:
    if f32(s.power) != 1.0:
        return (
            f"lr_policy 'inv' with power {fmt(s.power)}: Keras' InverseTimeDecay has power 1 "
            "only, so a small exact CaffeSchedule is used"
        )
    return CallSpec(
        "InverseTimeDecay",
        (_base(s), Arg("decay_steps", 1, "lr_policy"), Arg("decay_rate", f32(s.gamma), "gamma")),
    ), note(
        "schedule.inv",
        "lr_policy 'inv' with power 1 becomes InverseTimeDecay(decay_steps=1, decay_rate="
        f"{fmt(s.gamma)}).",
    )


def _multistep(s: LrSchedule) -> Mapped:
    bounds = tuple(int(v) - 1 for v in s.stepvalue)
    values = tuple(
        f32(float(np.float32(s.base_lr)) * float(np.float32(s.gamma)) ** j)
        for j in range(len(bounds) + 1)
    )
    return CallSpec(
        "PiecewiseConstantDecay",
        (Arg("boundaries", bounds, "stepvalue - 1"), Arg("values", values, "base_lr * gamma^j")),
    ), note(
        "schedule.multistep",
        f"lr_policy 'multistep' becomes PiecewiseConstantDecay(boundaries={list(bounds)}): "
        "multistep boundaries shifted by one, because Keras switches after the boundary step "
        "and Caffe at the stepvalue itself.",
    )


def _poly(s: LrSchedule) -> Mapped:
    return CallSpec(
        "PolynomialDecay",
        (
            _base(s),
            Arg("decay_steps", int(s.max_iter), "max_iter"),
            Arg("end_learning_rate", 0.0, "lr_policy"),
            Arg("power", f32(s.power), "power"),
        ),
    ), note(
        "schedule.poly",
        f"lr_policy 'poly' becomes PolynomialDecay(decay_steps={s.max_iter}, power="
        f"{fmt(s.power)}, end_learning_rate=0.0): Keras' default end rate is 1e-4, Caffe's 0.",
    )


def _sigmoid(s: LrSchedule) -> Mapped:
    return "lr_policy 'sigmoid' has no Keras built-in; a small exact CaffeSchedule is used"


def _multifixed(s: LrSchedule) -> Mapped:
    bounds, rates = multifixed_bounds(s)
    return CallSpec(
        "PiecewiseConstantDecay",
        (
            Arg("boundaries", bounds, "stageiter"),
            Arg("values", tuple(f32(r) for r in rates), "stagelr"),
        ),
    ), note(
        "schedule.multifixed",
        f"lr_policy 'multifixed' (the yolo fork) becomes PiecewiseConstantDecay(boundaries="
        f"{list(bounds)}): both keep a stage's rate while k <= its stageiter, so the "
        "boundaries are the stageiter values unshifted; past the last one the fork keeps the "
        "last stagelr.",
    )


#: The registry: lr_policy -> its Keras built-in (or why there is none).
BUILTIN_SCHEDULES: dict[str, Callable[[LrSchedule], Mapped]] = {
    "fixed": _fixed,
    "step": _step,
    "exp": _exp,
    "inv": _inv,
    "multistep": _multistep,
    "poly": _poly,
    "sigmoid": _sigmoid,
    "multifixed": _multifixed,
}


def effective_stepvalues(s: LrSchedule) -> tuple[int, ...]:
    """The iterations where Caffe's multistep really advances: ``current_step_`` moves by at
    most one per update (``sgd_solver.cpp:46-52``), so duplicates decay on consecutive updates
    (the rule's :func:`caffe2tf.rule.schedules.boundaries`, with no horizon)."""
    if not s.stepvalue:
        return ()
    horizon = max(int(v) for v in s.stepvalue) + len(s.stepvalue) + 1
    return tuple(boundaries(s, horizon))


def caffe_schedule(
    s: LrSchedule, *, iter_size: int, rms_decay: float | None, reason: str
) -> tuple[CallSpec, Note]:
    """The runtime's ``CaffeSchedule`` with the fields the policy reads (the rule's table)."""
    values = {
        "base_lr": f32(s.base_lr),
        "gamma": f32(s.gamma),
        "power": f32(s.power),
        "stepsize": int(s.stepsize),
        "stepvalue": effective_stepvalues(s),
        "max_iter": int(s.max_iter),
        "stagelr": tuple(f32(r) for r in s.stagelr),
        "stageiter": tuple(int(i) for i in s.stageiter),
    }
    args = [Arg("policy", s.policy, "lr_policy")]
    args += [Arg(name, values[name], name) for name in _ORDER if name in POLICIES[s.policy].reads]
    if s.rampup_interval > 0:  # NVIDIA Caffe's warm-up and floor (rule/schedules.py)
        args.append(Arg("rampup_interval", int(s.rampup_interval), "rampup_interval"))
        args.append(Arg("rampup_lr", f32(s.rampup_lr), "rampup_lr"))
    if s.min_lr is not None:
        args.append(Arg("min_lr", f32(s.min_lr), "min_lr"))
    if iter_size > 1:
        args.append(Arg("iter_size", int(iter_size), "iter_size"))
    if rms_decay is not None:
        args.append(Arg("rms_decay", f32(rms_decay), "rms_decay"))
    return CallSpec("CaffeSchedule", tuple(args)), note(
        "schedule.custom",
        f"lr_policy '{s.policy}' becomes CaffeSchedule, Caffe's formula evaluated at the update "
        f"count: {reason}.",
    )


# the order of CaffeSchedule's arguments (its signature)
_ORDER = ("base_lr", "gamma", "power", "stepsize", "stepvalue", "max_iter", "stagelr", "stageiter")


def keras_schedule(
    s: LrSchedule, *, iter_size: int, rms_decay: float | None, force_custom: bool
) -> tuple[CallSpec, Note]:
    """Caffe's lr_policy as the exact Keras schedule (see the module docstring)."""
    if s.policy == "multistep":
        s = replace(s, stepvalue=effective_stepvalues(s))
    if rms_decay is not None:
        reason = (
            "RMSProp runs as keras.optimizers.Adam(beta_1=0), so the schedule also divides by "
            "sqrt(1 - rms_decay^(k+1)) to cancel Adam's bias correction"
        )
    elif force_custom:
        reason = (
            "the custom optimizer counts Caffe updates, not micro-batches, so it takes Caffe's "
            "policy as CaffeSchedule"
        )
    elif s.rampup_interval > 0 or (s.min_lr is not None and (s.min_lr > 0 or s.base_lr < 0)):
        reason = (
            "NVIDIA Caffe's rate has a warm-up (rampup_interval) and a floor (min_lr) that no "
            "Keras built-in schedule has"
        )
    else:
        mapped = BUILTIN_SCHEDULES[s.policy](s)
        if not isinstance(mapped, str):
            return mapped
        reason = mapped
    return caffe_schedule(s, iter_size=iter_size, rms_decay=rms_decay, reason=reason)
