"""Both rules on one device (docs/verify.md#both-rules-on-one-device): the gradients, Caffe's
rule (:mod:`caffe2tf.rule.jax_executor`) and, on Keras' JAX backend, the candidate's
``stateless_apply`` in one compiled ``jax.lax.scan`` per chunk of updates; only per-update
scalars (the largest ``|cand - ref|`` and ``|ref - w0|`` of each blob, and whether either side
holds a NaN or inf) come back to the host.

:func:`caffe2tf.verify.stream_program.gradient_function` makes a run's gradients on the
device, bit for bit the numbers of :class:`caffe2tf.verify.streams.NumpyGradients` (the same
counters and hash in uint32, the same float32 operations), in Caffe's layout or, for the fused
engine, in Keras'.
:class:`JaxReference` steps the compiled rule one update at a time for the host engine (a
candidate on TensorFlow). :class:`DeviceEngine` is the fused engine; it runs Caffe's rule in
Keras' layout, so nothing is transposed per update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.compiled import CompiledRule, host_scalars
from caffe2tf.rule.jax_executor import jax_rule
from caffe2tf.rule.model import UpdateRule
from caffe2tf.verify.compare import Comparison
from caffe2tf.verify.components import Run
from caffe2tf.verify.inputs import release_host_copy
from caffe2tf.verify.stream_program import (
    gradient_function,
    knobs_of,
    program_kind,
    salts_of,
)
from caffe2tf.verify.streams import GradientSpec

#: updates per compiled call of the fused engine (per-update scalars come back per chunk)
CHUNK = 50
#: up to this many weights, the fused engine lets XLA keep what the stream's gradients take
#: from (seed, blob, element) alone (each element's base hash, drift and dead flag: 9 bytes)
#: across a chunk's updates, computed once; above it (VGG16: 1.2 GB) they are made again in
#: every update, so that the peak memory stays near the rules' own arrays
HOIST_MAX_ELEMENTS = 2**24


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def jax_device(kind: str = "auto") -> Any:
    """The JAX device for ``--device``: ``cpu``, ``gpu`` (an error when JAX sees none) or
    ``auto`` (JAX's default: its first device)."""
    import jax

    if kind == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(kind)[0]
    except RuntimeError:
        return None


def describe(device: Any) -> str:
    """``"CPU"`` or ``"GPU: <kind>"`` for a JAX device."""
    if device is None:
        return "unknown"
    if device.platform == "cpu":
        return "CPU"
    return f"{device.platform.upper()}: {getattr(device, 'device_kind', device)}"


#: compiled programs shared by the runs of one verify (the objects they close over are kept
#: with them, so that an ``id`` in a key cannot be reused)
_COMPILED: dict[tuple, tuple[Any, Any]] = {}


def _compiled_gradients(spec: GradientSpec, shapes: Mapping[str, Sequence[int]]) -> Any:
    """One compiled gradient program per :func:`program_kind` (the seed and knobs are arguments)."""
    import jax

    shape_key = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in shapes.items()))
    key = ("gradients", program_kind(spec), spec.dtype, spec.iter_size, spec.frozen, shape_key)
    if key not in _COMPILED:
        fn = gradient_function(spec, shapes)
        if spec.iter_size <= 1:
            _COMPILED[key] = (None, _one_part(jax.jit(lambda *a: fn(*a)[1])))
        else:
            _COMPILED[key] = (None, jax.jit(fn))
    return _COMPILED[key][1]


