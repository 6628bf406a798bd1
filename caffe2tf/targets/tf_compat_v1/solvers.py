"""One TF1 (``tf.compat.v1.train``) mapping per solver step type of the rule (no TF import).

Each :class:`TfV1SolverMapping` says, for one step class of :mod:`caffe2tf.rule.model`:

* ``builtin(step, ctx)``: the ``tf.compat.v1.train`` optimizer that does Caffe's step exactly
  here, with its note, or the reason why none does;
* ``custom(step)``: the runtime's ``caffe_<solver>`` graph step (docs/tf-compat-v1-target.md).

A built-in needs ``iter_size`` 1: with accumulation the update runs inside a ``tf.cond``, where
a ``tf.compat.v1.train`` optimizer cannot create its slots. Why each built-in is exact, with the
TensorFlow source lines: docs/tf-compat-v1-target.md#solver-mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caffe2tf.notes import Note
from caffe2tf.rule.model import AdaDelta, AdaGrad, Adam, Momentum, RMSProp, SolverStep
from caffe2tf.targets.common import Arg, CallSpec, f32, fmt
from caffe2tf.targets.tf_compat_v1.model import note


@dataclass(frozen=True)
class TfV1Context:
    """What a built-in's exactness depends on besides the step."""

    constant_rate: bool
    iter_size: int


@dataclass(frozen=True)
class TfV1SolverMapping:
    builtin: Callable[[SolverStep, TfV1Context], tuple[CallSpec, Note] | str]
    custom: Callable[[SolverStep], CallSpec]


_ACCUMULATION = (
    "iter_size > 1 runs the update inside tf.cond, where a tf.compat.v1.train optimizer "
    "cannot create its slot variables"
)


def _momentum_builtin(step: Momentum, ctx: TfV1Context) -> tuple[CallSpec, Note] | str:
    if ctx.iter_size > 1:
        return _ACCUMULATION
    if step.momentum != 0.0 and not ctx.constant_rate:
        return (
            "tf.compat.v1.train.MomentumOptimizer keeps the learning rate outside its "
            "accumulation (var -= lr * accum), Caffe inside (h = momentum * h + lr * g): equal "
            "only while the rate is constant, and this schedule changes it"
        )
    if step.momentum == 0.0:
        return CallSpec("tf.compat.v1.train.GradientDescentOptimizer"), note(
            "optimizer.sgd",
            f"Caffe {'Nesterov' if step.nesterov else 'SGD'} with momentum 0 becomes "
            "tf.compat.v1.train.GradientDescentOptimizer: w -= rate * g in both.",
        )
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("use_nesterov", True, "type"))
    return CallSpec("tf.compat.v1.train.MomentumOptimizer", tuple(args)), note(
        "optimizer.momentum",
        f"Caffe {'Nesterov' if step.nesterov else 'SGD'} becomes tf.compat.v1.train."
        f"MomentumOptimizer(momentum={fmt(step.momentum)}"
        f"{', use_nesterov=True' if step.nesterov else ''}): the rate is constant, so TF's "
        "accumulation is Caffe's history divided by it.",
    )


def _momentum_custom(step: Momentum) -> CallSpec:
    args = [Arg("momentum", f32(step.momentum), "momentum")]
    if step.nesterov:
        args.append(Arg("nesterov", True, "type"))
    return CallSpec("caffe_sgd", tuple(args))


def _adagrad_builtin(step: AdaGrad, ctx: TfV1Context) -> str:
    return (
        "tf.compat.v1.train.AdagradOptimizer has no epsilon and needs a positive initial "
        "accumulator (Caffe: delta outside the root, history from 0)"
    )


def _rmsprop_builtin(step: RMSProp, ctx: TfV1Context) -> str:
    return (
        "tf.compat.v1.train.RMSPropOptimizer adds epsilon inside the square root (Caffe: outside)"
    )


def _adadelta_builtin(step: AdaDelta, ctx: TfV1Context) -> tuple[CallSpec, Note] | str:
    if ctx.iter_size > 1:
        return _ACCUMULATION
    return CallSpec(
        "tf.compat.v1.train.AdadeltaOptimizer",
        (Arg("rho", f32(step.rho), "momentum"), Arg("epsilon", f32(step.delta), "delta")),
    ), note(
        "optimizer.adadelta",
        f"Caffe AdaDelta becomes tf.compat.v1.train.AdadeltaOptimizer(rho={fmt(step.rho)}, "
        f"epsilon={fmt(step.delta)}): the same averages, epsilon inside both roots.",
    )


def _adam_builtin(step: Adam, ctx: TfV1Context) -> tuple[CallSpec, Note] | str:
    if ctx.iter_size > 1:
        return _ACCUMULATION
    return CallSpec(
        "tf.compat.v1.train.AdamOptimizer",
        (
            Arg("beta1", f32(step.beta1), "momentum"),
            Arg("beta2", f32(step.beta2), "momentum2"),
            Arg("epsilon", f32(step.delta), "delta"),
        ),
    ), note(
        "optimizer.adam",
        f"Caffe Adam becomes tf.compat.v1.train.AdamOptimizer(beta1={fmt(step.beta1)}, "
        f"beta2={fmt(step.beta2)}, epsilon={fmt(step.delta)}): TF1's Adam folds the bias "
        "correction into the rate and adds epsilon to sqrt(v), exactly Caffe's form.",
    )


#: The registry: rule step class -> its TF1 mapping.
SOLVER_MAPPINGS: dict[type, TfV1SolverMapping] = {
    Momentum: TfV1SolverMapping(_momentum_builtin, _momentum_custom),  # type: ignore[arg-type]
    AdaGrad: TfV1SolverMapping(
        _adagrad_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec("caffe_adagrad", (Arg("delta", f32(s.delta), "delta"),)),
    ),
    RMSProp: TfV1SolverMapping(
        _rmsprop_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "caffe_rmsprop",
            (
                Arg("rms_decay", f32(s.rms_decay), "rms_decay"),
                Arg("delta", f32(s.delta), "delta"),
            ),
        ),
    ),
    AdaDelta: TfV1SolverMapping(
        _adadelta_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "caffe_adadelta",
            (Arg("momentum", f32(s.rho), "momentum"), Arg("delta", f32(s.delta), "delta")),
        ),
    ),
    Adam: TfV1SolverMapping(
        _adam_builtin,  # type: ignore[arg-type]
        lambda s: CallSpec(
            "caffe_adam",
            (
                Arg("momentum", f32(s.beta1), "momentum"),
                Arg("momentum2", f32(s.beta2), "momentum2"),
                Arg("delta", f32(s.delta), "delta"),
            ),
        ),
    ),
}
