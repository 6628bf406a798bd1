"""The reference math of each rule step, one function per step class, in Caffe's CPU order.

Each function has the signature ``fn(step, env) -> None`` and updates the per-update
:class:`UpdateEnv` in place (the working gradient = Caffe's diff, the solver state, the
per-blob learning rates, the final update). :data:`STEP_FUNCTIONS` maps step class -> function;
:func:`caffe2tf.rule.reference.run_reference` dispatches through it (tests replace entries to
plant mistakes).

Float32 mode reproduces the roundings of ``Solver<float>`` on the CPU without MKL
(docs/caffe-semantics.md#precision): every BLAS-like call is one rounded float32 operation per
element;
``caffe_cpu_axpby(a, x, b, y)`` = ``y = b*y`` (``?scal``) then ``y = a*x + y`` (``?axpy``)
(``math_functions.cpp:117-127``); ``caffe_powx`` is ``pow`` elementwise
(``mkl_alternate.hpp:62``), so square roots are ``pow(h, 0.5f)`` and squares ``pow(g, 2f)``;
scalars such as ``1 - momentum`` are formed in float. Float64 mode runs the same sequence in
double (from the float32-rounded hyper-parameters).

``?axpy`` is FUSED by default (``fused_axpy=True``): ``y = fma(a, x, y)``, one rounding. The
Debian build links OpenBLAS, whose x86-64 kernels for FMA-capable CPUs (Haswell and later, Zen)
use ``vfmadd``; with this emulation the reference reproduces the real binary BIT FOR BIT on the
update-rule matrix (caffe2tf/verify/matrix.py) for SGD and Nesterov without clipping, and nearly
so for the others (measured on an AMD EPYC host: max deviation ~1e-7). The remaining 1-ulp
differences come from glibc's
``powf(h, 0.5f)``, which is not always the correctly rounded square root that NumPy computes
(~0.04% of inputs), and from OpenBLAS' ``sdot`` summation order in the clip norm.
``fused_axpy=False`` gives the two-rounding ``fl(fl(a*x) + y)`` of a BLAS
without FMA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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
)
from caffe2tf.rule.schedules import lr_at


@dataclass
class UpdateEnv:
    """Everything one update reads and writes. ``keys`` are the owner blobs in Caffe's
    ``learnable_params_`` order; ``grads`` is the diff being transformed in place."""

    k: int
    dtype: type
    keys: list[str]
    weights: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    groups: dict[str, ParamGroup]
    state: dict[str, dict[str, np.ndarray]]
    current_step: int = 0
    rate: float = 0.0
    eta: dict[str, np.floating] = field(default_factory=dict)
    updates: dict[str, np.ndarray] = field(default_factory=dict)
    fused_axpy: bool = True

    def axpy(self, a: np.floating, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``?axpy``: ``a*x + y``; fused (one rounding) in float32 mode when ``fused_axpy``.
        The product of two float32 values is exact in float64, so the fused result is the
        float64 sum rounded to float32."""
        if self.fused_axpy and self.dtype is np.float32:
            return (np.float64(a) * x.astype(np.float64) + y.astype(np.float64)).astype(np.float32)
        return a * x + y

    def axpby(self, a: np.floating, x: np.ndarray, b: np.floating, y: np.ndarray) -> np.ndarray:
        """``caffe_cpu_axpby`` without MKL: ``y = b*y`` (``?scal``) then ``?axpy``."""
        return self.axpy(a, x, b * y)

    @property
    def precision(self) -> str:
        return "float32" if self.dtype is np.float32 else "float64"

    def s(self, x: float) -> np.floating:
        """A scalar of the working dtype (float32 rounding of Caffe's ``Dtype`` scalars)."""
        return self.dtype(x)

    def slot(self, key: str, name: str) -> np.ndarray:
        """Zero-initialised solver state (``sgd_solver.cpp:72-85``)."""
        per = self.state.setdefault(key, {})
        if name not in per:
            per[name] = np.zeros_like(self.weights[key])
        return per[name]


