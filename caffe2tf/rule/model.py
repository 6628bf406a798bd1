"""Caffe's update rule as data: an ordered chain of named steps plus per-blob groups.

One Caffe update (``SGDSolver::ApplyUpdate``, caffe ``src/caffe/solvers/sgd_solver.cpp:108-127``)
with k = ``iter_`` (updates already applied) and G_p the raw diff summed over ``iter_size`` passes::

    n = sqrt(sum_p ||G_p||^2);  G_p *= c/n if n > c        ClipByGlobalNorm   (:87-106)
    g_p = G_p * fl(1/S)                                    NormalizeBy        (:129-153)
    g_p += wd*decay_mult*w_p   (L2)  | *sign(w_p) (L1)     AddDecay           (:155-215)
    eta_p = policy(k) * lr_mult_p                          ScaleByLr          (:26-70, :228)
    u_p = solver step(g_p, eta_p, state_p, k);  w_p -= u_p Momentum | AdaGrad | RMSProp | ...

``UpdateRule.steps`` holds these in this order; every later stage (reference executor, Keras
plan, explain) reads only this object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from caffe2tf.errors import SourceLocation
from caffe2tf.notes import Note

SolverType = Literal["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]
LrPolicy = Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "multifixed"]


@dataclass(frozen=True)
class LrSchedule:
    """Caffe's ``lr_policy`` with its fields (float32-rounded). See ``rule/schedules.py``."""

    policy: LrPolicy
    base_lr: float
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    max_iter: int = 0
    # NVIDIA Caffe's GetLearningRate (docs/nvidia-caffe.md#learning-rate): a quadratic warm-up
    # from rampup_lr to base_lr over the first rampup_interval updates, then the policy, the
    # rate never below min_lr. ``min_lr`` None: BVLC Caffe (no warm-up, no floor).
    rampup_interval: int = 0
    rampup_lr: float = 0.0
    min_lr: float | None = None
    # the yolo fork's "multifixed" (QiaoXie/caffe-yolo-2 sgd_solver.cpp:32-40): stagelr[s] for
    # the first stage s with k <= stageiter[s], the last stage's rate past every stageiter
    stagelr: tuple[float, ...] = ()
    stageiter: tuple[int, ...] = ()


# ---- the steps, in Caffe's order -------------------------------------------------------------


@dataclass(frozen=True)
class ClipByGlobalNorm:
    """If n = ||G||_2 over all owner blobs > threshold: G *= threshold / n (strict >)."""

    threshold: float
    name: str = "clip"


@dataclass(frozen=True)
class NormalizeBy:
    """g = G * fl(1/iter_size); present only when iter_size != 1."""

    iter_size: int
    name: str = "normalize"


@dataclass(frozen=True)
class AddDecay:
    """g += weight_decay * decay_mult * w (L2) or * sign(w), sign(0) = 0 (L1)."""

    kind: Literal["L2", "L1"]
    weight_decay: float
    name: str = "decay"


@dataclass(frozen=True)
class ScaleByLr:
    """eta_p = schedule(k) * lr_mult_p, k = updates already applied."""

    schedule: LrSchedule
    name: str = "lr"


@dataclass(frozen=True)
class Momentum:
    """SGD: h = mu*h + eta*g; w -= h.  Nesterov: w -= (1+mu)*h_new - mu*h_old.

    mu is ``momentum``, or the blob's own :attr:`ParamGroup.momentum` where it has one."""

    momentum: float
    nesterov: bool = False
    name: str = "momentum"


@dataclass(frozen=True)
class AdaGrad:
    """h += g^2; w -= eta * g / (sqrt(h) + delta)."""

    delta: float
    name: str = "adagrad"


@dataclass(frozen=True)
class RMSProp:
    """h = rho*h + (1-rho)*g^2; w -= eta * g / (sqrt(h) + delta)."""

    rms_decay: float
    delta: float
    name: str = "rmsprop"


