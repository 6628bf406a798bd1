"""``caffe2tf convert``: outputs, exit codes, --force, atomic writes, JSON notes, no TensorFlow
on the convert path, layer maps, and hostile layer names that must never run."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe2tf.cli import cli

CASES = Path(__file__).parent / "cases"

NET = textwrap.dedent("""\
    name: "t"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 2 } }
    """)
SOLVER = textwrap.dedent("""\
    net: "net.prototxt"
    base_lr: 0.1
    momentum: 0.9
    weight_decay: 0.0005
    lr_policy: "multistep"
    gamma: 0.1
    stepvalue: 10
    max_iter: 20
    """)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path / "solver.prototxt"


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["convert", *args])
    return res.exit_code, res.output


def test_convert_writes_both_files_and_prints_notes(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(str(recipe), "-o", str(out))
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["optimizer.py", "train_config.yaml"]
    assert "L2(0.00025)" in text and "no 1/2" in text
    assert "boundaries shifted by one" in text
    assert "PiecewiseConstantDecay(boundaries=[9])" in text


def test_json_format_gives_notes_as_data(recipe: Path, tmp_path: Path) -> None:
    code, text = run(str(recipe), "-o", str(tmp_path / "out"), "--format", "json")
    assert code == 0
    data = json.loads(text)
    assert data["exit_code"] == 0 and data["route"] == "builtin" and data["exact"]
    codes = {n["code"]: n for n in data["notes"]}
    assert codes["keras.decay.regularizer"]["exactness"] == "exact"
    assert codes["keras.schedule.multistep"]["exactness"] == "exact"


def test_allow_approx_writes_but_json_does_not_call_it_exact(tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER.replace('net: "net.prototxt"', 'net: "missing_net.prototxt"'))
    assert "missing_net" in solver.read_text()
    blocked_code, _ = run(str(solver), "-o", str(tmp_path / "blocked"), "--format", "json")
    assert blocked_code == 2 and not (tmp_path / "blocked").exists()
    code, text = run(str(solver), "-o", str(tmp_path / "out"), "--format", "json", "--allow-approx")
    assert code == 0
    data = json.loads(text)
    assert data["exact"] is False
    assert any(n["exactness"] == "approx" for n in data["notes"])


def test_existing_output_is_not_clobbered_without_force(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, text = run(str(recipe), "-o", str(out))
    assert code == 2 and "--force" in text
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, text = run(str(recipe), "-o", str(out), "--force")
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["optimizer.py", "train_config.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt", "out", "solver.prototxt"]


def test_failure_while_rendering_leaves_nothing(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from caffe2tf.app import convert, targets

    def boom(*_a: object) -> dict[str, str]:
        raise RuntimeError("disk full")

    keras = dataclasses.replace(targets.TARGETS["keras"], render=boom)
    monkeypatch.setitem(targets.TARGETS, "keras", keras)
    with pytest.raises(RuntimeError):
        convert.convert_solver(recipe, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()

    from caffe2tf.app.convert import write_outputs

    real_rename = os.rename

    def failing_rename(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(os, "rename", failing_rename)
    from caffe2tf.errors import InputError

    with pytest.raises(InputError, match="rename failed"):  # exit 2, not a traceback
        write_outputs({"a.txt": "x"}, tmp_path / "out2", force=False)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (tmp_path / "out2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt", "solver.prototxt"]


def test_unsupported_layer_type_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(
        NET.replace('type: "InnerProduct"', 'type: "Bias"').replace(
            "inner_product_param { num_output: 2 }", "bias_param { axis: 1 num_axes: 1 }"
        )
    )
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    for extra in ([], ["--allow-approx"]):
        code, text = run(str(tmp_path / "solver.prototxt"), "-o", str(tmp_path / "out"), *extra)
        assert code == 2, text
        assert "unsupported" in text and "nothing was written" in text
        assert not (tmp_path / "out").exists()


def test_lenient_skipped_training_field_needs_allow_approx(recipe: Path, tmp_path: Path) -> None:
    recipe.write_text(SOLVER + "cyclic_momentum: true\n")
    code, text = run(str(recipe), "--lenient", "-o", str(tmp_path / "out"))
    assert code == 2 and "--allow-approx" in text
    assert not (tmp_path / "out").exists()
    code, text = run(str(recipe), "--lenient", "--allow-approx", "-o", str(tmp_path / "out"))
    assert code == 0, text
    assert (tmp_path / "out" / "optimizer.py").exists()


def test_layer_map(recipe: Path, tmp_path: Path) -> None:
    good = tmp_path / "map.yaml"
    good.write_text("ip: dense_1\n")
    code, text = run(str(recipe), "--layer-map", str(good), "-o", str(tmp_path / "out"))
    assert code == 0, text
    assert '"dense_1"' in (tmp_path / "out" / "optimizer.py").read_text()
    assert "keras_layer: dense_1" in (tmp_path / "out" / "train_config.yaml").read_text()
    for bad in ("nosuchlayer: x\n", "ip: a/b\n", "- ip\n"):
        good.write_text(bad)
        code, text = run(str(recipe), "--layer-map", str(good), "-o", str(tmp_path / "o2"))
        assert code == 2, (bad, text)
        assert not (tmp_path / "o2").exists()


def test_convert_path_never_imports_tensorflow_or_keras(recipe: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from caffe2tf.cli import cli
        try:
            cli.main(["convert", {str(recipe)!r}, "-o", {str(tmp_path / "out")!r}],
                     standalone_mode=False)
        except SystemExit as e:
            assert e.code in (0, None), e.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
        print("HEAVY", heavy)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout[-2000:]
    assert (tmp_path / "out" / "optimizer.py").exists()


HOSTILE_SCRIPT = r"""
import importlib.util, os, sys, warnings
spec = importlib.util.spec_from_file_location("emitted", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
optimizer = module.build_optimizer()
import keras
model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="other")])
try:
    module.prepare_model(model)
    raise SystemExit("prepare_model accepted a model without the Caffe layers")