def powx(x: np.ndarray, p: float) -> np.ndarray:
    """``caffe_powx``: elementwise ``pow(x, p)`` in the working dtype. For p = 2 this is the
    exact ``fl(x*x)`` like glibc's ``powf``; for p = 0.5 NumPy returns the correctly rounded
    square root, which glibc's ``powf`` misses by 1 ulp on ~0.04% of inputs."""
    return np.power(x, x.dtype.type(p))


# ---- the steps ---------------------------------------------------------------------------


def clip_by_global_norm(step: ClipByGlobalNorm, env: UpdateEnv) -> None:
    """``SGDSolver::ClipGradients`` (``sgd_solver.cpp:87-106``): ``n = sqrt(sum_p g_p.g_p)``
    over ALL learnable (owner) blobs -- lr_mult 0 blobs included, with whatever their diff holds;
    if ``n > c`` (strict; NaN never clips) every diff is scaled by ``c/n`` (``blob.cpp:384``).
    Per blob the dot is ``cblas_sdot``; the blob sums are accumulated in ``Dtype``."""
    c = env.s(step.threshold)
    sumsq = env.s(0.0)
    for key in env.keys:
        g = env.grads[key].ravel()
        sumsq = env.dtype(sumsq + np.dot(g, g))
    norm = env.dtype(np.sqrt(sumsq))
    if norm > c:
        scale = env.dtype(c / norm)
        for key in env.keys:
            env.grads[key] = env.grads[key] * scale


def normalize_by(step: NormalizeBy, env: UpdateEnv) -> None:
    """``SGDSolver::Normalize`` (``sgd_solver.cpp:129-153``): ``g *= fl(1/iter_size)``."""
    if step.iter_size == 1:
        return
    factor = env.dtype(env.s(1.0) / env.s(step.iter_size))
    for key in env.keys:
        env.grads[key] = env.grads[key] * factor


def add_decay(step: AddDecay, env: UpdateEnv) -> None:
    """``SGDSolver::Regularize`` (``sgd_solver.cpp:155-215``): ``local_decay = wd*decay_mult``
    formed in Dtype; skipped when 0; L2 ``g += local_decay*w``, L1 ``g += local_decay*sign(w)``
    with ``sign(0) = 0`` (``caffe_axpy``)."""
    wd = env.s(step.weight_decay)
    for key in env.keys:
        local = env.dtype(wd * env.s(env.groups[key].decay_mult))
        if not local:
            continue
        w = env.weights[key]
        if step.kind == "L2":
            env.grads[key] = env.axpy(local, w, env.grads[key])
        elif step.kind == "L1":
            env.grads[key] = env.axpy(local, np.sign(w).astype(env.dtype), env.grads[key])
        else:
            raise ValueError(f"unknown regularization type {step.kind!r}")


def scale_by_lr(step: ScaleByLr, env: UpdateEnv) -> None:
    """``GetLearningRate`` at ``iter_ = k`` (``sgd_solver.cpp:26-70``; advances the multistep
    counter), then ``local_rate = rate * lr_mult`` in Dtype (``sgd_solver.cpp:228``)."""
    rate, env.current_step = lr_at(step.schedule, env.k, env.current_step, precision=env.precision)
    env.rate = rate
    r = env.s(rate)
    for key in env.keys:
        env.eta[key] = env.dtype(r * env.s(env.groups[key].lr_mult))


def momentum(step: Momentum, env: UpdateEnv) -> None:
    """SGD (``sgd_solver.cpp:223-254``): ``h = mu*h + eta*g`` (axpby), update ``u = h`` -- the
    learning rate lives INSIDE the velocity. Nesterov (``nesterov_solver.cpp:13-56``):
    ``h_old = h; h = mu*h + eta*g; u = (1+mu)*h - mu*h_old`` (axpby, ``1+mu`` in Dtype). mu is
    the blob's own momentum where its group has one (cuda-convnet's ``momW``/``momB``)."""
    for key in env.keys:
        mu = env.s(env.groups[key].momentum_or(step.momentum))
        h_old = env.slot(key, "history")
        h = env.axpby(env.eta[key], env.grads[key], mu, h_old)
        env.state[key]["history"] = h
        if step.nesterov:
            env.updates[key] = env.axpby(env.dtype(env.s(1.0) + mu), h, -mu, h_old)
        else:
            env.updates[key] = h


