"""Caffe's update rule as pure functions of arrays, for the compiled executors on the device
the candidate runs on (docs/verify.md#both-rules-on-one-device): JAX
(:mod:`caffe2tf.rule.jax_executor`, ``jax.jit`` / ``lax.scan``) and TensorFlow
(:mod:`caffe2tf.rule.tf_executor`, ``tf.function(jit_compile=True)``). Each step is one
function in :data:`STEP_FUNCTIONS` (tests replace entries to plant mistakes), written against
an array namespace ``env.xp`` (``jax.numpy``, or the few TensorFlow operations of
:class:`caffe2tf.rule.tf_executor.TfOps`): ``asarray``, ``sum``, ``sqrt``, ``where``, ``sign``,
``minimum``, ``zeros``, ``zeros_like``, ``ndim``.

The NumPy executor (:mod:`caffe2tf.rule.reference`, :mod:`caffe2tf.rule.steps`) stays the
readable definition; these functions follow it step for step. What depends only on the
iteration counter is computed on the host, exactly as the NumPy executor computes it, and fed
in per update: Caffe's rate (:func:`caffe2tf.rule.schedules.lr_at`, with the multistep
counter) and Adam's bias correction (``adam_solver.cpp:39-41``, in double, rounded to
``Dtype``).

Float32 runs do one rounded operation per BLAS-like call, as the reference does, except that
XLA decides by itself whether ``a*x + y`` is one fused multiply-add (the reference emulates
OpenBLAS' FMA ``?axpy``) and sums the clip norm in its own order: the executors differ by
float32 roundings (measured on the update-rule matrix: bench/RESULTS.md).

NVIDIA Caffe's steps (:class:`~caffe2tf.rule.model.NvidiaSGD`,
:class:`~caffe2tf.rule.model.NvidiaDecay`) follow :func:`caffe2tf.rule.steps.nvidia_sgd` and
:func:`~caffe2tf.rule.steps.nvidia_decay`: their momentum and weight decay at update k
(``GetMomentum``, ``GetWeightDecay``: NVIDIA ``sgd_solver.cpp:72-118``) depend only on k and
the rate, so the host computes them with the NumPy executor's own functions and feeds them
with the rate (:data:`HOST_SCALARS`); LARC's norms and turbo's running cosine are traced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    Momentum,
    NormalizeBy,
    NvidiaDecay,
    NvidiaSGD,
    ParamGroup,
    RMSProp,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.rule.schedules import boundaries, lr_at
from caffe2tf.rule.steps import UpdateEnv, adam_correction, nvidia_momentum, nvidia_weight_decay

#: the per-update scalars fed from the host with the rate, in this order: Adam's correction
#: (1 for the other solvers), NVIDIA's momentum and weight decay at k (the solver's momentum
#: and 0 where unused), and whether k > 1 (NVIDIA SAG's turbo starts at iter_ 2)
HOST_SCALARS = ("corr", "momentum", "weight_decay", "past_first_two")


@dataclass
class ArrayEnv:
    """One update while it is traced: ``grads`` (Caffe's diff, transformed in place), the
    per-blob rates ``eta``, the solver ``state`` and the ``updates``; ``rate`` and ``corr``
    are this update's scalars (traced), fed from the host; ``xp`` the array namespace."""

    xp: Any
    precision: str
    keys: list[str]
    weights: dict[str, Any]
    grads: dict[str, Any]
    groups: dict[str, ParamGroup]
    state: dict[str, dict[str, Any]]
    rate: Any
    corr: Any
    mu: Any = None
    wd: Any = None
    past_first_two: Any = None
    eta: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)

    def s(self, x: float) -> Any:
        """A constant of the working dtype (Caffe's float32 ``Dtype`` scalars)."""
        return self.xp.asarray(np.asarray(x, self.np_dtype))

    @property
    def np_dtype(self) -> type:
        return np.float32 if self.precision == "float32" else np.float64


def _host(x: float, dtype: type) -> float:
    """A scalar rounded to the working dtype, as the NumPy executor forms it."""
    return float(dtype(x))


# ---- the steps (same order and operations as caffe2tf/rule/steps.py) -------------------------


def clip_by_global_norm(step: ClipByGlobalNorm, env: ArrayEnv) -> None:
    """``sgd_solver.cpp:87-106``: scale every diff by ``c / n`` when ``n > c`` (strict)."""
    xp = env.xp

    c = env.s(step.threshold)
    sumsq = env.s(0.0)
    for key in env.keys:
        g = env.grads[key]
        sumsq = sumsq + xp.sum(g * g)
    norm = xp.sqrt(sumsq)
    scale = c / norm
    for key in env.keys:
        env.grads[key] = xp.where(norm > c, env.grads[key] * scale, env.grads[key])


