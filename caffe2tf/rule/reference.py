"""NumPy reference executor of an :class:`UpdateRule` (float32 in Caffe's CPU order, or float64).

``run_reference(rule, init, grads)`` returns the weights after updates 1..N. Conventions (the
same as ``caffe2tf replay`` and the oracle harness):

* keys are ``"{layer}/{blob}"`` in Caffe's blob layout; ``grads[k]`` is what Caffe's diff holds
  when update k+1 starts = the raw SUM over the ``iter_size`` forward/backward passes;
* grads keys that are not weights are ignored; a blob without a gradient at some update has a
  zero diff there (as after ``ClearParamDiffs``); a sharer's key (``rule.params[..].sharers``)
  stands for its owner (owner and sharers alias one diff in Caffe, so the owner's key wins when
  both are given; they are never added twice);
* when the net is known, blobs are processed in Caffe's ``learnable_params_`` order; otherwise
  in the order of ``init`` with Caffe's default multipliers (``rule.default_group``);
* ``lr_mult: 0`` blobs are still learnable params (``net.cpp:452-458``): they have solver state,
  they are decayed (times eta = 0) and their diff enters the clip norm. In real training that
  diff is 0 (the layer does not compute it, unless ``force_backward``); the harness and replay
  write diffs directly and ``ApplyUpdate`` just reads them, so a non-zero gradient given for an
  lr_mult-0 blob DOES count in the clip norm here, as it does in the binary.

One update is ``for step in rule.steps: STEP_FUNCTIONS[type(step)](step, env)`` followed by
``w -= u`` (``Net::Update``, ``blob.cpp:173-197``) and ``k += 1``.

A blob whose rate is 0 gets an update of exactly 0 from AdaGrad, RMSProp, AdaDelta and Adam,
even where their formula is 0/0 = NaN (``delta: 0`` and a blob with no gradient yet). These
solvers apply the rate last, through BLAS: AdaGrad and RMSProp with ``caffe_cpu_axpby(rate, u,
0, diff)`` (``adagrad_solver.cpp:46-48``, ``rmsprop_solver.cpp:48-50``), which is ``?scal`` by 0
then ``?axpy`` by the rate (``mkl_alternate.hpp:89-94``); AdaDelta and Adam with
``caffe_cpu_scale(rate, u, diff)`` (``adadelta_solver.cpp:87-89``, ``adam_solver.cpp:71-72``),
``?copy`` then ``?scal`` (``math_functions.cpp:372-376``). The OpenBLAS that Debian's Caffe
links returns from ``?axpy`` without reading ``x`` when the factor is 0, and its ``?scal`` by 0
stores zeros instead of multiplying, so NaN * 0 never happens
there. Observed on the real binary: an ``lr_mult: 0`` blob with ``delta: 0`` keeps its weights,
where plain IEEE arithmetic gives NaN (``tests/test_hostile_input.py``). A blob with a non-zero
rate and 0/0 in its update is NaN in Caffe too, and here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    ClipByGlobalNorm,
    ParamGroup,
    RMSProp,
    UpdateRule,
)
from caffe2tf.rule.schedules import boundaries
from caffe2tf.rule.steps import STEP_FUNCTIONS, StepFn, UpdateEnv, adam_correction

_DTYPES = {"float32": np.float32, "float64": np.float64}


def _dtype(precision: str) -> type:
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision must be 'float32' or 'float64', not {precision!r}") from None


def owner_map(rule: UpdateRule) -> dict[str, str]:
    """Every known key (owners and sharers) -> its owner's key."""
    out: dict[str, str] = {}
    for g in rule.params:
        out[g.key] = g.key
        for s in g.sharers:
            out[s] = g.key
    return out