@dataclass(frozen=True)
class AdaDelta:
    """a = rho*a + (1-rho)g^2; d = g*sqrt((b+delta)/(a+delta)); b = rho*b + (1-rho)d^2;
    w -= eta*d (b holds the squared updates *without* eta)."""

    rho: float
    delta: float
    name: str = "adadelta"


@dataclass(frozen=True)
class Adam:
    """m,v EMAs; t = k+1; w -= eta*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+delta)."""

    beta1: float
    beta2: float
    delta: float
    name: str = "adam"


@dataclass(frozen=True)
class NvidiaDecay:
    """NVIDIA Caffe's weight-decay policy ``poly`` (``sgd_solver.cpp:98-118``, GPU path; the
    CPU path ignores it): at update k, lambda_k = wd + (max_wd - wd) * (k / max_iter)^power,
    then g += lambda_k * decay_mult * w (L2) or * sign(w) (L1), as :class:`AddDecay`."""

    kind: Literal["L2", "L1"]
    weight_decay: float
    max_weight_decay: float
    power: float
    max_iter: int
    name: str = "decay"


@dataclass(frozen=True)
class NvidiaSGD:
    """NVIDIA Caffe's SGD as its GPU kernel runs it (``sgd_solver.cpp:244-368``,
    ``sgd_solver.cu:9-164``; docs/nvidia-caffe.md#sgd): the weight decay is fused into the
    update, after the LARC rate is formed from the undecayed gradient::

        mu_k = momentum | poly: mu + (max_mu - mu)(k/max_iter)^power | opt: (1 - sqrt(lr_k)/2)^2
        larc: c = (1 - mu_k) * eta * ||w|| / ||g|| (1 when a norm is 0), turbo: c -= 0.9 * corr;
              r = lr_k * c (scale) or min(lr_k, c) (clip) where lr_mult > 0, else lr_k * lr_mult
        L2/L1: h = mu_k h + r (g + lambda_k d w | sign w);  w -= h
        WD:    h = mu_k h + r g;  w -= h + r lambda_k d w        (decoupled)

    with d = decay_mult and lambda_k the (policy's) weight decay (:class:`NvidiaDecay`).

    ``sag``: NVIDIA's SAG solver instead (``sag_solver.cpp:14-137``, ``sag_solver.cu:11-104``):
    the history averages, ``h = mu h + (1 - mu)(g + lambda d w)`` (L2) or ``(1 - mu) g`` (WD),
    then ``w -= r h`` (WD: ``w -= r (h + lambda d w)``); LARC's c is ``eta ||w|| / ||h||`` with
    the history before the update, and turbo multiplies the rate by ``1 - 0.9 corr`` from the
    third update on."""

    momentum: float
    momentum_policy: str = "fixed"
    max_momentum: float = 0.99
    momentum_power: float = 1.0
    cap_momentum: bool = False
    max_iter: int = 0
    larc: str = ""
    larc_eta: float = 0.001
    larc_turbo: bool = False
    decay_kind: Literal["", "L2", "L1", "WD"] = ""
    weight_decay: float = 0.0
    decay_policy: str = "fixed"
    max_weight_decay: float = 0.0
    weight_decay_power: float = 1.0
    sag: bool = False
    name: str = "nvidia_sgd"


SolverStep = Momentum | AdaGrad | RMSProp | AdaDelta | Adam | NvidiaSGD


@dataclass(frozen=True)
class SolverEntry:
    """How one Caffe solver type lowers: the ``SolverParameter`` fields it reads and the step
    built from them (keyword arguments named like the fields)."""

    reads: tuple[str, ...]
    build: Callable[..., SolverStep]


