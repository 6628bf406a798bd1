"""Standard tests over every case directory of tests/cases/ (same skeleton for every solver):

* the goldens (expected/train_config.yaml, expected/optimizer.py) equal a fresh rendering
  (regenerate with ``CAFFE2TF_REGEN=1 pytest tests/test_keras_cases.py`` or
  ``python scripts/regen_cases.py``);
* the emitted optimizer.py passes ``ruff check`` and ``ruff format --check`` (default settings
  and the project's);
* the emitted module, used per the contract on the TF backend, follows
  :func:`caffe2tf.rule.reference.run_reference` (float32) within 1e-3 for 100 updates;
* the optimizer built by ``build.py`` and the one loaded from train_config.yaml produce the
  same trajectory as the emitted module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need, require

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))

import keras_support as ks  # noqa: E402

CASE_DIRS = sorted(p for p in ks.CASES.iterdir() if (p / "solver.prototxt").exists())
IDS = [p.name for p in CASE_DIRS]
STEPS = 100
TOLERANCE = 1e-3


def test_enough_cases() -> None:
    assert len(CASE_DIRS) >= 6


@pytest.mark.parametrize("case", CASE_DIRS, ids=IDS)
def test_goldens(case: Path) -> None:
    from regen_cases import render_case

    fresh = render_case(case)
    if os.environ.get("CAFFE2TF_REGEN") == "1":
        (case / "expected").mkdir(exist_ok=True)
        for name, text in fresh.items():
            (case / "expected" / name).write_text(text, encoding="utf-8")
    for name, text in fresh.items():
        golden = case / "expected" / name
        assert golden.exists(), f"missing {golden}; run scripts/regen_cases.py"
        assert golden.read_text(encoding="utf-8") == text, (
            f"{golden} is stale; run CAFFE2TF_REGEN=1 pytest {__file__}"
        )


def _ruff() -> list[str]:
    exe = shutil.which("ruff")
    need(exe is not None, "ruff is not on PATH (it is in the dev extras)")
    return [exe]


@pytest.mark.parametrize("case", CASE_DIRS, ids=IDS)
def test_emitted_module_is_ruff_clean(case: Path, tmp_path: Path) -> None:
    from regen_cases import render_case

    target = tmp_path / "optimizer.py"
    target.write_text(render_case(case)["optimizer.py"], encoding="utf-8")
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    for extra in (["--isolated"], ["--config", str(pyproject)]):
        for cmd in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
            res = subprocess.run(
                _ruff() + cmd + extra + [str(target)], capture_output=True, text=True, cwd=tmp_path
            )
            assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("case", CASE_DIRS, ids=IDS)
def test_emitted_module_imports_only_keras_numpy_stdlib(case: Path) -> None:
    import ast

    from regen_cases import render_case

    tree = ast.parse(render_case(case)["optimizer.py"])

    def roots(nodes: list) -> set[str]:
        out: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                out.add((node.module or "").split(".")[0])
        return out

    allowed = {"__future__", "keras", "numpy", "re", "warnings", "typing"}
    assert roots(tree.body) <= allowed, roots(tree.body)  # what importing the module needs
    # inside functions, tensorflow only: the tf.distribute path of the custom optimizer, taken
    # only when Keras itself runs on TensorFlow
    everywhere = roots(list(ast.walk(tree)))
    assert everywhere <= allowed | {"tensorflow"}, everywhere
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"build_optimizer", "prepare_model"} <= names


def _approximate(case: Path) -> bool:
    """A case whose translation is knowingly approximate carries an ``allow_approx`` file
    (saying why); every other case must translate exactly."""
    return (case / "allow_approx").is_file()


@pytest.mark.parametrize("case", CASE_DIRS, ids=IDS)
def test_convert_blocks_approximations_and_writes_the_goldens(
    case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``convert`` of each case: an approximate one (and only it) is blocked without
    --allow-approx -- exit 2, nothing written, the APPROX notes named; with the flag where
    needed, what it writes is the goldens."""
    from caffe2tf.app.convert import convert_solver, load_layer_map
    from caffe2tf.notes import Exactness

    _, plan = ks.plan_of(case)
    assert plan.exact is not _approximate(case), [n.code for n in plan.notes]
    monkeypatch.chdir(ks.CASES.parent.parent)  # the goldens record repo-relative paths
    rel = case.resolve().relative_to(Path.cwd())
    net = rel / "net.prototxt" if (case / "net.prototxt").exists() else None
    layer_map = (
        load_layer_map(case / "layer_map.yaml") if (case / "layer_map.yaml").exists() else None
    )
    out = tmp_path / "out"
    if _approximate(case):
        report = convert_solver(
            rel / "solver.prototxt", net_path=net, layer_map=layer_map, out_dir=out
        )
        assert report.exit_code == 2 and not report.written and not out.exists()
        assert report.blocking and all(n.exactness is Exactness.APPROX for n in report.blocking)
    report = convert_solver(
        rel / "solver.prototxt",
        net_path=net,
        layer_map=layer_map,
        out_dir=out,
        allow_approx=_approximate(case),
    )
    assert report.exit_code == 0, report.render()
    for name in ("train_config.yaml", "optimizer.py"):
        assert (out / name).read_text(encoding="utf-8") == (case / "expected" / name).read_text(
            encoding="utf-8"
        ), name