def adagrad(step: AdaGrad, env: UpdateEnv) -> None:
    """AdaGrad (``adagrad_solver.cpp:13-64``, CPU order): ``h += pow(g,2)``;
    ``u = eta * (g / (pow(h,0.5) + delta))`` -- delta OUTSIDE the root."""
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        h = powx(g, 2.0) + env.slot(key, "history")
        env.state[key]["history"] = h
        env.updates[key] = env.eta[key] * (g / (powx(h, 0.5) + delta))


def rmsprop(step: RMSProp, env: UpdateEnv) -> None:
    """RMSProp (``rmsprop_solver.cpp:13-65``, CPU order): ``h = rho*h + fl(1-rho)*pow(g,2)``;
    ``u = eta * (g / (pow(h,0.5) + delta))`` -- delta OUTSIDE the root."""
    rho = env.s(step.rms_decay)
    one_minus = env.dtype(env.s(1.0) - rho)
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        h = env.axpby(one_minus, powx(g, 2.0), rho, env.slot(key, "history"))
        env.state[key]["history"] = h
        env.updates[key] = env.eta[key] * (g / (powx(h, 0.5) + delta))


def adadelta(step: AdaDelta, env: UpdateEnv) -> None:
    """AdaDelta (``adadelta_solver.cpp:25-107``, CPU order), rho = ``momentum``::

    a = rho*a + fl(1-rho)*pow(g,2)
    d = g * pow((delta + b) / (delta + a), 0.5)      delta INSIDE both
    b = rho*b + fl(1-rho)*pow(d,2)                   (unscaled d)
    u = eta * d
    """
    rho = env.s(step.rho)
    one_minus = env.dtype(env.s(1.0) - rho)
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        a = env.axpby(one_minus, powx(g, 2.0), rho, env.slot(key, "history"))
        b = env.slot(key, "update_history")
        d = g * powx((delta + b) / (delta + a), 0.5)
        env.state[key]["history"] = a
        env.state[key]["update_history"] = env.axpby(one_minus, powx(d, 2.0), rho, b)
        env.updates[key] = env.eta[key] * d


def adam_correction(beta1: float, beta2: float, t: int) -> float:
    """``sqrt(1 - beta2^t) / (1 - beta1^t)`` in double (``adam_solver.cpp:39-41``)."""
    return math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t))


