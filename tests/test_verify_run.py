"""``caffe2tf verify`` end to end: the emitted module passes, a wrong module fails with exit 1,
bad input exits 2, JSON/plot outputs, and ``--against caffe`` with the real binary."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf.app.matrix import write_case_files  # noqa: E402
from caffe2tf.app.verify import progress_printer  # noqa: E402
from caffe2tf.cli import cli  # noqa: E402
from caffe2tf.verify import matrix  # noqa: E402
from caffe2tf.verify.inputs import frozen_blobs_get_no_gradient, initial_weights  # noqa: E402

pytestmark = pytest.mark.keras

COMBO = {
    "solver": "SGD",
    "policy": "multistep",
    "decay": "L2",
    "mults": "explicit",
    "clip": "on",
    "iter_size": 3,
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    case = matrix.build_case(COMBO, 40)
    return write_case_files(case, tmp_path_factory.mktemp("verify-run"))


def _run(*args: str):
    result = CliRunner().invoke(cli, ["verify", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_emitted_module_passes_against_reference(recipe):
    solver, net = recipe
    code, out = _run(str(solver), "--net", str(net), "--steps", "40")
    assert code == 0, out
    assert "PASS" in out and "fc1/0" in out and "fc2/1" in out
    assert "iter_size 3" in out and "device" in out


def test_json_report(recipe):
    solver, net = recipe
    code, out = _run(
        str(solver), "--net", str(net), "--steps", "20", "--format", "json", "--seed", "3"
    )
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    assert data["passed"] is True and data["steps"] == 20 and data["seed"] == 3
    assert data["comparison"]["deviation"] <= 1e-3
    assert set(data["comparison"]["per_blob"]) == set(matrix.SHAPES)


WRONG_MODULE = textwrap.dedent('''
    """A hand port that forgets Caffe's weight decay and lr schedule."""
    import keras


    def build_optimizer():
        return keras.optimizers.SGD(0.05, momentum=0.9, gradient_accumulation_steps=3)


    def prepare_model(model):
        return {}
''')


def test_wrong_module_fails_with_exit_1(recipe, tmp_path):
    solver, net = recipe
    module = tmp_path / "optimizer.py"
    module.write_text(WRONG_MODULE)
    code, out = _run(str(solver), "--net", str(net), "--steps", "40", "--module", str(module))
    assert code == 1, out
    assert "FAIL" in out and "MISMATCH" in out


def test_tolerance_decides_the_verdict(recipe, tmp_path):
    solver, net = recipe
    module = tmp_path / "optimizer.py"
    module.write_text(WRONG_MODULE)
    code, out = _run(
        str(solver),
        "--net",
        str(net),
        "--steps",
        "10",
        "--module",
        str(module),
        "--tolerance",
        "1e9",
    )
    assert code == 0, out


def test_missing_module_and_missing_net_exit_2(recipe, tmp_path):
    solver, net = recipe
    code, out = _run(str(solver), "--net", str(net), "--module", str(tmp_path / "nope.py"))
    assert code == 2 and "nope.py" in out
    lonely = tmp_path / "solver.prototxt"
    lonely.write_text('type: "SGD"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    code, out = _run(str(lonely))
    assert code == 2 and "Traceback" not in out


def test_plot_writes_png(recipe, tmp_path):
    require("matplotlib")
    solver, net = recipe
    png = tmp_path / "dev.png"
    code, out = _run(str(solver), "--net", str(net), "--steps", "15", "--plot", str(png))
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frozen_blobs_get_zero_gradient_and_seeded_init():
    micro = [{"a/0": np.ones(2, np.float32), "b/0": np.ones(2, np.float32)}]
    out = frozen_blobs_get_no_gradient(micro, ["b/0"])
    assert out[0]["b/0"].tolist() == [0, 0] and out[0]["a/0"].tolist() == [1, 1]
    assert micro[0]["b/0"].tolist() == [1, 1]  # input untouched
    a = initial_weights({"x/0": (3, 2)}, 5)
    assert np.array_equal(a["x/0"], initial_weights({"x/0": (3, 2)}, 5)["x/0"])
    assert not np.array_equal(a["x/0"], initial_weights({"x/0": (3, 2)}, 6)["x/0"])


def test_progress_only_on_long_runs(capsys):
    assert progress_printer("keras", 50) is None
    report = progress_printer("keras", 1000)
    for done in range(1, 1001):
        report(done, 1000)
    err = capsys.readouterr().err
    assert "1000/1000" in err and err.count("\n") == 10


@pytest.mark.oracle
def test_against_real_caffe(recipe):
    solver, net = recipe
    code, out = _run(str(solver), "--net", str(net), "--steps", "30", "--against", "caffe")
    assert code == 0, out
    assert "real Caffe" in out


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("against", ["reference", pytest.param("caffe", marks=pytest.mark.oracle)])
def test_bundled_example(against, monkeypatch):
    """fixtures/lenet (Convolution + InnerProduct, snapshot fields that real Caffe checks)."""
    monkeypatch.chdir(REPO)  # its net path is relative to the working directory, as in Caffe
    code, out = _run("fixtures/lenet/solver.prototxt", "--steps", "20", "--against", against)
    assert code == 0, out
    assert "conv1/0" in out and "20x1x5x5" in out and "PASS" in out
