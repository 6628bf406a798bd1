"""The usual wrong ports of a Caffe solver to Keras, as candidates for the same harness.

They exist to prove the comparison has teeth: each one is what a careful-looking hand port does,
and each must FAIL the comparison with the real Caffe trajectory on the recipes it applies to.
Everything a port does not get wrong on purpose is done right (the exact Caffe lr schedule as a
table indexed by the update number, Caffe's momentum/betas/rho/delta), so the measured drift is
the drift of that one mistake (plus whatever else the recipe has that the port ignores, e.g.
``lr_mult``; :func:`applies` says where a port is meant to be tested).

Ports (``PORTS``):

``kernel_l2``
    ``kernel_regularizer=L2(wd)`` on kernels only + the Keras optimizer of the Caffe type. Wrong
    twice: Keras' L2 has no ½ (``regularizers.py`` L243-268: gradient ``2·l2·w``), so kernels are
    decayed twice as hard as Caffe's ``wd·w`` (``sgd_solver.cpp:155-215``); and biases, which
    Caffe decays by default (``decay_mult`` 1), are not decayed.
``decoupled_wd``
    The Keras optimizer with ``weight_decay=wd``: decoupled decay ``w -= lr·wd·w`` applied
    before the update (``base_optimizer.py`` L883-959), outside momentum/the adaptive
    denominator, where Caffe adds ``wd·w`` to the gradient.
``keras_defaults``
    For RMSProp/AdaGrad recipes: ``keras.optimizers.RMSprop()`` / ``Adagrad()`` with every
    default (lr 0.001, ρ 0.9, ε 1e-7, initial accumulator 0.1); decay done right.
``keras_lr_only``
    The same with only ``learning_rate=base_lr`` set.

Keras is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    Momentum,
    RMSProp,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.verify.candidate import Candidate

PORTS = ("kernel_l2", "decoupled_wd", "keras_defaults", "keras_lr_only")


def _decay(rule: UpdateRule) -> AddDecay | None:
    step = rule.step(AddDecay)
    return step if isinstance(step, AddDecay) and step.weight_decay > 0 else None


def applies(port: str, rule: UpdateRule) -> bool:
    """Whether ``port`` mistranslates something this recipe has (so it must fail on it)."""
    if port in ("kernel_l2", "decoupled_wd"):
        d = _decay(rule)
        return d is not None and d.kind == "L2"
    if port in ("keras_defaults", "keras_lr_only"):
        return rule.solver in ("RMSProp", "AdaGrad")
    raise ValueError(f"unknown port {port!r}")


def lr_table(rule: UpdateRule, updates: int) -> np.ndarray:
    """Caffe's rate for updates 0..updates-1 (float32), from :mod:`caffe2tf.rule.schedules`."""
    from caffe2tf.rule.schedules import lr_sequence

    lr = rule.step(ScaleByLr)
    if not isinstance(lr, ScaleByLr):
        raise ValueError("rule has no ScaleByLr step")
    return np.asarray(lr_sequence(lr.schedule, max(1, updates)), dtype=np.float32)


def _table_schedule(table: np.ndarray, iter_size: int) -> Any:
    import keras

    class CaffeTable(keras.optimizers.schedules.LearningRateSchedule):
        """lr(step) = table[min(step // S, n-1)]: Caffe's rate of the update the micro-step
        belongs to (Keras evaluates the schedule at ``iterations``, which counts micro-steps
        under ``gradient_accumulation_steps``)."""

        def __init__(self) -> None:
            self.table = np.asarray(table, np.float32)

        def __call__(self, step: Any) -> Any:
            ops = keras.ops
            idx = ops.minimum(
                ops.floor_divide(ops.cast(step, "int32"), iter_size), len(self.table) - 1
            )
            return ops.take(ops.convert_to_tensor(self.table), idx)

        def get_config(self) -> dict:
            return {"table": self.table.tolist(), "iter_size": iter_size}

    return CaffeTable()


