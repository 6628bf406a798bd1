"""The fused engine on Keras' TensorFlow backend (docs/verify.md#both-rules-on-one-device): the
gradients (:mod:`caffe2tf.verify.stream_program` over TensorFlow), the candidate's
``apply_gradients`` on its tape gradient, Caffe's rule (:class:`caffe2tf.rule.tf_executor.
TfExecutor`'s traced update) and the comparison in one ``tf.function(jit_compile=True)`` per
chunk of updates, a ``tf.while_loop`` that XLA compiles as one program. Only per-update scalars
come back to the host: per blob ``max|c - r|``, ``max|r - w0|``, whether either side holds a
NaN or inf, and both sides' norms, as :class:`caffe2tf.verify.device.DeviceEngine` gives them
on JAX.

Caffe's rule runs in Keras' layout (every step but the clip norm's sum is elementwise), from
the weights the candidate's model loaded, and the gradients are made in that layout, so
nothing is transposed per update. A candidate whose step XLA cannot compile is reported by
:meth:`TfDeviceEngine.run` raising :class:`NotCompiled` before anything ran; the caller then
runs the verify on the host engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.model import UpdateRule
from caffe2tf.rule.tf_executor import TfExecutor
from caffe2tf.verify import keras_harness
from caffe2tf.verify.compare import Comparison
from caffe2tf.verify.components import Run
from caffe2tf.verify.device import (
    HOIST_MAX_ELEMENTS,
    chunk_args,
    keras_layout_axes,
    program_group,
)
from caffe2tf.verify.inputs import release_host_copy
from caffe2tf.verify.jax_compare import BLOCK_ELEMENTS
from caffe2tf.verify.loops.tensorflow import tape_apply
from caffe2tf.verify.mirror import trained_pairs
from caffe2tf.verify.stream_program import gradient_function, tf_ops

#: the fused TensorFlow engine takes the runs of one compiled program (:func:`fused_runs`)
#: that make at least this many updates together
#: (tracing the loop and having XLA compile it, or load it from the cache, costs 2-5 s on
#: LeNet; each update then costs ~0.7 ms against ~9 ms on the host engine: bench/RESULTS.md
#: "Session 10"; LeNet's --steps 1000 makes 1,300 in the stream and its windows), or of this
#: much work (weights x updates).
#: Nets of any size: above :data:`~caffe2tf.verify.device.HOIST_MAX_ELEMENTS` weights the loop
#: makes the gradients' index arrays in every update, it reduces each blob above
#: :data:`~caffe2tf.verify.jax_compare.BLOCK_ELEMENTS` by blocks, and the host's seeded
#: initial weights are let go during it; VGG16 ``--steps 20`` peaks lower than on the host
#: engine, in a sixth of its time (bench/RESULTS.md "Session 12")
FUSED_MIN_UPDATES = 1000
FUSED_MIN_WORK = 1e9
#: ... or from this much work per compared blob, where that is less: the loop's one-off cost
#: grows with the blobs it traces and converts (LeNet's 8: about 2.3 s with its program in the
#: cache, 5 s compiling it), the host engine's with the weights and updates (LeNet: about
#: 18 ms an update). So LeNet's ``--steps 100`` (400 updates, 1.7e8 weight-updates) takes the
#: loop: 3.4-4.2 s beyond start-up against 7.6-8.4 s on the host engine, 6.5-7.0 s against
#: 8.6-9.1 s with nothing cached (bench/RESULTS.md "Session 14"); a net of many blobs
#: (GoogLeNet's 128) is held to :data:`FUSED_MIN_WORK`
FUSED_WORK_PER_BLOB = 1.5e7


class NotCompiled(Exception):
    """XLA refused the candidate's step (an operation it cannot compile): nothing ran."""


