"""Caffe's seven learning-rate policies as pure functions of the iteration counter.

Reproduces ``SGDSolver<Dtype>::GetLearningRate`` (caffe ``src/caffe/solvers/sgd_solver.cpp:26-70``,
identical in the 2018 Debian ``1.0.0+git20180821.99bd997`` build) with ``k`` = ``iter_`` = the
number of updates already applied (update k+1 uses ``lr(k)``)::

    fixed      base_lr
    step       base_lr * gamma ^ (k // stepsize)                 integer division (:34-37)
    exp        base_lr * gamma ^ k                               (:38-40)
    inv        base_lr * (1 + gamma*k) ^ (-power)                base formed in float (:41-45)
    multistep  base_lr * gamma ^ current_step                    (:46-55) where, before that,
               current_step += 1 if current_step < len(stepvalue) and k >= stepvalue[current_step]
               (an ``if``: at most ONE advance per call -- the counter is state)
    poly       base_lr * (1 - k/max_iter) ^ power                float division (:56-59)
    sigmoid    base_lr / (1 + exp(-gamma*(k - stepsize)))        (:60-65); Caffe CHECKs
               gamma >= 0, so this is a ramp UP with lr = base_lr/2 at k = stepsize.

and one fork's policy, valid only in that fork's dialect (``Policy.dialect``)::

    multifixed stagelr[s], s = the first stage with k <= stageiter[s]; past every stageiter
               the last stage, s = n - 1. base_lr is not read. The yolo fork
               (QiaoXie/caffe-yolo-2 ``src/caffe/solvers/sgd_solver.cpp:32-40``): a loop that
               breaks at the first ``iter_ <= stageiter(stage)`` (:36-38), then
               ``stage == num_stages ? stage - 1 : stage`` (:39). The comparison is ``<=``:
               stageiter[s] is the LAST update of stage s, and stage s+1 starts at
               stageiter[s] + 1. The list is scanned in order, so an entry not above an
               earlier one never wins.

Precision (docs/caffe-semantics.md#learning-rate-policies and #precision): the proto fields are
float32; Caffe stores the rate as
``Dtype`` = float. ``precision="float32"`` follows the C++ expression types: ``step``/``exp``
call ``pow(float, int)`` (promoted to double) and round the product once; ``inv``, ``poly`` and
``sigmoid`` are evaluated with float operands, so each operation rounds to float32 (the float
``pow``/``exp`` is emulated by evaluating in double and rounding, which can differ from libm's
``powf`` by at most 1 ulp). ``precision="float64"`` evaluates the same formula in double from
the float32-rounded fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from caffe2tf.rule.model import LrSchedule

_F32 = np.float32


def _f(x: float) -> float:
    """Round to float32 (returned as a Python float)."""
    return float(_F32(x))


def _pow(base: float, exponent: float) -> float:
    try:
        return math.pow(base, exponent)
    except (OverflowError, ValueError):
        with np.errstate(all="ignore"):
            return float(np.power(np.float64(base), np.float64(exponent)))


def _fixed(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    return s.base_lr, cs


def _step(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    if s.stepsize <= 0:
        raise ValueError("lr_policy 'step' needs stepsize > 0 (Caffe CHECK_GT)")
    cs = k // s.stepsize  # C++ int division; k, stepsize >= 0
    return s.base_lr * _pow(s.gamma, cs), cs


def _exp(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    return s.base_lr * _pow(s.gamma, k), cs


def _inv(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    if f32:
        base = _f(1.0 + _f(s.gamma * _f(k)))
        return s.base_lr * _f(_pow(base, -s.power)), cs
    return s.base_lr * _pow(1.0 + s.gamma * k, -s.power), cs


def _multistep(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    if cs < len(s.stepvalue) and k >= s.stepvalue[cs]:
        cs += 1
    return s.base_lr * _pow(s.gamma, cs), cs


def _poly(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    with np.errstate(all="ignore"):
        if f32:
            frac = _F32(k) / _F32(s.max_iter)  # float division, inf/nan when max_iter = 0
            base = _f(_F32(1.0) - frac)
            return s.base_lr * _f(_pow(base, s.power)), cs
        frac = np.float64(k) / np.float64(s.max_iter)
        return s.base_lr * _pow(float(1.0 - frac), s.power), cs


def _sigmoid(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    if s.stepsize <= 0:
        raise ValueError("lr_policy 'sigmoid' needs stepsize > 0 (Caffe CHECK_GT)")
    if f32:
        arg = _f(-s.gamma * _f(_f(k) - _f(s.stepsize)))
        e = _f(math.exp(arg)) if arg < 709 else math.inf
        return s.base_lr * _f(1.0 / _f(1.0 + e)), cs
    arg = -s.gamma * (k - s.stepsize)
    e = math.exp(arg) if arg < 709 else math.inf
    return s.base_lr / (1.0 + e), cs


def _multifixed(s: LrSchedule, k: int, cs: int, f32: bool) -> tuple[float, int]:
    n = len(s.stagelr)
    if n == 0 or len(s.stageiter) != n:
        raise ValueError(
            "lr_policy 'multifixed' needs as many stageiter as stagelr, at least one "
            "(the yolo fork's sgd_solver.cpp:33-40)"
        )
    stage = 0
    while stage < n and not k <= s.stageiter[stage]:
        stage += 1
    return s.stagelr[min(stage, n - 1)], cs


PolicyFn = Callable[[LrSchedule, int, int, bool], tuple[float, int]]


@dataclass(frozen=True)
class Policy:
    """One ``lr_policy``: the ``SolverParameter`` fields it reads, its formula (k = updates
    already applied; shown by ``explain``) and its rate function
    ``f(schedule, k, current_step, float32?) -> (unrounded rate, new current_step)``."""

    reads: tuple[str, ...]
    formula: str
    rate: PolicyFn
    #: None: BVLC Caffe's (every dialect has it); else the one fork whose code has it
    dialect: str | None = None


#: The one table of lr policies (``sgd_solver.cpp:26-70``, and the forks' with their dialect;
#: ``caffe/solver.py`` ``LR_POLICIES``/``FORK_LR_POLICIES`` are the front end's copy, checked
#: equal by tests/test_registries.py): the reference, ``explain``,
#: ``inspect`` and every target's schedule mapping read it.
POLICIES: dict[str, Policy] = {
    "fixed": Policy(("base_lr",), "base_lr", _fixed),
    "step": Policy(("base_lr", "gamma", "stepsize"), "base_lr * gamma^floor(k / stepsize)", _step),
    "exp": Policy(("base_lr", "gamma"), "base_lr * gamma^k", _exp),
    "inv": Policy(("base_lr", "gamma", "power"), "base_lr * (1 + gamma*k)^(-power)", _inv),
    "multistep": Policy(
        ("base_lr", "gamma", "stepvalue"),
        "base_lr * gamma^(stepvalues passed, one per update)",
        _multistep,
    ),
    "poly": Policy(("base_lr", "power", "max_iter"), "base_lr * (1 - k/max_iter)^power", _poly),
    "sigmoid": Policy(
        ("base_lr", "gamma", "stepsize"), "base_lr / (1 + exp(-gamma * (k - stepsize)))", _sigmoid
    ),
    "multifixed": Policy(
        ("stagelr", "stageiter"),
        "stagelr[first s with k <= stageiter[s]], else stagelr[last]",
        _multifixed,
        dialect="yolo",
    ),
}


def lr_at(
    schedule: LrSchedule, k: int, current_step: int = 0, *, precision: str = "float32"
) -> tuple[float, int]:
    """Caffe's rate for the update with ``iter_ = k`` and the new ``current_step_``.

    ``current_step`` is Caffe's ``current_step_`` *before* this call (0 on a fresh start);
    ``step`` overwrites it with ``k // stepsize``, ``multistep`` advances it by at most one,
    the others leave it alone. In float32 mode the rate is rounded to float32 like Caffe's
    ``Dtype rate``.
    """
    try:
        fn = POLICIES[schedule.policy]
    except KeyError:
        raise ValueError(
            f"unknown lr_policy {schedule.policy!r} (Caffe: 'Unknown learning rate policy')"
        ) from None
    f32 = precision == "float32"
    if schedule.min_lr is not None:
        rate, cs = _nvidia_rate(schedule, fn, int(k), int(current_step), f32)
    else:
        rate, cs = fn.rate(schedule, int(k), int(current_step), f32)
    return (_f(rate) if f32 else float(rate)), cs


def _nvidia_rate(s: LrSchedule, fn: Policy, k: int, cs: int, f32: bool) -> tuple[float, int]:
    """NVIDIA Caffe's ``GetLearningRate`` (NVIDIA/caffe ``sgd_solver.cpp:24-70``;
    docs/nvidia-caffe.md#learning-rate): during the first ``rampup_interval`` updates the rate
    is ``rampup_lr + (base_lr - rampup_lr) * (k / rampup_interval)^2`` and the policy is not
    evaluated (so the multistep counter does not move, :29-35); ``poly`` is
    ``(base_lr - min_lr) * (1 - k/max_iter)^power + min_lr`` (:54-59), ``sigmoid`` is evaluated
    in double (:60-62); any rate below ``min_lr`` becomes ``min_lr`` (:66-68). Float operands
    round to float32 in float32 mode, as in BVLC's expressions."""
    assert s.min_lr is not None
    if k < s.rampup_interval:
        if f32:
            alpha = _f(_f(k) / _f(s.rampup_interval))
            rate = _f(s.rampup_lr + _f(_f(_f(s.base_lr - s.rampup_lr) * alpha) * alpha))
        else:
            alpha = k / s.rampup_interval
            rate = s.rampup_lr + (s.base_lr - s.rampup_lr) * alpha * alpha
    elif s.policy == "poly":
        maxiter = s.max_iter if s.max_iter > 0 else 1
        with np.errstate(all="ignore"):
            if f32:
                base = _f(_F32(1.0) - _F32(k) / _F32(maxiter))
                rate = _f(_f(_f(s.base_lr - s.min_lr) * _f(_pow(base, s.power))) + s.min_lr)
            else:
                base = 1.0 - k / maxiter
                rate = (s.base_lr - s.min_lr) * _pow(base, s.power) + s.min_lr
    elif s.policy == "sigmoid":
        arg = -s.gamma * float(k - s.stepsize)
        rate = s.base_lr / (1.0 + (math.exp(arg) if arg < 709 else math.inf))
    else:
        rate, cs = fn.rate(s, k, cs, f32)
    if rate < s.min_lr:
        rate = s.min_lr
    return rate, cs


