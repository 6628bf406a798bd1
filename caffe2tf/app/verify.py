"""``caffe2tf verify``: run an emitted ``optimizer.py`` against Caffe's rule on seeded gradients.

Steps of :func:`verify_solver`:

1. read and lower the recipe once (:func:`caffe2tf.app.pipeline.load_pipeline`);
2. the candidate: the ``--module`` given, else ``caffe2tf convert`` into a temporary folder
   (the very file a user gets), imported from its path;
3. the runs of each component (:func:`caffe2tf.verify.components.plan_runs`): seeded initial
   weights and, per run, a description of its gradients
   (:class:`caffe2tf.verify.streams.GradientSpec`); blobs with ``lr_mult: 0`` get none (Caffe
   does not compute them), and neither do BatchNorm's statistics
   (:func:`caffe2tf.verify.inputs.never_written_blobs`);
4. each run update by update (:func:`caffe2tf.verify.engine.compare_runs`,
   docs/verify.md#streams): the gradients made from counters, Caffe's rule (compiled with JAX
   where it can, else NumPy; ``against="caffe"``: the real Caffe 1.0 for the stream run) and
   the candidate per the module's contract (one ``apply_gradients`` per pass on the gradients
   of ``loss + sum(model.losses)``), the deviation reduced as they go; on Keras' JAX backend
   all of it is one compiled program on one device;
5. the candidate's rate at every iteration (:mod:`caffe2tf.verify.schedule_check`) -> report
   (table or JSON), optional PNG.

Exit code (``VerifyReport.exit_code``): 0 when the deviation is within tolerance, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from caffe2tf._quiet import import_keras_quietly
from caffe2tf.app.pipeline import Pipeline, load_pipeline
from caffe2tf.app.verify_report import RunResult, VerifyReport, caffe_trajectory
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify import components
from caffe2tf.verify.candidate import blame_module
from caffe2tf.verify.inputs import (
    PROGRESS_MIN_STEPS,
    SeededWeights,
    backend_and_device,
    mirror_notes,
    never_written_blobs,
)
from caffe2tf.verify.schedule_check import ScheduleCheck, check_schedule


def progress_printer(label: str, total: int) -> Any:
    """Progress lines on stderr (``check`` and scripts): none for short runs, and none when the
    caller says so (``CAFFE2TF_NO_PROGRESS=1``: ``check`` with several entries sets it in its
    workers, whose lines would interleave)."""
    if total < PROGRESS_MIN_STEPS or os.environ.get("CAFFE2TF_NO_PROGRESS") == "1":
        return None
    every = max(1, total // 10)

    def report(done: int, steps: int) -> None:
        if done % every == 0 or done == steps:
            print(f"caffe2tf verify: {label} {done}/{steps} updates", file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def progress_bar(label: str, total: int, fmt: str, stream: Any = None) -> Iterator[Any]:
    """A progress bar (rich, a Keras dependency) on a terminal, for runs of at least
    :data:`~caffe2tf.verify.inputs.PROGRESS_MIN_STEPS` updates; quiet when the stream is not a
    terminal, for ``--format json``, or with ``CAFFE2TF_NO_PROGRESS=1``. Yields
    ``advance(n)``, to be told of each ``n`` updates done."""
    stream = stream if stream is not None else sys.stderr
    quiet = (
        fmt != "table"
        or total < PROGRESS_MIN_STEPS
        or os.environ.get("CAFFE2TF_NO_PROGRESS") == "1"
        or not getattr(stream, "isatty", lambda: False)()
    )
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    except ImportError:
        quiet = True
    if quiet:
        yield lambda n: None
        return
    bar = Progress(
        f"caffe2tf {label}",
        BarColumn(),
        MofNCompleteColumn(),
        "updates",
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _load_candidate(
    solver: Path,
    net_path: Path | None,
    lenient: bool,
    module_path: Path | None,
    workdir: Path,
    layer_map: Mapping[str, str] | None = None,
) -> tuple[Any, str]:
    from caffe2tf.verify.candidate import load_module

    if module_path is not None:
        return load_module(module_path), str(module_path)
    from caffe2tf.app.convert import convert_solver

    out = workdir / "converted"
    report = convert_solver(
        solver,
        net_path=net_path,
        lenient=lenient,
        layer_map=dict(layer_map or {}),
        out_dir=out,
        allow_approx=False,
        force=True,
    )
    if getattr(report, "exit_code", 0) != 0 or not (out / "optimizer.py").is_file():
        rendered = report.render("table") if hasattr(report, "render") else str(report)
        raise Caffe2TfError(f"caffe2tf convert did not produce optimizer.py:\n{rendered}")
    return load_module(out / "optimizer.py"), f"caffe2tf convert {solver} (temporary)"


def _given_layer_map(
    pipeline: Pipeline, layer_map: str | os.PathLike[str] | Mapping[str, str] | None
) -> dict[str, str]:
    """``--layer-map`` read (a path) and checked against the net, as convert checks it."""
    from caffe2tf.app.convert import load_layer_map
    from caffe2tf.app.pipeline import checked_layer_map

    if layer_map is None:
        return {}
    read = layer_map if isinstance(layer_map, Mapping) else load_layer_map(layer_map)
    return checked_layer_map(pipeline, read)


#: the schedule check's horizon is max_iter, up to this many iterations
MAX_SCHEDULE_ITERATIONS = 10_000_000


def frozen_keys(unwritten: Sequence[str]) -> tuple[str, ...]:
    """The blobs that get no gradient in any run (Caffe never writes their diff)."""
    return tuple(unwritten)


def _schedule_check(
    rule: Any,
    module: Any,
    layers: Any,
    init: Any,
    runs: Sequence[Any],
    steps: int,
    tolerance: float,
) -> ScheduleCheck:
    """The candidate's effective rates at every iteration against Caffe's (see
    :mod:`caffe2tf.verify.schedule_check`), relative ``tolerance`` (a tenth of verify's: a rate
    error shows in the weights after a few updates); the horizon is ``max_iter``, or past the
    last window when the solver sets none."""
    from caffe2tf.verify import keras_harness
    from caffe2tf.verify.mirror import trained_pairs

    horizon = rule.max_iter if rule.max_iter > 0 else max(r.start for r in runs) + steps
    horizon = min(horizon, MAX_SCHEDULE_ITERATIONS)
    model, optimizer = keras_harness.build_candidate(module, layers, init)
    pairs = trained_pairs(model)
    optimizer.build([v for _, v in pairs])
    return check_schedule(rule, optimizer, pairs, iterations=horizon, tolerance=tolerance)


def verify_solver(
    solver: Path,
    *,
    net_path: Path | None = None,
    lenient: bool = False,
    module_path: Path | None = None,
    steps: int = 100,
    seed: int = 0,
    tolerance: float = 1e-3,
    against: str = "reference",
    plot_path: Path | None = None,
    pipeline: Pipeline | None = None,
    target: str = "keras",
    layer_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | Sequence[str] | None = None,
    device: str = "auto",
    fmt: str = "json",
    norms: bool | None = None,
) -> VerifyReport:
    """See the module docstring. Raises :class:`~caffe2tf.errors.Caffe2TfError` for bad input
    (unknown net or shapes, missing module, no Caffe root for ``against="caffe"``).
    ``pipeline``: the recipe already read and lowered by the caller (``check``), so that it is
    not read twice. ``target``: another target's module (:mod:`caffe2tf.app.verify_target`).
    ``layer_map``: ``--layer-map`` (a YAML path or a mapping), the Keras layer names the
    module was written for; without it, the names the module's blob table lists, else
    convert's automatic renames. ``input_shapes``: ``--input-shape`` (``TOP=N,C,H,W`` texts
    or ``{top: shape}``). ``device``: ``--device cpu|gpu|auto``, where JAX runs (both rules on
    Keras' JAX backend, Caffe's rule otherwise). ``fmt``: the report's format; a progress bar
    is drawn only for ``table`` on a terminal. ``norms``: keep both sides' weight norms per
    update of the stream run (``reference_norms`` / ``candidate_norms`` of its comparison;
    two more reductions per blob and update on the host paths); by default only when
    ``plot_path`` draws them."""
    device_kind = device
    if device_kind not in ("cpu", "gpu", "auto"):
        raise InputError(f"--device must be cpu, gpu or auto (got {device_kind!r})")
    from caffe2tf.verify import engine, mirror

    engine.lean_backend()

    if steps < 1:
        raise InputError(f"--steps must be at least 1 (got {steps})")
    if plot_path is not None:  # checked now, not after the run
        plot = Path(plot_path)
        if plot.is_dir():
            raise InputError(
                "is a directory; --plot names the PNG file to write", SourceLocation(str(plot))
            )
        if not (plot.parent if str(plot.parent) else Path(".")).is_dir():
            raise InputError("--plot: output directory does not exist", SourceLocation(str(plot)))
        try:  # the plot needs matplotlib: say so now, not after the whole run
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'caffe2tf[plot]'") from None
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise InputError(f"--tolerance must be a finite number > 0 (got {tolerance})")
    if against not in ("reference", "caffe"):
        raise InputError(f"--against must be 'reference' or 'caffe' (got {against!r})")
    if target != "keras":
        from caffe2tf.app.verify_target import verify_target

        return verify_target(
            solver,
            target=target,
            pipeline=pipeline or load_pipeline(solver, net_path=net_path, lenient=lenient),
            net_path=net_path,
            lenient=lenient,
            module_path=module_path,
            steps=steps,
            seed=seed,
            tolerance=tolerance,
            against=against,
            plot_path=plot_path,
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if pipeline is None:
        pipeline = load_pipeline(
            solver, net_path=net_path, lenient=lenient, input_shapes=input_shapes
        )
    rule, net = pipeline.rule, pipeline.recipe.net
    if against == "caffe" and rule.dialect != "bvlc":
        from caffe2tf.caffe.dialect import DIALECTS

        raise InputError(
            f"--against caffe runs BVLC Caffe 1.0, which cannot run a recipe of "
            f"{DIALECTS[rule.dialect].title}; verify it --against reference, whose rule "
            "follows the fork (docs/forks.md, docs/nvidia-caffe.md)",
            SourceLocation(str(solver)),
        )
    if net is None or not rule.params:
        raise InputError(
            "verify needs the train net to know the parameter shapes: give --net "
            "NET (or a solver whose net/train_net file exists)"
            if net is None
            else "the train net has no learnable parameters",
            SourceLocation(str(solver)),
        )
    given_map = _given_layer_map(pipeline, layer_map)
    layers = mirror.mirror_layers_from_rule(rule, given_map)
    shapes = {p.key: tuple(int(d) for d in p.shape or ()) for p in rule.params}
    iter_size = max(1, int(rule.iter_size))
    init = SeededWeights(shapes, seed)  # drawn when first read; a fused engine lets go of it
    unwritten = never_written_blobs(rule.params, rule.force_backward)
    runs = components.plan_runs(
        rule, shapes, init, steps=steps, seed=seed, frozen=frozen_keys(unwritten)
    )
    timings["load"] = time.perf_counter() - t0

    results: list[RunResult] = []
    schedule = None
    if module_path is not None and not Path(module_path).is_file():
        where = SourceLocation(str(module_path))
        if Path(module_path).is_dir():
            raise InputError("is a directory, not a Python module", where)
        raise InputError(f"module {module_path} does not exist", where)
    # Keras (and TensorFlow, ~3 s) only now that the inputs are read: a bad recipe, net or
    # flag is reported before it, in a fraction of a second
    import_keras_quietly()
    with tempfile.TemporaryDirectory(prefix="caffe2tf-verify-") as tmp:
        t = time.perf_counter()
        module, module_label = _load_candidate(
            Path(solver), net_path, lenient, module_path, Path(tmp), given_map
        )
        if not given_map:  # the Keras names the module was written with, when it lists them
            from caffe2tf.verify.candidate import declared_layer_map

            declared = declared_layer_map(module, dict(rule.scale_pairs))
            if declared:
                given_map = declared
                layers = mirror.mirror_layers_from_rule(rule, declared)
        timings["convert"] = time.perf_counter() - t
        import keras

        layers_of = mirror.mirror_layers_for(rule, given_map)
        backend_label, _ = backend_and_device()
        backend = keras.backend.backend()
        total = sum(r.updates for r in runs)

        def caffe_reference(run: components.Run) -> Any:
            t = time.perf_counter()
            made = run.gradients()  # Caffe's diffs, made one update at a time
            grads = (made.update(k)[1] for k in range(run.updates))
            net_file = Path(net_path) if net_path is not None else Path(net.path)
            trajectory = caffe_trajectory(
                Path(solver), net_file, run.init, grads, run.updates, pipeline
            )
            timings["caffe"] = timings.get("caffe", 0.0) + time.perf_counter() - t
            return trajectory

        user_module = str(module_path) if module_path is not None else None
        with progress_bar("verify", total, fmt) as advance, blame_module(user_module):
            try:
                comparisons, device = engine.compare_runs(
                    rule,
                    runs,
                    module,
                    layers_of,
                    tolerance=tolerance,
                    keys=list(shapes),
                    backend=backend,
                    device=device_kind,
                    caffe_reference=caffe_reference if against == "caffe" else None,
                    progress=advance,
                    timings=timings,
                    norms=plot_path is not None if norms is None else norms,
                )
            except ValueError as err:
                if "--device" in str(err):
                    raise InputError(str(err)) from None
                raise
        for run, comparison in zip(runs, comparisons, strict=True):
            results.append(RunResult(run.component, run.label, run.start, run.dtype, comparison))
        t = time.perf_counter()
        # the rates do not depend on the blobs' sizes: read them off a model of cut blobs
        small = components.probe_shapes(shapes)
        small_init = {k: init[k][tuple(slice(0, d) for d in small[k])] for k in shapes}
        with blame_module(user_module):
            schedule = _schedule_check(
                rule, module, layers_of(small), small_init, runs, steps, tolerance / 10
            )
        timings["schedule"] = time.perf_counter() - t

    comparison = results[0].comparison
    written = None
    if plot_path is not None:
        from caffe2tf.verify.plot import plot_components

        written = str(
            plot_components(
                results,
                schedule,
                plot_path,
                title=f"{Path(solver).name}",
                reference_label="Caffe 1.0" if against == "caffe" else "Caffe's rule",
                candidate_label="candidate",
            )
        )
    return VerifyReport(
        solver=str(solver),
        module=module_label,
        against=against,
        steps=steps,
        seed=seed,
        iter_size=iter_size,
        backend=backend_label,
        device=device,
        comparison=comparison,
        shapes=shapes,
        timings=timings,
        plot_path=written,
        notes=mirror_notes(layers),
        runs=tuple(results),
        schedule=schedule,
    )
