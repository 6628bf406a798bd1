"""``caffe2tf verify``: run an emitted ``optimizer.py`` against Caffe's rule on seeded gradients.

Steps of :func:`verify_solver`:

1. read the recipe (``caffe2tf.caffe.load.load_recipe``) and lower it to the ``UpdateRule``;
2. the candidate: the ``--module`` given, else ``caffe2tf convert`` into a temporary folder
   (the very file a user gets), imported from its path;
3. seeded data (:mod:`caffe2tf.verify.streams`): initial weights N(0, 0.5²) and, for each Caffe
   update, ``iter_size`` per-pass gradients whose float32 sum is Caffe's diff; blobs with
   ``lr_mult: 0`` get none (Caffe does not compute them, :func:`frozen_blobs_get_no_gradient`),
   and neither do BatchNorm's statistics (:func:`never_written_blobs`);
4. the reference trajectory: ``against="reference"`` → the NumPy executor in float32
   (``caffe2tf.rule.reference.run_reference``); ``against="caffe"`` → the real Caffe 1.0 binary
   (``caffe2tf.verify.oracle.run_cases``; an error when no Caffe root is available);
5. the candidate trajectory: :mod:`caffe2tf.verify.keras_harness` trains a Keras model mirroring
   the net per the module's contract (one ``apply_gradients`` per pass on the gradients of
   ``loss + sum(model.losses)``) on the active Keras backend;
6. :func:`caffe2tf.verify.compare.compare_trajectories` → report (table or JSON), optional PNG.

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

from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify.compare import Comparison, compare_trajectories

PROGRESS_MIN_STEPS = 200  # runs at least this long report progress on stderr


def initial_weights(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded N(0, 0.5²) float32 initial weights, one array per owner blob (Caffe layout)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1A17])
    return {k: rng.normal(0.0, 0.5, tuple(shapes[k])).astype(np.float32) for k in sorted(shapes)}


def frozen_blobs_get_no_gradient(
    micro: Sequence[Mapping[str, np.ndarray]], frozen: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """Zero the gradients of ``lr_mult: 0`` blobs, as Caffe computes them: ``AppendParam`` sets
    ``param_propagate_down(i, false)`` for them, so the layer never writes their diff and it stays
    0 from ``ClearParamDiffs`` (``net.cpp:149-152``; ``force_backward`` turns it back on,
    ``net.cpp:235-238``). A Keras user freezes such a variable, so it has no gradient either; a
    non-zero stream would put a gradient into Caffe's clip norm that no Keras model produces."""
    frozen = set(frozen)
    if not frozen:
        return [dict(g) for g in micro]
    return [{k: (np.zeros_like(v) if k in frozen else v) for k, v in g.items()} for g in micro]


def never_written_blobs(params: Sequence[Any], force_backward: bool) -> list[str]:
    """Keys of the blobs whose diff Caffe leaves at 0 in this net: ``lr_mult: 0`` blobs (unless
    ``force_backward``, see :func:`frozen_blobs_get_no_gradient`) and, always, the BatchNorm
    statistics: ``BatchNormLayer::Backward_cpu`` computes only the bottom diff and never
    touches its blobs' diffs (``batch_norm_layer.cpp``), and Caffe forces their ``lr_mult`` to 0
    (``LayerSetUp``), so its update never moves them either."""
    return [
        p.key
        for p in params
        if p.layer_type == "BatchNorm" or (p.lr_mult == 0 and not force_backward)
    ]


def mirror_notes(layers: Sequence[Any]) -> tuple[str, ...]:
    """What the report says about mirrored blobs that are not plain weight/bias variables."""
    notes = []
    for spec in layers:
        stats = [b for b in spec.blobs if b.layer_type == "BatchNorm"]
        scale = [b for b in spec.blobs if b.layer_type == "Scale" and b.layer != spec.name]
        if scale:
            notes.append(
                f"{', '.join(b.key for b in scale)}: the gamma/beta of the Keras "
                f"BatchNormalization {spec.name!r} (Caffe BatchNorm+Scale pair), "
                f"trained and decayed like any Caffe blob"
            )
        if stats:
            notes.append(
                f"{', '.join(b.key for b in stats)}: Caffe BatchNorm statistics "
                f"(lr_mult 0, no gradient; Caffe's update never moves them). Keras "
                f"holds mean/variance divided by the factor {spec.name}/2 in the "
                f"non-trainable moving_mean/moving_variance of {spec.name!r}, outside "
                f"the optimizer; Keras keeps no factor, so {spec.name}/2 is shown as "
                f"loaded. Compared as unchanged."
            )
    return tuple(notes)