def lr_sequence(
    schedule: LrSchedule,
    n: int,
    *,
    start: int = 0,
    current_step: int = 0,
    precision: str = "float32",
) -> np.ndarray:
    """Rates of updates ``start .. start+n-1`` calling :func:`lr_at` once per update (as
    ``ApplyUpdate`` does), from a fresh start by default. float32 (or float64) array."""
    out = np.empty(n, dtype=np.float32 if precision == "float32" else np.float64)
    cs = current_step
    for i in range(n):
        out[i], cs = lr_at(schedule, start + i, cs, precision=precision)
    return out


def boundaries(schedule: LrSchedule, horizon: int) -> Sequence[int]:
    """Iterations in ``[0, horizon)`` at which a piecewise-constant rate changes (fresh start):
    ``step``: the multiples of stepsize (a lazy ``range``: there may be millions);
    ``multistep``: where current_step advances; ``sigmoid``: its midpoint; ``multifixed``:
    the first update of each stage after the first. Empty for the smooth policies."""
    if schedule.policy == "step" and schedule.stepsize > 0:
        return range(schedule.stepsize, horizon, schedule.stepsize)
    if schedule.policy == "multistep":
        # advance i happens at max(stepvalue[i], previous advance + 1): one per call
        out: list[int] = []
        prev = schedule.rampup_interval - 1  # NVIDIA: no advance during the warm-up
        for value in schedule.stepvalue:
            prev = max(value, prev + 1)
            if prev >= horizon:
                break
            out.append(prev)
        return out
    if schedule.policy == "sigmoid" and 0 < schedule.stepsize < horizon:
        return [schedule.stepsize]
    if schedule.policy == "multifixed":
        return [k + 1 for k in multifixed_bounds(schedule)[0] if k + 1 < horizon]
    return []


def multifixed_bounds(schedule: LrSchedule) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``multifixed`` as a piecewise-constant function of k: ``(bounds, rates)`` with bounds
    strictly increasing and ``len(rates) == len(bounds) + 1``; the rate is ``rates[0]`` for
    k <= bounds[0], ``rates[i]`` for bounds[i-1] < k <= bounds[i], and ``rates[-1]`` past
    the last bound. The stages an earlier, larger stageiter hides are dropped, and past every
    stageiter the fork takes the LAST stage's rate (not the last one in effect)."""
    bounds: list[int] = []
    rates: list[float] = []
    for it, rate in zip(schedule.stageiter, schedule.stagelr, strict=True):
        if not bounds or it > bounds[-1]:
            bounds.append(int(it))
            rates.append(rate)
    return tuple(bounds), (*rates, schedule.stagelr[-1])