except ValueError as err:
    message = str(err)
names = [row[6] for row in module.CAFFE_BLOBS]
assert all(repr(n) in message for n in names), message
print("OK", len(names), sorted(os.listdir(".")))
"""


@pytest.mark.keras
def test_hostile_layer_names_never_run(tmp_path: Path) -> None:
    """The hostile case without its layer map: the Keras names themselves are hostile."""
    case = CASES / "hostile_names"
    work = tmp_path / "work"
    work.mkdir()
    for name in ("solver.prototxt", "net.prototxt"):
        shutil.copy(case / name, work / name)
    code, text = run(str(work / "solver.prototxt"), "-o", str(work / "out"))
    assert code == 0, text
    assert "not valid Keras/TensorFlow names" in text and "--layer-map" in text
    source = (work / "out" / "optimizer.py").read_text()
    tree = ast.parse(source)
    strings = {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert any("__import__('os').system('touch PWNED')" in s for s in strings)
    assert any(s.startswith("ip2\nimport os") for s in strings)
    called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not {c for c in called if "system" in c or "__import__" in c}, called
    ruff = shutil.which("ruff")
    if ruff:
        for cmd in (["check", "--isolated"], ["format", "--check", "--isolated"]):
            res = subprocess.run(
                [ruff, *cmd, "--no-cache", str(work / "out" / "optimizer.py")],
                capture_output=True,
                text=True,
            )
            assert res.returncode == 0, res.stdout
    res = subprocess.run(
        [sys.executable, "-c", HOSTILE_SCRIPT, str(work / "out" / "optimizer.py")],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "OK 4" in res.stdout
    assert not (work / "PWNED").exists()
    assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))
    # the YAML keeps the names as data
    import yaml

    data = yaml.safe_load((work / "out" / "train_config.yaml").read_text())
    layers = {v["caffe_layer"] for v in data["variables"]}
    assert any("__import__('os')" in name for name in layers)