def backend_and_device() -> tuple[str, str]:
    """(``"keras X / <backend> Y"``, the device the backend computes on: GPU name or CPU)."""
    import keras

    backend = keras.backend.backend()
    device = "CPU"
    version = ""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            version = tf.__version__
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                device = f"GPU: {details.get('device_name', gpus[0].name)}"
        elif backend == "jax":
            import jax

            version = jax.__version__
            dev = jax.devices()[0]
            device = (
                "CPU"
                if dev.platform == "cpu"
                else f"{dev.platform.upper()}: {getattr(dev, 'device_kind', dev)}"
            )
        elif backend == "torch":
            import torch

            version = torch.__version__
            if torch.cuda.is_available():
                device = f"GPU: {torch.cuda.get_device_name(0)}"
    except Exception as err:  # a device query must not fail the verification
        device = f"unknown ({err})"
    return f"keras {keras.__version__} / {backend} {version}".strip(), device


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
        lines.append(
            ("PASS" if self.passed else "FAIL") + f": deviation {_fmt(c.deviation)} "
            f"{'<=' if self.passed else '>'} {c.tolerance:g}"
        )
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def _progress_printer(label: str, total: int) -> Any:
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
    from caffe2tf.verify.keras_harness import load_module

    if module_path is not None:
        if not Path(module_path).is_file():
            raise InputError(
                f"module {module_path} does not exist", SourceLocation(str(module_path))
            )
        return load_module(module_path), str(module_path)
    from caffe2tf.targets.keras.convert import convert_solver

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
) -> VerifyReport:
    """See the module docstring. Raises :class:`~caffe2tf.errors.Caffe2TfError` for bad input
    (unknown net or shapes, missing module, no Caffe root for ``against="caffe"``)."""
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule.lower import lower
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import keras_harness, streams

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
    if not tolerance >= 0:
        raise InputError(f"--tolerance must be >= 0 (got {tolerance})")
    if against not in ("reference", "caffe"):
        raise InputError(f"--against must be 'reference' or 'caffe' (got {against!r})")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    recipe = load_recipe(solver, net_path=net_path, lenient=lenient)
    rule = lower(recipe)
    net = recipe.net
    if net is None or not net.params:
        raise InputError(
            "verify needs the train net to know the parameter shapes: give --net "
            "NET (or a solver whose net/train_net file exists)"
            if net is None
            else "the train net has no learnable parameters",
            SourceLocation(str(solver)),
        )
    layers = keras_harness.mirror_layers_from_net(net)
    shapes = {p.key: tuple(int(d) for d in p.shape) for p in net.params}
    iter_size = max(1, int(rule.iter_size))
    init = initial_weights(shapes, seed)
    micro = streams.micro_batches(shapes, steps, seed, iter_size=iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(net.params, bool(getattr(net.message, "force_backward", False)))
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
            progress=_progress_printer("keras", steps),
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


# ---- the update-rule matrix through the Keras target (tests, bench, GPU runs) -----------------


@dataclass(frozen=True)
class KerasCaseData:
    """A matrix case's data as the Keras comparison uses it: ``lr_mult: 0`` blobs get no
    gradient (:func:`frozen_blobs_get_no_gradient`), ``grads`` is the float32 sum of ``micro``."""

    name: str
    init: dict[str, np.ndarray]
    micro: list[dict[str, np.ndarray]]
    grads: list[dict[str, np.ndarray]]
    iter_size: int


def keras_case_data(case: Any) -> KerasCaseData:
    """From a :class:`caffe2tf.verify.matrix.MatrixCase`."""
    from caffe2tf.verify import streams

    frozen = [k for k, (lr, _) in case.multipliers.items() if lr == 0]
    iter_size = int(case.iter_size)
    micro = list(case.micro_grads) if case.micro_grads else list(case.grads)
    micro = frozen_blobs_get_no_gradient(micro, frozen)
    grads = streams.accumulate(micro, iter_size)
    return KerasCaseData(
        name=case.name,
        init={k: np.asarray(v, np.float32) for k, v in case.init.items()},
        micro=micro,
        grads=grads,
        iter_size=iter_size,
    )


def write_case_files(case: Any, directory: Path) -> tuple[Path, Path]:
    """``solver.prototxt`` (pointing at ``net.prototxt`` beside it) and ``net.prototxt``."""
    directory.mkdir(parents=True, exist_ok=True)
    net = directory / "net.prototxt"
    net.write_text(case.net_text)
    solver = directory / "solver.prototxt"
    solver.write_text(case.solver_text.rstrip("\n") + f'\nnet: "{net}"\n')
    return solver, net


def convert_case(case: Any, directory: Path) -> Path:
    """``caffe2tf convert`` of a matrix case into ``directory/out``; returns optimizer.py."""
    from caffe2tf.targets.keras.convert import convert_solver

    solver, net = write_case_files(case, directory)
    out = directory / "out"
    report = convert_solver(
        solver,
        net_path=net,
        lenient=False,
        layer_map=None,
        out_dir=out,
        allow_approx=False,
        force=True,
    )
    if getattr(report, "exit_code", 0) != 0 or not (out / "optimizer.py").is_file():
        rendered = report.render("table") if hasattr(report, "render") else str(report)
        raise Caffe2TfError(f"convert wrote no optimizer.py for {case.name}:\n{rendered}")
    return out / "optimizer.py"


def run_keras_case(
    case: Any, data: KerasCaseData, candidate: Any, *, route: str = "loop", jit: bool = True
) -> list[dict[str, np.ndarray]]:
    """Train the mirror of the matrix net (Input + InnerProduct layers) with ``candidate``
    (a module or :class:`~caffe2tf.verify.keras_harness.Candidate`) on ``data``."""
    from caffe2tf.verify import keras_harness

    layers = keras_harness.mirror_layers_from_net_text(case.net_text, data.init)
    return keras_harness.run_candidate(
        candidate,
        layers,
        data.init,
        data.grads,
        iter_size=data.iter_size,
        micro_grads=data.micro,
        route=route,
        jit=jit,
    )


def save_trajectories(path: Path, trajectories: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """``{case: [weights after update 1..N]}`` -> one .npz, keys ``"{case}|{t}/{layer}/{i}"``."""
    arrays = {
        f"{name}|{t}/{key}": np.asarray(v, np.float32)
        for name, traj in trajectories.items()
        for t, ws in enumerate(traj, 1)
        for key, v in ws.items()
    }
    np.savez(path, **arrays)


def load_trajectories(path: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    from caffe2tf.verify.compare import trajectory_from_flat

    by_case: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, _, rest = key.partition("|")
            by_case.setdefault(name, {})[rest] = data[key]
    return {name: trajectory_from_flat(flat) for name, flat in by_case.items()}


def matrix_deviations(
    reference: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    workdir: Path,
    *,
    names: Sequence[str] | None = None,
    route: str = "loop",
    jit: bool = True,
    steps: int = 100,
    tolerance: float = 1e-3,
) -> dict[str, dict[str, Any]]:
    """Convert and run every matrix case (or ``names``) on the active Keras backend and compare
    with ``reference[case]``: ``{case: {deviation, passed, seconds} | {error}}``."""
    from caffe2tf.verify.keras_harness import load_module
    from caffe2tf.verify.matrix import matrix_cases

    out: dict[str, dict[str, Any]] = {}
    for case in matrix_cases(steps):
        if (names is not None and case.name not in names) or case.name not in reference:
            continue
        t = time.perf_counter()
        try:
            data = keras_case_data(case)
            module = load_module(convert_case(case, workdir / case.name))
            traj = run_keras_case(case, data, module, route=route, jit=jit)
            cmp = compare_trajectories(data.init, reference[case.name], traj, tolerance=tolerance)
            out[case.name] = {
                "deviation": cmp.deviation,
                "passed": cmp.passed,
                "worst": f"{cmp.worst_key}@{cmp.worst_step}",
                "seconds": time.perf_counter() - t,
            }
        except Exception as err:  # reported per case; the caller decides
            out[case.name] = {
                "error": f"{type(err).__name__}: {err}"[:2000],
                "seconds": time.perf_counter() - t,
            }
    return out


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m caffe2tf.verify.run --reference TRAJ.npz --out RESULT.json [--names ...]``:
    :func:`matrix_deviations` on the active backend (used by the JAX test and the GPU run)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m caffe2tf.verify.run")
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--names", nargs="*", default=None)
    parser.add_argument("--route", default="loop", choices=["loop", "fit"])
    parser.add_argument("--no-jit", action="store_true")
    args = parser.parse_args(argv)
    reference = load_trajectories(args.reference)
    t = time.perf_counter()
    backend, device = backend_and_device()
    with tempfile.TemporaryDirectory(prefix="caffe2tf-matrix-") as tmp:
        results = matrix_deviations(
            reference, Path(tmp), names=args.names, route=args.route, jit=not args.no_jit
        )
    args.out.write_text(
        json.dumps(
            {
                "backend": backend,
                "device": device,
                "seconds": time.perf_counter() - t,
                "cases": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main())
