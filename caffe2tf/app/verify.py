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
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffe2tf.app.pipeline import Pipeline, load_pipeline
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify import components
from caffe2tf.verify.compare import Comparison
from caffe2tf.verify.inputs import (
    PROGRESS_MIN_STEPS,
    backend_and_device,
    initial_weights,
    mirror_notes,
    never_written_blobs,
)
from caffe2tf.verify.schedule_check import ScheduleCheck, check_schedule


@dataclass(frozen=True)
class VerifyReport:
    solver: str
    module: str
    against: str
    steps: int
    seed: int
    iter_size: int
    backend: str
    device: str
    comparison: Comparison
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    plot_path: str | None = None
    notes: tuple[str, ...] = ()
    runs: tuple[RunResult, ...] = ()
    schedule: ScheduleCheck | None = None

    def component_verdicts(self) -> list[dict[str, Any]]:
        """One verdict per component: its worst run (deviation, where) and whether it passed."""
        out = []
        for name in components.COMPONENTS:
            if name == "schedule" and self.schedule is not None:
                worst = self.schedule.worst
                out.append(
                    {
                        "component": "schedule",
                        # an unread schedule is said in the report; the windows still judge
                        "passed": self.schedule.passed,
                        "runs": len([r for r in self.runs if r.component == name]),
                        "schedule_iterations": self.schedule.iterations,
                        "schedule_worst": worst.worst if worst else 0.0,
                        "first_bad_iteration": min(
                            (b.first_bad for b in self.schedule.blobs if b.first_bad is not None),
                            default=None,
                        ),
                    }
                )
            mine = [r for r in self.runs if r.component == name]
            if not mine:
                continue
            worst_run = max(mine, key=lambda r: r.comparison.deviation)
            entry = {
                "component": name,
                "passed": all(r.comparison.passed for r in mine),
                "runs": len(mine),
                "deviation": worst_run.comparison.deviation,
                "where": f"{worst_run.label}: {worst_run.comparison.worst_key} after update "
                f"{worst_run.start + worst_run.comparison.worst_step}",
            }
            if name == "schedule" and out and out[-1]["component"] == "schedule":
                out[-1].update(
                    passed=out[-1]["passed"] and entry["passed"],
                    deviation=entry["deviation"],
                    where=entry["where"],
                )
            else:
                out.append(entry)
        return out

    @property
    def passed(self) -> bool:
        if not self.runs:
            return self.comparison.passed
        return all(v["passed"] for v in self.component_verdicts())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "solver": self.solver,
            "module": self.module,
            "against": self.against,
            "steps": self.steps,
            "seed": self.seed,
            "iter_size": self.iter_size,
            "backend": self.backend,
            "device": self.device,
            "passed": self.passed,
            "components": [
                {
                    k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                    for k, v in c.items()
                }
                for c in self.component_verdicts()
            ],
            "runs": [
                {
                    "component": r.component,
                    "label": r.label,
                    "start": r.start,
                    "precision": r.dtype,
                    "comparison": r.comparison.to_dict(),
                }
                for r in self.runs
            ],
            "schedule": self.schedule.to_dict() if self.schedule else None,
            "comparison": self.comparison.to_dict(),
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "plot": self.plot_path,
            "notes": list(self.notes),
        }

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        c = self.comparison
        ref = {
            "reference": "NumPy reference executor (float32, Caffe's operation order)",
            "caffe": "the real Caffe 1.0 binary",
        }.get(self.against, self.against)
        lines = [
            f"verify {self.solver}",
            f"  candidate : {self.module}",
            f"  against   : {ref}",
            f"  backend   : {self.backend}",
            f"  device    : {self.device}",
            f"  run       : {self.steps} updates, iter_size {self.iter_size}, seed {self.seed}, "
            f"tolerance {c.tolerance:g}",
            f"  measure   : max|Δw| / max(travelled {c.travelled:.4g}, 1% max|w0| "
            f"{c.floor:.4g}) = max|Δw| / {c.scale:.4g}",
            "",
        ]
        width = max([len("blob")] + [len(k) for k in c.keys])
        lines.append(f"  {'blob':<{width}}  {'shape':<12}  {'deviation':>10}  verdict")
        for key in c.keys:
            dev = c.per_blob.get(key, 0.0)
            shape = "x".join(str(d) for d in self.shapes.get(key, ())) or "-"
            ok = "ok" if dev <= c.tolerance else "MISMATCH"
            lines.append(f"  {key:<{width}}  {shape:<12}  {_fmt(dev):>10}  {ok}")
        lines.append("")
        for note in self.notes:
            lines.append(f"  note      : {note}")
        lines.append(
            f"  max deviation {_fmt(c.deviation)} at {c.worst_key or '-'} after update "
            f"{c.worst_step} (max|Δw| {_fmt(c.max_abs_diff)})"
        )
        if self.timings:
            lines.append(
                "  time      : " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
            )
        if self.plot_path:
            lines.append(f"  plot      : {self.plot_path}")
        verdicts = self.component_verdicts() if self.runs else []
        if verdicts:
            lines += ["", "  components (each judged against its own motion; see docs/verify.md):"]
            for v in verdicts:
                dev = _fmt(v["deviation"]) if "deviation" in v else "-"
                ok = "ok" if v["passed"] else "MISMATCH"
                lines.append(
                    f"    {v['component']:<13} {v['runs']:>2} run(s)  {dev:>10}  {ok:<8}  "
                    f"{v.get('where', '')}"
                )
        sched = self.schedule
        if sched is not None:
            if sched.unreadable:
                lines.append(f"  schedule  : not read: {sched.unreadable}")
            else:
                bad = [b for b in sched.blobs if b.first_bad is not None]
                head = f"  schedule  : {sched.iterations} iterations x {len(sched.blobs)} blobs"
                if bad:
                    b = min(bad, key=lambda x: x.first_bad or 0)
                    lines.append(
                        f"{head}: {b.key} first differs at iteration {b.first_bad} "
                        f"(Caffe {b.caffe_at_first_bad:.6g}, candidate "
                        f"{b.candidate_at_first_bad:.6g})"
                    )
                else:
                    worst = sched.worst
                    lines.append(
                        f"{head}: equal within {sched.tolerance:g} (worst relative "
                        f"difference {_fmt(worst.worst if worst else 0.0)})"
                    )
        if c.nonfinite:  # a failure whatever the deviation says
            lines.append(f"FAIL: not finite: {c.nonfinite}")
            return "\n".join(lines)
        failed = [v["component"] for v in verdicts if not v["passed"]]
        if failed or not self.passed:
            lines.append(
                "FAIL: "
                + (", ".join(failed) if failed else f"deviation {_fmt(c.deviation)}")
                + f" (tolerance {c.tolerance:g})"
            )
        else:
            lines.append(
                f"PASS: every component within {c.tolerance:g} (stream deviation "
                f"{_fmt(c.deviation)})"
            )
        return "\n".join(lines)


