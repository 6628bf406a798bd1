"""`caffe2tf check SOLVER OUT`: the CI check that a migrated config still matches its Caffe
original. Each test converts the bundled LeNet example, tampers with one artifact (or not), and
asserts the verdict."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

from caffe2tf.app.check import config_differences
from caffe2tf.cli import cli

REPO = Path(__file__).resolve().parents[1]
SOLVER = REPO / "fixtures" / "lenet" / "solver.prototxt"
NET = REPO / "fixtures" / "lenet" / "train.prototxt"

require("keras")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "lenet"
    result = CliRunner().invoke(cli, ["convert", str(SOLVER), "--net", str(NET), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy(converted: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    return out


def _check(out: Path, *extra: str):
    return CliRunner().invoke(
        cli, ["check", str(SOLVER), str(out), "--net", str(NET), "--steps", "25", *extra]
    )


def test_untouched_conversion_passes(converted: Path) -> None:
    result = _check(converted)
    assert result.exit_code == 0, result.output
    assert "check PASSED" in result.output
    assert "same as what convert writes" in result.output


def test_hand_edited_config_is_reported(converted: Path, tmp_path: Path) -> None:
    out = _copy(converted, tmp_path)
    config = out / "train_config.yaml"
    text = config.read_text()
    edited = text.replace("- 4999", "- 5000", 1)
    assert edited != text
    config.write_text(edited)
    result = _check(out)
    assert result.exit_code == 1, result.output
    assert "schedule.args.boundaries[0]: convert now gives 4999, the file has 5000" in result.output


def test_hand_edited_optimizer_fails_on_behaviour(converted: Path, tmp_path: Path) -> None:
    out = _copy(converted, tmp_path)
    module = out / "optimizer.py"
    text = module.read_text()
    # The usual "harmless" edit: momentum 0.9 -> 0.95. The config is untouched, so only the
    # behavioural half of the check can catch it.
    edited, count = re.subn(r"momentum=0\.9\b", "momentum=0.95", text)
    assert count >= 1
    module.write_text(edited)
    result = _check(out)
    assert result.exit_code == 1, result.output
    failed = result.output.split("FAIL: ", 1)[1].splitlines()[0]
    assert "stream" in failed and "state" in failed  # the momentum probe sees it alone too
    assert "check FAILED" in result.output


def test_missing_artifacts_exit_2_without_traceback(tmp_path: Path) -> None:
    result = _check(tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "train_config.yaml is missing" in result.output
    assert "Traceback" not in result.output


def test_config_differences_walks_nested_values() -> None:
    expected = {
        "source": {"solver": "a"},
        "optimizer": {"args": {"momentum": 0.9}},
        "lr_mults": [1.0, 2.0],
        "clipping": None,
    }
    found = {
        "source": {"solver": "b"},
        "optimizer": {"args": {"momentum": 0.95}},
        "lr_mults": [1.0],
        "extra": 1,
    }
    diffs = {d.path: (d.expected, d.found) for d in config_differences(expected, found)}
    assert diffs == {
        "optimizer.args.momentum": (0.9, 0.95),
        "lr_mults": ([1.0, 2.0], [1.0]),
        "clipping": (None, "<missing>"),
        "extra": ("<absent>", 1),
    }