def normalize_by(step: NormalizeBy, env: ArrayEnv) -> None:
    """``sgd_solver.cpp:129-153``: ``g *= fl(1/iter_size)``."""
    if step.iter_size == 1:
        return
    dt = env.np_dtype
    factor = env.s(_host(dt(1.0) / dt(step.iter_size), dt))
    for key in env.keys:
        env.grads[key] = env.grads[key] * factor


def add_decay(step: AddDecay, env: ArrayEnv) -> None:
    """``sgd_solver.cpp:155-215``: ``g += wd*decay_mult * w`` (L2) or ``* sign(w)`` (L1)."""
    xp = env.xp
    dt = env.np_dtype
    for key in env.keys:
        local = dt(dt(step.weight_decay) * dt(env.groups[key].decay_mult))
        if not local:
            continue
        w = env.weights[key]
        reg = w if step.kind == "L2" else xp.sign(w)
        env.grads[key] = env.s(local) * reg + env.grads[key]


def scale_by_lr(step: ScaleByLr, env: ArrayEnv) -> None:
    """``local_rate = rate * lr_mult`` in Dtype (``sgd_solver.cpp:228``); the rate is fed."""
    for key in env.keys:
        env.eta[key] = env.rate * env.s(env.groups[key].lr_mult)


def momentum(step: Momentum, env: ArrayEnv) -> None:
    """SGD ``h = mu*h + eta*g``, ``u = h``; Nesterov ``u = (1+mu)*h - mu*h_old``."""
    dt = env.np_dtype
    for key in env.keys:
        m = env.groups[key].momentum_or(step.momentum)  # a blob's own momentum (cuda-convnet)
        mu = env.s(m)
        one_plus = env.s(_host(dt(1.0) + dt(m), dt))
        h_old = env.state[key]["history"]
        h = env.eta[key] * env.grads[key] + mu * h_old
        env.state[key]["history"] = h
        env.updates[key] = one_plus * h + (-mu) * h_old if step.nesterov else h


def adagrad(step: AdaGrad, env: ArrayEnv) -> None:
    """``h += g^2``; ``u = eta * (g / (sqrt(h) + delta))``."""
    xp = env.xp
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        h = g * g + env.state[key]["history"]
        env.state[key]["history"] = h
        env.updates[key] = env.eta[key] * (g / (xp.sqrt(h) + delta))


def rmsprop(step: RMSProp, env: ArrayEnv) -> None:
    """``h = rho*h + fl(1-rho)*g^2``; ``u = eta * (g / (sqrt(h) + delta))``."""
    xp = env.xp
    dt = env.np_dtype
    rho = env.s(step.rms_decay)
    one_minus = env.s(_host(dt(1.0) - dt(step.rms_decay), dt))
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        h = one_minus * (g * g) + rho * env.state[key]["history"]
        env.state[key]["history"] = h
        env.updates[key] = env.eta[key] * (g / (xp.sqrt(h) + delta))


def adadelta(step: AdaDelta, env: ArrayEnv) -> None:
    """``a = rho*a + fl(1-rho)*g^2``; ``d = g*sqrt((delta+b)/(delta+a))``;
    ``b = rho*b + fl(1-rho)*d^2``; ``u = eta*d``."""
    xp = env.xp
    dt = env.np_dtype
    rho = env.s(step.rho)
    one_minus = env.s(_host(dt(1.0) - dt(step.rho), dt))
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        a = one_minus * (g * g) + rho * env.state[key]["history"]
        b = env.state[key]["update_history"]
        d = g * xp.sqrt((delta + b) / (delta + a))
        env.state[key]["history"] = a
        env.state[key]["update_history"] = one_minus * (d * d) + rho * b
        env.updates[key] = env.eta[key] * d


def adam(step: Adam, env: ArrayEnv) -> None:
    """``m = b1*m + fl(1-b1)*g``; ``v = b2*v + fl(1-b2)*g*g``;
    ``u = fl(eta*corr) * (m / (sqrt(v) + delta))`` (corr fed from the host)."""
    xp = env.xp
    dt = env.np_dtype
    b1, b2 = env.s(step.beta1), env.s(step.beta2)
    om1 = env.s(_host(dt(1.0) - dt(step.beta1), dt))
    om2 = env.s(_host(dt(1.0) - dt(step.beta2), dt))
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        m = om1 * g + b1 * env.state[key]["m"]
        v = om2 * (g * g) + b2 * env.state[key]["v"]
        env.state[key]["m"], env.state[key]["v"] = m, v
        env.updates[key] = (env.eta[key] * env.corr) * (m / (xp.sqrt(v) + delta))


