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
from dataclasses import dataclass, field
from typing import Literal

from caffe2tf.errors import SourceLocation
from caffe2tf.notes import Note

SolverType = Literal["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]
LrPolicy = Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]


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
    """SGD: h = mu*h + eta*g; w -= h.  Nesterov: w -= (1+mu)*h_new - mu*h_old."""

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


SolverStep = Momentum | AdaGrad | RMSProp | AdaDelta | Adam


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
Step = ClipByGlobalNorm | NormalizeBy | AddDecay | ScaleByLr | SolverStep


@dataclass(frozen=True)
class ParamGroup:
    """Per-blob multipliers. ``key`` is ``"{layer}/{index}"``; ``sharers`` alias the same state."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    shape: tuple[int, ...] | None = None
    layer_type: str = ""
    sharers: tuple[str, ...] = ()
    location: SourceLocation | None = field(default=None, compare=False)

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
