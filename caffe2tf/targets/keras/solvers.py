"""One Keras mapping per solver step type of the rule (no Keras import).

Each :class:`SolverMapping` says, for one step class of :mod:`caffe2tf.rule.model`:

* ``builtin(step, solver)``: the exact ``keras.optimizers`` call and its note, or None when no
  built-in reproduces Caffe's step (then the custom route is taken);
* ``custom(step)``: the class of :mod:`caffe2tf.targets.keras.runtime` that adds this step to
  Caffe's fixed order (``CaffeOptimizer``), with its arguments;
* ``schedule_factor(step)``: ``rms_decay`` when the built-in needs the schedule to cancel a bias
  correction (RMSProp as ``Adam(beta_1=0)``), else None.

Why each built-in is exact (or not) is in docs/keras-target.md#solver-mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caffe2tf.notes import Note
from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    Momentum,
    NvidiaSGD,
    RMSProp,
    SolverStep,
)
from caffe2tf.targets.keras.model import Arg, CallSpec, f32, fmt, note


@dataclass(frozen=True)
class SolverMapping:
    """How one solver step type becomes Keras objects (see the module docstring)."""

    builtin: Callable[[SolverStep, str], tuple[CallSpec, Note] | str]
    custom: Callable[[SolverStep], CallSpec]
    schedule_factor: Callable[[SolverStep], float | None] = lambda step: None


def _momentum_builtin(step: Momentum, solver: str) -> tuple[CallSpec, Note] | str:
    if not 0.0 <= step.momentum <= 1.0:
        return "momentum outside [0, 1], which keras.optimizers.SGD rejects"
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("nesterov", True, "type"))
    return CallSpec("SGD", tuple(args)), note(
        "optimizer.sgd",
        f"Caffe {solver} becomes keras.optimizers.SGD(momentum={fmt(step.momentum)}"
        f"{', nesterov=True' if step.nesterov else ''}): both keep the learning rate inside "
        "the velocity.",
    )


def _momentum_custom(step: Momentum) -> CallSpec:
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("nesterov", True, "type"))
    return CallSpec("CaffeSGD", tuple(args))


def _adagrad_builtin(step: AdaGrad, solver: str) -> str:
    return (
        "Keras' Adagrad puts epsilon inside the square root and starts its accumulator at "
        "0.1 (Caffe: epsilon outside, start 0)"
    )


def _rmsprop_builtin(step: RMSProp, solver: str) -> tuple[CallSpec, Note]:
    return CallSpec(
        "Adam",
        (
            Arg("beta_1", 0.0, "type"),
            Arg("beta_2", f32(step.rms_decay), "rms_decay"),
            Arg("epsilon", f32(step.delta), "delta"),
        ),
    ), note(
        "optimizer.rmsprop",
        f"Caffe RMSProp becomes keras.optimizers.Adam(beta_1=0.0, beta_2="
        f"{fmt(step.rms_decay)}, epsilon={fmt(step.delta)}) with a schedule divided by "
        "sqrt(1 - rms_decay^(k+1)): with beta_1 = 0 this is Caffe's RMSProp (Keras' RMSprop "
        "puts epsilon inside the root).",
    )


def _adadelta_builtin(step: AdaDelta, solver: str) -> tuple[CallSpec, Note]:
    return CallSpec(
        "Adadelta",
        (Arg("rho", f32(step.rho), "momentum"), Arg("epsilon", f32(step.delta), "delta")),
    ), note(
        "optimizer.adadelta",
        f"Caffe AdaDelta becomes keras.optimizers.Adadelta(rho={fmt(step.rho)}, epsilon="
        f"{fmt(step.delta)}) with learning_rate = base_lr.",
    )


def _adam_builtin(step: Adam, solver: str) -> tuple[CallSpec, Note]:
    return CallSpec(
        "Adam",
        (
            Arg("beta_1", f32(step.beta1), "momentum"),
            Arg("beta_2", f32(step.beta2), "momentum2"),
            Arg("epsilon", f32(step.delta), "delta"),
        ),
    ), note(
        "optimizer.adam",
        f"Caffe Adam becomes keras.optimizers.Adam(beta_1={fmt(step.beta1)}, beta_2="
        f"{fmt(step.beta2)}, epsilon={fmt(step.delta)}): same bias correction and epsilon "
        "outside the root; epsilon set explicitly (Keras default 1e-7).",
    )


def _nvidia_sgd_builtin(step: NvidiaSGD, solver: str) -> str:
    reasons = []
    if step.sag:
        reasons.append("SAG averages the gradient into its history ((1 - momentum) g)")
    if step.momentum_policy != "fixed":
        reasons.append(f"momentum_policy {step.momentum_policy!r} changes the momentum per update")
    if step.larc:
        reasons.append("LARC sets each blob's rate from its weight and gradient norms")
    if step.decay_kind == "WD":
        reasons.append(
            "regularization_type WD decays each blob by its own lr x weight_decay x decay_mult "
            "(keras.optimizers.SGD(weight_decay=...) decays every variable by one number)"
        )
    if step.decay_kind and step.decay_policy == "poly":
        reasons.append("weight_decay_policy 'poly' changes the decay per update")
    return f"NVIDIA Caffe's {solver} has no Keras built-in here: " + "; ".join(reasons)


def _nvidia_sgd_custom(step: NvidiaSGD) -> CallSpec:
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.sag:
        args.append(Arg("sag", True, "type"))
    if step.momentum_policy != "fixed":
        args.append(Arg("momentum_policy", step.momentum_policy, "momentum_policy"))
        args.append(Arg("max_momentum", f32(step.max_momentum), "max_momentum"))
        if step.momentum_policy == "poly":
            args.append(Arg("momentum_power", f32(step.momentum_power), "momentum_power"))
        if step.momentum_policy == "opt":
            args.append(Arg("cap_momentum", step.cap_momentum, "max_momentum (written)"))
    if step.larc:
        args.append(Arg("larc", step.larc, "larc_policy"))
        args.append(Arg("larc_eta", f32(step.larc_eta), "larc_eta"))
        if step.larc_turbo:
            args.append(Arg("larc_turbo", True, "larc_turbo"))
    if step.decay_kind:
        args.append(Arg("decay_kind", step.decay_kind, "regularization_type"))
        args.append(Arg("decay", f32(step.weight_decay), "weight_decay"))
        if step.decay_policy == "poly":
            args.append(Arg("decay_policy", "poly", "weight_decay_policy"))
            args.append(Arg("max_decay", f32(step.max_weight_decay), "max_weight_decay"))
            args.append(Arg("decay_power", f32(step.weight_decay_power), "weight_decay_power"))
    if step.momentum_policy == "poly" or (step.decay_kind and step.decay_policy == "poly"):
        args.append(Arg("max_iter", int(step.max_iter), "max_iter"))
    return CallSpec("CaffeNvidiaSGD", tuple(args))


#: The registry: rule step class -> its Keras mapping.
SOLVER_MAPPINGS: dict[type, SolverMapping] = {
    Momentum: SolverMapping(_momentum_builtin, _momentum_custom),  # type: ignore[arg-type]
    AdaGrad: SolverMapping(
        _adagrad_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec("CaffeAdaGrad", (Arg("delta", f32(s.delta), "delta"),)),
    ),
    RMSProp: SolverMapping(
        _rmsprop_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "CaffeRMSProp",
            (
                Arg("rms_decay", f32(s.rms_decay), "rms_decay"),
                Arg("delta", f32(s.delta), "delta"),
            ),
        ),
        schedule_factor=lambda s: s.rms_decay,
    ),
    AdaDelta: SolverMapping(
        _adadelta_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "CaffeAdaDelta",
            (Arg("momentum", f32(s.rho), "momentum"), Arg("delta", f32(s.delta), "delta")),
        ),
    ),
    NvidiaSGD: SolverMapping(_nvidia_sgd_builtin, _nvidia_sgd_custom),  # type: ignore[arg-type]
    Adam: SolverMapping(
        _adam_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "CaffeAdam",
            (
                Arg("momentum", f32(s.beta1), "momentum"),
                Arg("momentum2", f32(s.beta2), "momentum2"),
                Arg("delta", f32(s.delta), "delta"),
            ),
        ),
    ),
}