#: The one table of solvers: Caffe solver type -> its step. ``momentum`` doubles as Adam's
#: beta1 and AdaDelta's rho (``adam_solver.cpp:30-31``, ``adadelta_solver.cpp:30``); see
#: docs/caffe-semantics.md#solvers for each solver's equations.
SOLVERS: dict[str, SolverEntry] = {
    "SGD": SolverEntry(("momentum",), lambda momentum: Momentum(momentum)),
    "Nesterov": SolverEntry(("momentum",), lambda momentum: Momentum(momentum, nesterov=True)),
    "AdaGrad": SolverEntry(("delta",), lambda delta: AdaGrad(delta)),
    "RMSProp": SolverEntry(
        ("rms_decay", "delta"), lambda rms_decay, delta: RMSProp(rms_decay, delta)
    ),
    "AdaDelta": SolverEntry(
        ("momentum", "delta"), lambda momentum, delta: AdaDelta(rho=momentum, delta=delta)
    ),
    "Adam": SolverEntry(
        ("momentum", "momentum2", "delta"),
        lambda momentum, momentum2, delta: Adam(momentum, momentum2, delta),
    ),
}
#: NVIDIA Caffe's solvers on its GPU path (docs/nvidia-caffe.md#solvers): the fields each reads
#: (SolverSpec names) and its step. SGD becomes :class:`NvidiaSGD` where one of NVIDIA's SGD
#: features is in use (rule/lower.py picks), else the BVLC step; the adaptive solvers floor
#: delta (adagrad_solver.cpp:20, rmsprop_solver.cpp:23, adadelta_solver.cpp:34,
#: adam_solver.cpp:44). SAG is :class:`NvidiaSGD` with ``sag``.
#: the floors are float literals (0.001f, 0.0001F), stored as their float32 values
_F32_1E3, _F32_1E4 = 0.0010000000474974513, 9.999999747378752e-05
NVIDIA_DELTA_FLOOR = {
    "AdaGrad": _F32_1E3,
    "RMSProp": _F32_1E4,
    "AdaDelta": _F32_1E3,
    "Adam": _F32_1E4,
}


def _nvidia_sgd(
    momentum: float,
    momentum_policy: str,
    max_momentum: float,
    momentum_power: float,
    has_max_momentum: bool,
    max_iter: int,
    larc: bool,
    larc_policy: str,
    larc_eta: float,
    larc_turbo: bool,
) -> NvidiaSGD:
    return NvidiaSGD(
        momentum,
        momentum_policy,
        max_momentum,
        momentum_power,
        has_max_momentum,
        max_iter,
        larc_policy if larc else "",
        larc_eta,
        larc_turbo,
    )


NVIDIA_SOLVERS: dict[str, SolverEntry] = {
    "SGD": SolverEntry(
        (
            "momentum",
            "momentum_policy",
            "max_momentum",
            "momentum_power",
            "has_max_momentum",
            "max_iter",
            "larc",
            "larc_policy",
            "larc_eta",
            "larc_turbo",
        ),
        _nvidia_sgd,
    ),
    "Nesterov": SOLVERS["Nesterov"],
    "SAG": SolverEntry(
        (
            "momentum",
            "momentum_policy",
            "max_momentum",
            "momentum_power",
            "has_max_momentum",
            "max_iter",
            "larc",
            "larc_policy",
            "larc_eta",
            "larc_turbo",
        ),
        lambda **fields: replace(_nvidia_sgd(**fields), sag=True),
    ),
    **{
        name: SolverEntry(
            SOLVERS[name].reads,
            lambda *, _name=name, **fields: SOLVERS[_name].build(
                **{**fields, "delta": max(fields["delta"], NVIDIA_DELTA_FLOOR[_name])}
            ),
        )
        for name in ("AdaGrad", "RMSProp", "AdaDelta", "Adam")
    },
}
#: the solver table of each dialect (caffe2tf/caffe/dialect.py)
SOLVER_TABLES = {
    "bvlc": SOLVERS,
    "nvidia": NVIDIA_SOLVERS,
    "yolo": SOLVERS,
    # TSN's fork knows SGD, Nesterov and AdaGrad, with BVLC's math (yjxiong/caffe
    # src/caffe/solver.cpp:740-930; its enum has no other type, yjxiong/caffe caffe.proto:194-198)
    "tsn": {name: SOLVERS[name] for name in ("SGD", "Nesterov", "AdaGrad")},
}
Step = ClipByGlobalNorm | NormalizeBy | AddDecay | NvidiaDecay | ScaleByLr | SolverStep