def nvidia_decay(step: NvidiaDecay, env: ArrayEnv) -> None:
    """NVIDIA's decay policy ``poly`` before the other solvers' kernels
    (:func:`caffe2tf.rule.steps.nvidia_decay`): ``g += fl(lambda_k * d) * w`` (L2) or
    ``* sign(w)``, lambda_k fed from the host."""
    xp = env.xp
    for key in env.keys:
        local = env.wd * env.s(env.groups[key].decay_mult)
        w = env.weights[key]
        reg = w if step.kind == "L2" else xp.sign(w)
        env.grads[key] = env.grads[key] + local * reg


def _norm(xp: Any, x: Any) -> Any:
    return xp.sqrt(xp.sum(x * x))


def nvidia_sgd(step: NvidiaSGD, env: ArrayEnv) -> None:
    """NVIDIA's SGD and SAG as their GPU kernels run them, operation for operation as
    :func:`caffe2tf.rule.steps.nvidia_sgd` (NVIDIA ``sgd_solver.cpp:244-368``,
    ``sgd_solver.cu:9-86``, ``sag_solver.cpp:95-137``, ``sag_solver.cu:11-104``); mu_k and
    lambda_k are fed from the host. The turbo's running cosine is a scalar state per blob
    (``larc_corr``)."""
    xp = env.xp
    mu, rate, wd = env.mu, env.rate, env.wd
    one = env.s(1.0)
    dt = env.np_dtype
    keep = env.s(dt(dt(1.0) - dt(0.95)))  # 1 - 0.95 in Dtype, as the reference forms it
    for key in env.keys:
        g, w = env.grads[key], env.weights[key]
        h_old = env.state[key]["history"]
        positive = float(dt(env.groups[key].lr_mult)) > 0
        lr_mult = env.s(env.groups[key].lr_mult)
        local: Any = lr_mult
        if step.larc and step.sag:
            gn, wn, hn = _norm(xp, g), _norm(xp, w), _norm(xp, h_old)
            c = xp.where((wn > 0) & (hn > 0), env.s(step.larc_eta) * wn / hn, one)
            local = c if positive else lr_mult
            if step.larc_turbo:
                ok = (gn > 0) & (hn > 0)
                cos = xp.where(ok, xp.sum(g * h_old) / (gn * hn), env.s(0.0))
                prev = env.state[key]["larc_corr"]
                avg = env.s(0.95) * prev + keep * cos
                on = env.past_first_two > 0
                env.state[key]["larc_corr"] = xp.where(on, avg, prev)
                local = xp.where(on, local * (one - env.s(0.9) * avg), local)
        elif step.larc:
            gn, wn = _norm(xp, g), _norm(xp, w)
            c = xp.where((wn > 0) & (gn > 0), ((one - mu) * env.s(step.larc_eta)) * wn / gn, one)
            if step.larc_turbo:
                mn = _norm(xp, h_old)
                ok = (gn > 0) & (mn > 0)
                cos = xp.where(ok, xp.sum(g * h_old) / (gn * mn), env.s(0.0))
                prev = env.state[key]["larc_corr"]
                avg = env.s(0.95) * prev + keep * cos
                env.state[key]["larc_corr"] = avg
                c = c - env.s(0.9) * avg
            if positive:
                local = c
        if step.larc:
            local_rate = rate * local if step.larc == "scale" else xp.minimum(rate, local)
        else:
            local_rate = rate * lr_mult
        env.eta[key] = local_rate
        decay = wd * env.s(env.groups[key].decay_mult)
        if step.sag:  # sag_solver.cu:11-29 (L2), :87-104 (WD)
            m1 = one - mu
            if step.decay_kind == "WD":
                h = mu * h_old + m1 * g
                env.updates[key] = local_rate * (h + decay * w)
            else:
                h = mu * h_old + m1 * (g + decay * w)
                env.updates[key] = local_rate * h
        elif step.decay_kind == "WD":
            h = mu * h_old + local_rate * g
            env.updates[key] = h + (decay * local_rate) * w
        else:
            gr = g
            if step.decay_kind:
                reg = w if step.decay_kind == "L2" else xp.sign(w)
                gr = g + reg * decay
            h = mu * h_old + local_rate * gr
            env.updates[key] = h
        env.state[key]["history"] = h


