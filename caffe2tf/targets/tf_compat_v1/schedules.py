"""One TF1 mapping per Caffe lr_policy (no TensorFlow import).

:data:`BUILTIN_SCHEDULES` maps a policy to the exact ``tf.compat.v1.train`` decay function of
``global_step`` (Caffe's ``iter_``: the optimizer step increments it after the update, so the
rate is read before) with its note, or the reason why none is exact; then the runtime's
``caffe_<policy>_rate`` is used (``inv`` with power != 1, ``sigmoid``). Why each is exact, with
the TensorFlow source lines: docs/tf-compat-v1-target.md#learning-rate-schedules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from caffe2tf.notes import Exactness, Note
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import POLICIES, multifixed_bounds
from caffe2tf.targets.common import Arg, CallSpec, effective_stepvalues, f32, fmt
from caffe2tf.targets.tf_compat_v1.model import note

Mapped = tuple[CallSpec, Note] | str
F32_EXACT_STEPS = 2**24  # TF divides global_step by decay_steps in float32
_PREFIX = "tf.compat.v1.train."


def _base(s: LrSchedule) -> Arg:
    return Arg("learning_rate", f32(s.base_lr), "base_lr")


def _fixed(s: LrSchedule) -> Mapped:
    return CallSpec("constant", (_base(s),)), note(
        "schedule.fixed", f"lr_policy 'fixed': the rate is {fmt(s.base_lr)}."
    )


def _exponential(s: LrSchedule, every: int, field: str, staircase: bool) -> Mapped:
    if s.max_iter >= F32_EXACT_STEPS:
        return "max_iter >= 2^24: TF's float32 global_step / decay_steps could floor early"
    args = [
        _base(s),
        Arg("decay_steps", every, field),
        Arg("decay_rate", f32(s.gamma), "gamma"),
    ]
    if staircase:
        args.append(Arg("staircase", True, "lr_policy"))
    return CallSpec(_PREFIX + "exponential_decay", tuple(args)), note(
        f"schedule.{s.policy}",
        f"lr_policy '{s.policy}' becomes tf.compat.v1.train.exponential_decay(decay_steps="
        f"{every}, decay_rate={fmt(s.gamma)}{', staircase=True' if staircase else ''}): "
        f"base_lr x gamma^{'floor(k / stepsize)' if staircase else 'k'}.",
    )


def _step(s: LrSchedule) -> Mapped:
    return _exponential(s, int(s.stepsize), "stepsize", True)


def _exp(s: LrSchedule) -> Mapped:
    return _exponential(s, 1, "lr_policy", False)


def _multistep(s: LrSchedule) -> Mapped:
    steps = effective_stepvalues(s)
    if not steps:
        return _fixed(s)
    values = tuple(
        f32(float(np.float32(s.base_lr)) * float(np.float32(s.gamma)) ** j)
        for j in range(len(steps) + 1)
    )
    return CallSpec(
        _PREFIX + "piecewise_constant",
        (
            Arg("boundaries", tuple(v - 1 for v in steps), "stepvalue - 1"),
            Arg("values", values, "base_lr * gamma^j"),
        ),
    ), note(
        "schedule.multistep",
        f"lr_policy 'multistep' becomes tf.compat.v1.train.piecewise_constant(boundaries="
        f"{[v - 1 for v in steps]}): TF keeps a value while global_step <= its boundary, Caffe "
        "changes at the stepvalue itself, so the boundaries are stepvalue - 1.",
    )


def _poly(s: LrSchedule) -> Mapped:
    if s.max_iter <= 0:
        return "lr_policy 'poly' with max_iter 0"
    return CallSpec(
        _PREFIX + "polynomial_decay",
        (
            _base(s),
            Arg("decay_steps", int(s.max_iter), "max_iter"),
            Arg("end_learning_rate", 0.0, "lr_policy"),
            Arg("power", f32(s.power), "power"),
        ),
    ), note(
        "schedule.poly",
        f"lr_policy 'poly' becomes tf.compat.v1.train.polynomial_decay(decay_steps="
        f"{s.max_iter}, end_learning_rate=0, power={fmt(s.power)}): base_lr x "
        "(1 - k / max_iter)^power (TF's default end rate is 1e-4).",
    )


def _inv(s: LrSchedule) -> Mapped:
    if f32(s.power) != 1.0:
        return f"tf.compat.v1.train.inverse_time_decay has power 1 only (here {fmt(s.power)})"
    return CallSpec(
        _PREFIX + "inverse_time_decay",
        (_base(s), Arg("decay_steps", 1, "lr_policy"), Arg("decay_rate", f32(s.gamma), "gamma")),
    ), note(
        "schedule.inv",
        "lr_policy 'inv' with power 1 becomes tf.compat.v1.train.inverse_time_decay("
        f"decay_steps=1, decay_rate={fmt(s.gamma)}): base_lr / (1 + gamma * k).",
    )


def _sigmoid(s: LrSchedule) -> Mapped:
    return "TF1 has no sigmoid decay"


def _multifixed(s: LrSchedule) -> Mapped:
    bounds, rates = multifixed_bounds(s)
    return CallSpec(
        _PREFIX + "piecewise_constant",
        (
            Arg("boundaries", bounds, "stageiter"),
            Arg("values", tuple(f32(r) for r in rates), "stagelr"),
        ),
    ), note(
        "schedule.multifixed",
        f"lr_policy 'multifixed' (the yolo fork) becomes tf.compat.v1.train.piecewise_constant("
        f"boundaries={list(bounds)}): both keep a stage's rate while the step <= its "
        "stageiter (no shift); past the last one the fork keeps the last stagelr.",
    )


#: The registry: lr_policy -> its tf.compat.v1.train decay (or why there is none).
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

#: policies with an inlined rate (``policy_<name>`` blocks of the runtime)
CUSTOM_POLICIES = ("inv", "sigmoid")


def tf_schedule(s: LrSchedule) -> tuple[CallSpec, Note]:
    """Caffe's lr_policy as a TF1 rate of ``global_step`` (see the module docstring)."""
    mapped = BUILTIN_SCHEDULES[s.policy](s)
    if not isinstance(mapped, str):
        return mapped
    if s.policy not in CUSTOM_POLICIES:
        return CallSpec("unsupported"), note(
            "schedule.unsupported", mapped + ".", Exactness.UNSUPPORTED
        )
    values = {"gamma": f32(s.gamma), "power": f32(s.power), "stepsize": int(s.stepsize)}
    args = [Arg("base_lr", f32(s.base_lr), "base_lr")] + [
        Arg(name, values[name], name) for name in POLICIES[s.policy].reads if name in values
    ]
    return CallSpec(f"caffe_{s.policy}_rate", tuple(args)), note(
        "schedule.custom",
        f"lr_policy '{s.policy}' becomes the inlined caffe_{s.policy}_rate, Caffe's formula "
        f"{POLICIES[s.policy].formula}: {mapped}.",
    )
