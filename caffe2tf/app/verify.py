"""``caffe2tf verify``: run an emitted ``optimizer.py`` against Caffe's rule on seeded gradients.

Steps of :func:`verify_solver`:

1. read and lower the recipe once (:func:`caffe2tf.app.pipeline.load_pipeline`);
2. the candidate: the ``--module`` given, else ``caffe2tf convert`` into a temporary folder
   (the very file a user gets), imported from its path;
3. seeded data (:mod:`caffe2tf.verify.streams`): initial weights N(0, 0.5²) and, for each Caffe
   update, ``iter_size`` per-pass gradients whose float32 sum is Caffe's diff; blobs with
   ``lr_mult: 0`` get none (Caffe does not compute them), and neither do BatchNorm's statistics
   (:func:`caffe2tf.verify.inputs.never_written_blobs`);
4. the reference trajectory: ``against="reference"`` -> the NumPy executor in float32
   (``caffe2tf.rule.reference.run_reference``); ``against="caffe"`` -> the real Caffe 1.0 binary
   (``caffe2tf.verify.oracle.run_cases``; an error when no Caffe root is available);
5. the candidate trajectory: :mod:`caffe2tf.verify.keras_harness` trains a Keras model mirroring
   the net per the module's contract (one ``apply_gradients`` per pass on the gradients of
   ``loss + sum(model.losses)``) on the active Keras backend;
6. :func:`caffe2tf.verify.compare.compare_trajectories` -> report (table or JSON), optional PNG.

Exit code (``VerifyReport.exit_code``): 0 when the deviation is within tolerance, 1 otherwise.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffe2tf.app.pipeline import Pipeline, load_pipeline
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify.compare import Comparison, compare_trajectories
from caffe2tf.verify.inputs import (
    PROGRESS_MIN_STEPS,
    backend_and_device,
    frozen_blobs_get_no_gradient,
    initial_weights,
    mirror_notes,
    never_written_blobs,
)


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

    @property
    def passed(self) -> bool:
        return self.comparison.passed

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
        if c.nonfinite:  # a failure whatever the deviation says
            lines.append(f"FAIL: not finite: {c.nonfinite}")
            return "\n".join(lines)
        lines.append(
            ("PASS" if self.passed else "FAIL") + f": deviation {_fmt(c.deviation)} "
            f"{'<=' if self.passed else '>'} {c.tolerance:g}"
        )
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def progress_printer(label: str, total: int) -> Any:
    if total < PROGRESS_MIN_STEPS:
        return None
    every = max(1, total // 10)

    def report(done: int, steps: int) -> None:
        if done % every == 0 or done == steps:
            print(f"caffe2tf verify: {label} {done}/{steps} updates", file=sys.stderr, flush=True)

    return report


def _load_candidate(
    solver: Path, net_path: Path | None, lenient: bool, module_path: Path | None, workdir: Path
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
        layer_map=None,
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
    grads: Sequence[Mapping[str, np.ndarray]],
) -> list[dict[str, np.ndarray]]:
    from caffe2tf.verify import oracle

    if oracle.caffe_root() is None:
        raise Caffe2TfError(
            f"--against caffe needs the Caffe 1.0 root (build it with "
            f"scripts/build_caffe_root.sh, or set {oracle.ROOT_ENV})"
        )
    text = _without_snapshots(Path(solver).read_text())
    case = oracle.OracleCase(
        name="verify",
        solver_text=text,
        net_text=Path(net_file).read_text(),
        init=dict(init),
        grads=list(grads),
    )
    try:
        return oracle.run_cases([case])["verify"]
    except oracle.OracleError as err:
        raise Caffe2TfError(str(err)) from err


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
) -> VerifyReport:
    """See the module docstring. Raises :class:`~caffe2tf.errors.Caffe2TfError` for bad input
    (unknown net or shapes, missing module, no Caffe root for ``against="caffe"``).
    ``pipeline``: the recipe already read and lowered by the caller (``check``), so that it is
    not read twice."""
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import keras_harness, mirror, streams

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
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if pipeline is None:
        pipeline = load_pipeline(solver, net_path=net_path, lenient=lenient)
    rule, net = pipeline.rule, pipeline.recipe.net
    if net is None or not rule.params:
        raise InputError(
            "verify needs the train net to know the parameter shapes: give --net "
            "NET (or a solver whose net/train_net file exists)"
            if net is None
            else "the train net has no learnable parameters",
            SourceLocation(str(solver)),
        )
    layers = mirror.mirror_layers_from_rule(rule)
    shapes = {p.key: tuple(int(d) for d in p.shape or ()) for p in rule.params}
    iter_size = max(1, int(rule.iter_size))
    init = initial_weights(shapes, seed)
    micro = streams.micro_batches(shapes, steps, seed, iter_size=iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(rule.params, rule.force_backward)
    )
    grads = streams.accumulate(micro, iter_size)
    timings["load"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="caffe2tf-verify-") as tmp:
        t = time.perf_counter()
        module, module_label = _load_candidate(
            Path(solver), net_path, lenient, module_path, Path(tmp)
        )
        timings["convert"] = time.perf_counter() - t

        t = time.perf_counter()
        if against == "reference":
            reference = run_reference(rule, init, grads, precision="float32")
        else:
            net_file = Path(net_path) if net_path is not None else Path(net.path)
            reference = _caffe_trajectory(Path(solver), net_file, init, grads)
        timings[against] = time.perf_counter() - t

        t = time.perf_counter()
        backend, device = backend_and_device()
        candidate = keras_harness.run_candidate(
            module,
            layers,
            init,
            grads,
            iter_size=iter_size,
            seed=seed,
            micro_grads=micro,
            progress=progress_printer("keras", steps),
        )
        timings["keras"] = time.perf_counter() - t

    comparison = compare_trajectories(
        init, reference, candidate, tolerance=tolerance, keys=list(shapes)
    )
    written = None
    if plot_path is not None:
        from caffe2tf.verify.plot import plot_deviation

        written = str(
            plot_deviation(
                comparison, plot_path, title=f"{Path(solver).name}: deviation per update"
            )
        )
    return VerifyReport(
        solver=str(solver),
        module=module_label,
        against=against,
        steps=steps,
        seed=seed,
        iter_size=iter_size,
        backend=backend,
        device=device,
        comparison=comparison,
        shapes=shapes,
        timings=timings,
        plot_path=written,
        notes=mirror_notes(layers),
    )
