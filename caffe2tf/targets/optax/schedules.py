"""One optax mapping per Caffe lr_policy (no JAX import).

:data:`BUILTIN_SCHEDULES` maps a policy to the exact ``optax`` schedule call with its note, or
the reason why none is exact; then the runtime's ``caffe_<policy>_schedule`` is used where one
exists (``inv``, ``sigmoid``), else the recipe is unsupported. Each group's
``scale_by_learning_rate`` holds its own schedule with ``init_value = base_lr * lr_mult`` and
counts the updates it applied (Caffe's ``iter_``; under ``MultiSteps`` only the emitting
micro-batch counts). Why each is exact, with the optax source lines:
docs/optax-target.md#learning-rate-schedules.
"""

from __future__ import annotations

from collections.abc import Callable

from caffe2tf.notes import Exactness, Note
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import POLICIES, boundaries
from caffe2tf.targets.common import Arg, CallSpec, f32, fmt
from caffe2tf.targets.optax.model import note

Mapped = tuple[CallSpec, Note] | str
F32_EXACT_STEPS = 2**24  # optax divides the int32 count by transition_steps in float32


def _init(s: LrSchedule) -> Arg:
    return Arg("init_value", f32(s.base_lr), "base_lr")


def effective_stepvalues(s: LrSchedule) -> tuple[int, ...]:
    """Where Caffe's multistep counter really advances: at most once per update
    (``sgd_solver.cpp:46-52``), so a repeated stepvalue decays on the next update."""
    if not s.stepvalue:
        return ()
    horizon = max(int(v) for v in s.stepvalue) + len(s.stepvalue) + 1
    return tuple(boundaries(s, horizon))


def _fixed(s: LrSchedule) -> Mapped:
    return CallSpec("constant", (_init(s),)), note(
        "schedule.fixed", f"lr_policy 'fixed': the rate is {fmt(s.base_lr)} x lr_mult."
    )


def _decay_by(s: LrSchedule, every: int, field: str) -> Mapped:
    if f32(s.gamma) == 0.0:  # optax.exponential_decay turns decay_rate 0 into a constant
        return CallSpec(
            "optax.piecewise_constant_schedule",
            (_init(s), Arg("boundaries_and_scales", {every: 0.0}, f"{field}: gamma")),
        ), note(
            f"schedule.{s.policy}",
            f"lr_policy '{s.policy}' with gamma 0 becomes piecewise_constant_schedule(base_lr, "
            f"{{{every}: 0.0}}): 0 from update {every} on (optax.exponential_decay would "
            "treat decay_rate 0 as no decay).",
        )
    if s.max_iter >= F32_EXACT_STEPS:
        return (
            f"lr_policy '{s.policy}' with max_iter >= 2^24: exponential_decay's float32 "
            "count / transition_steps could floor one update early"
        )
    return CallSpec(
        "optax.exponential_decay",
        (
            _init(s),
            Arg("transition_steps", every, field),
            Arg("decay_rate", f32(s.gamma), "gamma"),
            Arg("staircase", True, "lr_policy"),
        ),
    ), note(
        f"schedule.{s.policy}",
        f"lr_policy '{s.policy}' becomes optax.exponential_decay(transition_steps={every}, "
        f"decay_rate={fmt(s.gamma)}, staircase=True): base_lr x gamma^floor(k / {every}).",
    )


def _step(s: LrSchedule) -> Mapped:
    return _decay_by(s, int(s.stepsize), "stepsize")


def _exp(s: LrSchedule) -> Mapped:
    return _decay_by(s, 1, "lr_policy")


def _multistep(s: LrSchedule) -> Mapped:
    if f32(s.gamma) < 0:
        return "piecewise_constant_schedule refuses a negative scale (gamma)"
    steps = effective_stepvalues(s)
    return CallSpec(
        "optax.piecewise_constant_schedule",
        (
            _init(s),
            Arg("boundaries_and_scales", {v: f32(s.gamma) for v in steps}, "stepvalue: gamma"),
        ),
    ), note(
        "schedule.multistep",
        f"lr_policy 'multistep' becomes optax.piecewise_constant_schedule with a scale gamma "
        f"at {list(steps)}: optax multiplies once the count reaches a boundary, Caffe at the "
        "update whose iter_ equals the stepvalue (no shift).",
    )


def _poly(s: LrSchedule) -> Mapped:
    if s.max_iter <= 0:
        return "lr_policy 'poly' with max_iter 0 (optax.polynomial_schedule turns it constant)"
    return CallSpec(
        "optax.polynomial_schedule",
        (
            _init(s),
            Arg("end_value", 0.0, "lr_policy"),
            Arg("power", f32(s.power), "power"),
            Arg("transition_steps", int(s.max_iter), "max_iter"),
        ),
    ), note(
        "schedule.poly",
        f"lr_policy 'poly' becomes optax.polynomial_schedule(end_value=0, power="
        f"{fmt(s.power)}, transition_steps={s.max_iter}): base_lr x (1 - k / max_iter)^power.",
    )


def _inv(s: LrSchedule) -> Mapped:
    return "optax has no (1 + gamma * k)^(-power) schedule"


def _sigmoid(s: LrSchedule) -> Mapped:
    return "optax has no sigmoid schedule"


def _multifixed(s: LrSchedule) -> Mapped:
    return (
        "lr_policy 'multifixed' (the yolo fork): optax.piecewise_constant_schedule multiplies "
        "scales, which rounds differently from taking each stagelr as written, so this target "
        "does not map it"
    )


#: The registry: lr_policy -> its optax built-in schedule (or why there is none).
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

#: policies with an inlined schedule (``policy_<name>`` blocks of the runtime)
CUSTOM_POLICIES = ("inv", "sigmoid")


def optax_schedule(s: LrSchedule) -> tuple[CallSpec, Note]:
    """Caffe's lr_policy as an optax schedule (see the module docstring)."""
    mapped = BUILTIN_SCHEDULES[s.policy](s)
    if not isinstance(mapped, str):
        return mapped
    if s.policy not in CUSTOM_POLICIES:
        return CallSpec("unsupported"), note(
            "schedule.unsupported", mapped + ".", Exactness.UNSUPPORTED
        )
    values = {"gamma": f32(s.gamma), "power": f32(s.power), "stepsize": int(s.stepsize)}
    args = [_init(s)] + [
        Arg(name, values[name], name) for name in POLICIES[s.policy].reads if name in values
    ]
    return CallSpec(f"caffe_{s.policy}_schedule", tuple(args)), note(
        "schedule.custom",
        f"lr_policy '{s.policy}' becomes the inlined caffe_{s.policy}_schedule, Caffe's formula "
        f"{POLICIES[s.policy].formula}: {mapped}.",
    )
