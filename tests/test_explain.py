"""``caffe2tf explain``: the steps with their numbers, lr milestones, multipliers, defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from caffe2tf.app.explain import explain_recipe
from caffe2tf.cli import cli

NET = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  inner_product_param { num_output: 3 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 } }
"""

ADAM = """net: "net.prototxt"
type: "Adam"
base_lr: 0.001
lr_policy: "multistep"
gamma: 0.1
stepvalue: 1000
stepvalue: 3000
max_iter: 5000
weight_decay: 0.0005
clip_gradients: 10
iter_size: 2
"""


def files(tmp: Path, solver: str = ADAM, net: str | None = NET) -> Path:
    if net is not None:
        (tmp / "net.prototxt").write_text(net)
    (tmp / "solver.prototxt").write_text(solver)
    return tmp / "solver.prototxt"


def test_table_shows_every_step_with_numbers_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = explain_recipe(files(tmp_path))
    order = [text.index(f" {name} ") for name in ("clip", "normalize", "decay", "lr", "adam")]
    assert order == sorted(order)
    assert "if n > 10" in text
    assert "g = G * 1/2" in text
    assert "g += 0.0005 * decay_mult * w" in text
    assert "0.001 * 0.1 ^ s(k)" in text
    # Adam without momentum: beta1 = 0, marked as a default, with a warning
    assert "momentum = 0.0 (default)" in text
    assert "momentum2 = 0.999 (default)" in text
    assert "delta = 1e-08 (default)" in text
    assert "beta1 = momentum = 0" in text


def test_table_lr_milestones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = explain_recipe(files(tmp_path))
    rows = {
        line.split()[0]: line.split()[1]
        for line in text.splitlines()
        if line.startswith("  ")
        and line.split()
        and line.split()[0].isdigit()
        and len(line.split()) > 2
        and ("start" in line or "boundary" in line or "last" in line)
    }
    assert float(rows["0"]) == 0.001
    assert abs(float(rows["1000"]) - 1e-4) < 1e-10
    assert abs(float(rows["3000"]) - 1e-5) < 1e-11
    assert "4999" in rows  # the last update uses k = max_iter - 1
    assert "999" not in rows


def test_table_per_blob_multipliers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = explain_recipe(files(tmp_path))
    fc1 = next(line for line in text.splitlines() if line.strip().startswith("fc1/1"))
    fc2b = next(line for line in text.splitlines() if line.strip().startswith("fc2/1"))
    assert "1.0 (default)" in fc1 and "0.0005" in fc1  # the bias is decayed by default
    assert "2.0" in fc2b and "(default)" not in fc2b and "0.002" in fc2b


def test_json_is_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = json.loads(explain_recipe(files(tmp_path), fmt="json"))
    assert [s["name"] for s in data["steps"]] == ["clip", "normalize", "decay", "lr", "adam"]
    assert data["solver"] == "Adam" and data["iter_size"] == 2 and data["max_iter"] == 5000
    ks = [m["k"] for m in data["schedule"]["milestones"]]
    assert ks == [0, 1000, 3000, 4999]
    blobs = {b["key"]: b for b in data["blobs"]}
    assert blobs["fc2/1"]["lr_mult"] == 2.0 and not blobs["fc2/1"]["lr_mult_default"]
    assert blobs["fc1/0"]["decay_mult_default"]
    assert {d["field"] for d in data["defaults"]} >= {
        "momentum",
        "momentum2",
        "delta",
        "regularization_type",
    }
    assert any(n["code"] == "rule.default.momentum" for n in data["notes"])


def test_unknown_net_and_smooth_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = 'net: "missing.prototxt"\nbase_lr: 0.01\nlr_policy: "poly"\npower: 2\nmax_iter: 100\n'
    data = json.loads(explain_recipe(files(tmp_path, solver, None), fmt="json"))
    assert not data["net_known"]
    ms = {m["k"]: m["lr"] for m in data["schedule"]["milestones"]}
    assert ms[0] == 0.009999999776482582 and 50 in ms and 99 in ms
    assert abs(ms[50] - 0.01 * 0.25) < 1e-9
    text = explain_recipe(files(tmp_path, solver, None))
    assert "net unknown" in text and "type = SGD (default)" in text


def test_cli_explain_and_no_tensorflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files(tmp_path)
    res = CliRunner().invoke(cli, ["explain", "solver.prototxt", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["solver"] == "Adam"
    code = (
        "import sys; from caffe2tf.app.explain import explain_recipe; "
        "explain_recipe('solver.prototxt'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'jax')]; "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_cli_explain_bad_solver_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files(tmp_path, 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "cosine"\n')
    res = CliRunner().invoke(cli, ["explain", "solver.prototxt"])
    assert res.exit_code == 2 and "cosine" in res.output
