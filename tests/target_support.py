"""Helpers for the torch and optax target tests: render a case directory or a matrix case for
a target, import the emitted module, and the matrix data every comparison uses.

Golden files: ``tests/cases/<case>/expected_<target>/<module>`` (``expected_torch/
optimizer_torch.py``, ``expected_optax/optimizer_optax.py``), next to the Keras target's
``expected/``; regenerate them with ``CAFFE2TF_REGEN=1 pytest tests/test_torch_target.py
tests/test_optax_target.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
CASE_DIRS = sorted(p for p in CASES.iterdir() if (p / "solver.prototxt").exists())
STEPS = 100
TOLERANCE = 1e-3
_counter = itertools.count()


def load_module(path: str | os.PathLike[str]) -> Any:
    name = f"_caffe2tf_target_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def case_plan(case: Path, target: str) -> tuple[Any, Any]:
    """``(rule, plan)`` of a case directory for ``target``, read as ``convert`` reads it
    (from the repository root, with the case's layer map)."""
    from caffe2tf.app.convert import load_layer_map
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.app.targets import get_target

    layer_map = (
        load_layer_map(case / "layer_map.yaml") if (case / "layer_map.yaml").exists() else {}
    )
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rel = case.resolve().relative_to(ROOT)
        net = rel / "net.prototxt" if (ROOT / rel / "net.prototxt").exists() else None
        pipeline = load_pipeline(rel / "solver.prototxt", net_path=net)
        plan, _ = get_target(target).plan(pipeline, layer_map)
    finally:
        os.chdir(cwd)
    return pipeline.rule, plan


def render_case(case: Path, target: str) -> dict[str, str]:
    from caffe2tf.app.targets import get_target

    return get_target(target).render(case_plan(case, target)[1])


def check_goldens(case: Path, target: str) -> None:
    """The case's ``expected_<target>/`` files equal a fresh rendering (rewritten first when
    ``CAFFE2TF_REGEN=1``)."""
    fresh = render_case(case, target)
    folder = case / f"expected_{target}"
    if os.environ.get("CAFFE2TF_REGEN") == "1":
        folder.mkdir(exist_ok=True)
        for name, text in fresh.items():
            (folder / name).write_text(text, encoding="utf-8")
    for name, text in fresh.items():
        golden = folder / name
        assert golden.exists(), f"missing {golden}; run CAFFE2TF_REGEN=1 pytest"
        assert golden.read_text(encoding="utf-8") == text, (
            f"{golden} is stale; run CAFFE2TF_REGEN=1 pytest tests/test_{target}_target.py"
        )


def ruff_clean(folder: Path) -> None:
    """``ruff check`` and ``ruff format --check`` pass on every .py under ``folder``, with the
    default settings (line length 88) and with the project's (100)."""
    from conftest import need

    exe = shutil.which("ruff")
    need(exe is not None, "ruff is not on PATH (it is in the dev extras)")
    assert exe is not None
    for extra in (["--isolated"], ["--config", str(ROOT / "pyproject.toml")]):
        for cmd in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
            res = subprocess.run(
                [exe, *cmd, *extra, str(folder)], capture_output=True, text=True, cwd=folder
            )
            assert res.returncode == 0, res.stdout + res.stderr


def import_roots(text: str) -> set[str]:
    import ast

    roots = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    return roots


# ---- the update-rule matrix ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaseData:
    """A matrix case as every target comparison feeds it: ``lr_mult: 0`` blobs get no
    gradient (Caffe computes none), ``grads`` is the float32 running sum of ``micro``."""

    name: str
    init: dict[str, np.ndarray]
    micro: list[dict[str, np.ndarray]]
    grads: list[dict[str, np.ndarray]]
    iter_size: int


def case_data(case: Any) -> CaseData:
    from caffe2tf.verify import streams
    from caffe2tf.verify.inputs import frozen_blobs_get_no_gradient

    frozen = [k for k, (lr, _) in case.multipliers.items() if lr == 0]
    micro = list(case.micro_grads) if case.micro_grads else list(case.grads)
    micro = frozen_blobs_get_no_gradient(micro, frozen)
    return CaseData(
        name=case.name,
        init={k: np.asarray(v, np.float32) for k, v in case.init.items()},
        micro=micro,
        grads=streams.accumulate(micro, int(case.iter_size)),
        iter_size=int(case.iter_size),
    )


def write_case_files(case: Any, directory: Path) -> tuple[Path, Path]:
    """``solver.prototxt`` (pointing at ``net.prototxt`` beside it) and ``net.prototxt``."""
    directory.mkdir(parents=True, exist_ok=True)
    net = directory / "net.prototxt"
    net.write_text(case.net_text)
    solver = directory / "solver.prototxt"
    solver.write_text(case.solver_text.rstrip("\n") + f'\nnet: "{net}"\n')
    return solver, net


def convert_case(case: Any, directory: Path, target: str) -> Path:
    """``caffe2tf convert --target`` of a matrix case, as a user runs it; the module path."""
    from caffe2tf.app.convert import convert_solver
    from caffe2tf.app.targets import get_target

    solver, net = write_case_files(case, directory)
    out = directory / f"out_{target}"
    report = convert_solver(solver, net_path=net, out_dir=out, force=True, target=target)
    assert report.exit_code == 0, report.render()
    return out / get_target(target).module


def cli_convert(target: str, out: Path, case: str = "lenet_sgd_multistep") -> tuple[str, list[str]]:
    """``caffe2tf convert SOLVER --net NET --target TARGET -o OUT`` of a committed case through
    the CLI, as a user runs it (asserted to succeed); the solver and the ``--net`` arguments,
    for the case's next commands."""
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    folder = CASES / case
    solver, files = str(folder / "solver.prototxt"), ["--net", str(folder / "net.prototxt")]
    res = CliRunner().invoke(cli, ["convert", solver, *files, "--target", target, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return solver, files


def case_rule(case: Any, directory: Path) -> Any:
    from caffe2tf.app.pipeline import load_pipeline

    solver, net = write_case_files(case, directory)
    return load_pipeline(solver, net_path=net).rule


def teeth_case(tag: str, variant: int = 0, **combo: object) -> Any:
    """A plain recipe where one mistake is the only difference (as in test_keras_oracle)."""
    from caffe2tf.verify import matrix

    base = {"policy": "fixed", "decay": "none", "mults": "default", "clip": "off", "iter_size": 1}
    case = matrix.build_case({**base, **combo}, STEPS, variant=variant)
    return dataclasses.replace(case, name=f"teeth-{tag}")
