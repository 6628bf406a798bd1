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
from caffe2tf.verify.device import chunk_args, keras_layout_axes, program_kind
from caffe2tf.verify.loops.tensorflow import tape_apply
from caffe2tf.verify.mirror import trained_pairs
from caffe2tf.verify.stream_program import gradient_function, tf_ops

#: the fused TensorFlow engine takes a verify of at least this many updates in all its runs
#: (tracing the loop and having XLA compile it, or load it from the cache, costs 2-5 s on
#: LeNet; each update then costs ~0.7 ms against ~9 ms on the host engine: bench/RESULTS.md
#: "Session 10"; LeNet's --steps 1000 makes 1,360), or of this much work (weights x updates)
FUSED_MIN_UPDATES = 1000
FUSED_MIN_WORK = 1e9
#: and of a net of at most this many weights, for which XLA may keep the gradients' per-blob
#: tables across a chunk's updates, as on JAX (:data:`caffe2tf.verify.device.
#: HOIST_MAX_ELEMENTS`). VGG16 on this engine, with the tables made in every update, peaked at
#: 5.7 GB (the first chunk, while XLA compiled the loop, 1.1 GB above the later ones) against
#: 4.3 GB on the host engine (bench/RESULTS.md "Session 10")
FUSED_MAX_ELEMENTS = 2**24


class NotCompiled(Exception):
    """XLA refused the candidate's step (an operation it cannot compile): nothing ran."""


def fused_applies(runs: Sequence[Run]) -> bool:
    """Whether the fused TensorFlow engine takes a verify of these runs: a net of at most
    :data:`FUSED_MAX_ELEMENTS` weights, from :data:`FUSED_MIN_UPDATES` updates or
    :data:`FUSED_MIN_WORK` weights x updates on."""
    size = sum(int(np.prod(s)) for s in runs[0].shapes.values()) if runs else 0
    updates = sum(r.updates for r in runs)
    enough = updates >= FUSED_MIN_UPDATES or size * updates >= FUSED_MIN_WORK
    return size <= FUSED_MAX_ELEMENTS and enough


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
            shapes = tuple(sorted(run.shapes.items()))
            key = (program_kind(run.spec), run.dtype, run.spec.frozen, shapes, norms)
            if key not in self.programs:  # XLA compiles it once per chunk length (two at most)
                self.programs[key] = _chunk_program(
                    run, model, optimizer, pairs, executor, list(keys), norms
                )
            program = self.programs[key]
        comparison = run.comparison(tolerance=tolerance, keys=keys, norms=norms)
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

    def compare(w0: list[Any]) -> tuple[Any, ...]:
        sides = []
        for key, start in zip(keys, w0, strict=True):
            r = executor.weights[key].read_value() if key in executor.weights else start
            c = position[key].value if key in position else start
            sides.append((r, c, start))
        zero = tf.zeros((), dt)
        live = [int(np.prod(r.shape)) > 0 for r, _, _ in sides]

        def biggest(x: Any, there: bool) -> Any:
            return tf.reduce_max(x) if there else zero

        pairs_live = list(zip(sides, live, strict=True))
        diffs = tf.stack([biggest(tf.abs(c - r), ok) for (r, c, _), ok in pairs_live])
        moved = [biggest(tf.abs(r - s), ok) for (r, _, s), ok in pairs_live]
        finite = tf.reduce_all(tf.math.is_finite(tf.concat([diffs, tf.stack(moved)], 0)))

        def fine() -> tuple[Any, Any]:
            return tf.stack(moved), tf.zeros((len(keys), 4), tf.bool)

        def looked_at() -> tuple[Any, Any]:
            """A NaN or inf: each side looked at, and ``|r - w0|``'s finite part taken."""
            m, f = [], []
            for (r, c, s), ok in zip(sides, live, strict=True):
                d = tf.abs(r - s)
                m.append(biggest(tf.where(tf.math.is_finite(d), d, zero), ok))
                checks = [tf.math.is_nan(x) for x in (r, c)] + [tf.math.is_inf(x) for x in (r, c)]
                nan_r, nan_c, inf_r, inf_c = (tf.reduce_any(x) if ok else False for x in checks)
                f.append(tf.stack([nan_r, inf_r, nan_c, inf_c]))
            return tf.stack(m), tf.stack(f)

        moved_out, flags = tf.cond(finite, fine, looked_at)
        if not norms:
            return diffs, moved_out, flags
        # the weight-norm trajectories of verify --plot: (||r||, ||c||), any layout; only
        # where asked, unlike on JAX: TensorFlow's XLA sums these slowly (LeNet: the loop
        # took 1.6 ms an update with them, 0.66 without, bench/RESULTS.md)
        weights = tf.stack(
            [tf.stack([tf.sqrt(tf.reduce_sum(r * r)), tf.sqrt(tf.reduce_sum(c * c))])
             for r, c, _ in sides]
        )  # fmt: skip
        return diffs, moved_out, flags, weights

    def chunk(ks, rates, corr, seed, salts, knobs, w0):  # noqa: ANN001, ANN202
        n = int(ks.shape[0])
        out = [tf.TensorArray(t, size=n) for t in (dt, dt, tf.bool, dt)[: 4 if norms else 3]]

        def body(i: Any, *arrays: Any) -> tuple[Any, ...]:
            micro, diff = gen(ks[i], seed, salts, knobs)
            for j in range(iter_size):
                apply([micro[j][key] for key in position])
            executor.apply([diff[k] for k in cr.keys], rates[i], corr[i])
            ys = compare(w0)
            return (i + 1, *(a.write(i, y) for a, y in zip(arrays, ys, strict=True)))

        done = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), *out))
        return tuple(a.stack() for a in done[1:])

    return tf.function(chunk, jit_compile=True, autograph=False)


__all__ = [
    "FUSED_MAX_ELEMENTS",
    "FUSED_MIN_UPDATES",
    "FUSED_MIN_WORK",
    "NotCompiled",
    "TfDeviceEngine",
    "fused_applies",
]
