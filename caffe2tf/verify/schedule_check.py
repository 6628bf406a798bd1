"""The whole schedule, every iteration: the candidate's effective learning rate per blob against
Caffe's, from iteration 0 to ``max_iter`` (scalar work: one vectorised call per schedule).

Caffe's rate of blob p at update k is ``lr(k) * lr_mult_p`` (``sgd_solver.cpp:26-70, :228``),
times ``sqrt(1 - beta2^t) / (1 - beta1^t)``, t = k + 1, for Adam (``adam_solver.cpp``).

The candidate's is read off the live optimizer built by its ``build_optimizer()``: for each
Caffe blob, the optimizer that updates its variable (inside a ``MultiOptimizer``, the one its
optimizer map picks), that optimizer's learning-rate schedule evaluated at the step counter it
holds when update k is applied (``(k + 1) * iter_size - 1`` calls before it), the blob's
``lr_mult`` where the optimizer applies one (caffe2tf's ``CaffeOptimizer``), and Adam's bias
correction where the optimizer is an Adam (Keras' ``Adam`` or caffe2tf's ``CaffeAdam``). An
optimizer whose schedule cannot be read this way is reported as such; the windows of
:mod:`caffe2tf.verify.components` still cover it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from caffe2tf.rule.model import Adam, LrSchedule, UpdateRule
from caffe2tf.rule.schedules import boundaries, lr_sequence

#: relative difference of two float32 rates that counts as a different schedule
SCHEDULE_TOLERANCE = 1e-4
#: a rate difference is judged against the rate, or against this fraction of the run's largest
#: rate where the rate is smaller (docs/verify.md#the-measures): at the tail of a long ``poly``
#: schedule Caffe's own rate carries float32 cancellation (``1 - fl(k / max_iter)``), and XLA
#: may divide by a constant as a multiplication by its reciprocal, so two exact ports of
#: VGG16's 2.4M-iteration ``poly`` differ by 1e-4 of a rate a millionth of ``base_lr``
RATE_FLOOR = 1e-3


def rate_differences(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per iteration ``|got - want| / max(|want|, |got|, RATE_FLOOR * max|want|)`` (0 where
    every term is 0, inf where either side is not finite)."""
    finite = np.abs(want[np.isfinite(want)])
    floor = RATE_FLOOR * float(finite.max()) if finite.size else 0.0
    with np.errstate(all="ignore"):
        scale = np.maximum(np.maximum(np.abs(want), np.abs(got)), floor)
        rel = np.where(scale > 0, np.abs(got - want) / np.where(scale > 0, scale, 1), 0.0)
    finite_sides = np.isfinite(want) & np.isfinite(got)
    return np.where(finite_sides & np.isfinite(rel), rel, np.inf)


@dataclass(frozen=True)
class BlobSchedule:
    """The comparison for one blob: ``first_bad`` is the first iteration whose relative
    difference exceeds the tolerance (None: none does)."""

    key: str
    lr_mult: float
    worst: float
    worst_iteration: int
    first_bad: int | None
    caffe_at_first_bad: float = math.nan
    candidate_at_first_bad: float = math.nan


@dataclass(frozen=True)
class ScheduleCheck:
    """Every trainable blob's schedule over ``iterations`` iterations (0 .. iterations-1)."""

    iterations: int
    tolerance: float
    blobs: tuple[BlobSchedule, ...] = ()
    unreadable: str = ""  # why the candidate's schedule could not be read ("" when it was)

    @property
    def passed(self) -> bool:
        return all(b.first_bad is None for b in self.blobs)

    @property
    def worst(self) -> BlobSchedule | None:
        return max(self.blobs, key=lambda b: b.worst, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "unreadable": self.unreadable or None,
            "blobs": [
                {
                    "key": b.key,
                    "lr_mult": b.lr_mult,
                    "worst_relative_difference": b.worst if math.isfinite(b.worst) else "inf",
                    "worst_iteration": b.worst_iteration,
                    "first_bad_iteration": b.first_bad,
                    "caffe_rate": None if b.first_bad is None else b.caffe_at_first_bad,
                    "candidate_rate": None if b.first_bad is None else b.candidate_at_first_bad,
                }
                for b in self.blobs
            ],
        }


