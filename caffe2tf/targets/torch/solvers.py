"""One PyTorch mapping per solver step type of the rule (no torch import).

Each :class:`TorchSolverMapping` says, for one step class of :mod:`caffe2tf.rule.model`:

* ``builtin(step, ctx)``: the ``torch.optim`` class that does Caffe's step exactly here, with
  its arguments, note and any inline block it needs (Adam's epsilon correction), or the reason
  why none does (then the plan takes the custom class);
* ``custom(step)``: the runtime's ``Caffe<X>`` optimizer (docs/torch-target.md#custom-steps).

What ``CaffeSolver`` does around either (accumulate, clip, normalize, L1 decay, the
scheduler) is the same for all. Why each built-in is exact, with the torch source lines:
docs/torch-target.md#solver-mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caffe2tf.notes import Note
from caffe2tf.rule.model import AdaDelta, AdaGrad, Adam, Momentum, RMSProp, SolverStep
from caffe2tf.targets.common import Arg, CallSpec, f32, fmt
from caffe2tf.targets.torch.model import note


@dataclass(frozen=True)
class TorchContext:
    """What a built-in's exactness depends on besides the step: whether the rate is the same
    at every update (``constant_rate``) and the base rate (torch rejects a negative one)."""

    constant_rate: bool
    base_lr: float


Builtin = tuple[CallSpec, Note, tuple[str, ...]]


@dataclass(frozen=True)
class TorchSolverMapping:
    """How one solver step type becomes a torch optimizer (see the module docstring)."""

    builtin: Callable[[SolverStep, TorchContext], Builtin | str]
    custom: Callable[[SolverStep], CallSpec]


def _lr(ctx: TorchContext) -> Arg:
    return Arg("lr", f32(ctx.base_lr), "base_lr")


def _negative_lr(ctx: TorchContext) -> str | None:
    if ctx.base_lr < 0:
        return f"base_lr {fmt(ctx.base_lr)} is negative, which torch.optim rejects"
    return None


def _momentum_builtin(step: Momentum, ctx: TorchContext) -> Builtin | str:
    if (why := _negative_lr(ctx)) is not None:
        return why
    if step.momentum < 0:
        return f"momentum {fmt(step.momentum)} is negative, which torch.optim.SGD rejects"
    if step.momentum != 0.0 and not ctx.constant_rate:
        return (
            "torch.optim.SGD keeps the learning rate outside its momentum buffer (param -= "
            "lr * buf), Caffe inside (h = momentum * h + lr * g): equal only while the rate "
            "is constant, and this schedule changes it"
        )
    args = [_lr(ctx), Arg("momentum", f32(step.momentum), "momentum")]
    nesterov = step.nesterov and step.momentum != 0.0
    if nesterov:
        args.append(Arg("nesterov", True, "type"))
    why = (
        "with momentum 0 the step is lr * g in both"
        if step.momentum == 0.0
        else "the rate is constant, so torch's buffer is Caffe's history divided by it"
        + (
            " and torch's Nesterov step g + momentum * buf equals Caffe's "
            "(1 + momentum) * h - momentum * h_old"
            if nesterov
            else ""
        )
    )
    return (
        CallSpec("torch.optim.SGD", tuple(args)),
        note(
            "optimizer.sgd",
            f"Caffe {'Nesterov' if step.nesterov else 'SGD'} becomes torch.optim.SGD("
            f"momentum={fmt(step.momentum)}{', nesterov=True' if nesterov else ''}): {why}.",
        ),
        (),
    )


def _momentum_custom(step: Momentum) -> CallSpec:
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("nesterov", True, "type"))
    return CallSpec("CaffeSGD", tuple(args))


def _adagrad_builtin(step: AdaGrad, ctx: TorchContext) -> Builtin | str:
    if (why := _negative_lr(ctx)) is not None:
        return why
    if step.delta < 0:
        return f"delta {fmt(step.delta)} is negative, which torch.optim.Adagrad rejects"
    return (
        CallSpec(
            "torch.optim.Adagrad",
            (
                _lr(ctx),
                Arg("lr_decay", 0.0, "type"),
                Arg("initial_accumulator_value", 0.0, "type"),
                Arg("eps", f32(step.delta), "delta"),
            ),
        ),
        note(
            "optimizer.adagrad",
            f"Caffe AdaGrad becomes torch.optim.Adagrad(eps={fmt(step.delta)}, lr_decay=0, "
            "initial_accumulator_value=0): torch adds eps outside the square root as Caffe "
            "does, and its history starts at 0.",
        ),
        (),
    )


def _rmsprop_builtin(step: RMSProp, ctx: TorchContext) -> Builtin | str:
    if (why := _negative_lr(ctx)) is not None:
        return why
    if step.rms_decay < 0 or step.delta < 0:
        return "rms_decay or delta is negative, which torch.optim.RMSprop rejects"
    return (
        CallSpec(
            "torch.optim.RMSprop",
            (
                _lr(ctx),
                Arg("alpha", f32(step.rms_decay), "rms_decay"),
                Arg("eps", f32(step.delta), "delta"),
            ),
        ),
        note(
            "optimizer.rmsprop",
            f"Caffe RMSProp becomes torch.optim.RMSprop(alpha={fmt(step.rms_decay)}, "
            f"eps={fmt(step.delta)}): torch adds eps outside the square root as Caffe does "
            "(momentum 0, not centered).",
        ),
        (),
    )


def _adadelta_builtin(step: AdaDelta, ctx: TorchContext) -> Builtin | str:
    if (why := _negative_lr(ctx)) is not None:
        return why
    if not 0.0 <= step.rho <= 1.0 or step.delta < 0:
        return "momentum (rho) outside [0, 1] or a negative delta: torch.optim.Adadelta rejects it"
    return (
        CallSpec(
            "torch.optim.Adadelta",
            (
                _lr(ctx),
                Arg("rho", f32(step.rho), "momentum"),
                Arg("eps", f32(step.delta), "delta"),
            ),
        ),
        note(
            "optimizer.adadelta",
            f"Caffe AdaDelta becomes torch.optim.Adadelta(rho={fmt(step.rho)}, "
            f"eps={fmt(step.delta)}): the same two averages with eps inside both roots, and "
            "the rate applied last.",
        ),
        (),
    )


def _adam_builtin(step: Adam, ctx: TorchContext) -> Builtin | str:
    if (why := _negative_lr(ctx)) is not None:
        return why
    if not (0.0 <= step.beta1 < 1.0 and 0.0 <= step.beta2 < 1.0) or step.delta < 0:
        return "momentum/momentum2 outside [0, 1) or a negative delta: torch.optim.Adam rejects it"
    return (
        CallSpec(
            "torch.optim.Adam",
            (
                _lr(ctx),
                Arg("betas", (f32(step.beta1), f32(step.beta2)), "momentum, momentum2"),
                Arg("eps", f32(step.delta), "delta"),
            ),
        ),
        note(
            "optimizer.adam",
            f"Caffe Adam becomes torch.optim.Adam(betas=({fmt(step.beta1)}, "
            f"{fmt(step.beta2)})) with eps = delta / sqrt(1 - momentum2^t) set before update t: "
            "torch adds eps to the bias-corrected sqrt(v) / sqrt(1 - beta2^t), Caffe adds delta "
            "to sqrt(v); its weight_decay is coupled like Caffe's (AdamW's is not).",
        ),
        ("adam_epsilon",),
    )


#: The registry: rule step class -> its torch mapping.
SOLVER_MAPPINGS: dict[type, TorchSolverMapping] = {
    Momentum: TorchSolverMapping(_momentum_builtin, _momentum_custom),  # type: ignore[arg-type]
    AdaGrad: TorchSolverMapping(
        _adagrad_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec("CaffeAdaGrad", (Arg("delta", f32(s.delta), "delta"),)),
    ),
    RMSProp: TorchSolverMapping(
        _rmsprop_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "CaffeRMSProp",
            (
                Arg("rms_decay", f32(s.rms_decay), "rms_decay"),
                Arg("delta", f32(s.delta), "delta"),
            ),
        ),
    ),
    AdaDelta: TorchSolverMapping(
        _adadelta_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "CaffeAdaDelta",
            (Arg("momentum", f32(s.rho), "momentum"), Arg("delta", f32(s.delta), "delta")),
        ),
    ),
    Adam: TorchSolverMapping(
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
