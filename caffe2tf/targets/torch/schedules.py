"""One PyTorch mapping per Caffe lr_policy (no torch import).

:data:`BUILTIN_SCHEDULES` maps a policy to the exact ``torch.optim.lr_scheduler`` call with
its note, or the reason why no built-in is exact. The scheduler runs on the param groups,
whose ``lr`` starts at base_lr * lr_mult, so one scheduler serves every lr_mult; ``CaffeSolver``
steps it once per Caffe update, so its ``last_epoch`` is Caffe's ``iter_``. Where no built-in
is exact, ``LambdaLR`` scales each group by an inlined Caffe rate factor (the fields the
policy reads come from the rule's table, :data:`caffe2tf.rule.schedules.POLICIES`). Why each
built-in is exact, with the torch source lines: docs/torch-target.md#learning-rate-schedules.
"""

from __future__ import annotations

from collections.abc import Callable

from caffe2tf.notes import Exactness, Note
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import POLICIES, boundaries
from caffe2tf.targets.common import Arg, CallSpec, f32, fmt
from caffe2tf.targets.torch.model import note

Mapped = tuple[CallSpec, Note] | str


def effective_stepvalues(s: LrSchedule) -> tuple[int, ...]:
    """Where Caffe's multistep counter really advances: at most once per update
    (``sgd_solver.cpp:46-52``), so a repeated stepvalue decays on the next update."""
    if not s.stepvalue:
        return ()
    horizon = max(int(v) for v in s.stepvalue) + len(s.stepvalue) + 1
    return tuple(boundaries(s, horizon))


def _fixed(s: LrSchedule) -> Mapped:
    return CallSpec("constant"), note(
        "schedule.fixed",
        f"lr_policy 'fixed': each param group keeps lr = {fmt(s.base_lr)} x lr_mult.",
    )


def _step(s: LrSchedule) -> Mapped:
    return CallSpec(
        "StepLR",
        (Arg("step_size", int(s.stepsize), "stepsize"), Arg("gamma", f32(s.gamma), "gamma")),
    ), note(
        "schedule.step",
        f"lr_policy 'step' becomes StepLR(step_size={s.stepsize}, gamma={fmt(s.gamma)}): "
        "lr = base_lr x gamma^floor(k / stepsize), stepped once per Caffe update.",
    )


def _exp(s: LrSchedule) -> Mapped:
    return CallSpec("ExponentialLR", (Arg("gamma", f32(s.gamma), "gamma"),)), note(
        "schedule.exp",
        f"lr_policy 'exp' becomes ExponentialLR(gamma={fmt(s.gamma)}): lr = base_lr x gamma^k.",
    )


def _multistep(s: LrSchedule) -> Mapped:
    milestones = effective_stepvalues(s)
    return CallSpec(
        "MultiStepLR",
        (
            Arg("milestones", milestones, "stepvalue"),
            Arg("gamma", f32(s.gamma), "gamma"),
        ),
    ), note(
        "schedule.multistep",
        f"lr_policy 'multistep' becomes MultiStepLR(milestones={list(milestones)}): torch "
        "multiplies by gamma when the update count reaches a milestone, Caffe at the update "
        "whose iter_ equals the stepvalue; the same iterations (no shift, unlike Keras).",
    )


def _poly(s: LrSchedule) -> Mapped:
    if s.max_iter <= 0:
        return "lr_policy 'poly' with max_iter 0 has no torch built-in"
    return CallSpec(
        "PolynomialLR",
        (Arg("total_iters", int(s.max_iter), "max_iter"), Arg("power", f32(s.power), "power")),
    ), note(
        "schedule.poly",
        f"lr_policy 'poly' becomes PolynomialLR(total_iters={s.max_iter}, power="
        f"{fmt(s.power)}): lr = base_lr x (1 - k / max_iter)^power.",
    )


def _inv(s: LrSchedule) -> Mapped:
    return "torch has no built-in for (1 + gamma * k)^(-power)"


def _sigmoid(s: LrSchedule) -> Mapped:
    return "torch has no sigmoid schedule"


def _multifixed(s: LrSchedule) -> Mapped:
    return (
        "lr_policy 'multifixed' (the yolo fork) sets the rate to stagelr, not base_lr x a "
        "factor; torch's schedulers (LambdaLR, MultiStepLR) scale each group's initial lr "
        "(base_lr x lr_mult), which is not exact here, so this target does not map it"
    )


#: The registry: lr_policy -> its torch built-in scheduler (or why there is none).
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

#: policies with an inlined rate factor (``policy_<name>`` blocks of the runtime)
FACTOR_POLICIES = ("inv", "sigmoid")


def torch_schedule(s: LrSchedule) -> tuple[CallSpec, Note]:
    """Caffe's lr_policy as a torch scheduler (see the module docstring)."""
    mapped = BUILTIN_SCHEDULES[s.policy](s)
    if not isinstance(mapped, str):
        return mapped
    if s.policy not in FACTOR_POLICIES:
        return CallSpec("unsupported"), note(
            "schedule.unsupported", mapped + ".", Exactness.UNSUPPORTED
        )
    values = {"gamma": f32(s.gamma), "power": f32(s.power), "stepsize": int(s.stepsize)}
    args = tuple(
        Arg(name, values[name], name) for name in POLICIES[s.policy].reads if name in values
    )
    return CallSpec("LambdaLR", (Arg("policy", s.policy, "lr_policy"), *args)), note(
        "schedule.custom",
        f"lr_policy '{s.policy}' becomes LambdaLR over the inlined {s.policy}_factor, Caffe's "
        f"formula {POLICIES[s.policy].formula} divided by base_lr: {mapped}.",
    )
