"""The runs ``verify`` compares, one set per component of Caffe's rule (no Keras here).

A single run from iteration 0 on random gradients misses a mistake whose term is small next to
the gradients (a decay off by a factor 2 at ``weight_decay: 1e-5``), or one that only shows where
the rule changes (a multistep boundary, the end of ``poly``). So :func:`plan_runs` adds, for the
rule at hand:

``stream``
    the seeded gradient stream from iteration 0 (float32, ``steps`` updates);
``schedule``
    one window of ``min(steps, WINDOW_UPDATES)`` updates around each schedule milestone
    (every multistep stage, the first ``step`` multiples, the ``sigmoid`` midpoint, the last
    updates before ``max_iter``), entered by fast-forwarding both rules' iteration counters
    with fresh state (:func:`caffe2tf.rule.reference.fast_forward`,
    :func:`caffe2tf.verify.keras_harness.fast_forward`); a lr outside the momentum buffer
    shows where the lr changes. A window is short on purpose: a mistake at a milestone moves
    the weights by a fixed amount, while the distance travelled it is divided by grows with
    the window (docs/verify.md#what-verify-catches);
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
a correct port stays far below the tolerance (margins in docs/verify.md). They run on a corner
of each blob (:func:`probe_shapes`), the stream and the windows on the whole net.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
from caffe2tf.verify.compare import StreamingComparison
from caffe2tf.verify.inputs import SeededWeights
from caffe2tf.verify.streams import GradientSpec

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
#: updates in a schedule window at most (half before the milestone, half from it on)
WINDOW_UPDATES = 100
PROBE_STEPS = 30


@dataclass(frozen=True)
class Run:
    """One comparison run: both rules start at iteration ``start`` with fresh state, from
    ``init`` (float32, or float64 for the probes), and are fed ``updates`` updates of the
    gradients ``spec`` describes (:class:`caffe2tf.verify.streams.GradientSpec`), made one
    update at a time (:meth:`gradients`): nothing holds a whole run."""

    component: str
    label: str
    start: int
    updates: int
    spec: GradientSpec
    shapes: Mapping[str, tuple[int, ...]] = field(repr=False, default_factory=dict)
    init: Mapping[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def floor_fraction(self) -> float:
        """The deviation's floor (:func:`caffe2tf.verify.compare.compare_trajectories`): none
        for the float64 probes, which are judged on their own term's motion."""
        return 0.01 if self.dtype == "float32" else 0.0

    def comparison(
        self, *, tolerance: float, keys: Sequence[str], norms: bool
    ) -> StreamingComparison:
        """What each engine feeds as the run's updates come: the deviation of ``keys`` from
        ``init`` at the run's floor; ``norms``: keep both sides' weight norms too."""
        return StreamingComparison(
            self.init,
            tolerance=tolerance,
            keys=list(keys),
            floor_fraction=self.floor_fraction,
            norms=norms,
        )

    def gradients(self) -> streams.NumpyGradients:
        """The run's gradients on the host, update by update."""
        return streams.NumpyGradients(self.spec, self.shapes)

    def data(self) -> tuple[dict[str, np.ndarray], Grads, Grads]:
        """The whole run at once: ``init``, the ``updates * iter_size`` micro-batches and the
        ``updates`` diffs (small runs and tests; verify itself streams)."""
        made = self.gradients()
        micro: Grads = []
        grads: Grads = []
        for k in range(self.updates):
            parts, total = made.update(k)
            micro += parts
            grads.append(total)
        return dict(self.init), micro, grads


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


#: the probes run on each blob cut to at most this many entries along each axis
PROBE_EXTENT = 8


def probe_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """The blob shapes the probes run on: each axis cut to :data:`PROBE_EXTENT`. A probe
    judges one term of the rule, which Caffe applies to every element of a blob alike
    (elementwise; the clip norm is over whatever the blobs hold), so a corner of each blob
    shows it as well as the whole, and the probes' float64 runs cost the same on VGG16 as on
    LeNet. Per-channel blobs of one layer (a BatchNorm's statistics and its Scale's gamma/beta)
    are cut alike and stay consistent."""
    return {k: tuple(min(int(d), PROBE_EXTENT) for d in v) for k, v in shapes.items()}


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
    # seeded weights stay as they are (float32 already), so that a fused engine can let go
    # of their arrays (:class:`caffe2tf.verify.inputs.SeededWeights`)
    if isinstance(init, SeededWeights):
        init32: Mapping[str, np.ndarray] = init
    else:
        init32 = {k: np.asarray(v, np.float32) for k, v in init.items()}
    frozen = tuple(frozen)
    shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    small = probe_shapes(shapes)
    init64 = {
        k: np.asarray(init32[k][tuple(slice(0, d) for d in small[k])], np.float64) for k in shapes
    }

    def run(component: str, label: str, start: int, n: int, spec: GradientSpec) -> Run:
        if spec.dtype == "float32":
            return Run(component, label, start, n, spec, shapes, init32)
        return Run(component, label, start, n, spec, small, init64)

    def stream(stream_seed: int) -> GradientSpec:
        return GradientSpec("stream", stream_seed, iter_size, "float32", frozen=frozen)

    def probe(kind: str, tag: int, **kw: float) -> GradientSpec:
        probe_seed = streams.mix(int(seed), 0x9B0, tag)
        return GradientSpec(kind, probe_seed, iter_size, "float64", frozen=frozen, **kw)

    runs = [run("stream", f"iterations 0..{steps - 1}", 0, steps, stream(seed))]
    width = min(steps, WINDOW_UPDATES)
    for i, (m, why) in enumerate(milestones(rule, steps)):
        start = m - width if why == "last updates before max_iter" else m - width // 2
        start = max(0, start)
        if start == 0 or any(r.start == start for r in runs):
            continue  # the stream from 0 (or another window) already covers it
        label = f"iterations {start}..{start + width - 1} ({why} at {m})"
        runs.append(run("schedule", label, start, width, stream(seed + 1 + i)))

    n = min(steps, PROBE_STEPS)
    decay = rule.step(AddDecay)
    if isinstance(decay, AddDecay) and any(
        g.decay_mult != 0 and g.lr_mult != 0 for g in rule.params
    ):
        runs.append(run("decay", "zero gradients: decay alone", 0, n, probe("zeros", 0)))
    solver = rule.solver_step
    if not (isinstance(solver, Momentum) and solver.momentum == 0):
        label = "one impulse, then zero gradients"
        runs.append(run("state", label, 0, n, probe("impulse", 1)))
    if isinstance(solver, AdaGrad | RMSProp | AdaDelta | Adam) and solver.delta > 0:
        size = math.sqrt(float(np.float32(solver.delta)))
        label = f"gradients of size sqrt(delta) = {size:.3g}"
        runs.append(run("epsilon", label, 0, n, probe("uniform", 2, scale=size)))
    clip = rule.step(ClipByGlobalNorm)
    if isinstance(clip, ClipByGlobalNorm) and clip.threshold > 0:
        for j, factor in enumerate((1.05, 0.95)):
            label = f"gradient norm {factor:g} x clip_gradients"
            spec = probe("norm", 3 + j, norm=factor * float(np.float32(clip.threshold)))
            runs.append(run("clipping", label, 0, n, spec))
    if iter_size > 1:
        label = f"{iter_size} micro-batches that largely cancel"
        runs.append(run("accumulation", label, 0, n, probe("cancel", 5)))
    return runs