def _json_number(v: Any) -> Any:
    """inf/NaN as text (JSON has no such numbers)."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


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
        if not Path(module_path).is_file():
            raise InputError(
                f"module {module_path} does not exist", SourceLocation(str(module_path))
            )
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


_SNAPSHOT_LINE = re.compile(r"^\s*(snapshot|snapshot_prefix)\s*:.*$", re.M)


def _without_snapshots(text: str) -> str:
    """The solver text without ``snapshot``/``snapshot_prefix``: they do not change the update,
    but Caffe's constructor aborts when the prefix's folder is not writable
    (``solver.cpp`` ``CheckSnapshotWritePermissions``, run when ``snapshot`` > 0)."""
    return _SNAPSHOT_LINE.sub("", text)


def _caffe_trajectory(
    solver: Path,
    net_file: Path,
    init: Mapping[str, np.ndarray],
    grads: Iterable[Mapping[str, np.ndarray]],
    steps: int,
    pipeline: Pipeline | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The real Caffe's weights after each of ``steps`` updates, streamed
    (:func:`caffe2tf.verify.oracle.run_streamed`: flat in memory whatever ``steps``; ``grads``
    is read one update at a time). A net fed by data layers (Caffe opens their databases when
    it builds them) runs as its TRAIN-phase layers with each data layer an Input layer of the
    shapes verify used (:func:`caffe2tf.verify.oracle.caffe_ready_net`), from a solver text
    written from the parsed solver without its net, test-net and snapshot fields."""
    from caffe2tf.verify import oracle

    if oracle.caffe_root() is None:
        raise Caffe2TfError(
            f"--against caffe needs the Caffe 1.0 root (build it with "
            f"scripts/build_caffe_root.sh, or set {oracle.ROOT_ENV})"
        )
    net = pipeline.recipe.net if pipeline is not None else None
    if net is not None and pipeline is not None and oracle.needs_input_layers(net):
        message = pipeline.recipe.solver.message
        solver_text = oracle.caffe_ready_solver(message)
        try:
            net_text = oracle.caffe_ready_net(net, message)
        except oracle.OracleError as err:
            raise InputError(str(err), SourceLocation(net.path)) from None
    else:
        solver_text = _without_snapshots(Path(solver).read_text())
        net_text = Path(net_file).read_text()
    case = oracle.OracleCase(
        name="verify", solver_text=solver_text, net_text=net_text, init=dict(init)
    )
    try:
        return oracle.run_streamed(case, grads, steps)
    except oracle.OracleError as err:
        raise Caffe2TfError(str(err)) from err


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


@dataclass(frozen=True)
class RunResult:
    """One run of :func:`caffe2tf.verify.components.plan_runs` and its comparison."""

    component: str
    label: str
    start: int
    dtype: str
    comparison: Comparison


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
    is drawn only for ``table`` on a terminal."""
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
    init = initial_weights(shapes, seed)
    unwritten = never_written_blobs(rule.params, rule.force_backward)
    runs = components.plan_runs(
        rule, shapes, init, steps=steps, seed=seed, frozen=frozen_keys(unwritten)
    )
    timings["load"] = time.perf_counter() - t0

    results: list[RunResult] = []
    schedule = None
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
            trajectory = _caffe_trajectory(
                Path(solver), net_file, run.init, grads, run.updates, pipeline
            )
            timings["caffe"] = timings.get("caffe", 0.0) + time.perf_counter() - t
            return trajectory

        with progress_bar("verify", total, fmt) as advance:
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