def _one_part(diff: Callable[..., Any]) -> Callable[..., Any]:
    """``(micro-batches, diff)`` from a compiled program that returns the diff alone: with one
    micro-batch it is the diff itself, and a program listing an output twice returns two
    buffers of it."""

    def both(
        k: Any, seed: Any, salts: Any, knobs: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        total = diff(k, seed, salts, knobs)
        return [total], total

    return both


class JaxGradients:
    """A run's gradients made by JAX (one compiled program per :func:`program_kind`), handed
    to the host as NumPy arrays: the interface of
    :class:`caffe2tf.verify.streams.NumpyGradients`."""

    def __init__(self, spec: GradientSpec, shapes: Mapping[str, Sequence[int]]) -> None:
        self.spec = spec
        self.fn = _compiled_gradients(spec, shapes)
        self.salts = salts_of(spec, shapes)
        self.seed = np.uint32(spec.seed & 0xFFFFFFFF)
        self.knobs = knobs_of(spec)

    def update(self, k: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """JAX arrays (NumPy reads them without a copy on the CPU; the compiled rule takes
        them as they are)."""
        return self.fn(np.uint32(k), self.seed, self.salts, self.knobs)


class JaxReference:
    """Caffe's rule compiled, stepped one update at a time (the host engine's reference when
    the candidate is not on JAX): :meth:`step` applies Caffe's diff and returns the weights
    keyed like ``init`` (the device arrays, valid until the next :meth:`step` consumes
    them)."""

    def __init__(
        self,
        rule: UpdateRule,
        init: Mapping[str, np.ndarray],
        *,
        precision: str,
        start: int,
        updates: int,
        device: Any = None,
    ) -> None:
        import jax

        dt = np.float32 if precision == "float32" else np.float64
        self.jr: CompiledRule = jax_rule(rule, list(init), precision=precision)
        self.init_keys = list(init)
        self.rest = {k: np.asarray(init[k], dt) for k in init if k not in self.jr.keys}
        self.weights = {k: jax.device_put(np.asarray(init[k], dt), device) for k in self.jr.keys}
        self.state = self.jr.init_state(self.weights)
        self.rates, self.corr = host_scalars(rule, start, updates, precision)
        self.k = 0
        key = ("update", id(rule), self.jr.keys, precision)
        if key not in _COMPILED:
            _COMPILED[key] = (rule, jax.jit(self.jr.update, donate_argnums=(0, 1)))
        self.fn = _COMPILED[key][1]

    def step(self, grads: Mapping[str, np.ndarray], *, copy: bool = False) -> dict[str, Any]:
        g = {k: grads[k] for k in self.jr.keys}
        self.weights, self.state = self.fn(
            self.weights, self.state, g, self.rates[self.k], self.corr[self.k]
        )
        self.k += 1
        # the device arrays themselves (NumPy reads them without a copy on the CPU): a NumPy
        # view of each would wait for the update here, and a buffer still viewed cannot be
        # donated to the next one
        return {**self.weights, **self.rest}


# ---- the fused engine: Keras-JAX candidate + compiled rule + comparison ----------------------


def chunks_of(updates: int) -> list[tuple[int, int]]:
    """``(first update, updates)`` of each compiled call: :data:`CHUNK` at a time, the rest
    last (two programs at most per run)."""
    length = min(CHUNK, updates)
    return [(b, min(length, updates - b)) for b in range(0, updates, length)]


def chunk_args(rule: UpdateRule, run: Run) -> Iterator[tuple[int, tuple]]:
    """Per compiled call of ``run``: its number of updates and its arguments after the carry
    and ``w0``: the updates' indices, rates and corrections (:func:`host_scalars`, in the
    run's precision), the seed, the per-blob salts and the knobs."""
    dt = np.float32 if run.dtype == "float32" else np.float64
    rates, corr = host_scalars(rule, run.start, run.updates, run.dtype)
    seed = np.uint32(run.spec.seed & 0xFFFFFFFF)
    salts, knobs = salts_of(run.spec, run.shapes), knobs_of(run.spec)
    for begin, n in chunks_of(run.updates):
        idx = np.arange(begin, begin + n, dtype=np.uint32)
        r, c = rates[begin : begin + n].astype(dt), corr[begin : begin + n].astype(dt)
        yield n, (idx, r, c, seed, salts, knobs)


def keras_layout_axes(model: Any, pairs: Any) -> dict[str, tuple[int, ...] | None]:
    """Per trained blob of ``pairs`` (:func:`caffe2tf.verify.mirror.trained_pairs`), the axes
    from Caffe's layout to its Keras variable's: the layout both fused engines make the
    gradients in and run Caffe's rule in."""
    from caffe2tf.verify.mirror import keras_axes

    blobs = model.blob_variables()
    return {k: keras_axes(blobs[k][1], blobs[k][2]) for k, _ in pairs}


def program_group(run: Run) -> tuple:
    """The runs one compiled program serves, on either fused engine: those of one
    :func:`program_kind`, precision and set of blob shapes (the seed, start and knobs are
    arguments)."""
    return (program_kind(run.spec), run.dtype, tuple(sorted(run.shapes.items())))


def _program_key(run: Run, length: int) -> tuple:
    """The compiled chunk program of ``run``'s :func:`program_group`, ``length`` updates a
    call."""
    return (*program_group(run), length)


def _precision(dtype: str) -> Any:
    """The context a run of ``dtype`` is traced and run in (JAX's 64-bit mode for float64)."""
    import contextlib

    import jax

    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


class DeviceEngine:
    """The fused engine for one candidate module on Keras' JAX backend. A mirror model and
    optimizer are built once per precision and reset for each run, so the runs of one kind of
    gradients (the stream and the schedule windows) share one compiled program."""

    def __init__(self, rule: UpdateRule, candidate: Any, layers: Sequence[Any], device: Any):
        from caffe2tf.verify import keras_harness

        self.rule = rule
        self.layers = layers
        self.device = device
        self.session = keras_harness.CandidateSession(candidate)
        self.executables: dict[tuple, Any] = {}
        #: per initial weights and precision: the init, and its trained blobs on the device
        #: in their Keras variables' layout as the model loaded them (w0 of the comparison;
        #: each run's weights are copies of it, so no run transposes or copies from the host)
        self.loaded: dict[tuple[int, str], tuple[Any, dict[str, Any]]] = {}

    def _candidate(self, run: Run) -> tuple[Any, Any, Any]:
        """The run's model and optimizer (built once per precision and shapes, else reset:
        :class:`caffe2tf.verify.keras_harness.CandidateSession`; the weights from
        :meth:`loaded_weights` where the model loaded ``run.init`` before) and their trained
        pairs."""
        import jax
        import jax.numpy as jnp

        from caffe2tf.verify.mirror import trained_pairs

        layers = self.layers(run.shapes) if callable(self.layers) else self.layers
        kept = self.loaded.get((id(run.init), run.dtype))
        reload = None
        if kept is not None:

            def reload(model: Any) -> None:
                for key, var in trained_pairs(model):
                    var.assign(jnp.copy(kept[1][key]))  # a buffer of its own: runs donate it

        model, optimizer, _ = self.session.model_for(layers, run.init, run.dtype, reload=reload)
        pairs = trained_pairs(model)
        if kept is None:  # just loaded from the host: kept on the device from now on
            loaded = {key: jnp.copy(jax.device_put(var.value, self.device)) for key, var in pairs}
            self.loaded[(id(run.init), run.dtype)] = (run.init, loaded)
        return model, optimizer, pairs

    def loaded_weights(self, run: Run) -> dict[str, Any]:
        """``run.init``'s trained blobs on the device as its model loaded them (Keras' layout
        and precision): made by :meth:`_candidate`."""
        return self.loaded[(id(run.init), run.dtype)][1]

    def run(
        self,
        run: Run,
        *,
        tolerance: float,
        keys: Sequence[str],
        progress: Callable[[int], None] | None = None,
        timings: dict[str, float] | None = None,
        norms: bool = True,
        ahead: Sequence[Run] = (),
    ) -> Comparison:
        """``run`` compared; ``norms``: also keep both sides' weight norms per update (what
        ``verify --plot`` draws). The compiled program reduces them in any case: their sums
        say whether the update was finite (:func:`fused_figures`). ``ahead``: runs to come, whose
        programs are compiled while the device works through this run's updates, where
        their models are built (:meth:`build`)."""
        with _precision(run.dtype):
            return self._run(run, tolerance, keys, progress, timings, norms, ahead)

    def build(self, runs: Sequence[Run]) -> None:
        """The model and optimizer of every precision and shape among ``runs``, built now
        (building runs programs on the device, which would wait behind a run's updates)."""
        for run in runs:
            if self.session.built_model(run.init, run.dtype) is None:
                with _precision(run.dtype):
                    self._candidate(run)

    def _run(
        self,
        run: Run,
        tolerance: float,
        keys: Sequence[str],
        progress: Callable[[int], None] | None,
        timings: dict[str, float] | None,
        norms: bool,
        ahead: Sequence[Run],
    ) -> Comparison:
        import jax
        import jax.numpy as jnp

        from caffe2tf.verify import keras_harness

        timings = timings if timings is not None else {}
        t0 = time.perf_counter()
        dt = np.float32 if run.dtype == "float32" else np.float64
        model, optimizer, pairs = self._candidate(run)
        tvars = [v for _, v in pairs]
        iter_size = max(1, self.rule.iter_size)
        if run.start:
            keras_harness.fast_forward(optimizer, tvars, run.start * iter_size)
        # no copies: the compiled chunk consumes (donates) the variables' arrays; the next run
        # assigns new ones (the model is used for nothing else meanwhile)
        values = [jax.device_put(v.value, self.device) for v in tvars]
        opt_values = [jax.device_put(v.value, self.device) for v in optimizer.variables]
        jr = jax_rule(self.rule, list(run.init), precision=run.dtype)
        # Caffe's rule runs in Keras' layout (every step but the clip norm's sum is
        # elementwise): the gradients are made in it, and nothing is transposed per update
        axes = keras_layout_axes(model, pairs)

        def put(key: str) -> Any:
            value = np.asarray(run.init[key], dt)
            if axes.get(key) is not None:
                value = np.ascontiguousarray(value.transpose(axes[key]))
            return jax.device_put(value, self.device)

        loaded = self.loaded_weights(run)
        # Caffe's weights start as copies of what the candidate's model loaded (the runs
        # donate them); w0 is that itself. Blobs the model does not train come from the host
        ref_w = {k: jnp.copy(loaded[k]) if k in loaded else put(k) for k in jr.keys}
        ref_state = jax.device_put(jr.init_state(ref_w), self.device)
        w0 = {k: loaded[k] if k in loaded else put(k) for k in keys}
        comparison = run.comparison(tolerance=tolerance, keys=keys, norms=norms)
        release_host_copy(run.init)  # the device holds the weights now (as on TensorFlow)
        carry = (ref_w, ref_state, values, opt_values)
        blocks = []
        for n, rest in chunk_args(self.rule, run):
            args = (carry, w0, *rest)
            chunk = self._executable(run, model, optimizer, pairs, jr, list(keys), n, args)
            carry, ys = chunk(*args)
            blocks.append((n, ys))
            args = None
        del carry
        # the device works through the chunks in order; meanwhile the host compiles what
        # the runs to come need, and then reads each chunk's scalars back as it is done
        for later in ahead:
            with _precision(later.dtype):
                self._compile_ahead(later, list(keys))
        for n, ys in blocks:
            comparison.observe_block(*jax.device_get(ys))
            if progress is not None:
                progress(n)
        timings["device"] = timings.get("device", 0.0) + time.perf_counter() - t0
        return comparison.result()

    def _executable(
        self,
        run: Run,
        model: Any,
        optimizer: Any,
        pairs: Any,
        jr: CompiledRule,
        keys: list[str],
        length: int,
        args: tuple,
    ) -> Any:
        """The chunk program of ``length`` updates for runs like ``run``, compiled for
        ``args`` (arrays, or their shapes: :meth:`_compile_ahead`) the first time."""
        key = _program_key(run, length)
        if key not in self.executables:
            fn = self._program(run, model, optimizer, pairs, jr, keys)
            self.executables[key] = fn.lower(*args).compile()
        return self.executables[key]

    def _compile_ahead(self, run: Run, keys: list[str]) -> None:
        """``run``'s chunk programs traced, lowered and compiled (or read from JAX's cache)
        from the shapes of its arrays, without running anything on the device; nothing where
        its model is not built yet."""
        import jax
        from jax.sharding import SingleDeviceSharding

        from caffe2tf.verify.mirror import trained_pairs

        if all(_program_key(run, n) in self.executables for _, n in chunks_of(run.updates)):
            return
        built = self.session.built_model(run.init, run.dtype)
        if built is None:
            return
        model, optimizer = built
        pairs = trained_pairs(model)
        jr = jax_rule(self.rule, list(run.init), precision=run.dtype)
        axes = keras_layout_axes(model, pairs)
        dt = np.dtype(np.float32 if run.dtype == "float32" else np.float64)
        where = SingleDeviceSharding(self.device) if self.device is not None else None

        def like(shape: Sequence[int], dtype: Any) -> Any:
            return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=where)

        def blob(key: str) -> Any:
            shape, perm = run.shapes[key], axes.get(key)
            return like(shape if perm is None else [shape[a] for a in perm], dt)

        ref_w = {k: blob(k) for k in jr.keys}
        ref_state = jax.tree.map(
            lambda x: like(x.shape, x.dtype), jax.eval_shape(jr.init_state, ref_w)
        )
        values = [like(v.shape, v.dtype) for _, v in pairs]
        opt_values = [like(v.shape, v.dtype) for v in optimizer.variables]
        w0 = {k: blob(k) for k in keys}
        carry = (ref_w, ref_state, values, opt_values)
        for n, rest in chunk_args(self.rule, run):
            self._executable(run, model, optimizer, pairs, jr, keys, n, (carry, w0, *rest))

    def _program(
        self, run: Run, model: Any, optimizer: Any, pairs: Any, jr: CompiledRule, keys: list[str]
    ) -> Any:
        """The chunk program of runs like ``run``, traced when it is lowered (its length is
        that of the updates' arguments: :meth:`_executable` keeps one compiled per length)."""
        import jax
        import jax.numpy as jnp
        import keras

        dt = jnp.float32 if run.dtype == "float32" else jnp.float64
        gen = gradient_function(run.spec, run.shapes, keras_layout_axes(model, pairs))
        tkeys = [k for k, _ in pairs]
        tvars = [v for _, v in pairs]
        position = {k: i for i, k in enumerate(tkeys)}
        keep_tables = sum(int(np.prod(v)) for v in run.shapes.values()) <= HOIST_MAX_ELEMENTS
        iter_size = max(1, self.rule.iter_size)

        def total_loss(values: list[Any], gs: list[Any]) -> Any:
            lin = sum((jnp.sum(g * w) for g, w in zip(gs, values, strict=True)), dt(0))
            with keras.StatelessScope(state_mapping=list(zip(tvars, values, strict=True))):
                reg = model.losses
                reg_total = sum((jnp.sum(x).astype(dt) for x in reg), dt(0))
            return lin + reg_total

        def one_update(carry: Any, xs: Any, w0: Any, seed: Any, salts: Any, knobs: Any) -> Any:
            ref_w, ref_state, values, opt_values = carry
            k, rate, corr = xs
            origin = None
            if not keep_tables:  # loop-variant: XLA cannot hoist the per-blob hashes and
                # indices (a table per blob, kept whole across the loop)
                salts, origin = jax.lax.optimization_barrier((salts, np.uint32(0), k))[:2]
            # XLA fuses the gradients into each consumer (the candidate, the rule) and makes
            # the noise there: no gradient-sized buffer is written and read back (with the
            # per-blob tables kept, that is one finalizer per element and consumer)
            micro, diff = gen(k, seed, salts, knobs, origin)
            for j in range(iter_size):
                gs = [micro[j][key] for key in tkeys]
                grads = jax.grad(total_loss)(values, gs)
                values, opt_values = optimizer.stateless_apply(opt_values, grads, values)
                values, opt_values = list(values), list(opt_values)
            ref_w, ref_state = jr.update(ref_w, ref_state, diff, rate, corr)
            pairs_rc = []
            for key in keys:
                r = ref_w[key] if key in ref_w else w0[key]
                c = values[position[key]] if key in position else w0[key]  # frozen in Keras
                pairs_rc.append((key, r, c))
            ys = fused_figures(pairs_rc, w0, dt)
            return (ref_w, ref_state, values, opt_values), ys

        def chunk(carry, w0, ks, rates, corr, seed, salts, knobs):  # noqa: ANN001, ANN202
            return jax.lax.scan(
                lambda c, xs: one_update(c, xs, w0, seed, salts, knobs), carry, (ks, rates, corr)
            )

        return jax.jit(chunk, donate_argnums=(0,))


def update_is_finite(figures: Sequence[Any]) -> Any:
    """Whether every figure of an update (the maxima and the squared norms' sums) is finite:
    a NaN or inf weight on either side makes a sum non-finite (a sum, unlike XLA:CPU's
    maximum, carries a NaN whatever the order it adds in; an inf in ``c`` or ``r`` alone also
    shows in ``max|c - r|``)."""
    import jax.numpy as jnp

    return jnp.all(jnp.isfinite(jnp.concatenate([jnp.ravel(x) for x in figures])))


def fused_figures(pairs_rc: Sequence[tuple[str, Any, Any]], w0: Mapping[str, Any], dt: Any) -> Any:
    """An update's per-blob figures in the fused JAX program, for ``(key, r, c)`` of each
    compared blob: ``max|c - r|``, ``max|r - w0|``, ``(r NaN, r inf, c NaN, c inf)`` and
    ``(||r||, ||c||)``, stacked in ``pairs_rc``' order.

    The maxima are plain reductions, which XLA:CPU fuses with ``|c - r|``: no blob-sized
    temporary (VGG16: two of fc6's 411 MB each, when a NaN was made inf first), but YNNPACK's
    reductions of big arrays drop a NaN. The squared norms' sums carry it instead
    (:func:`update_is_finite`); only where a figure is not finite (one branch for the whole
    update) are the sides looked at, a NaN counted as inf in ``|c - r|`` and ``|r - w0|``'s
    finite part taken, as the host's comparison does (caffe2tf/verify/compare.py)."""
    import jax
    import jax.numpy as jnp

    live = [(key, r, c) for key, r, c in pairs_rc if r.size]
    diffs = {key: jnp.max(jnp.abs(c - r)) for key, r, c in live}
    moved = {key: jnp.max(jnp.abs(r - w0[key])) for key, r, _ in live}
    squares = {key: jnp.stack([jnp.sum(r * r), jnp.sum(c * c)]) for key, r, c in live}
    zero, no = dt(0), jnp.zeros(4, bool)

    def stack(d: dict, m: dict, f: dict) -> tuple[Any, Any, Any]:
        return (
            jnp.stack([d.get(key, zero) for key, _, _ in pairs_rc]),
            jnp.stack([m.get(key, zero) for key, _, _ in pairs_rc]),
            jnp.stack([f.get(key, no) for key, _, _ in pairs_rc]),
        )

    def fine() -> tuple[Any, Any, Any]:
        return stack(diffs, moved, {})

    def looked_at() -> tuple[Any, Any, Any]:
        d, m, f = {}, {}, {}
        for key, r, c in live:
            apart = jnp.abs(c - r)
            d[key] = jnp.max(jnp.where(jnp.isnan(apart), jnp.inf, apart))
            travel = jnp.abs(r - w0[key])
            m[key] = jnp.max(jnp.where(jnp.isfinite(travel), travel, zero))
            checks = [jnp.isnan(r), jnp.isinf(r), jnp.isnan(c), jnp.isinf(c)]
            f[key] = jnp.stack([jnp.any(x) for x in checks])
        return stack(d, m, f)

    ok = update_is_finite([*diffs.values(), *moved.values(), *squares.values(), zero[None]])
    # the weight-norm trajectories of verify --plot: (||r||, ||c||), any layout
    norms = jnp.stack([jnp.sqrt(squares.get(key, jnp.zeros(2, dt))) for key, _, _ in pairs_rc])
    return (*jax.lax.cond(ok, fine, looked_at), norms)