@pytest.fixture(scope="module")
def tf_backend() -> None:
    keras = require("keras")
    if keras.backend.backend() != "tensorflow":  # a deliberate KERAS_BACKEND choice, not a gap
        pytest.skip(f"TF-backend test; KERAS_BACKEND selects {keras.backend.backend()!r}")


@pytest.mark.keras
@pytest.mark.parametrize("case", CASE_DIRS, ids=IDS)
def test_emitted_matches_reference_tf(case: Path, tf_backend: None, tmp_path: Path) -> None:
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.targets.keras.build import build_optimizer, prepare_model
    from caffe2tf.targets.keras.config import load_optimizer
    from caffe2tf.targets.keras.config import prepare_model as prepare_from_yaml

    rule, plan = ks.plan_of(case)
    if not plan.blobs:
        # not a missing dependency: the case has no net, so there is no model to mirror
        pytest.skip("no train net: nothing to mirror (see test_keras_layers for this route)")
    module = ks.load_module(case / "expected" / "optimizer.py")
    init, grads = ks.streams(rule, STEPS, seed=7)
    reference = run_reference(rule, init, grads, precision="float32")
    emitted = ks.run_keras(
        module.build_optimizer, module.prepare_model, rule, init, grads, plan=plan
    )
    dev = ks.deviation(init, reference, emitted)
    assert dev <= TOLERANCE, f"{case.name}: deviation {dev:.3g}"

    # build.py and the YAML round trip give the very same optimizer
    live = ks.run_keras(
        lambda: build_optimizer(plan),
        lambda m: prepare_model(m, plan),
        rule,
        init,
        grads,
        plan=plan,
    )
    yaml_path = case / "expected" / "train_config.yaml"
    loaded = ks.run_keras(
        lambda: load_optimizer(yaml_path),
        lambda m: prepare_from_yaml(m, yaml_path),
        rule,
        init,
        grads,
        plan=plan,
    )
    for other in (live, loaded):
        for a, b in zip(emitted, other, strict=True):
            for k in a:
                assert (a[k] == b[k]).all(), k


FIT_CASES = ["lenet_sgd_multistep", "itersize3_inv"]


@pytest.mark.keras
@pytest.mark.parametrize("name", FIT_CASES)
def test_emitted_with_compile_and_fit(name: str, tf_backend: None) -> None:
    """``model.compile(optimizer=build_optimizer())`` + ``fit`` follows the reference too
    (fit adds model.losses itself and calls the optimizer once per batch)."""
    from caffe2tf.rule.reference import run_reference

    case = ks.CASES / name
    rule, plan = ks.plan_of(case)
    module = ks.load_module(case / "expected" / "optimizer.py")
    init, grads = ks.streams(rule, 20, seed=11)
    reference = run_reference(rule, init, grads, precision="float32")
    fitted = ks.run_fit(module.build_optimizer, module.prepare_model, rule, init, grads, plan=plan)
    dev = ks.deviation(init, reference, fitted)
    assert dev <= TOLERANCE, f"{name}: deviation {dev:.3g}"
