"""The runs ``verify`` compares, one set per component of Caffe's rule (no Keras here).

A single run from iteration 0 on random gradients misses a mistake whose term is small next to
the gradients (a decay off by a factor 2 at ``weight_decay: 1e-5``), or one that only shows where
the rule changes (a multistep boundary, the end of ``poly``). So :func:`plan_runs` adds, for the
rule at hand:

``stream``
    the seeded gradient stream from iteration 0 (float32, ``steps`` updates);
``schedule``
    one window of ``steps`` updates around each schedule milestone (every multistep stage,
    the first ``step`` multiples, the ``sigmoid`` midpoint, the last updates before
    ``max_iter``), entered by fast-forwarding both rules' iteration counters with fresh state
    (:func:`caffe2tf.rule.reference.fast_forward`, :func:`caffe2tf.verify.keras_harness.
    fast_forward`); a lr outside the momentum buffer shows where the lr changes;
``decay``
    zero gradients, so only the weight decay moves the weights: a factor 2 is a 100% error
    whatever ``weight_decay`` is;
``state``
    one gradient impulse, then zero gradients: the momentum / adaptive state alone;
``epsilon``
    gradients of the size of sqrt(delta), where putting delta inside or outside the square
    root makes a difference of order 1;
``clipping``
    gradient sums just above and just below ``clip_gradients`` (global norm x1.05, x0.95);
``accumulation``
    ``iter_size`` micro-batches that cancel each other in large part.

The probes (every run but ``stream`` and ``schedule``) run in float64 on both sides, with no
1% floor in the deviation, so each is judged against its own term's motion; float32 rounding of
a correct port stays far below the tolerance (margins in docs/verify.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    Momentum,
    RMSProp,
    UpdateRule,
)
from caffe2tf.rule.schedules import boundaries
from caffe2tf.verify import streams

Grads = list[dict[str, np.ndarray]]

#: the components in report order
COMPONENTS = (
    "stream",
    "schedule",
    "decay",
    "state",
    "epsilon",
    "clipping",
    "accumulation",
)
MAX_WINDOWS = 6
PROBE_STEPS = 30


@dataclass(frozen=True)
class Run:
    """One comparison run: both rules start at iteration ``start`` with fresh state.
    :meth:`data` makes its inputs only when the run is executed (one run's gradients in memory
    at a time): ``init`` and ``micro``, the ``len(grads) * iter_size`` per-pass gradients whose
    sums per update are ``grads``."""

    component: str
    label: str
    start: int
    updates: int
    make: Callable[[], tuple[dict[str, np.ndarray], Grads, Grads]] = field(repr=False)
    dtype: str = "float32"

    def data(self) -> tuple[dict[str, np.ndarray], Grads, Grads]:
        return self.make()

    @property
    def floor_fraction(self) -> float:
        """The deviation's floor (:func:`caffe2tf.verify.compare.compare_trajectories`): none
        for the float64 probes, which are judged on their own term's motion."""
        return 0.01 if self.dtype == "float32" else 0.0


def milestones(rule: UpdateRule, steps: int) -> list[tuple[int, str]]:
    """Iterations where the schedule changes, with why (at most :data:`MAX_WINDOWS`)."""
    s = rule.schedule
    horizon = rule.max_iter if rule.max_iter > 0 else 0
    found: list[tuple[int, str]] = []
    if s.policy == "multistep":
        found += [(b, "multistep stage") for b in boundaries(s, horizon or 2**62)]
    elif s.policy == "step" and s.stepsize > 0:
        found += [(s.stepsize * j, f"step x{j}") for j in (1, 2, 3)]
    elif s.policy == "sigmoid" and s.stepsize > 0:
        found.append((s.stepsize, "sigmoid midpoint"))
    if horizon:
        found = [(m, why) for m, why in found if m < horizon]
        found.append((horizon, "last updates before max_iter"))
    if len(found) > MAX_WINDOWS:  # the first ones and the last ones
        head = MAX_WINDOWS // 2
        found = found[:head] + found[-(MAX_WINDOWS - head) :]
    return found


def _stream(
    shapes: Mapping[str, Sequence[int]],
    steps: int,
    seed: int,
    iter_size: int,
    frozen: Sequence[str],
) -> tuple[Grads, Grads]:
    micro = streams.micro_batches(shapes, steps, seed, iter_size=iter_size)
    micro = [{k: (np.zeros_like(v) if k in frozen else v) for k, v in g.items()} for g in micro]
    return micro, streams.accumulate(micro, iter_size)


def _repeat_updates(updates: Grads, iter_size: int) -> tuple[Grads, Grads]:
    """Micro-batches for whole-update gradients: the first pass carries the update's gradient,
    the others zero (their float64 sum is the update's gradient exactly)."""
    micro: Grads = []
    for g in updates:
        micro.append(g)
        micro += [{k: np.zeros_like(v) for k, v in g.items()} for _ in range(iter_size - 1)]
    return micro, [dict(g) for g in updates]


