"""The update-rule matrix through the Keras target, as a user would run it: each case converted
by ``caffe2tf convert`` into a folder, its ``optimizer.py`` imported and trained per its
contract on the case's gradients (used by the oracle tests, the benchmarks and
``scripts/keras_matrix.py``).
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
from caffe2tf.verify.inputs import frozen_blobs_get_no_gradient


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
