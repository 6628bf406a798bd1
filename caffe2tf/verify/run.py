"""Seeded data and candidate runs for verify: initial weights, gradients Caffe never writes,
what the report says about mirrored blobs, and the update-rule matrix through the Keras target
(tests, bench, GPU runs). The ``verify`` command itself is :mod:`caffe2tf.app.verify`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caffe2tf.errors import Caffe2TfError
from caffe2tf.verify.compare import compare_trajectories

PROGRESS_MIN_STEPS = 200  # runs at least this long report progress on stderr


def initial_weights(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded N(0, 0.5²) float32 initial weights, one array per owner blob (Caffe layout)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1A17])
    return {k: rng.normal(0.0, 0.5, tuple(shapes[k])).astype(np.float32) for k in sorted(shapes)}


def frozen_blobs_get_no_gradient(
    micro: Sequence[Mapping[str, np.ndarray]], frozen: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """Zero the gradients of ``lr_mult: 0`` blobs, as Caffe computes them: ``Net::Init`` sets
    ``param_propagate_down(i, false)`` for them (``net.cpp:146-153``), so the layer never writes
    their diff and it stays 0 from ``ClearParamDiffs`` (``net.cpp:927-945``; ``force_backward``
    turns it back on, ``net.cpp:235-238``). A Keras user freezes such a variable, so it has no
    gradient either; a non-zero stream would put a gradient into Caffe's clip norm that no Keras
    model produces."""
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
    from caffe2tf.app.convert import convert_solver

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
    (a module or :class:`~caffe2tf.verify.candidate.Candidate`) on ``data``."""
    from caffe2tf.verify import keras_harness, mirror

    shapes = {k: np.shape(v) for k, v in data.init.items()}
    layers = mirror.mirror_layers_from_shapes(shapes, case.layer_types)
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
    from caffe2tf.verify.candidate import load_module
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
