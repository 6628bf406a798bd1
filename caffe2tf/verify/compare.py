"""The deviation measure and the verdict used by every trajectory comparison in caffe2tf.

Inputs are weight trajectories in Caffe blob layout, keyed ``"{layer}/{blob}"``:
``init`` holds w_0 and ``reference[t-1]`` / ``candidate[t-1]`` hold the weights after t updates,
t = 1..N (the same shape as ``caffe2tf replay`` writes, see :func:`trajectory_from_flat`).

Definitions (all arithmetic in float64 on the float32 values; ``max`` over the elements of every
compared blob, B = the set of compared keys)::

    travelled  T = max_{t=1..N} max_{b in B} max_i |ref_t[b]_i - w_0[b]_i|
                   (the elementwise distance the *reference* weights got from their start, at
                   the worst element and step; not a path length, not a norm)
    floor      F = 0.01 * max_{b in B} max_i |w_0[b]_i|
    scale      S = max(T, F)            (S = 1 when both are 0: then deviations are absolute)
    dev[t][b]  = max_i |cand_t[b]_i - ref_t[b]_i| / S
    dev[t]     = max_b dev[t][b]        (per-step series)
    dev[b]     = max_t dev[t][b]        (per-blob figure)
    deviation  = max_t dev[t]           (the number the verdict reads)
    passed     = deviation <= tolerance, and every weight finite on both sides

A NaN or inf weight in the reference, the candidate or ``init`` is a failure of its own,
whatever the numbers: ``nonfinite`` says where the first one is (side, blob, update), that
blob's deviation from then on is inf, and non-finite reference weights do not count in T.
(Comparing NaN with anything, or taking a ``max`` over NaN, would silently drop it: a NaN
reference once made a run PASS.) The tolerance must be finite and > 0.

One scale for all blobs on purpose: a blob that barely moves (``lr_mult: 0``, a bias with tiny
gradients) is judged on the scale of the whole net's motion, so its float32 rounding noise does not
dominate, while a wrong rule that moves it noticeably still shows. The 1% floor keeps runs whose
weights hardly move (small lr) from turning rounding error into large relative numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Weights = Mapping[str, np.ndarray]
Trajectory = Sequence[Weights]

DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_trajectories` (see the module docstring for each figure)."""

    keys: tuple[str, ...]
    steps: int
    tolerance: float
    travelled: float
    floor: float
    scale: float
    deviation: float
    worst_key: str
    worst_step: int  # 1-based update number where the deviation peaked (0 if no steps)
    per_blob: dict[str, float] = field(default_factory=dict)
    per_step: tuple[float, ...] = ()
    per_blob_step: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False)
    max_abs_diff: float = 0.0
    nonfinite: str = ""  # where the first NaN/inf weight is ("" when there is none)
    #: per blob, the L2 norm ||w_t|| of the reference's / the candidate's weights after each
    #: update t = 1..N (:class:`StreamingComparison` keeps them; empty otherwise)
    reference_norms: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False)
    candidate_norms: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return not self.nonfinite and bool(self.deviation <= self.tolerance)

    @property
    def percent_of_travel(self) -> float:
        """The deviation as a percentage of the scale S (the distance travelled, floored)."""
        return 100.0 * self.deviation

    def to_dict(self) -> dict:
        def num(x: float) -> float | str:
            return x if math.isfinite(x) else str(x)

        return {
            "steps": self.steps,
            "tolerance": self.tolerance,
            "travelled": num(self.travelled),
            "floor": num(self.floor),
            "scale": num(self.scale),
            "deviation": num(self.deviation),
            "max_abs_diff": num(self.max_abs_diff),
            "worst_key": self.worst_key,
            "worst_step": self.worst_step,
            "passed": self.passed,
            "nonfinite": self.nonfinite or None,
            "per_blob": {k: num(v) for k, v in self.per_blob.items()},
        }

    def summary(self) -> str:
        if self.nonfinite:
            return f"FAIL: {self.nonfinite}"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: deviation {self.deviation:.3e} (tolerance {self.tolerance:g}) at "
            f"{self.worst_key} step {self.worst_step}; travelled {self.travelled:.3e}, "
            f"scale {self.scale:.3e}"
        )


