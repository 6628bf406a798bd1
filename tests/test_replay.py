"""``caffe2tf replay``: the npz round trip through the CLI, and its input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2tf.cli import cli
from caffe2tf.verify.compare import compare_trajectories, trajectory_from_flat
from caffe2tf.verify.matrix import golden_cases

NET = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 } }
"""
SOLVER = (
    'net: "net.prototxt"\ntype: "SGD"\nbase_lr: 0.1\nmomentum: 0.9\n'
    'lr_policy: "step"\ngamma: 0.5\nstepsize: 2\nweight_decay: 0.1\n'
)


def write(tmp: Path, solver: str = SOLVER, net: str | None = NET) -> Path:
    if net is not None:
        (tmp / "net.prototxt").write_text(net)
    (tmp / "solver.prototxt").write_text(solver)
    return tmp / "solver.prototxt"


def arrays(steps: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    init = {
        "fc/0": rng.normal(size=(3, 4)).astype(np.float32),
        "fc/1": rng.normal(size=3).astype(np.float32),
    }
    grads = {
        f"{k}/{key}": rng.normal(size=v.shape).astype(np.float32)
        for k in range(steps)
        for key, v in init.items()
    }
    return init, grads


def replay(tmp: Path, init: dict, grads: dict, *extra: str):
    np.savez(tmp / "init.npz", **init)
    np.savez(tmp / "grads.npz", **grads)
    out = tmp / "out.npz"
    res = CliRunner().invoke(
        cli,
        [
            "replay",
            str(tmp / "solver.prototxt"),
            "--init",
            str(tmp / "init.npz"),
            "--grads",
            str(tmp / "grads.npz"),
            "-o",
            str(out),
            *extra,
        ],
    )
    return res, out


def test_round_trip_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    init = {"fc/0": np.ones((3, 4), np.float32), "fc/1": np.ones(3, np.float32)}
    grads = {
        f"{k}/fc/{b}": np.full(v.shape, 0.5, np.float32)
        for k in range(3)
        for b, v in enumerate(init.values())
    }
    grads["note"] = np.array([1, 2, 3])  # other keys are ignored
    init["meta"] = np.zeros(2)
    res, out = replay(tmp_path, init, grads)
    assert res.exit_code == 0, res.output
    assert "3 update" in res.output
    with np.load(out) as data:
        assert sorted(data.files) == sorted(f"{k}/fc/{b}" for k in (1, 2, 3) for b in (0, 1))
        w1, b1 = data["1/fc/0"], data["1/fc/1"]
        assert w1.dtype == np.float32
    # update 1 by hand: g = 0.5 + 0.1*1 (weights), 0.5 (bias, decay_mult 0); h = eta*g
    np.testing.assert_allclose(w1, 1 - 0.1 * 0.6, rtol=1e-6)
    np.testing.assert_allclose(b1, 1 - 0.2 * 0.5, rtol=1e-6)


def test_round_trip_matches_a_real_caffe_golden(tmp_path):
    golden = next(g for g in golden_cases() if g.case.iter_size == 1)
    case = golden.case
    (tmp_path / "net.prototxt").write_text(case.net_text)
    write(tmp_path, 'net: "%s"\n' % (tmp_path / "net.prototxt") + case.solver_text, None)
    grads = {f"{k}/{key}": v for k, g in enumerate(case.grads) for key, v in g.items()}
    res, out = replay(tmp_path, dict(case.init), grads)
    assert res.exit_code == 0, res.output
    with np.load(out) as data:
        traj = trajectory_from_flat({k: data[k] for k in data.files})
    assert len(traj) == case.steps
    cmp = compare_trajectories(case.init, list(golden.weights), traj, tolerance=1e-4)
    assert cmp.passed, cmp.summary()


def test_float64_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    init, grads = arrays()
    res, out = replay(tmp_path, init, grads, "--precision", "float64")
    assert res.exit_code == 0, res.output
    with np.load(out) as data:
        assert data["4/fc/0"].dtype == np.float64


def test_unknown_net_uses_defaults_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, net=None)  # the solver names net.prototxt, which does not exist
    init, grads = arrays(2)
    res, out = replay(tmp_path, init, grads)
    assert res.exit_code == 0, res.output
    assert "net unknown" in res.output
    assert out.exists()


@pytest.mark.parametrize(
    "damage,words",
    [
        (lambda i, g: (g.pop("1/fc/0"), g.pop("1/fc/1")), "step(s) 1"),
        (lambda i, g: g.__setitem__("2/fc/0", np.zeros((4, 3), np.float32)), "shape"),
        (lambda i, g: i.__setitem__("conv9/0", np.zeros(3, np.float32)), "conv9/0"),
        (lambda i, g: g.__setitem__("0/conv9/0", np.zeros(3, np.float32)), "conv9/0"),
        (lambda i, g: i.__setitem__("fc/0", np.zeros((4, 4), np.float32)), "shape"),
        (lambda i, g: [g.pop(k) for k in list(g)], "no gradients"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, monkeypatch, damage, words):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    init, grads = arrays()
    damage(init, grads)
    res, out = replay(tmp_path, init, grads)
    assert res.exit_code == 2
    assert words in res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz")]


def test_unreadable_npz_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    init, grads = arrays()
    np.savez(tmp_path / "grads.npz", **grads)
    (tmp_path / "init.npz").write_text("not a zip")
    res = CliRunner().invoke(
        cli,
        [
            "replay",
            "solver.prototxt",
            "--init",
            "init.npz",
            "--grads",
            "grads.npz",
            "-o",
            "out.npz",
        ],
    )
    assert res.exit_code == 2 and "init.npz" in res.output
    assert not (tmp_path / "out.npz").exists()


def test_existing_output_is_replaced_atomically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    (tmp_path / "out.npz").write_text("old")
    init, grads = arrays(1)
    res, out = replay(tmp_path, init, grads)  # refused: replacing needs --force
    assert res.exit_code == 2 and "already exists (use --force" in res.output
    assert out.read_text() == "old"
    res, out = replay(tmp_path, init, grads, "--force")
    assert res.exit_code == 0, res.output
    with np.load(out) as data:
        assert set(data.files) == {"1/fc/0", "1/fc/1"}


def test_layer_names_with_slashes_and_sharers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "inc/1x1" type: "InnerProduct" bottom: "data" top: "a"
  param { name: "w" } inner_product_param { num_output: 3 bias_term: false } }
layer { name: "inc/3x3" type: "InnerProduct" bottom: "data" top: "b"
  param { name: "w" } inner_product_param { num_output: 3 bias_term: false } }
"""
    write(tmp_path, 'net: "net.prototxt"\ntype: "SGD"\nbase_lr: 0.5\nlr_policy: "fixed"\n', net)
    init = {"inc/1x1/0": np.ones((3, 4), np.float32)}
    grads = {"0/inc/3x3/0": np.full((3, 4), 0.5, np.float32)}  # the sharer's key
    res, out = replay(tmp_path, init, grads)
    assert res.exit_code == 0, res.output
    with np.load(out) as data:
        assert data.files == ["1/inc/1x1/0"]
        np.testing.assert_allclose(data["1/inc/1x1/0"], 1 - 0.5 * 0.5)
