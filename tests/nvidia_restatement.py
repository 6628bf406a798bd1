"""A float64 restatement of NVIDIA Caffe's update on its GPU path, written from the source of
NVIDIA/caffe at 87a25543 (v0.17.4), line by line, without caffe2tf's rule or reference: the
tests compare both with it (no NVIDIA binary runs here; it needs CUDA).

Scope: one GPU (``Caffe::solver_count() == 1``), no clipping, ``iter_size`` 1, float32 blobs.
Per iteration, ``Net::ReduceAndUpdate`` (``src/caffe/net.cpp:811-928``) takes the rate once
(``rate = solver_->GetLearningRate()``, :846-848), divides each diff by the loss scale (1 here,
:859) and calls ``ApplyUpdate(param_id, ..., rate, true, ...)`` per learnable blob (:860):
``Normalize`` (no-op for iter_size 1, ``sgd_solver.cpp:199-206``), ``Regularize`` (nothing on
the GPU, :231-232), ``ComputeUpdateValue`` (the solver's kernel, which adds the decay).
Then ``++iter_`` (``src/caffe/solver.cpp:368``).

Citations: ``sgd_solver.cpp`` etc. are ``src/caffe/solvers/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Solver:
    """The SolverParameter fields the update reads, with NVIDIA's caffe.proto defaults
    (``src/caffe/proto/caffe.proto:392-513``); callers pass float32-rounded values."""

    base_lr: float
    lr_policy: str
    max_iter: int
    type: str = "SGD"
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    momentum: float = 0.0
    momentum2: float = 0.999
    delta: float = 1e-8
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    rampup_interval: int = 0
    rampup_lr: float = 0.0
    min_lr: float = 0.0
    momentum_policy: str = "fixed"
    max_momentum: float = 0.99
    has_max_momentum: bool = False
    momentum_power: float = 1.0
    larc: bool = False
    larc_policy: str = "scale"
    larc_eta: float = 0.001
    larc_turbo: bool = False
    weight_decay_policy: str = "fixed"
    weight_decay_power: float = 1.0
    max_weight_decay: float = 0.0
    #: NVIDIA floors delta (adagrad_solver.cpp:20, adam_solver.cpp:44); False: BVLC's delta,
    #: what a port that ignores the floor runs
    delta_floor: bool = True


@dataclass
class _State:
    iter: int = 0
    current_step: int = 0
    history: dict = field(default_factory=dict)
    history2: dict = field(default_factory=dict)
    larc_g_corr: dict = field(default_factory=dict)


def get_learning_rate(p: Solver, s: _State) -> float:
    """``SGDSolver::GetLearningRate``, ``sgd_solver.cpp:23-70``."""
    min_lr = p.min_lr  # :27
    assert min_lr >= 0  # :28
    if s.iter < p.rampup_interval:  # :29
        alpha = s.iter / p.rampup_interval  # :30
        rampup_lr = p.rampup_lr  # :31-34 (has_rampup_lr, else 0 = the default)
        rate = rampup_lr + (p.base_lr - rampup_lr) * alpha * alpha  # :35
    elif p.lr_policy == "fixed":  # :36-37
        rate = p.base_lr
    elif p.lr_policy == "step":  # :38-40
        s.current_step = s.iter // p.stepsize
        rate = p.base_lr * p.gamma**s.current_step
    elif p.lr_policy == "exp":  # :41-42
        rate = p.base_lr * p.gamma**s.iter
    elif p.lr_policy == "inv":  # :43-45
        rate = p.base_lr * (1.0 + p.gamma * s.iter) ** (-p.power)
    elif p.lr_policy == "multistep":  # :46-53
        if s.current_step < len(p.stepvalue) and s.iter >= p.stepvalue[s.current_step]:
            s.current_step += 1
        rate = p.base_lr * p.gamma**s.current_step
    elif p.lr_policy == "poly":  # :54-59
        assert p.base_lr >= min_lr  # :56
        maxiter = float(p.max_iter) if p.max_iter > 0 else 1.0  # :58
        rate = (p.base_lr - min_lr) * (1.0 - s.iter / maxiter) ** p.power + min_lr  # :59
    elif p.lr_policy == "sigmoid":  # :60-62
        rate = p.base_lr / (1.0 + math.exp(-p.gamma * (s.iter - p.stepsize)))
    else:
        raise ValueError(f"Unknown learning rate policy: {p.lr_policy}")  # :63-64
    if rate < min_lr:  # :66-68
        rate = min_lr
    return rate


def get_momentum(p: Solver, s: _State) -> float:
    """``SGDSolver::GetMomentum``, ``sgd_solver.cpp:72-96``."""
    if p.momentum_policy == "fixed":  # :78-79
        return p.momentum
    if p.momentum_policy == "poly":  # :80-84
        return p.momentum + (p.max_momentum - p.momentum) * (s.iter / p.max_iter) ** (
            p.momentum_power
        )
    if p.momentum_policy == "opt":  # :85-91 (GetLearningRate again: no multistep here)
        lr = get_learning_rate(p, s)
        moment = (1.0 - 0.5 * math.sqrt(lr)) * (1.0 - 0.5 * math.sqrt(lr))
        if p.has_max_momentum:
            moment = min(p.max_momentum, moment)
        return moment
    raise ValueError(f"Unknown momentum policy: {p.momentum_policy}")  # :92-93


def get_weight_decay(p: Solver, s: _State) -> float:
    """``SGDSolver::GetWeightDecay``, ``sgd_solver.cpp:98-110``; ``local_decay`` multiplies it
    by the blob's decay_mult (:112-118)."""
    wd = p.weight_decay
    if p.weight_decay_policy == "poly":  # :103-107
        return wd + (p.max_weight_decay - wd) * (s.iter / p.max_iter) ** p.weight_decay_power
    return wd