def trajectory_from_flat(
    flat: Mapping[str, np.ndarray], steps: int | None = None
) -> list[dict[str, np.ndarray]]:
    """``{"{step}/{layer}/{blob}": w}`` (step = 1..N, as ``replay`` writes) -> list of dicts.

    Keys whose first component is not an integer are ignored (the replay format says other keys
    are ignored). ``steps`` defaults to the largest step present; a missing step is an error.
    """
    by_step: dict[int, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        head, sep, rest = key.partition("/")
        if not sep or not head.isdigit():
            continue
        by_step.setdefault(int(head), {})[rest] = np.asarray(value)
    n = max(by_step, default=0) if steps is None else steps
    missing = [t for t in range(1, n + 1) if t not in by_step]
    if missing:
        raise ValueError(f"trajectory lacks steps {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return [by_step[t] for t in range(1, n + 1)]


def trajectory_to_flat(trajectory: Trajectory) -> dict[str, np.ndarray]:
    """Inverse of :func:`trajectory_from_flat`."""
    return {f"{t}/{k}": np.asarray(v) for t, ws in enumerate(trajectory, 1) for k, v in ws.items()}


def compare_trajectories(
    init: Weights,
    reference: Trajectory,
    candidate: Trajectory,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    keys: Sequence[str] | None = None,
    floor_fraction: float = 0.01,
) -> Comparison:
    """Compare ``candidate`` with ``reference`` (both start from ``init``); see module docstring.

    ``floor_fraction`` (0.01: the floor F above) is 0 for the probes of
    :mod:`caffe2tf.verify.components`, which run in float64 and are judged against the motion
    of their one term alone, however small.

    ``keys`` defaults to the keys of ``init``. Both trajectories must have the same length and
    hold every compared key with ``init``'s shape; a mismatch raises ``ValueError`` (it is a bug in
    the caller, not a verdict), as does a tolerance that is not a finite number > 0.
    """
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0, not {tolerance!r}")
    keys = tuple(keys) if keys is not None else tuple(init)
    if len(reference) != len(candidate):
        raise ValueError(f"reference has {len(reference)} steps, candidate {len(candidate)}")
    w0 = {k: np.asarray(init[k], dtype=np.float64) for k in keys}
    for t, (ref_t, cand_t) in enumerate(zip(reference, candidate, strict=True), 1):
        for k in keys:
            for who, ws in (("reference", ref_t), ("candidate", cand_t)):
                if k not in ws:
                    raise ValueError(f"{who} lacks {k!r} at step {t}")
                if np.shape(ws[k]) != w0[k].shape:
                    raise ValueError(
                        f"{who} {k!r} at step {t} has shape {np.shape(ws[k])}, "
                        f"init has {w0[k].shape}"
                    )
    steps = len(reference)
    nonfinite = ""
    for k in keys:
        if not np.all(np.isfinite(w0[k])):
            nonfinite = nonfinite or f"init has {_what(w0[k])} in {k}"
    travelled = 0.0
    for ref_t in reference:
        for k in keys:
            if w0[k].size:
                d = np.abs(np.asarray(ref_t[k], np.float64) - w0[k])
                d = d[np.isfinite(d)]
                if d.size:
                    travelled = max(travelled, float(np.max(d)))
    floor = floor_fraction * max(
        (float(np.max(np.abs(v), initial=0.0, where=np.isfinite(v))) for v in w0.values()),
        default=0.0,
    )
    scale = max(travelled, floor)
    if not scale > 0:
        scale = 1.0
    per_blob_step: dict[str, list[float]] = {k: [] for k in keys}
    max_abs = 0.0
    for t, (ref_t, cand_t) in enumerate(zip(reference, candidate, strict=True), 1):
        for k in keys:
            c = np.asarray(cand_t[k], np.float64)
            if c.size == 0:
                per_blob_step[k].append(0.0)
                continue
            r = np.asarray(ref_t[k], np.float64)
            bad = [(who, w) for who, w in (("reference", r), ("candidate", c)) if not _finite(w)]
            if bad:
                what = " and ".join(f"the {who} has {_what(w)}" for who, w in bad)
                nonfinite = nonfinite or f"{what} in {k} after update {t}"
                d = math.inf
            else:
                d = float(np.max(np.abs(c - r)))
            max_abs = max(max_abs, d)
            per_blob_step[k].append(d / scale)
    per_step = tuple(max((per_blob_step[k][t] for k in keys), default=0.0) for t in range(steps))
    per_blob = {k: max(v, default=0.0) for k, v in per_blob_step.items()}
    deviation = max(per_step, default=0.0)
    worst_step = (int(np.argmax(per_step)) + 1) if steps else 0
    worst_key = ""
    if steps and keys:
        worst_key = max(keys, key=lambda k: per_blob_step[k][worst_step - 1])
    return Comparison(
        keys=keys,
        steps=steps,
        tolerance=float(tolerance),
        travelled=travelled,
        floor=floor,
        scale=scale,
        deviation=deviation,
        worst_key=worst_key,
        worst_step=worst_step,
        per_blob=per_blob,
        per_step=per_step,
        per_blob_step={k: tuple(v) for k, v in per_blob_step.items()},
        max_abs_diff=max_abs,
        nonfinite=nonfinite,
    )


#: elements per slice when :class:`StreamingComparison` reduces two arrays (temporaries stay
#: a few MB however large a blob is: VGG16's fc6 holds 103M weights)
SLICE = 1 << 20


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a - b|`` in the arrays' own precision, slice by slice (:data:`SLICE`); a NaN
    anywhere makes it NaN, as ``np.max`` of the whole would."""
    a, b = np.ravel(a), np.ravel(b)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, which is the answer, not a warning
        if a.size <= SLICE:
            return float(np.max(np.abs(a - b)))
        tops = [
            np.max(np.abs(a[i : i + SLICE] - b[i : i + SLICE])) for i in range(0, a.size, SLICE)
        ]
        return float(np.max(np.array(tops)))


def _finite(w: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(w)))


def _what(w: np.ndarray) -> str:
    """``"NaN"``, ``"inf"`` or ``"NaN and inf"``: what non-finite values ``w`` holds."""
    kinds = [name for name, hit in (("NaN", np.isnan(w).any()), ("inf", np.isinf(w).any())) if hit]
    return " and ".join(kinds)


def comparison_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2, sort_keys=True)


class StreamingComparison:
    """:func:`compare_trajectories` reduced as the updates come: :meth:`observe` takes the
    weights after one update on both sides, keeps per blob the largest ``|cand - ref|`` and
    ``|ref - w0|`` of that update (scalars) and forgets the arrays; :meth:`result` divides by
    the scale once the run is over. Memory: a few floats per update, whatever the number of
    updates. ``init`` is read when the comparison is made (its largest weight, for the floor,
    and whether it is finite) and by :meth:`observe`, but not held, so a device engine, which
    feeds :meth:`observe_block`, can let go of seeded weights during its run
    (:class:`caffe2tf.verify.inputs.SeededWeights`). The same verdict and figures as
    :func:`compare_trajectories`, up to the rounding of the differences in the weights' own
    precision (relative 2^-24 in float32; ``|cand - ref|`` is exact wherever the two are
    within a factor 2 of each other, i.e. wherever the deviation is small)."""

    def __init__(
        self,
        init: Weights,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        keys: Sequence[str] | None = None,
        floor_fraction: float = 0.01,
        norms: bool = True,
    ) -> None:
        if not (math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"tolerance must be a finite number > 0, not {tolerance!r}")
        self.keys = tuple(keys) if keys is not None else tuple(init)
        self.tolerance = float(tolerance)
        self.floor_fraction = floor_fraction
        self.init = init
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.nonfinite = ""
        largest = 0.0  # max |w0| over the finite weights of every compared blob
        for k in self.keys:
            w0 = np.asarray(init[k])
            self.shapes[k] = w0.shape
            if not w0.size:
                continue
            # the extremes first: no temporary as big as the blob (VGG16's fc6: 411 MB)
            hi, lo = float(np.max(w0)), float(np.min(w0))
            if math.isfinite(hi) and math.isfinite(lo):
                largest = max(largest, hi, -lo)
                continue
            largest = max(largest, float(np.max(np.abs(w0), where=np.isfinite(w0), initial=0)))
            self.nonfinite = self.nonfinite or f"init has {_what(w0)} in {k}"
        self.largest_init = largest
        self.travelled = 0.0
        self.diffs: dict[str, list[float]] = {k: [] for k in self.keys}
        #: per blob, (||ref_t||, ||cand_t||) for each update t (the weight-norm trajectories
        #: verify --plot draws); kept when ``norms``
        self.keep_norms = norms
        self.norms: dict[str, list[tuple[float, float]]] = {k: [] for k in self.keys}
        self.steps = 0

    def observe(self, reference: Weights, candidate: Weights) -> None:
        """The weights after the next update (both sides, Caffe layout)."""
        self.steps += 1
        t = self.steps
        for k in self.keys:
            # each side's blob read once (a view of a backend's variable reads and transposes
            # it on every access: LeNet on TensorFlow, 2.5 ms an update for three reads)
            sides = []
            for who, ws in (("reference", reference), ("candidate", candidate)):
                try:
                    value = np.asarray(ws[k])
                except KeyError:
                    raise ValueError(f"{who} lacks {k!r} at step {t}") from None
                if value.shape != self.shapes[k]:
                    raise ValueError(
                        f"{who} {k!r} at step {t} has shape {value.shape}, "
                        f"init has {self.shapes[k]}"
                    )
                sides.append(value)
            w0 = np.asarray(self.init[k])
            if w0.size == 0:
                self.diffs[k].append(0.0)
                if self.keep_norms:
                    self.norms[k].append((0.0, 0.0))
                continue
            r, c = sides
            if self.keep_norms:
                self.norms[k].append((l2_norm(r), l2_norm(c)))
            # In the arrays' own precision (a device reduces them the same way): the
            # difference of two float32 numbers within a factor 2 of each other is exact
            # (Sterbenz); a NaN or inf anywhere makes the maximum non-finite.
            moved = max_abs_diff(r, w0)
            if math.isfinite(moved):
                self.travelled = max(self.travelled, moved)
            else:
                d = np.abs(np.asarray(r, np.float64) - np.asarray(w0, np.float64))
                d = d[np.isfinite(d)]
                if d.size:
                    self.travelled = max(self.travelled, float(np.max(d)))
            diff = max_abs_diff(c, r)
            if math.isfinite(diff):
                self.diffs[k].append(diff)
                continue
            bad = [(who, w) for who, w in (("reference", r), ("candidate", c)) if not _finite(w)]
            if bad:
                what = " and ".join(f"the {who} has {_what(w)}" for who, w in bad)
                self.nonfinite = self.nonfinite or f"{what} in {k} after update {t}"
            self.diffs[k].append(math.inf)

    def observe_scalars(
        self,
        diffs: Mapping[str, float],
        moved: Mapping[str, float],
        flags: Mapping[str, tuple[bool, bool, bool, bool]],
        norms: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        """One update already reduced on a device: per blob ``max|cand - ref|``, the largest
        finite ``|ref - w0|``, whether the reference / the candidate hold NaN / inf
        (``(ref NaN, ref inf, cand NaN, cand inf)``) and ``(||ref||, ||cand||)``."""
        self.steps += 1
        t = self.steps
        for k in self.keys:
            if norms is not None and self.keep_norms:
                self.norms[k].append((float(norms[k][0]), float(norms[k][1])))
            if not math.prod(self.shapes[k]):
                self.diffs[k].append(0.0)
                continue
            m = float(moved[k])
            if math.isfinite(m):
                self.travelled = max(self.travelled, m)
            ref_nan, ref_inf, cand_nan, cand_inf = flags[k]
            if ref_nan or ref_inf or cand_nan or cand_inf:
                parts = []
                for who, nan, inf in (
                    ("reference", ref_nan, ref_inf),
                    ("candidate", cand_nan, cand_inf),
                ):
                    if nan or inf:
                        what = " and ".join(n for n, hit in (("NaN", nan), ("inf", inf)) if hit)
                        parts.append(f"the {who} has {what}")
                self.nonfinite = self.nonfinite or f"{' and '.join(parts)} in {k} after update {t}"
                self.diffs[k].append(math.inf)
            else:
                self.diffs[k].append(float(diffs[k]))

    def observe_block(
        self,
        diffs: np.ndarray,
        moved: np.ndarray,
        flags: np.ndarray,
        norms: np.ndarray | None = None,
    ) -> None:
        """``n`` updates at once, as :meth:`observe_scalars` takes them one by one: arrays of
        shape ``(n, len(keys))``, ``flags`` ``(n, len(keys), 4)``, ``norms`` ``(n, len(keys),
        2)`` or None; the columns in :attr:`keys`' order."""
        diffs, moved, flags = np.asarray(diffs), np.asarray(moved), np.asarray(flags, bool)
        n = diffs.shape[0]
        if flags.any():  # a NaN or inf somewhere: update by update, for the message
            for t in range(n):
                self.observe_scalars(
                    {k: diffs[t, i] for i, k in enumerate(self.keys)},
                    {k: moved[t, i] for i, k in enumerate(self.keys)},
                    {k: tuple(bool(x) for x in flags[t, i]) for i, k in enumerate(self.keys)},
                    None if norms is None else {k: norms[t, i] for i, k in enumerate(self.keys)},
                )
            return
        self.steps += n
        for i, k in enumerate(self.keys):
            if norms is not None and self.keep_norms:
                self.norms[k].extend(map(tuple, norms[:, i, :].tolist()))
            if not math.prod(self.shapes[k]):
                self.diffs[k].extend([0.0] * n)
                continue
            m = moved[:, i][np.isfinite(moved[:, i])]
            if m.size:
                self.travelled = max(self.travelled, float(m.max()))
            self.diffs[k].extend(diffs[:, i].tolist())

    def result(self) -> Comparison:
        """The :class:`Comparison` of the updates observed so far."""
        keys, steps = self.keys, self.steps
        floor = self.floor_fraction * self.largest_init
        scale = max(self.travelled, floor)
        if not scale > 0:
            scale = 1.0
        per_blob_step = {k: tuple(d / scale for d in self.diffs[k]) for k in keys}
        per_step = tuple(
            max((per_blob_step[k][t] for k in keys), default=0.0) for t in range(steps)
        )
        deviation = max(per_step, default=0.0)
        worst_step = (int(np.argmax(per_step)) + 1) if steps else 0
        worst_key = ""
        if steps and keys:
            worst_key = max(keys, key=lambda k: per_blob_step[k][worst_step - 1])
        max_abs = max((max(v, default=0.0) for v in self.diffs.values()), default=0.0)
        return Comparison(
            keys=keys,
            steps=steps,
            tolerance=self.tolerance,
            travelled=self.travelled,
            floor=floor,
            scale=scale,
            deviation=deviation,
            worst_key=worst_key,
            worst_step=worst_step,
            per_blob={k: max(v, default=0.0) for k, v in per_blob_step.items()},
            per_step=per_step,
            per_blob_step=per_blob_step,
            max_abs_diff=max_abs,
            nonfinite=self.nonfinite,
            reference_norms={k: tuple(r for r, _ in v) for k, v in self.norms.items() if v},
            candidate_norms={k: tuple(c for _, c in v) for k, v in self.norms.items() if v},
        )


def l2_norm(w: np.ndarray) -> float:
    """||w|| = sqrt(sum_i w_i^2) in ``w``'s own precision, as a device reduces it (NaN or inf
    when ``w`` holds one)."""
    flat = np.ravel(w)
    return float(np.sqrt(np.dot(flat, flat)))
