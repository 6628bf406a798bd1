"""One comparison run, update by update: both rules fed the same gradients, the deviation
reduced as they go (docs/verify.md#streams). Nothing holds a whole run: per update, the
gradients are made (:class:`caffe2tf.verify.streams.NumpyGradients`), the reference applies
Caffe's diff, the candidate its micro-batches per its contract
(:func:`caffe2tf.verify.keras_harness.run_candidate_lockstep`), and
:class:`caffe2tf.verify.compare.StreamingComparison` keeps a few scalars.

The reference is the NumPy executor (:class:`caffe2tf.rule.reference.ReferenceOptimizer`) or,
for ``--against caffe``, a trajectory of the real Caffe read back update by update.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.model import UpdateRule
from caffe2tf.rule.reference import ReferenceOptimizer, fast_forward
from caffe2tf.rule.tf_executor import TfExecutor
from caffe2tf.verify import keras_harness
from caffe2tf.verify.compare import Comparison
from caffe2tf.verify.components import Run
from caffe2tf.verify.jax_compare import JaxComparer, run_device
from caffe2tf.verify.tf_compare import (
    HOST_COMPARE_MAX_ELEMENTS,
    TfComparer,
    describe_tf,
    tf_device,
)
from caffe2tf.verify.tf_device import NotCompiled, TfDeviceEngine, fused_runs

Weights = Mapping[str, np.ndarray]


def host_run(
    rule: UpdateRule,
    run: Run,
    candidate: Any,
    layers: Sequence[Any],
    *,
    tolerance: float,
    keys: Sequence[str],
    reference: Iterator[Weights] | None = None,
    progress: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
    reference_label: str = "reference",
    executor: Any = None,
    gradients: Any = None,
    session: keras_harness.CandidateSession | None = None,
    norms: bool = True,
    comparer: Callable[[Sequence[str]], Any] | None = None,
) -> Comparison:
    """Compare ``candidate`` with Caffe's rule on ``run``. ``reference``: the real Caffe's
    weights after each update (an iterator), instead of an executor. ``executor``: an object
    with ``step(diff, copy=False) -> weights`` entered at ``run.start`` (default: the NumPy
    executor; a :class:`Deferred` one is made at its first step); ``gradients``: one with
    ``update(k)`` (default: ``run.gradients()``, NumPy).
    ``progress(n)`` is told each finished update; ``timings`` gets the seconds spent in each
    rule. ``session``: the candidate's model and optimizer kept from an earlier run
    (:class:`caffe2tf.verify.keras_harness.CandidateSession`). ``norms``: keep both sides'
    weight norms per update (:attr:`caffe2tf.verify.compare.Comparison.reference_norms`).
    ``comparer``: makes, from the blob keys, the object that reduces each update where the
    executor's weights are, or None for NumPy's comparison on the host (default: JAX's for a
    compiled executor on JAX, else NumPy's)."""
    timings = timings if timings is not None else {}
    comparison = run.comparison(tolerance=tolerance, keys=keys, norms=norms)
    if reference is None and executor is None:
        executor = ReferenceOptimizer(rule, run.init, precision=run.dtype)
        if run.start:
            fast_forward(executor, run.start)
    spent = [0.0]
    # Caffe's rule compiled (its weights on a JAX device): the comparison runs there too. The
    # NumPy executor's weights are host arrays, and NumPy compares them for less (LeNet: 0.7 ms
    # an update, against 6.4 ms for copying them to JAX and reducing them there)
    deferred = isinstance(executor, Deferred)
    device = executor.device if deferred else run_device(executor)
    on_device = reference is None and (deferred or device is not None)
    if on_device:
        comparer = comparer or (lambda keys: JaxComparer(run.init, keys, device, norms=norms))
    # a comparer factory may answer None: then NumPy compares on the host
    reducer = comparer(comparison.keys) if on_device and comparer else None

    def observe(k: int, diff: Weights, weights: Weights) -> None:
        t = time.perf_counter()
        if reference is None:
            ref = executor.step(diff, copy=False)
            diff = None  # noqa: F841 (its arrays go before the comparison runs)
        else:
            ref = next(reference)  # type: ignore[arg-type]
        spent[0] += time.perf_counter() - t
        if reducer is not None:
            comparison.observe_scalars(*reducer.scalars({**ref, **executor.weights}, weights))
        else:
            # an executor whose weights NumPy cannot read in place gives views of them
            host = getattr(executor, "host_weights", None) if reference is None else None
            comparison.observe(host() if host is not None else ref, weights)
        if progress is not None:
            progress(1)

    t = time.perf_counter()
    keras_harness.run_candidate_lockstep(
        candidate,
        layers(run.shapes) if callable(layers) else layers,
        run.init,
        gradients if gradients is not None else run.gradients(),
        run.updates,
        observe,
        iter_size=max(1, rule.iter_size),
        start=run.start,
        dtype=run.dtype,
        session=session,
    )
    total = time.perf_counter() - t
    timings[reference_label] = timings.get(reference_label, 0.0) + spent[0]
    timings["keras"] = timings.get("keras", 0.0) + total - spent[0]
    return comparison.result()


class Deferred:
    """A compiled executor of Caffe's rule made when its first update is applied, i.e. after
    the candidate's model has been built or reset and its initial weights loaded: the
    loading's temporaries and the rule's weights and state are then never resident at once
    (on VGG16 the reset of the schedule windows was the run's peak, 0.4 GB over the rest)."""

    def __init__(self, make: Callable[[], Any], device: Any) -> None:
        self.make = make
        self.device = device
        self.inner: Any = None

    def _made(self) -> Any:
        if self.inner is None:
            self.inner = self.make()
        return self.inner

    @property
    def weights(self) -> Any:
        return self._made().weights

    def __getattr__(self, name: str) -> Any:
        # the made executor's other methods (e.g. TfExecutor.host_weights)
        if name in ("make", "device", "inner"):
            raise AttributeError(name)
        return getattr(self._made(), name)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        return self._made().step(*args, **kwargs)


def lean_backend() -> None:
    """Before TensorFlow is imported: no oneDNN unless the user chose
    (:func:`caffe2tf._quiet.prefer_lean_tensorflow`, which the CLI calls before it imports
    Keras; this is the same for API callers)."""
    from caffe2tf._quiet import prefer_lean_tensorflow

    prefer_lean_tensorflow()


def release_freed_memory() -> None:
    """After a run: collect its model and optimizer, and hand the C heap's free pages back to
    the system (glibc ``malloc_trim``; elsewhere a no-op), so one run's blob-sized temporaries
    do not stay resident through the next."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc's ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_buffers() -> None:
    """Keep blob-sized buffers (up to 32 MiB) in the C heap once freed, for the next update to
    reuse, instead of mapping fresh pages for each (glibc ``mallopt``; elsewhere a no-op). The
    host comparison next to TensorFlow copies every blob in every update, and glibc's default
    maps and unmaps each copy: LeNet at ``--steps 1000`` took 1.9 million page faults and 5 s
    of system time (bench/RESULTS.md, "Session 7"). The setting is the process's: it is made
    only for the nets that take that path (:func:`_tf_compares_on_host`), and
    :func:`release_freed_memory` still hands free pages back after each big run."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):
        pass


#: element-updates (blob elements x updates over all runs) from which the host engine runs
#: Caffe's rule compiled with JAX rather than in NumPy (LeNet at --steps 1000: 1.8e9)
JAX_HOST_MIN_WORK = 2e8


def compare_runs(
    rule: UpdateRule,
    runs: Sequence[Run],
    candidate: Any,
    layers: Sequence[Any],
    *,
    tolerance: float,
    keys: Sequence[str],
    backend: str,
    device: str = "auto",
    caffe_reference: Callable[[Run], Iterator[Weights]] | None = None,
    progress: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
    norms: bool = True,
) -> tuple[list[Comparison], str]:
    """Every run's :class:`Comparison`, and where both rules ran (for the report).

    On Keras' JAX backend, with JAX able to run every step of the rule
    (:func:`caffe2tf.rule.compiled.supports`), the runs go through the fused device engine
    (:class:`caffe2tf.verify.device.DeviceEngine`); otherwise through :func:`host_run`: on
    the TensorFlow backend with Caffe's rule compiled by TensorFlow (:func:`_tf_host_pieces`),
    elsewhere with JAX's compiled rule where JAX is installed and the work pays for compiling
    it; else NumPy's. The gradients are JAX's where the same holds. ``caffe_reference``
    (``--against caffe``) gives the real Caffe's weights for the ``stream`` run, which is then
    run on the host. ``device``: ``cpu``, ``gpu`` or ``auto`` for JAX (the candidate's device
    on the torch backend is the backend's own choice); on TensorFlow, TensorFlow's device for
    its rule and comparison. ``layers``: the mirror's layers, or a
    function of the blob shapes giving them (the probes run on cut blobs). ``norms``: keep
    both sides' weight norms per update in the ``stream`` run's comparison (what ``verify
    --plot`` draws; the other runs never keep them)."""
    from caffe2tf.rule import compiled
    from caffe2tf.verify import device as dev

    timings = timings if timings is not None else {}
    on_tf = backend == "tensorflow" and compiled.supports(rule)
    tf_dev = tf_device(device) if on_tf else None
    use_jax = dev.jax_available() and compiled.supports(rule)
    jax_device = dev.jax_device(device if not on_tf else "cpu") if use_jax else None
    if use_jax and jax_device is None:
        raise ValueError(f"--device {device}: JAX sees no such device")
    fused = use_jax and backend == "jax"
    if use_jax and not fused and (device == "auto" or on_tf):
        # next to a candidate on another backend, compiling the rule (or, on TensorFlow,
        # the gradients) with JAX pays only for a run's worth of work (compiling costs
        # seconds; NumPy does small nets faster)
        work = sum(int(np.prod(s)) for s in runs[0].shapes.values()) * sum(r.updates for r in runs)
        use_jax = work >= JAX_HOST_MIN_WORK
    # on TensorFlow, per run: whether the fused loop takes it (the runs of one compiled
    # program together, where they are enough work for it)
    fused_at = fused_runs(runs) if on_tf else [False] * len(runs)
    tf_fused = any(fused_at)
    on_host = [run for run, fused in zip(runs, fused_at, strict=True) if not fused]
    if on_tf and on_host and _tf_compares_on_host(on_host[0], tf_dev):
        reuse_freed_buffers()
    engine = dev.DeviceEngine(rule, candidate, layers, jax_device) if fused else None
    tf_engine = TfDeviceEngine(rule, candidate, layers, tf_dev) if tf_fused else None
    refused = ""  # why XLA refused the candidate's step on TensorFlow, if it did
    session = keras_harness.CandidateSession(candidate)
    tf_pool: dict[tuple, Any] = {}  # Caffe's rule on TensorFlow, per precision and shapes
    if engine is not None:
        engine.build([r for r in runs if caffe_reference is None or r.component != "stream"])
    out = []
    for i, run in enumerate(runs):
        reference = None
        if caffe_reference is not None and run.component == "stream":
            reference = caffe_reference(run)
        keep = norms and run.component == "stream"
        # what either fused engine takes for a run
        fused_kw = dict(tolerance=tolerance, keys=keys, progress=progress, timings=timings)
        on_tf_device = tf_engine is not None and reference is None and fused_at[i]
        if on_tf_device:
            try:
                out.append(tf_engine.run(run, norms=keep, **fused_kw))
            except NotCompiled as e:  # before any update ran: the host engine from now on
                refused, tf_engine, on_tf_device = str(e), None, False
        if engine is not None and reference is None:
            out.append(engine.run(run, norms=keep, ahead=runs[i + 1 :], **fused_kw))
        elif not on_tf_device:
            executor = gradients = comparer = None
            if on_tf:
                executor, comparer = _tf_host_pieces(rule, run, tf_dev, tf_pool, norms=keep)
                gradients = _jax_gradients(run) if use_jax else None
            elif use_jax:
                executor, gradients = _jax_host_pieces(rule, run, jax_device)
            out.append(
                host_run(
                    rule,
                    run,
                    candidate,
                    layers,
                    tolerance=tolerance,
                    keys=keys,
                    reference=reference,
                    progress=progress,
                    timings=timings,
                    reference_label="caffe" if reference is not None else "reference",
                    executor=executor if reference is None else None,
                    gradients=gradients,
                    session=session,
                    norms=keep,
                    comparer=comparer,
                )
            )
            executor = gradients = comparer = None
        # on either engine: a big net's freed run would otherwise stay resident through the
        # next (VGG16 on the fused engine: 0.5-1 GB between runs, bench/RESULTS.md)
        if keras_harness.worth_collecting(run.shapes.values()):
            release_freed_memory()
    if fused:
        where = f"{dev.describe(jax_device)} (both rules and the comparison, one JAX program)"
    elif tf_engine is not None:
        where = f"TensorFlow {describe_tf(tf_dev)} (both rules and the comparison, one XLA program"
        if on_host:  # the runs too short to pay for their own program
            named = ", ".join(dict.fromkeys(run.component for run in on_host))
            compared = "in NumPy on the host" if _tf_compares_on_host(on_host[0], tf_dev) else "too"
            where += f"; {named}: both rules, Caffe's compiled with XLA, the comparison {compared}"
        where += ")"
    elif on_tf:
        compared = "in NumPy on the host" if _tf_compares_on_host(runs[0], tf_dev) else "too"
        if refused:
            compared += f"; XLA refused the whole loop: {refused}"
        where = (
            f"TensorFlow {describe_tf(tf_dev)} (both rules, Caffe's compiled with XLA; the "
            f"comparison {compared})"
        )
    elif use_jax:
        where = f"candidate on {backend}; Caffe's rule on JAX {dev.describe(jax_device)}"
    else:
        where = f"candidate on {backend}; Caffe's rule in NumPy on the host CPU"
    return out, where


def _tf_host_pieces(
    rule: UpdateRule, run: Run, device: str | None, pool: dict[tuple, Any], *, norms: bool
) -> tuple[Any, Callable[[Sequence[str]], Any]]:
    """Caffe's rule compiled with TensorFlow (made or reset at its first update, after the
    candidate's model: :class:`Deferred`; ``pool`` keeps one executor per precision and set
    of blob shapes for the verify's runs) and the comparison reduced by TensorFlow (in NumPy
    on the host for a small net on the CPU: :func:`_tf_compares_on_host`), for
    :func:`host_run` next to a candidate on Keras' TensorFlow backend."""

    def make() -> TfExecutor:
        key = (run.dtype, tuple(sorted(run.shapes.items())))
        if key not in pool:
            pool[key] = TfExecutor(
                rule, run.init, precision=run.dtype, start=run.start, updates=run.updates,
                device=device,
            )  # fmt: skip
        else:
            pool[key].reset(run.init, start=run.start, updates=run.updates)
        return pool[key]

    executor = Deferred(make, device)
    on_host = _tf_compares_on_host(run, device)

    def comparer(keys: Sequence[str]) -> Any:
        return None if on_host else TfComparer(run.init, keys, device, norms=norms)

    return executor, comparer


def _tf_compares_on_host(run: Run, device: str | None) -> bool:
    """Whether NumPy compares ``run`` on the host next to Caffe's rule on TensorFlow: on the
    CPU, for a net of up to :data:`caffe2tf.verify.tf_compare.HOST_COMPARE_MAX_ELEMENTS`
    weights (faster there than TensorFlow's compiled reduction)."""
    size = sum(int(np.prod(s)) for s in run.shapes.values())
    return size <= HOST_COMPARE_MAX_ELEMENTS and describe_tf(device) == "CPU"


def _jax_gradients(run: Run) -> Any:
    """The run's gradients made by JAX (inside ``jax.enable_x64`` for float64 runs)."""
    from caffe2tf.verify import device as dev

    if run.dtype == "float32":
        return dev.JaxGradients(run.spec, run.shapes)
    return _X64(lambda: dev.JaxGradients(run.spec, run.shapes))


def _jax_host_pieces(rule: UpdateRule, run: Run, jax_device: Any) -> tuple[Any, Any]:
    """The compiled rule and gradients for :func:`host_run` (float64 runs are made inside
    ``jax.enable_x64``, which the returned objects re-enter on each call)."""
    from caffe2tf.verify import device as dev

    if run.dtype == "float32":
        ref = Deferred(
            lambda: dev.JaxReference(
                rule, run.init, precision="float32", start=run.start, updates=run.updates,
                device=jax_device,
            ),
            jax_device,
        )  # fmt: skip
        return ref, _jax_gradients(run)
    return _X64(
        lambda: dev.JaxReference(
            rule,
            run.init,
            precision="float64",
            start=run.start,
            updates=run.updates,
            device=jax_device,
        )  # fmt: skip
    ), _jax_gradients(run)


class _X64:
    """An object built and called inside ``jax.enable_x64(True)``."""

    def __init__(self, make: Callable[[], Any]) -> None:
        import jax

        with jax.enable_x64(True):
            self.inner = make()

    def step(self, *args: Any, **kwargs: Any) -> Any:
        import jax

        with jax.enable_x64(True):
            return self.inner.step(*args, **kwargs)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        import jax

        with jax.enable_x64(True):
            return self.inner.update(*args, **kwargs)