#: step type -> the Keras class a porter reaches for, with Caffe's hyper-parameters (Keras'
#: own ε placement and accumulator start included: that is what makes some of them wrong)
NAIVE_KERAS: dict[type, Callable[[Any, Any, Any, dict[str, Any]], Any]] = {
    Momentum: lambda opt, s, lr, kw: opt.SGD(
        lr, momentum=float(s.momentum), nesterov=s.nesterov, **kw
    ),
    Adam: lambda opt, s, lr, kw: opt.Adam(
        lr, beta_1=float(s.beta1), beta_2=float(s.beta2), epsilon=float(s.delta), **kw
    ),
    AdaDelta: lambda opt, s, lr, kw: opt.Adadelta(
        lr, rho=float(s.rho), epsilon=float(s.delta), **kw
    ),
    RMSProp: lambda opt, s, lr, kw: opt.RMSprop(
        lr, rho=float(s.rms_decay), epsilon=float(s.delta), **kw
    ),
    AdaGrad: lambda opt, s, lr, kw: opt.Adagrad(
        lr, initial_accumulator_value=0.0, epsilon=float(s.delta), **kw
    ),
}


def _keras_optimizer(rule: UpdateRule, learning_rate: Any, **kwargs: Any) -> Any:
    """The Keras optimizer of the Caffe type with Caffe's hyper-parameters (the mapping a
    careful port uses, docs/keras-target.md#solver-mapping) plus ``kwargs``."""
    import keras

    if rule.iter_size > 1:
        kwargs.setdefault("gradient_accumulation_steps", rule.iter_size)
    step = rule.solver_step
    return NAIVE_KERAS[type(step)](keras.optimizers, step, learning_rate, kwargs)


def _correct_regularizers(rule: UpdateRule) -> Callable[[Any], Any]:
    """prepare_model that attaches Caffe's decay right: L2(wd·dm/2) / L1(wd·dm) per blob."""
    import keras

    decay = _decay(rule)
    mults = {g.key: g.decay_mult for g in rule.params}

    def prepare(model: Any) -> Any:
        if decay is None:
            return model
        for key, (var, _, _) in model.blob_variables().items():
            dm = mults.get(key, rule.default_group.decay_mult)
            if dm == 0:
                continue
            var.regularizer = (
                keras.regularizers.L2(decay.weight_decay * dm / 2)
                if decay.kind == "L2"
                else keras.regularizers.L1(decay.weight_decay * dm)
            )
        return model

    return prepare


def build_port(port: str, rule: UpdateRule, updates: int) -> Candidate:
    """The wrong port ``port`` for ``rule``, for a run of ``updates`` Caffe updates."""
    import keras

    table = lr_table(rule, updates)
    decay = _decay(rule)
    wd = decay.weight_decay if decay is not None else 0.0

    if port == "kernel_l2":

        def prepare(model: Any) -> Any:
            for var in model.trainable_variables:
                if var.name == "kernel" and wd > 0:
                    var.regularizer = keras.regularizers.L2(wd)
            return model

        return Candidate(
            port, lambda: _keras_optimizer(rule, _table_schedule(table, rule.iter_size)), prepare
        )
    if port == "decoupled_wd":
        return Candidate(
            port,
            lambda: _keras_optimizer(
                rule, _table_schedule(table, rule.iter_size), weight_decay=wd or None
            ),
            lambda m: m,
        )
    if port in ("keras_defaults", "keras_lr_only"):

        def build() -> Any:
            kwargs: dict[str, Any] = {}
            if rule.iter_size > 1:
                kwargs["gradient_accumulation_steps"] = rule.iter_size
            if port == "keras_lr_only":
                kwargs["learning_rate"] = float(table[0])
            cls = (
                keras.optimizers.RMSprop if rule.solver == "RMSProp" else (keras.optimizers.Adagrad)
            )
            return cls(**kwargs)

        return Candidate(port, build, _correct_regularizers(rule))
    raise ValueError(f"unknown port {port!r}; known: {', '.join(PORTS)}")


def ports_for(rule: UpdateRule, updates: int, ports: Sequence[str] = PORTS) -> list[Candidate]:
    return [build_port(p, rule, updates) for p in ports if applies(p, rule)]