def fused_runs(runs: Sequence[Run]) -> list[bool]:
    """Per run of a verify, whether the fused TensorFlow engine takes it. The runs that share
    one compiled program (:func:`~caffe2tf.verify.device.program_group`: the stream and the
    schedule windows; the float64 probes) go to it together where they are enough work to pay
    for tracing and compiling it (:func:`fused_applies`); the others run on the host engine,
    which starts sooner (LeNet's probes: 60 updates of cut blobs, about 2 s
    for their program against 1 s on the host engine; bench/RESULTS.md "Session 12")."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(program_group(run), []).append(i)
    out = [False] * len(runs)
    for members in groups.values():
        if fused_applies([runs[i] for i in members]):
            for i in members:
                out[i] = True
    return out


def fused_applies(runs: Sequence[Run]) -> bool:
    """Whether the fused TensorFlow engine takes a verify of these runs: from
    :data:`FUSED_MIN_UPDATES` updates on, or from ``min(FUSED_MIN_WORK, FUSED_WORK_PER_BLOB
    x blobs)`` weights x updates."""
    if not runs:
        return False
    size = sum(int(np.prod(s)) for s in runs[0].shapes.values())
    updates = sum(r.updates for r in runs)
    least = min(FUSED_MIN_WORK, FUSED_WORK_PER_BLOB * len(runs[0].shapes))
    return updates >= FUSED_MIN_UPDATES or size * updates >= least


class TfDeviceEngine:
    """The fused engine for one candidate module on Keras' TensorFlow backend. The mirror model
    and optimizer (:class:`caffe2tf.verify.keras_harness.CandidateSession`) and Caffe's executor
    are made once per precision and blob shapes and reset for each run, so the runs of one kind
    of gradients (the stream and the schedule windows) share one compiled program.
    ``device``: a TensorFlow device name (None: TensorFlow's choice)."""

    def __init__(
        self, rule: UpdateRule, candidate: Any, layers: Any, device: str | None = None
    ) -> None:
        self.rule = rule
        self.layers = layers
        self.device = device
        self.session = keras_harness.CandidateSession(candidate)
        self.executors: dict[tuple, TfExecutor] = {}
        self.programs: dict[tuple, Any] = {}

    def _placed(self) -> Any:
        import contextlib

        import tensorflow as tf

        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def run(
        self,
        run: Run,
        *,
        tolerance: float,
        keys: Sequence[str],
        progress: Callable[[int], None] | None = None,
        timings: dict[str, float] | None = None,
        norms: bool = True,
    ) -> Comparison:
        """``run`` compared; ``norms``: also keep both sides' weight norms per update (what
        ``verify --plot`` draws; a program of its own)."""
        import tensorflow as tf

        timings = timings if timings is not None else {}
        t0 = time.perf_counter()
        layers = self.layers(run.shapes) if callable(self.layers) else self.layers
        with self._placed():
            model, optimizer, _ = self.session.model_for(layers, run.init, run.dtype)
            pairs = trained_pairs(model)
            tvars = [v for _, v in pairs]
            if run.start:
                keras_harness.fast_forward(
                    optimizer, tvars, run.start * max(1, self.rule.iter_size)
                )
            # w0: what the model loaded (Keras' layout), the other blobs as Caffe has them
            w0 = {k: tf.identity(v.value) for k, v in pairs}
            for k in run.init:
                if k not in w0:
                    w0[k] = tf.constant(np.asarray(run.init[k], run.dtype))
            executor = self._executor(run, w0)
            key = (*program_group(run), run.spec.frozen, norms)
            if key not in self.programs:  # XLA compiles it once per chunk length (two at most)
                self.programs[key] = _chunk_program(
                    run, model, optimizer, pairs, executor, list(keys), norms
                )
            program = self.programs[key]
        comparison = run.comparison(tolerance=tolerance, keys=keys, norms=norms)
        # the model, Caffe's executor and w0 hold the weights now: the host's seeded copy
        # goes until a later run reads it (VGG16: 552 MB less at the loop's peak)
        release_host_copy(run.init)
        w0_list = [w0[k] for k in keys]
        for n, (idx, rates, corr, seed, salts, knobs) in chunk_args(self.rule, run):
            args = (
                tf.constant(idx),
                tf.constant(rates),
                tf.constant(corr),
                tf.constant(seed),
                {k: tf.constant(v) for k, v in salts.items()},
                tuple(tf.constant(x) for x in knobs),
                w0_list,
            )
            with self._placed():
                try:
                    ys = program(*args)
                except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
                    # traced and compiled at the first call, before any update runs: a step
                    # that cannot be traced in a loop or compiled by XLA is refused there
                    if comparison.steps:
                        raise
                    first = (str(e).strip().splitlines() or [""])[0]
                    first = first.split(" (No registered")[0][:200]
                    raise NotCompiled(f"{type(e).__name__}: {first}") from e
            comparison.observe_block(*(y.numpy() for y in ys))  # norms: the fourth, if any
            if progress is not None:
                progress(n)
        timings["device"] = timings.get("device", 0.0) + time.perf_counter() - t0
        return comparison.result()

    def _executor(self, run: Run, w0: Mapping[str, Any]) -> TfExecutor:
        """Caffe's rule on variables in Keras' layout, started from ``w0`` at ``run.start``
        with fresh state (one executor per precision and blob shapes, reset per run)."""
        key = (run.dtype, tuple(sorted(run.shapes.items())))
        init = {k: w0[k] for k in run.init}
        if key not in self.executors:
            self.executors[key] = TfExecutor(
                self.rule, init, precision=run.dtype, start=run.start, updates=run.updates
            )
        else:
            self.executors[key].reset(init, start=run.start, updates=run.updates)
        return self.executors[key]


def _chunk_program(
    run: Run,
    model: Any,
    optimizer: Any,
    pairs: list[tuple[str, Any]],
    executor: TfExecutor,
    keys: list[str],
    norms: bool,
) -> Any:
    """``program(ks, rates, corr, seed, salts, knobs, w0) -> (diffs, moved, flags[, norms])``:
    the updates ``ks`` of a run, one ``tf.while_loop`` compiled by XLA. Per update: the
    gradients (the micro-batches and Caffe's diff), the candidate's ``apply_gradients`` per
    micro-batch, Caffe's update, then the per-blob scalars, in ``keys``' order; both sides'
    weight norms only with ``norms``."""
    import tensorflow as tf

    dt = tf.float32 if run.dtype == "float32" else tf.float64
    gen = gradient_function(run.spec, run.shapes, keras_layout_axes(model, pairs), ops=tf_ops())
    iter_size = max(1, executor.cr.rule.iter_size)
    apply = tape_apply(model, optimizer, [v for _, v in pairs])
    position = {k: v for k, v in pairs}
    cr = executor.cr
    keep_tables = sum(int(np.prod(v)) for v in run.shapes.values()) <= HOIST_MAX_ELEMENTS

    def compare(w0: list[Any]) -> tuple[Any, ...]:
        sides = []
        for key, start in zip(keys, w0, strict=True):
            r = executor.weights[key].read_value() if key in executor.weights else start
            c = position[key].value if key in position else start
            sides.append((r, c, start))
        zero, no = tf.zeros((), dt), tf.zeros((), tf.bool)
        live = [int(np.prod(r.shape)) > 0 for r, _, _ in sides]

        def per_blob(fn: Callable[..., tuple], combine: tuple, empty: tuple) -> list[tuple]:
            """``fn(r, c, w0)``'s figures of every blob, a big one's by blocks (``combine``:
            how two blocks' figures make one); ``empty``: those of an empty blob."""
            return [
                _blockwise(side, fn, combine) if ok else empty
                for side, ok in zip(sides, live, strict=True)
            ]

        inf = tf.constant(np.inf, dt)

        def apart(r: Any, c: Any, s: Any) -> tuple[Any, Any]:
            """``max|c - r|`` and ``max|r - w0|``, a NaN counted as inf: TensorFlow's XLA
            takes the maximum of the other elements (its fast min/max on the CPU), and the
            NaN must send the update to :func:`looked_at`."""
            d, m = tf.abs(c - r), tf.abs(r - s)
            d, m = (tf.where(tf.math.is_nan(x), inf, x) for x in (d, m))
            return tf.reduce_max(d), tf.reduce_max(m)

        figures = per_blob(apart, (tf.maximum, tf.maximum), (zero, zero))
        diffs = tf.stack([d for d, _ in figures])
        moved = tf.stack([m for _, m in figures])
        finite = tf.reduce_all(tf.math.is_finite(tf.concat([diffs, moved], 0)))

        def fine() -> tuple[Any, Any]:
            return moved, tf.zeros((len(keys), 4), tf.bool)

        def looked_at() -> tuple[Any, Any]:
            """A NaN or inf: each side looked at, and ``|r - w0|``'s finite part taken."""

            def seen(r: Any, c: Any, s: Any) -> tuple[Any, ...]:
                d = tf.abs(r - s)
                far = tf.reduce_max(tf.where(tf.math.is_finite(d), d, zero))
                checks = (
                    tf.math.is_nan(r),
                    tf.math.is_inf(r),
                    tf.math.is_nan(c),
                    tf.math.is_inf(c),
                )
                return (far, *(tf.reduce_any(x) for x in checks))

            anyof = tf.logical_or
            found = per_blob(seen, (tf.maximum, anyof, anyof, anyof, anyof), (zero, *[no] * 4))
            return tf.stack([f[0] for f in found]), tf.stack([tf.stack(f[1:]) for f in found])

        moved_out, flags = tf.cond(finite, fine, looked_at)
        if not norms:
            return diffs, moved_out, flags
        # the weight-norm trajectories of verify --plot: (||r||, ||c||), any layout; only
        # where asked, unlike on JAX: TensorFlow's XLA sums these slowly (LeNet: the loop
        # took 1.6 ms an update with them, 0.66 without, bench/RESULTS.md)

        def squares(r: Any, c: Any, _: Any) -> tuple[Any, Any]:
            return tf.reduce_sum(r * r), tf.reduce_sum(c * c)

        sums = per_blob(squares, (tf.add, tf.add), (zero, zero))
        return diffs, moved_out, flags, tf.sqrt(tf.stack([tf.stack(x) for x in sums]))

    def chunk(ks, rates, corr, seed, salts, knobs, w0):  # noqa: ANN001, ANN202
        n = int(ks.shape[0])
        out = [tf.TensorArray(t, size=n) for t in (dt, dt, tf.bool, dt)[: 4 if norms else 3]]

        def body(i: Any, origin: Any, *arrays: Any) -> tuple[Any, ...]:
            micro, diff = gen(ks[i], seed, salts, knobs, None if keep_tables else origin)
            for j in range(iter_size):
                apply([micro[j][key] for key in position])
            executor.apply([diff[k] for k in cr.keys], rates[i], corr[i])
            ys = compare(w0)
            origin = _next_origin(origin, ks[i])
            return (i + 1, origin, *(a.write(i, y) for a, y in zip(arrays, ys, strict=True)))

        start = (tf.constant(0), tf.constant(0, tf.uint32), *out)
        done = tf.while_loop(lambda i, *_: i < n, body, start)
        return tuple(a.stack() for a in done[2:])

    return tf.function(chunk, jit_compile=True, autograph=False)


def _next_origin(origin: Any, k: Any) -> Any:
    """The loop's origin for the next update: ``origin & k``, a zero (the origin starts at
    zero) that XLA cannot prove constant across the loop, since it changes with the update's
    number; so the index arrays it is added to are made in every update, not held whole."""
    import tensorflow as tf

    return tf.bitwise.bitwise_and(origin, tf.cast(k, tf.uint32))


def _blockwise(
    arrays: Sequence[Any], fn: Callable[..., tuple], combine: Sequence[Callable]
) -> tuple[Any, ...]:
    """``fn(*arrays)`` (a tuple of scalars) for arrays of one shape; above
    :data:`~caffe2tf.verify.jax_compare.BLOCK_ELEMENTS` elements, over blocks of whole rows of
    their first axis in a ``tf.while_loop`` (plus the rows left over), each block's figures
    folded into the last's by ``combine`` (one binary operation per figure: maximum, or, sum).
    XLA materialises ``|c - r|`` before it reduces it; by blocks it holds one block's such
    temporaries, not the whole blob's (VGG16's fc6: 411 MB for each difference)."""
    import tensorflow as tf

    shape = [int(d) for d in arrays[0].shape]
    n = int(np.prod(shape, dtype=np.int64))
    if not shape or n <= BLOCK_ELEMENTS:
        return tuple(fn(*arrays))
    step = max(1, BLOCK_ELEMENTS // max(1, n // shape[0]))
    blocks, left = divmod(shape[0], step)

    def rows(at: Any, count: int) -> list[Any]:
        begin = [at] + [0] * (len(shape) - 1)
        return [tf.slice(a, begin, [count, *shape[1:]]) for a in arrays]

    def body(i: Any, *acc: Any) -> tuple[Any, ...]:
        figures = fn(*rows(i * step, step))
        return (i + 1, *(op(a, f) for op, a, f in zip(combine, acc, figures, strict=True)))

    first = tuple(fn(*rows(0, step)))
    done = tf.while_loop(lambda i, *_: i < blocks, body, (tf.constant(1), *first))[1:]
    if left:
        rest = fn(*rows(blocks * step, left))
        done = tuple(op(a, f) for op, a, f in zip(combine, done, rest, strict=True))
    return tuple(done)


__all__ = [
    "FUSED_MIN_UPDATES",
    "FUSED_MIN_WORK",
    "FUSED_WORK_PER_BLOB",
    "NotCompiled",
    "TfDeviceEngine",
    "fused_applies",
    "fused_runs",
]