@dataclass(frozen=True)
class ParamGroup:
    """Per-blob multipliers. ``key`` is ``"{layer}/{index}"``; ``sharers`` alias the same state.

    ``momentum``: this blob's own momentum, replacing the :class:`Momentum` step's (None: the
    step's). Caffe has one momentum per solver; cuda-convnet one per weight matrix (``momW``)
    and bias (``momB``) (docs/cuda-convnet.md#update)."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    shape: tuple[int, ...] | None = None
    layer_type: str = ""
    sharers: tuple[str, ...] = ()
    location: SourceLocation | None = field(default=None, compare=False)
    momentum: float | None = None

    def momentum_or(self, default: float) -> float:
        """This blob's momentum: its own, else ``default`` (the Momentum step's)."""
        return default if self.momentum is None else self.momentum

    @property
    def layer(self) -> str:
        """The Caffe layer that owns the blob."""
        return self.key.rpartition("/")[0]

    @property
    def index(self) -> int:
        """The blob's index within its layer (0: the main weight, 1: the bias)."""
        return int(self.key.rpartition("/")[2])

    @property
    def trainable(self) -> bool:
        return self.lr_mult != 0.0


@dataclass(frozen=True)
class UpdateRule:
    """The whole update: ``steps`` in execution order, ``params`` in Caffe's learnable order.

    ``params`` is empty when the net is unknown; then every blob uses ``default_group``
    multipliers (lr_mult 1, decay_mult 1, as Caffe does without ``param {}``).

    The rule also carries the train-net facts that targets and verify need, so that nothing
    downstream of lowering reads the net again: ``net_known`` (a train net was read),
    ``layers`` (its layer names, TRAIN phase), ``scale_pairs`` (``(Scale layer, BatchNorm
    layer)`` for each Scale that scales a BatchNorm's output, see
    :func:`caffe2tf.rule.lower.scale_pairs`) and ``force_backward``
    (``NetParameter.force_backward``: Caffe then computes the diffs of ``lr_mult: 0`` blobs
    too, ``net.cpp:235-238``).
    """

    solver: SolverType
    steps: tuple[Step, ...]
    params: tuple[ParamGroup, ...] = ()
    iter_size: int = 1
    max_iter: int = 0
    notes: tuple[Note, ...] = ()
    default_group: ParamGroup = field(default_factory=lambda: ParamGroup(key="*"))
    net_known: bool = False
    layers: tuple[str, ...] = ()
    scale_pairs: tuple[tuple[str, str], ...] = ()
    force_backward: bool = False
    # whose trainer runs it: a Caffe dialect (caffe/dialect.py DIALECTS) or "cuda-convnet"
    # (caffe2tf/rule/lower_convnet.py)
    dialect: str = "bvlc"

    @property
    def per_blob_momentum(self) -> bool:
        """True when some blob's momentum differs from the Momentum step's."""
        step = self.step(Momentum)
        if not isinstance(step, Momentum):
            return False
        return any(g.momentum_or(step.momentum) != step.momentum for g in self.params)

    def step(self, kind: type) -> Step | None:
        """The first step of the given class, or None."""
        for s in self.steps:
            if isinstance(s, kind):
                return s
        return None

    @property
    def schedule(self) -> LrSchedule:
        s = self.step(ScaleByLr)
        assert isinstance(s, ScaleByLr)
        return s.schedule

    @property
    def solver_step(self) -> SolverStep:
        return self.steps[-1]  # type: ignore[return-value]

    def group(self, key: str) -> ParamGroup:
        for g in self.params:
            if g.key == key or key in g.sharers:
                return g
        return ParamGroup(
            key=key, lr_mult=self.default_group.lr_mult, decay_mult=self.default_group.decay_mult
        )
