"""``caffe2tf check`` over a whole migration: the project's own manifest passes; a drifted
entry fails the run (exit 1) and is named in the summary, the JUnit XML and the GitHub
annotation; a bad manifest is one positioned error (exit 2)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf.app.check_many import load_manifest  # noqa: E402
from caffe2tf.cli import cli  # noqa: E402
from caffe2tf.errors import InputError  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _check(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["check", *args], catch_exceptions=False, env=env)


def test_the_projects_own_manifest_passes(tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    result = _check("--manifest", str(REPO / "caffe2tf-check.yaml"), "--junit", str(junit))
    assert result.exit_code == 0, result.output
    assert "check PASSED: 3 entries" in result.output
    suites = ET.parse(junit).getroot()
    assert suites.get("failures") == "0" and len(suites) == 3


def test_a_drifted_entry_fails_and_is_named_everywhere(tmp_path: Path) -> None:
    case = REPO / "tests" / "cases" / "lenet_sgd_multistep"
    good, drifted = tmp_path / "good", tmp_path / "drifted"
    shutil.copytree(case / "expected", good)
    shutil.copytree(case / "expected", drifted)
    config = drifted / "train_config.yaml"
    config.write_text(config.read_text().replace("momentum: 0.9", "momentum: 0.95", 1))
    solver = str(case / "solver.prototxt")
    junit = tmp_path / "check.xml"
    result = _check(
        solver,
        str(good),
        solver,
        str(drifted),
        "--steps",
        "20",
        "--jobs",
        "2",
        "--junit",
        str(junit),
        env={"GITHUB_ACTIONS": "true"},
    )
    assert result.exit_code == 1, result.output
    assert "check FAILED: 1 of 2 entries" in result.output
    row = next(ln for ln in result.output.splitlines() if str(drifted) in ln and "DRIFTED" in ln)
    assert "config" in row
    annotation = next(ln for ln in result.output.splitlines() if ln.startswith("::error"))
    assert f"file={solver}" in annotation and str(drifted) in annotation
    failed = [
        case.get("name")
        for case in ET.parse(junit).getroot().iter("testcase")
        if case.find("failure") is not None
    ]
    assert failed == [f"{drifted} config"]


def test_bad_manifests_are_one_positioned_error(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("entries:\n  - solver: a.prototxt\n    out: o\n    steps: many\n")
    with pytest.raises(InputError, match="'steps' must be a int") as err:
        load_manifest(path)
    assert err.value.location.line == 2
    path.write_text("entries:\n  - solver: a.prototxt\n    bogus: 1\n    out: o\n")
    with pytest.raises(InputError, match="unknown entry key"):
        load_manifest(path)
    path.write_text("entries: &e [*e]\n")
    with pytest.raises(InputError, match="anchors and aliases"):
        load_manifest(path)
    result = _check("--manifest", str(path))
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_entry_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.yaml"
    path.write_text("entries:\n  - {solver: s.prototxt, out: out, tolerance: 1}\n")
    (entry,) = load_manifest(path)
    assert entry.solver == str(tmp_path / "sub" / "s.prototxt")
    assert entry.tolerance == 1.0 and entry.where.endswith(":2:5")