class ReferenceOptimizer:
    """Stateful step-by-step executor: ``opt.step(grads)`` applies one update and returns the
    new weights (keyed like ``init``). ``k`` is Caffe's ``iter_``; ``current_step`` its
    ``current_step_``; ``state`` the solver history per owner key; ``last_rate`` the global
    rate used by the latest update."""

    def __init__(
        self,
        rule: UpdateRule,
        init: Mapping[str, np.ndarray],
        *,
        precision: str = "float32",
        registry: Mapping[type, StepFn] | None = None,
        fused_axpy: bool = True,
    ) -> None:
        self.rule = rule
        self.fused_axpy = fused_axpy
        self.dtype = _dtype(precision)
        self.registry = dict(STEP_FUNCTIONS if registry is None else registry)
        omap = owner_map(rule)
        self._init_keys = list(init)
        self._key_owner: dict[str, str] = {}
        if rule.params:
            unknown = [k for k in init if k not in omap]
            if unknown:
                raise ValueError(f"weights {unknown} are not learnable blobs of the net")
            for k in init:
                self._key_owner[k] = omap[k]
            present = set(self._key_owner.values())
            self.keys = [g.key for g in rule.params if g.key in present]
            missing = [g.key for g in rule.params if g.key not in present]
            if missing and rule.step(ClipByGlobalNorm) is not None:
                raise ValueError(f"clipping needs every learnable blob; init lacks {missing}")
            self.groups: dict[str, ParamGroup] = {g.key: g for g in rule.params}
        else:
            self._key_owner = {k: k for k in init}
            self.keys = list(init)
            dg = rule.default_group
            self.groups = {
                k: ParamGroup(key=k, lr_mult=dg.lr_mult, decay_mult=dg.decay_mult)
                for k in self.keys
            }
        self.weights: dict[str, np.ndarray] = {}
        for k in init:
            owner = self._key_owner[k]
            if owner not in self.weights or k == owner:
                self.weights[owner] = np.array(init[k], dtype=self.dtype, copy=True)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.k = 0
        self.current_step = 0
        self.last_rate = 0.0

    def _gradient(self, grads: Mapping[str, np.ndarray], owner: str) -> np.ndarray:
        g = grads.get(owner)
        if g is None:  # a sharer's key stands for its owner (they alias one diff)
            g = next((grads[s] for s in self.groups[owner].sharers if s in grads), None)
        if g is None:  # no diff given: Caffe's cleared diff is zero
            return np.zeros_like(self.weights[owner])
        g = np.asarray(g)
        if g.shape != self.weights[owner].shape:
            raise ValueError(
                f"update {self.k + 1}: gradient for {owner!r} has shape "
                f"{g.shape}, weights have {self.weights[owner].shape}"
            )
        return g.astype(self.dtype, copy=True)

    def step(self, grads: Mapping[str, np.ndarray], *, copy: bool = True) -> dict[str, np.ndarray]:
        """Apply one update; the new weights keyed like ``init`` (``copy=False``: views of the
        executor's own arrays, valid until the next update)."""
        env = UpdateEnv(
            k=self.k,
            dtype=self.dtype,
            keys=list(self.keys),
            weights=self.weights,
            grads={o: self._gradient(grads, o) for o in self.keys},
            groups=self.groups,
            state=self.state,
            current_step=self.current_step,
            fused_axpy=self.fused_axpy,
        )
        with np.errstate(all="ignore"):
            for s in self.rule.steps:
                self.registry[type(s)](s, env)
            self._zero_rate_blobs_stay(env)
            for o in self.keys:
                self.weights[o] = self.weights[o] - env.updates[o]
        self.current_step = env.current_step
        self.last_rate = env.rate
        self.k += 1
        if not copy:
            return {k: self.weights[self._key_owner[k]] for k in self._init_keys}
        return self.snapshot()

    def _zero_rate_blobs_stay(self, env: UpdateEnv) -> None:
        """The update of a blob whose applied rate is 0 is exactly 0 in the adaptive solvers
        (BLAS never multiplies by that 0; see the module docstring)."""
        solver = next(
            (s for s in self.rule.steps if isinstance(s, (AdaGrad, RMSProp, AdaDelta, Adam))), None
        )
        if solver is None:
            return
        corr = None
        if isinstance(solver, Adam):  # the factor Adam scales by is fl(rate * correction)
            try:
                corr = env.s(
                    adam_correction(
                        float(env.s(solver.beta1)), float(env.s(solver.beta2)), env.k + 1
                    )
                )
            except (ZeroDivisionError, ValueError, OverflowError):
                return
        for o in self.keys:
            eta = env.eta.get(o)
            if eta is None or o not in env.updates:
                continue
            factor = eta if corr is None else env.dtype(eta * corr)
            if factor == 0:
                env.updates[o] = np.zeros_like(self.weights[o])

    def snapshot(self) -> dict[str, np.ndarray]:
        """Current weights keyed like ``init`` (a sharer's key gets its owner's weights)."""
        return {k: self.weights[self._key_owner[k]].copy() for k in self._init_keys}


def fast_forward(opt: ReferenceOptimizer, start: int) -> None:
    """Enter the run at Caffe iteration ``start`` with fresh (zero) solver state, as a run that
    got there would hold its counters: ``iter_ = start`` and, for ``multistep``, the stages a
    fresh run has passed before ``start`` (one advance per update,
    :func:`caffe2tf.rule.schedules.boundaries`)."""
    opt.k = int(start)
    schedule = opt.rule.schedule
    opt.current_step = len(boundaries(schedule, start)) if schedule.policy == "multistep" else 0
    if schedule.policy == "step" and schedule.stepsize > 0:
        opt.current_step = start // schedule.stepsize


def run_reference(
    rule: UpdateRule,
    init: Mapping[str, np.ndarray],
    grads: Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
    fused_axpy: bool = True,
    start: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Weights after updates 1..N (``len(grads)`` updates from a fresh solver at ``iter_ =
    start``, see :func:`fast_forward`; 0 by default).

    ``registry`` replaces :data:`caffe2tf.rule.steps.STEP_FUNCTIONS` (for planting mistakes).
    ``fused_axpy`` (float32 only): emulate BLAS ``?axpy`` with one rounding (FMA, as OpenBLAS
    does on current x86-64 CPUs) or two (see :mod:`caffe2tf.rule.steps`).
    """
    opt = ReferenceOptimizer(
        rule, init, precision=precision, registry=registry, fused_axpy=fused_axpy
    )
    if start:
        fast_forward(opt, start)
    return [opt.step(g) for g in grads]