def get_local_rate(p: Solver, s: _State, key: str, lr_mult: float, w, g) -> float:
    """``SGDSolver::GetLocalRate``, ``sgd_solver.cpp:316-368`` (float32 blobs: no wgrad_max)."""
    local_lr = lr_mult  # :318-319
    if p.larc:  # :320,327
        wgrad_norm = math.sqrt(float(np.sum(g * g)))  # :328, the diff: no decay yet
        w_norm = math.sqrt(float(np.sum(w * w)))  # :329
        momentum = get_momentum(p, s)  # :331
        rate = 1.0  # :332
        if w_norm > 0.0 and wgrad_norm > 0.0:  # :333-335
            rate = (1.0 - momentum) * p.larc_eta * w_norm / wgrad_norm
        if p.larc_turbo:  # :337-349
            hist = s.history.setdefault(key, np.zeros_like(w))
            g_m_dot = float(np.sum(g * hist))  # :340
            m_norm = math.sqrt(float(np.sum(hist * hist)))  # :341
            g_corr = 0.0
            if wgrad_norm > 0.0 and m_norm > 0.0:  # :343-345
                g_corr = g_m_dot / (wgrad_norm * m_norm)
            larc_beta = 0.95  # :346
            prev = s.larc_g_corr.get(key, 0.0)  # larc_g_corr_ starts at 0 (:137-140)
            s.larc_g_corr[key] = larc_beta * prev + (1.0 - larc_beta) * g_corr  # :347
            rate = rate - 0.9 * s.larc_g_corr[key]  # :348
        if local_lr > 0.0:  # :351-353
            local_lr = rate
    return local_lr


def _reg(p: Solver, w, l2: bool):
    return w if l2 else np.sign(w)  # (0 < w) - (w < 0): sign(0) = 0


def sgd_update(p: Solver, s: _State, key: str, rate: float, mults, w, g):
    """``SGDSolver::ComputeUpdateValue`` GPU branch, ``sgd_solver.cpp:244-314``, and the kernels
    ``sgd_solver.cu:9-23`` (``WD``) and ``:74-86`` (the others), chosen at :152-161."""
    lr_mult, decay_mult = mults
    momentum = get_momentum(p, s)  # :252
    local_rate = get_local_rate(p, s, key, lr_mult, w, g)  # :255
    if p.larc:  # :256-263
        local_rate = rate * local_rate if p.larc_policy == "scale" else min(rate, local_rate)
    else:
        local_rate = rate * local_rate  # :264-265
    decay = get_weight_decay(p, s) * decay_mult  # local_decay, :279
    h = s.history.setdefault(key, np.zeros_like(w))
    if p.regularization_type == "WD":  # sgd_solver.cu:152-155, kernel :9-23
        wd = decay * local_rate  # :12
        hf = momentum * h + local_rate * g  # :15
        w = w - (hf + wd * w)  # :16
    else:  # :156-161: L2 and L2_unitary decay w, anything else sign(w); kernel :74-86
        l2 = p.regularization_type in ("L2", "L2_unitary")
        gr = g + _reg(p, w, l2) * decay  # :79
        hf = momentum * h + local_rate * gr  # :80
        w = w - hf  # :81
    s.history[key] = hf
    return w


def adam_update(p: Solver, s: _State, key: str, rate: float, mults, w, g):
    """``AdamSolver::ComputeUpdateValue``, ``adam_solver.cpp:25-103``, kernel
    ``adam_solver.cu:10-24`` (``reg_type == "L2"`` only decays w, :65)."""
    lr_mult, decay_mult = mults
    local_rate = rate * lr_mult  # :30
    beta1, beta2 = p.momentum, p.momentum2  # :32-33
    t = s.iter + 1  # :41
    correction = math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)  # :42
    eps_hat = max(p.delta, 0.0001) if p.delta_floor else p.delta  # :44
    decay = get_weight_decay(p, s) * decay_mult  # :71
    m = s.history.setdefault(key, np.zeros_like(w))
    v = s.history2.setdefault(key, np.zeros_like(w))
    gr = g + _reg(p, w, p.regularization_type == "L2") * decay  # .cu:16-17
    m = m * beta1 + gr * (1.0 - beta1)  # .cu:18
    v = v * beta2 + gr * gr * (1.0 - beta2)  # .cu:19
    s.history[key], s.history2[key] = m, v
    return w - (local_rate * correction) * m / (np.sqrt(v) + eps_hat)  # .cu:20-21 (:87)