StepFn = Callable[[Any, ArrayEnv], None]

#: step class -> its function of arrays (tests replace entries to plant mistakes)
STEP_FUNCTIONS: dict[type, StepFn] = {
    ClipByGlobalNorm: clip_by_global_norm,  # type: ignore[dict-item]
    NormalizeBy: normalize_by,  # type: ignore[dict-item]
    AddDecay: add_decay,  # type: ignore[dict-item]
    ScaleByLr: scale_by_lr,  # type: ignore[dict-item]
    Momentum: momentum,  # type: ignore[dict-item]
    AdaGrad: adagrad,  # type: ignore[dict-item]
    RMSProp: rmsprop,  # type: ignore[dict-item]
    AdaDelta: adadelta,  # type: ignore[dict-item]
    Adam: adam,  # type: ignore[dict-item]
    NvidiaDecay: nvidia_decay,  # type: ignore[dict-item]
    NvidiaSGD: nvidia_sgd,  # type: ignore[dict-item]
}

#: the solver state each solver step keeps per blob (zeros at the start, sgd_solver.cpp:72-85)
SLOTS: dict[type, tuple[str, ...]] = {
    Momentum: ("history",),
    AdaGrad: ("history",),
    RMSProp: ("history",),
    AdaDelta: ("history", "update_history"),
    Adam: ("m", "v"),
    NvidiaSGD: ("history", "larc_corr"),
}
#: slots that hold one number per blob, not an array of its shape
SCALAR_SLOTS = frozenset({"larc_corr"})
_ADAPTIVE = (AdaGrad, RMSProp, AdaDelta, Adam)


def supports(rule: UpdateRule, registry: Mapping[type, StepFn] | None = None) -> bool:
    """Whether every step of ``rule`` has a function of arrays."""
    table = STEP_FUNCTIONS if registry is None else registry
    return all(type(s) in table for s in rule.steps) and type(rule.solver_step) in SLOTS


