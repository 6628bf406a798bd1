"""One optax mapping per solver step type of the rule (no JAX import).

:data:`SOLVER_MAPPINGS` maps a step class of :mod:`caffe2tf.rule.model` to the chain that
follows the weight decay in each (lr_mult, decay_mult) group, with its note and the runtime
blocks it needs. Built-ins where exact (``trace``, ``scale_by_rms``, ``scale_by_adadelta``), the
runtime's ``scale_by_caffe_*`` where not (AdaGrad, Adam). Where the rate goes matters: Caffe
keeps it inside the SGD history, so ``scale_by_learning_rate`` comes before ``trace``
(``optax.sgd`` puts it after, outside); the adaptive solvers apply it last. Why each is
exact, with the optax source lines: docs/optax-target.md#solver-mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caffe2tf.notes import Note
from caffe2tf.rule.model import AdaDelta, AdaGrad, Adam, Momentum, RMSProp, SolverStep
from caffe2tf.targets.common import Arg, CallSpec, f32, fmt
from caffe2tf.targets.optax.model import LEARNING_RATE, note

Chain = tuple[tuple[CallSpec, ...], Note, tuple[str, ...]]
_RATE = CallSpec(LEARNING_RATE)


@dataclass(frozen=True)
class OptaxSolverMapping:
    """How one solver step type becomes a group's optax chain (see the module docstring)."""

    chain: Callable[[SolverStep], Chain]


def _momentum(step: Momentum) -> Chain:
    if step.momentum == 0.0:
        return (
            (_RATE,),
            note(
                "optimizer.sgd",
                "Caffe SGD with momentum 0 becomes optax.scale_by_learning_rate alone: lr * g.",
            ),
            (),
        )
    args = [Arg("decay", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("nesterov", True, "type"))
    return (
        (_RATE, CallSpec("optax.trace", tuple(args))),
        note(
            "optimizer.sgd",
            f"Caffe {'Nesterov' if step.nesterov else 'SGD'} becomes scale_by_learning_rate then "
            f"optax.trace(decay={fmt(step.momentum)}{', nesterov=True' if step.nesterov else ''}): "
            "the rate goes in before the trace, so the trace is Caffe's history -h (rate "
            "inside); optax.sgd scales after the trace, which is exact only for a constant rate"
            + (
                "; trace's Nesterov output g + momentum * t_new is Caffe's "
                "(1 + momentum) * h - momentum * h_old"
                if step.nesterov
                else ""
            )
            + ".",
        ),
        (),
    )


def _adagrad(step: AdaGrad) -> Chain:
    return (
        (
            CallSpec("scale_by_caffe_adagrad", (Arg("delta", f32(step.delta), "delta"),)),
            _RATE,
        ),
        note(
            "optimizer.adagrad",
            f"Caffe AdaGrad becomes the inlined scale_by_caffe_adagrad(delta={fmt(step.delta)}) "
            "then the rate: optax.scale_by_rss adds eps inside the square root and starts its "
            "sum at 0.1.",
        ),
        ("solver_adagrad",),
    )


def _rmsprop(step: RMSProp) -> Chain:
    return (
        (
            CallSpec(
                "optax.scale_by_rms",
                (
                    Arg("decay", f32(step.rms_decay), "rms_decay"),
                    Arg("eps", f32(step.delta), "delta"),
                    Arg("initial_scale", 0.0, "type"),
                    Arg("eps_in_sqrt", False, "type"),
                ),
            ),
            _RATE,
        ),
        note(
            "optimizer.rmsprop",
            f"Caffe RMSProp becomes optax.scale_by_rms(decay={fmt(step.rms_decay)}, eps="
            f"{fmt(step.delta)}, initial_scale=0, eps_in_sqrt=False) then the rate: eps outside "
            "the root, as Caffe has it (the default eps_in_sqrt=True is not Caffe's).",
        ),
        (),
    )


def _adadelta(step: AdaDelta) -> Chain:
    return (
        (
            CallSpec(
                "optax.scale_by_adadelta",
                (Arg("rho", f32(step.rho), "momentum"), Arg("eps", f32(step.delta), "delta")),
            ),
            _RATE,
        ),
        note(
            "optimizer.adadelta",
            f"Caffe AdaDelta becomes optax.scale_by_adadelta(rho={fmt(step.rho)}, eps="
            f"{fmt(step.delta)}) then the rate: the same two averages with eps inside both roots.",
        ),
        (),
    )


def _adam(step: Adam) -> Chain:
    return (
        (
            CallSpec(
                "scale_by_caffe_adam",
                (
                    Arg("beta1", f32(step.beta1), "momentum"),
                    Arg("beta2", f32(step.beta2), "momentum2"),
                    Arg("delta", f32(step.delta), "delta"),
                ),
            ),
            _RATE,
        ),
        note(
            "optimizer.adam",
            f"Caffe Adam becomes the inlined scale_by_caffe_adam(beta1={fmt(step.beta1)}, "
            f"beta2={fmt(step.beta2)}, delta={fmt(step.delta)}) then the rate: optax.scale_by_adam "
            "adds eps to the bias-corrected sqrt(v), Caffe adds delta to sqrt(v) itself. The decay "
            "comes first (coupled, as Caffe's); optax.adamw decays after scale_by_adam.",
        ),
        ("solver_adam",),
    )


#: The registry: rule step class -> its optax mapping.
SOLVER_MAPPINGS: dict[type, OptaxSolverMapping] = {
    Momentum: OptaxSolverMapping(_momentum),  # type: ignore[arg-type]
    AdaGrad: OptaxSolverMapping(_adagrad),  # type: ignore[arg-type]
    RMSProp: OptaxSolverMapping(_rmsprop),  # type: ignore[arg-type]
    AdaDelta: OptaxSolverMapping(_adadelta),  # type: ignore[arg-type]
    Adam: OptaxSolverMapping(_adam),  # type: ignore[arg-type]
}