def adagrad_update(p: Solver, s: _State, key: str, rate: float, mults, w, g):
    """``AdaGradSolver::ComputeUpdateValue``, ``adagrad_solver.cpp:14-71``, kernel
    ``adagrad_solver.cu:10-25``."""
    lr_mult, decay_mult = mults
    delta = max(p.delta, 0.001) if p.delta_floor else p.delta  # :20
    local_rate = rate * lr_mult  # :21
    decay = get_weight_decay(p, s) * decay_mult  # :45
    h = s.history.setdefault(key, np.zeros_like(w))
    gr = g + _reg(p, w, p.regularization_type == "L2") * decay  # .cu:15-16
    h = h + gr * gr  # .cu:18
    s.history[key] = h
    return w - local_rate * gr / (np.sqrt(h) + delta)  # .cu:19,22


def sag_update(p: Solver, s: _State, key: str, rate: float, mults, w, g):
    """``SAGSolver::ComputeUpdateValue``, ``sag_solver.cpp:14-93`` (GPU branch), its
    ``GetLocalRate`` (:95-137) and kernels ``sag_solver.cu:11-29`` (L2), ``:87-104`` (WD),
    chosen at ``:173-185``."""
    lr_mult, decay_mult = mults
    h = s.history.setdefault(key, np.zeros_like(w))
    local_lr = lr_mult  # :97-98
    if p.larc:  # :99,106
        m_norm = math.sqrt(float(np.sum(h * h)))  # :107, the history before this update
        wgrad_norm = math.sqrt(float(np.sum(g * g)))  # :108
        w_norm = math.sqrt(float(np.sum(w * w)))  # :109
        rate_ = 1.0  # :111
        if w_norm > 0.0 and m_norm > 0.0:  # :112-114
            rate_ = p.larc_eta * w_norm / m_norm
        if local_lr > 0.0:  # :115-117
            local_lr = rate_
        if p.larc_turbo and s.iter > 1:  # :118-119
            g_m_dot = float(np.sum(g * h))  # :122
            corr = 0.0
            if wgrad_norm > 0.0 and m_norm > 0.0:  # :124-126
                corr = g_m_dot / (wgrad_norm * m_norm)
            prev = s.larc_g_corr.get(key, 0.0)
            s.larc_g_corr[key] = 0.95 * prev + (1.0 - 0.95) * corr  # :127-129
            local_lr = local_lr * (1.0 - 0.9 * s.larc_g_corr[key])  # :130-131
    if p.larc:  # sag_solver.cpp:24-33
        local_rate = rate * local_lr if p.larc_policy == "scale" else min(rate, local_lr)
    else:
        local_rate = rate * local_lr  # :35
    momentum = get_momentum(p, s)  # :39
    decay = get_weight_decay(p, s) * decay_mult  # :50
    m1 = 1.0 - momentum  # .cu:15, :91
    if p.regularization_type == "WD":
        h = momentum * h + m1 * g  # .cu:96
        w = w - local_rate * (h + decay * w)  # .cu:97
    else:
        h = momentum * h + m1 * (g + decay * w)  # .cu:21
        w = w - local_rate * h  # .cu:22
    s.history[key] = h
    return w


UPDATES = {
    "SGD": sgd_update,
    "Adam": adam_update,
    "AdaGrad": adagrad_update,
    "SAG": sag_update,
}


def run(p: Solver, mults: dict, init: dict, grads: list) -> list[dict]:
    """Weights (float64) after updates 1..N; ``mults[key] = (lr_mult, decay_mult)`` in the
    net's learnable order (the order ``ReduceAndUpdate`` walks does not matter here: no state
    is shared between blobs)."""
    s = _State()
    w = {k: np.asarray(v, np.float64) for k, v in init.items()}
    out = []
    for gk in grads:
        rate = get_learning_rate(p, s)  # net.cpp:846-848, once per iteration
        for key in mults:
            g = np.asarray(gk[key], np.float64)
            w[key] = UPDATES[p.type](p, s, key, rate, mults[key], w[key], g)
        s.iter += 1  # solver.cpp:368
        out.append({k: v.copy() for k, v in w.items()})
    return out


def ignoring(p: Solver, name: str) -> Solver:
    """``p`` with field ``name`` back at NVIDIA's default (what a port that ignores it runs);
    for ``delta_floor``, BVLC's unfloored delta."""
    if name == "delta_floor":
        return replace(p, delta_floor=False)
    return replace(p, **{name: Solver.__dataclass_fields__[name].default})
