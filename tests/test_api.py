"""The Python API as a notebook uses it: ``caffe2tf.convert(...)`` gives the same files as the
CLI, builds the same optimizer, refuses to write an approximation; ``caffe2tf.verify(...)``
returns the report; importing caffe2tf imports no framework."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

import caffe2tf
from caffe2tf.cli import cli
from caffe2tf.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "cases"


def test_import_is_light() -> None:
    code = (
        "import sys, caffe2tf; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_convert_gives_the_files_the_cli_writes(tmp_path: Path) -> None:
    solver = CASES / "lenet_sgd_multistep" / "solver.prototxt"
    conv = caffe2tf.convert(solver)
    assert conv.exact and conv.plan.route == "multi" and not conv.blocking
    written = conv.write(tmp_path / "api")
    result = CliRunner().invoke(cli, ["convert", str(solver), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    for path in written:
        assert path.read_text() == (tmp_path / "cli" / path.name).read_text()
    with pytest.raises(InputError, match="already exists"):
        conv.write(tmp_path / "api")
    conv.write(tmp_path / "api", force=True)


def test_an_approximation_is_not_written_unless_allowed(tmp_path: Path) -> None:
    solver = CASES / "no_net_sgd" / "solver.prototxt"
    conv = caffe2tf.convert(solver)
    assert not conv.exact and conv.blocking
    with pytest.raises(InputError, match="not exact"):
        conv.write(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    allowed = caffe2tf.convert(solver, allow_approx=True)
    assert not allowed.exact and not allowed.blocking
    assert (tmp_path / "ok" / "optimizer.py") in allowed.write(tmp_path / "ok")


@pytest.mark.keras
def test_build_and_prepare_like_the_emitted_module() -> None:
    keras = require("keras")
    conv = caffe2tf.convert(CASES / "lenet_sgd_multistep" / "solver.prototxt")
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, name="ip1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="ip2")(x))
    bound = conv.prepare_model(model)
    assert set(bound.values()) == {"ip1/0", "ip1/1", "ip2/0", "ip2/1"}
    kernel = model.get_layer("ip1").kernel
    assert np.isclose(float(kernel.regularizer.l2), 0.00025)
    optimizer = conv.build_optimizer()
    assert type(optimizer).__name__ == "MultiOptimizer"


@pytest.mark.keras
def test_verify_returns_the_report() -> None:
    require("tensorflow")
    case = CASES / "rmsprop_step"
    report = caffe2tf.verify(
        case / "solver.prototxt", module=case / "expected" / "optimizer.py", steps=10
    )
    assert report.passed and report.exit_code == 0
    names = [v["component"] for v in report.component_verdicts()]
    assert names[0] == "stream" and "epsilon" in names


def test_convert_notes_what_a_multi_gpu_caffe_run_means(tmp_path: Path) -> None:
    solver = CASES / "lenet_sgd_multistep" / "solver.prototxt"
    args = ["convert", str(solver), "-o", str(tmp_path / "o"), "--caffe-gpus", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "4 GPUs" in result.output and "global batch of 4 x batch_size" in result.output
    assert "do not scale the lr" in result.output
    result = CliRunner().invoke(cli, [*args[:4], str(tmp_path / "p"), "--caffe-gpus", "0"])
    assert result.exit_code == 2


def test_verify_stays_callable_after_its_package_is_imported() -> None:
    """``caffe2tf.verify`` is also the name of the package ``caffe2tf/verify/``; importing one of
    its modules rebinds the name, which must still be the call."""
    import caffe2tf.verify.compare  # noqa: F401

    assert callable(caffe2tf.verify)