def _adam_factor(beta1: float, beta2: float, t: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.sqrt(1.0 - np.power(beta2, t)) / (1.0 - np.power(beta1, t))


def lr_array(schedule: LrSchedule, iterations: int) -> np.ndarray:
    """Caffe's float32 rate at k = 0..iterations-1 (a fresh run), vectorised: the float32
    expressions of :mod:`caffe2tf.rule.schedules` (each float operation rounded, ``pow`` and
    ``exp`` in double then rounded), equal to :func:`~caffe2tf.rule.schedules.lr_sequence`
    element for element (tests/test_verify_stream.py) but without a Python call per
    iteration: real recipes run to ``max_iter`` 10^6..10^7. NVIDIA's warm-up and floor
    (``min_lr`` set) go through ``lr_sequence``."""
    s = schedule
    if s.min_lr is not None or s.policy not in _VECTOR_POLICIES:
        return lr_sequence(s, iterations)
    f32 = np.float32
    k = np.arange(iterations, dtype=np.int64)
    with np.errstate(all="ignore"):
        if s.policy == "fixed":
            rate = np.full(iterations, s.base_lr)
        elif s.policy in ("step", "multistep"):
            if s.policy == "step":
                cs = k // s.stepsize
            else:
                cs = np.searchsorted(np.asarray(boundaries(s, iterations)), k, side="right")
            rate = s.base_lr * np.power(np.float64(s.gamma), cs.astype(np.float64))
        elif s.policy == "exp":
            rate = s.base_lr * np.power(np.float64(s.gamma), k.astype(np.float64))
        elif s.policy == "inv":
            base = f32(1.0) + (s.gamma * k.astype(f32).astype(np.float64)).astype(f32)
            rate = s.base_lr * np.power(base.astype(np.float64), -s.power).astype(f32).astype(
                np.float64
            )
        elif s.policy == "multifixed":  # the first stage with k <= stageiter, else the last
            rate = np.full(iterations, np.float64(s.stagelr[-1]))
            for stage_rate, last_k in reversed(list(zip(s.stagelr, s.stageiter, strict=True))):
                rate = np.where(k <= last_k, np.float64(stage_rate), rate)
        elif s.policy == "poly":
            base = f32(1.0) - k.astype(f32) / f32(s.max_iter)
            rate = s.base_lr * np.power(base.astype(np.float64), s.power).astype(f32).astype(
                np.float64
            )
        else:  # sigmoid
            arg = (-s.gamma * (k.astype(f32) - f32(s.stepsize)).astype(np.float64)).astype(f32)
            e = np.where(arg < 709, np.exp(arg.astype(np.float64)), np.inf).astype(f32)
            rate = s.base_lr * (f32(1.0) / (f32(1.0) + e)).astype(np.float64)
    return np.asarray(rate, np.float64).astype(np.float32)


_VECTOR_POLICIES = frozenset(
    {"fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid", "multifixed"}
)


def caffe_rates(rule: UpdateRule, iterations: int) -> np.ndarray:
    """Caffe's global rate times the solver's iteration-dependent factor, k = 0..iterations-1."""
    rates = lr_array(rule.schedule, iterations).astype(np.float64)
    step = rule.solver_step
    if isinstance(step, Adam):
        t = np.arange(1, iterations + 1, dtype=np.float64)
        b1, b2 = float(np.float32(step.beta1)), float(np.float32(step.beta2))
        rates = rates * _adam_factor(b1, b2, t)
    return rates


def _to_numpy(x: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def _optimizer_for(optimizer: Any, variable: Any) -> Any:
    """The optimizer that updates ``variable`` (the one a ``MultiOptimizer`` routes it to)."""
    routes = getattr(optimizer, "_optimizer_map", None)  # keras MultiOptimizer's OptimizerMap
    return routes(variable) if callable(routes) else optimizer


def candidate_rates(
    optimizer: Any,
    variable: Any,
    iterations: int,
    iter_size: int,
    cache: dict[int, np.ndarray | str] | None = None,
) -> tuple[np.ndarray, float] | str:
    """The candidate's effective rate of ``variable`` at updates 0..iterations-1 and the
    lr_mult it applies itself, or why it cannot be read. ``cache`` keeps each optimizer's
    schedule (one vectorised evaluation per optimizer)."""
    opt = _optimizer_for(optimizer, variable)
    cache = {} if cache is None else cache
    if id(opt) not in cache:
        cache[id(opt)] = _optimizer_rates(opt, iterations, iter_size)
    rates = cache[id(opt)]
    if isinstance(rates, str):
        return rates
    lr_mult = 1.0
    if hasattr(opt, "multipliers_for"):  # caffe2tf's CaffeOptimizer applies lr_mult itself
        lr_mult = float(opt.multipliers_for(variable.path)[0])
    return rates * lr_mult, lr_mult


#: a schedule that cannot take a vector of steps is called once per step up to this many
SCALAR_CALLS = 200_000


def _evaluate(schedule: Any, calls: np.ndarray) -> np.ndarray:
    """The schedule at every step of ``calls``: one vectorised call (compiled with ``jax.jit``
    on Keras' JAX backend, as a training step runs it), or (for a schedule that only takes a
    scalar step, such as ``PiecewiseConstantDecay`` on the torch backend) one call per step,
    up to :data:`SCALAR_CALLS`."""
    import keras

    def every(rates: Any) -> np.ndarray:
        return np.broadcast_to(_to_numpy(rates), calls.shape).astype(np.float64)

    if keras.backend.backend() == "jax":
        import jax

        try:  # compiled, as a training step evaluates it (one program, not one per operation)
            return every(jax.jit(schedule)(calls))
        except Exception:
            pass  # e.g. a schedule that reads its step as a Python number: eagerly, below
    try:
        return every(schedule(keras.ops.convert_to_tensor(calls)))
    except Exception:
        if len(calls) > SCALAR_CALLS:
            raise
        return np.array([float(_to_numpy(schedule(int(c)))) for c in calls])


def _optimizer_rates(opt: Any, iterations: int, iter_size: int) -> np.ndarray | str:
    import keras

    schedule = getattr(opt, "_learning_rate", None)  # keras keeps the schedule or a variable
    calls = np.arange(iterations, dtype=np.int64) * iter_size + (iter_size - 1)
    try:
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            rates = _evaluate(schedule, calls)
        else:
            rates = np.full(iterations, float(_to_numpy(schedule)))
    except Exception as err:  # a user's optimizer: say why instead of failing the run
        return f"{type(opt).__name__}'s learning rate cannot be read ({type(err).__name__})"
    t = (calls // iter_size + 1).astype(np.float64)
    name = type(opt).__name__
    if name == "Adam" and not getattr(opt, "amsgrad", False):
        rates = rates * _adam_factor(float(opt.beta_1), float(opt.beta_2), t)
    elif name == "CaffeAdam":
        rates = rates * _adam_factor(float(opt.momentum), float(opt.momentum2), t)
    return np.asarray(rates, np.float64)


def check_schedule(
    rule: UpdateRule,
    optimizer: Any,
    pairs: Sequence[tuple[str, Any]],
    *,
    iterations: int,
    tolerance: float = SCHEDULE_TOLERANCE,
) -> ScheduleCheck:
    """Compare Caffe's rate with the candidate's for every (Caffe key, trainable variable)."""
    iter_size = max(1, rule.iter_size)
    caffe = caffe_rates(rule, iterations)
    out = []
    cache: dict[int, np.ndarray | str] = {}
    for key, variable in pairs:
        got = candidate_rates(optimizer, variable, iterations, iter_size, cache)
        if isinstance(got, str):
            return ScheduleCheck(iterations, tolerance, unreadable=got)
        rates, _ = got
        lr_mult = float(np.float32(rule.group(key).lr_mult))
        want = caffe * lr_mult
        rel = rate_differences(want, rates)
        bad = np.flatnonzero(rel > tolerance)
        worst_at = int(np.argmax(rel)) if iterations else 0
        first = int(bad[0]) if bad.size else None
        out.append(
            BlobSchedule(
                key=key,
                lr_mult=lr_mult,
                worst=float(rel[worst_at]) if iterations else 0.0,
                worst_iteration=worst_at,
                first_bad=first,
                caffe_at_first_bad=float(want[first]) if first is not None else math.nan,
                candidate_at_first_bad=float(rates[first]) if first is not None else math.nan,
            )
        )
    return ScheduleCheck(iterations, tolerance, tuple(out))