def host_scalars(
    rule: UpdateRule, start: int, n: int, precision: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's rate and the other per-update scalars (:data:`HOST_SCALARS`, one row per
    update) for updates ``start .. start+n-1`` of a run entered at ``start`` with fresh state
    (:func:`caffe2tf.rule.reference.fast_forward`), as the NumPy executor computes them."""
    dt = np.float32 if precision == "float32" else np.float64
    schedule = rule.schedule
    cs = 0
    if schedule.policy == "multistep":
        cs = len(boundaries(schedule, start))
    elif schedule.policy == "step" and schedule.stepsize > 0:
        cs = start // schedule.stepsize
    rates = np.empty(n, dt)
    scalars = np.zeros((n, len(HOST_SCALARS)), dt)
    scalars[:, 0] = 1.0
    solver = rule.solver_step
    decay = rule.step(NvidiaDecay)
    for i in range(n):
        k = start + i
        rate, cs = lr_at(schedule, k, cs, precision=precision)
        rates[i] = rate
        if isinstance(solver, Adam):
            b1, b2 = float(dt(solver.beta1)), float(dt(solver.beta2))
            try:
                scalars[i, 0] = dt(adam_correction(b1, b2, k + 1))
            except (ZeroDivisionError, ValueError, OverflowError):
                scalars[i, 0] = np.nan
        if isinstance(solver, NvidiaSGD) or isinstance(decay, NvidiaDecay):
            env = UpdateEnv(k=k, dtype=dt, keys=[], weights={}, grads={}, groups={}, state={})
            env.rate = rate
            with np.errstate(all="ignore"):
                if isinstance(solver, NvidiaSGD):
                    scalars[i, 1] = nvidia_momentum(solver, env)
                    scalars[i, 2] = nvidia_weight_decay(
                        solver.weight_decay,
                        solver.decay_policy,
                        solver.max_weight_decay,
                        solver.weight_decay_power,
                        solver.max_iter,
                        env,
                    )
                if isinstance(decay, NvidiaDecay):
                    scalars[i, 2] = nvidia_weight_decay(
                        decay.weight_decay,
                        "poly",
                        decay.max_weight_decay,
                        decay.power,
                        decay.max_iter,
                        env,
                    )
        scalars[i, 3] = 1.0 if k > 1 else 0.0
    return rates, scalars


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to trace: the owner ``keys`` in Caffe's learnable order (those present),
    their groups, the working precision, the step functions and the array namespace ``xp``."""

    rule: UpdateRule
    keys: tuple[str, ...]
    groups: Mapping[str, ParamGroup]
    xp: Any
    precision: str = "float32"
    registry: Mapping[type, StepFn] = field(default_factory=lambda: dict(STEP_FUNCTIONS))

    @property
    def slots(self) -> tuple[str, ...]:
        return SLOTS[type(self.rule.solver_step)]

    @property
    def np_dtype(self) -> type:
        """The working dtype as NumPy's scalar type."""
        return np.float32 if self.precision == "float32" else np.float64

    def init_state(self, weights: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Zeros for every slot (``sgd_solver.cpp:72-85``); a scalar for :data:`SCALAR_SLOTS`."""
        xp = self.xp
        return {
            k: {
                s: xp.zeros((), self.precision) if s in SCALAR_SLOTS else xp.zeros_like(weights[k])
                for s in self.slots
            }
            for k in self.keys
        }

    def update(
        self,
        weights: Mapping[str, Any],
        state: Mapping[str, Mapping[str, Any]],
        grads: Mapping[str, Any],
        rate: Any,
        corr: Any,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """One Caffe update (``ApplyUpdate`` then ``Net::Update``), a pure function. ``corr``:
        this update's row of :func:`host_scalars` (a lone number: Adam's correction)."""
        xp = self.xp
        env = ArrayEnv(
            xp=xp,
            precision=self.precision,
            keys=list(self.keys),
            weights=dict(weights),
            grads={k: grads[k] for k in self.keys},
            groups=dict(self.groups),
            state={k: dict(state[k]) for k in self.keys},
            rate=rate,
            corr=corr,
        )
        if xp.ndim(corr) == 1:  # a row of host_scalars
            env.corr, env.mu, env.wd, env.past_first_two = (corr[i] for i in range(4))
        for s in self.rule.steps:
            self.registry[type(s)](s, env)
        new_weights = dict(weights)
        solver = self.rule.solver_step
        for k in self.keys:
            u = env.updates[k]
            if isinstance(solver, _ADAPTIVE):  # a zero rate moves nothing (reference.py)
                factor = env.eta[k] * env.corr if isinstance(solver, Adam) else env.eta[k]
                u = xp.where(factor == 0, xp.zeros_like(u), u)
            new_weights[k] = weights[k] - u
        return new_weights, env.state


def compiled_rule(
    rule: UpdateRule,
    keys: Sequence[str],
    xp: Any,
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
) -> CompiledRule:
    """The :class:`CompiledRule` of ``rule`` over the namespace ``xp`` for the owner blobs
    ``keys`` (``rule.params`` order; without a net, ``keys`` in the order given with Caffe's
    default multipliers)."""
    if rule.params:
        present = set(keys)
        ordered = tuple(g.key for g in rule.params if g.key in present)
        groups = {g.key: g for g in rule.params}
    else:
        ordered = tuple(keys)
        dg = rule.default_group
        groups = {
            k: ParamGroup(key=k, lr_mult=dg.lr_mult, decay_mult=dg.decay_mult) for k in ordered
        }
    table = dict(STEP_FUNCTIONS if registry is None else registry)
    return CompiledRule(rule, ordered, groups, xp, precision, table)


def stacked_gradients(
    keys: Sequence[str],
    init: Mapping[str, np.ndarray],
    grads: Sequence[Mapping[str, Any]],
    dt: type,
) -> dict[str, np.ndarray]:
    """Each blob's gradients of a whole run stacked on a first axis (a missing one is zero):
    what the executors' whole-run functions (``run_jax``, ``run_tf``) scan over."""
    return {
        k: np.stack([np.asarray(g.get(k, np.zeros_like(init[k])), dt) for g in grads]) for k in keys
    }


def trajectory(
    keys: Sequence[str],
    init: Mapping[str, np.ndarray],
    out: Mapping[str, np.ndarray],
    n: int,
    dt: type,
) -> list[dict[str, np.ndarray]]:
    """The stacked weights ``out`` of ``keys`` as one dict per update, with the blobs the rule
    does not own at their initial values (the form of
    :func:`caffe2tf.rule.reference.run_reference`)."""
    rest = {k: np.asarray(init[k], dt) for k in init if k not in out}
    return [{**{k: out[k][t] for k in keys}, **rest} for t in range(n)]


__all__ = [
    "HOST_SCALARS",
    "STEP_FUNCTIONS",
    "ArrayEnv",
    "CompiledRule",
    "compiled_rule",
    "host_scalars",
    "stacked_gradients",
    "supports",
    "trajectory",
]