def adam(step: Adam, env: UpdateEnv) -> None:
    """Adam (``adam_solver.cpp:25-89``, CPU order), t = k + 1::

        m = b1*m + fl(1-b1)*g ;  v = b2*v + fl(1-b2)*(g*g)
        u = fl(eta * corr) * (m / (pow(v,0.5) + delta))   corr in double, rounded to Dtype
    delta is added to the UNCORRECTED sqrt(v) (the paper's epsilon-hat form)."""
    b1, b2 = env.s(step.beta1), env.s(step.beta2)
    om1, om2 = env.dtype(env.s(1.0) - b1), env.dtype(env.s(1.0) - b2)
    delta = env.s(step.delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = env.s(adam_correction(float(b1), float(b2), env.k + 1))
    for key in env.keys:
        g = env.grads[key]
        m = env.axpby(om1, g, b1, env.slot(key, "m"))
        v = env.axpby(om2, g * g, b2, env.slot(key, "v"))
        env.state[key]["m"], env.state[key]["v"] = m, v
        env.updates[key] = env.dtype(env.eta[key] * corr) * (m / (powx(v, 0.5) + delta))


def nvidia_weight_decay(
    weight_decay: float,
    policy: str,
    max_wd: float,
    power: float,
    max_iter: int,
    env: UpdateEnv,
) -> np.floating:
    """NVIDIA's ``GetWeightDecay`` (``sgd_solver.cpp:98-110``) at iter_ = env.k: ``wd`` or, for
    policy ``poly``, ``wd + (max_wd - wd) * pow(float(k) / max_iter, power)`` in float (any
    other policy name reads as fixed)."""
    wd = env.s(weight_decay)
    if policy != "poly":
        return wd
    frac = env.dtype(env.s(env.k) / env.s(max_iter))
    with np.errstate(all="ignore"):
        grow = env.dtype(np.power(frac, env.s(power)))
    return env.dtype(wd + env.dtype(env.dtype(env.s(max_wd) - wd) * grow))


def nvidia_decay(step: NvidiaDecay, env: UpdateEnv) -> None:
    """NVIDIA's decay with policy ``poly`` for the solvers other than SGD: their GPU kernels add
    ``local_decay * w`` (L2) or ``* sign(w)`` to the gradient first thing
    (``nesterov_solver.cu:16-17``, ``adagrad_solver.cu:15-16``, ``rmsprop_solver.cu:17-18``,
    ``adadelta_solver.cu:16-17``, ``adam_solver.cu:16-17``), local_decay =
    ``GetWeightDecay() * decay_mult`` (``sgd_solver.cpp:112-118``)."""
    wd = nvidia_weight_decay(
        step.weight_decay, "poly", step.max_weight_decay, step.power, step.max_iter, env
    )
    for key in env.keys:
        local = env.dtype(wd * env.s(env.groups[key].decay_mult))
        w = env.weights[key]
        reg = w if step.kind == "L2" else np.sign(w).astype(env.dtype)
        env.grads[key] = env.grads[key] + env.dtype(local) * reg


def nvidia_momentum(step: NvidiaSGD, env: UpdateEnv) -> np.floating:
    """NVIDIA's ``GetMomentum`` (``sgd_solver.cpp:72-96``) at iter_ = k: ``fixed``; ``poly``:
    ``mu + (max_mu - mu) * pow(float(k) / float(max_iter), power)``; ``opt``:
    ``(1 - 0.5 sqrt(lr))^2`` in double from the float rate, capped by ``max_momentum`` only
    when that field is written."""
    mu = env.s(step.momentum)
    if step.momentum_policy == "poly":
        frac = env.dtype(env.s(env.k) / env.s(step.max_iter))
        with np.errstate(all="ignore"):
            grow = env.dtype(np.power(frac, env.s(step.momentum_power)))
        return env.dtype(mu + env.dtype(env.dtype(env.s(step.max_momentum) - mu) * grow))
    if step.momentum_policy == "opt":
        root = env.dtype(np.sqrt(env.s(env.rate)))
        m = env.s((1.0 - 0.5 * float(root)) * (1.0 - 0.5 * float(root)))
        return min(env.s(step.max_momentum), m) if step.cap_momentum else m
    return mu


def nvidia_sgd(step: NvidiaSGD, env: UpdateEnv) -> None:
    """NVIDIA's SGD on the GPU (``sgd_solver.cpp:244-314``, ``GetLocalRate`` ``:316-368``, the
    kernels ``sgd_solver.cu:9-23`` (WD) and ``:74-86`` (L2/L1)); see :class:`NvidiaSGD`.
    The LARC norms are of the gradient after clipping and normalization, before the decay
    that the kernel adds (``Regularize`` does nothing on the GPU, ``sgd_solver.cpp:231-232``)."""
    mu = nvidia_momentum(step, env)
    rate = env.s(env.rate)
    wd = nvidia_weight_decay(
        step.weight_decay,
        step.decay_policy,
        step.max_weight_decay,
        step.weight_decay_power,
        step.max_iter,
        env,
    )
    for key in env.keys:
        g, w = env.grads[key], env.weights[key]
        h_old = env.slot(key, "history")
        lr_mult = env.s(env.groups[key].lr_mult)
        local = lr_mult
        if step.larc and step.sag:
            local = _sag_larc(step, env, key, g, w, h_old, lr_mult)
            local_rate = env.dtype(rate * local) if step.larc == "scale" else min(rate, local)
        elif step.larc:
            gn = env.dtype(np.sqrt(env.dtype(np.dot(g.ravel(), g.ravel()))))
            wn = env.dtype(np.sqrt(env.dtype(np.dot(w.ravel(), w.ravel()))))
            c = env.s(1.0)
            if wn > 0 and gn > 0:
                c = env.dtype(env.dtype(env.dtype(env.s(1.0) - mu) * env.s(step.larc_eta)) * wn)
                c = env.dtype(c / gn)
            if step.larc_turbo:
                dot = env.dtype(np.dot(g.ravel(), h_old.ravel()))
                mn = env.dtype(np.sqrt(env.dtype(np.dot(h_old.ravel(), h_old.ravel()))))
                corr = env.s(0.0)
                if gn > 0 and mn > 0:
                    corr = env.dtype(dot / env.dtype(gn * mn))
                state = env.state.setdefault(key, {})
                prev = state.get("larc_corr", env.s(0.0))
                avg = env.dtype(env.s(0.95) * prev + env.dtype(env.s(1.0) - env.s(0.95)) * corr)
                state["larc_corr"] = avg
                c = env.dtype(c - env.s(0.9) * avg)
            if lr_mult > 0:
                local = c
            local_rate = env.dtype(rate * local) if step.larc == "scale" else min(rate, local)
        else:
            local_rate = env.dtype(rate * lr_mult)
        env.eta[key] = env.dtype(local_rate)
        decay = env.dtype(wd * env.s(env.groups[key].decay_mult))
        if step.sag:  # sag_solver.cu:11-29 (L2), :87-104 (WD)
            m1 = env.dtype(env.s(1.0) - mu)
            if step.decay_kind == "WD":
                h = mu * h_old + m1 * g
                env.updates[key] = local_rate * (h + decay * w)
            else:
                h = mu * h_old + m1 * (g + decay * w)
                env.updates[key] = local_rate * h
        elif step.decay_kind == "WD":
            h = mu * h_old + local_rate * g
            env.updates[key] = h + env.dtype(decay * local_rate) * w
        else:
            gr = g
            if step.decay_kind:
                reg = w if step.decay_kind == "L2" else np.sign(w).astype(env.dtype)
                gr = g + reg * decay
            h = mu * h_old + local_rate * gr
            env.updates[key] = h
        env.state[key]["history"] = h.astype(env.dtype)
        env.updates[key] = env.updates[key].astype(env.dtype)


def _sag_larc(
    step: NvidiaSGD,
    env: UpdateEnv,
    key: str,
    g: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    lr_mult: np.floating,
) -> np.floating:
    """SAG's ``GetLocalRate`` (``sag_solver.cpp:95-137``): c = eta * ||w|| / ||h|| (1 when a
    norm is 0; h the history before this update) replaces lr_mult where it is > 0; turbo, from
    iter_ = 2 on, multiplies the rate by ``1 - 0.9 * corr``, corr the running mean of
    cos(g, h)."""

    def norm(x: np.ndarray) -> np.floating:
        return env.dtype(np.sqrt(env.dtype(np.dot(x.ravel(), x.ravel()))))

    gn, wn, hn = norm(g), norm(w), norm(h)
    c = env.s(1.0)
    if wn > 0 and hn > 0:
        c = env.dtype(env.dtype(env.s(step.larc_eta) * wn) / hn)
    local = c if lr_mult > 0 else lr_mult
    if step.larc_turbo and env.k > 1:
        cos = env.s(0.0)
        if gn > 0 and hn > 0:
            cos = env.dtype(env.dtype(np.dot(g.ravel(), h.ravel())) / env.dtype(gn * hn))
        state = env.state.setdefault(key, {})
        prev = state.get("larc_corr", env.s(0.0))
        avg = env.dtype(env.s(0.95) * prev + env.dtype(env.s(1.0) - env.s(0.95)) * cos)
        state["larc_corr"] = avg
        local = env.dtype(local * env.dtype(env.s(1.0) - env.s(0.9) * avg))
    return local


StepFn = Callable[[object, UpdateEnv], None]

#: step class -> reference function (tests replace entries to plant mistakes)
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