def plan_runs(
    rule: UpdateRule,
    shapes: Mapping[str, Sequence[int]],
    init: Mapping[str, np.ndarray],
    *,
    steps: int,
    seed: int,
    frozen: Sequence[str] = (),
) -> list[Run]:
    """Every run of every component that applies to ``rule`` (see the module docstring).
    ``frozen``: blobs whose gradient Caffe never writes (they get zero in every run)."""
    iter_size = max(1, rule.iter_size)
    init32 = {k: np.asarray(v, np.float32) for k, v in init.items()}
    init64 = {k: np.asarray(v, np.float64) for k, v in init.items()}
    live = [k for k in shapes if k not in frozen]

    def rng(tag: int) -> np.random.Generator:
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9B0, tag])

    def normal(r: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
        return {
            k: (r.normal(0.0, scale, tuple(shapes[k])) if k in live else np.zeros(shapes[k]))
            for k in shapes
        }

    def zeros() -> dict[str, np.ndarray]:
        return {k: np.zeros(tuple(shapes[k])) for k in shapes}

    def stream(stream_seed: int) -> Callable[[], tuple[dict[str, np.ndarray], Grads, Grads]]:
        def make() -> tuple[dict[str, np.ndarray], Grads, Grads]:
            return (init32, *_stream(shapes, steps, stream_seed, iter_size, frozen))

        return make

    def probe(updates: Callable[[], Grads]) -> Callable[[], tuple[dict, Grads, Grads]]:
        def make() -> tuple[dict[str, np.ndarray], Grads, Grads]:
            return (init64, *_repeat_updates(updates(), iter_size))

        return make

    runs = [Run("stream", f"iterations 0..{steps - 1}", 0, steps, stream(seed))]
    for i, (m, why) in enumerate(milestones(rule, steps)):
        start = max(0, m - steps // 2) if why != "last updates before max_iter" else m - steps
        start = max(0, start)
        if start == 0 or any(r.start == start for r in runs):
            continue  # the stream from 0 (or another window) already covers it
        label = f"iterations {start}..{start + steps - 1} ({why} at {m})"
        runs.append(Run("schedule", label, start, steps, stream(seed + 1 + i)))

    n = min(steps, PROBE_STEPS)
    decay = rule.step(AddDecay)
    if isinstance(decay, AddDecay) and any(
        g.decay_mult != 0 and g.lr_mult != 0 for g in rule.params
    ):
        make = probe(lambda: [zeros() for _ in range(n)])
        runs.append(Run("decay", "zero gradients: decay alone", 0, n, make, "float64"))
    solver = rule.solver_step
    if not (isinstance(solver, Momentum) and solver.momentum == 0):
        make = probe(lambda: [normal(rng(1))] + [zeros() for _ in range(n - 1)])
        runs.append(Run("state", "one impulse, then zero gradients", 0, n, make, "float64"))
    if isinstance(solver, AdaGrad | RMSProp | AdaDelta | Adam) and solver.delta > 0:
        size = math.sqrt(float(np.float32(solver.delta)))

        def small(size: float = size) -> Grads:
            r = rng(2)
            return [normal(r, size) for _ in range(n)]

        label = f"gradients of size sqrt(delta) = {size:.3g}"
        runs.append(Run("epsilon", label, 0, n, probe(small), "float64"))
    clip = rule.step(ClipByGlobalNorm)
    if isinstance(clip, ClipByGlobalNorm) and clip.threshold > 0:
        for j, factor in enumerate((1.05, 0.95)):

            def near(factor: float = factor, j: int = j, c: float = clip.threshold) -> Grads:
                r, out = rng(3 + j), []
                for _ in range(n):
                    g = normal(r)
                    norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
                    out.append({k: v * (factor * c / norm) for k, v in g.items()})
                return out

            label = f"gradient norm {factor:g} x clip_gradients"
            runs.append(Run("clipping", label, 0, n, probe(near), "float64"))
    if iter_size > 1:

        def cancelling() -> tuple[dict[str, np.ndarray], Grads, Grads]:
            r, micro = rng(5), []
            for _ in range(n):
                total = normal(r)
                parts = [normal(r, 3.0) for _ in range(iter_size - 1)]
                micro += [*parts, {k: total[k] - sum(p[k] for p in parts) for k in shapes}]
            grads = [
                {k: sum(micro[u * iter_size + j][k] for j in range(iter_size)) for k in shapes}
                for u in range(n)
            ]
            return init64, micro, grads

        label = f"{iter_size} micro-batches that largely cancel"
        runs.append(Run("accumulation", label, 0, n, cancelling, "float64"))
    return runs
