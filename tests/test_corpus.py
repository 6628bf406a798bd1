"""Sweep over the public prototxt corpus (``../shared/corpus`` relative to the repo root):
every file is read, strictly or -- for fork dialects -- with ``lenient`` (then the skipped
items are listed with their locations), and the CLI never shows a traceback."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffe2tf.caffe.load import load_net, load_recipe, sniff_kind
from caffe2tf.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("CAFFE2TF_CORPUS", ROOT.parent / "shared" / "corpus"))

# The corpus (real-world prototxts, ../shared/corpus or $CAFFE2TF_CORPUS) is not part of the
# repository nor installed by CI, so its absence is a legitimate skip.
pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"no corpus at {CORPUS} (optional; set CAFFE2TF_CORPUS)"
)


def _files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in (".tsv", ".md", ".txt")
    )


def _manifest() -> dict[str, dict[str, str]]:
    path = CORPUS / "MANIFEST.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["saved_name"]: row for row in csv.DictReader(fh, delimiter="\t")}


FILES = _files()


def _load(path: Path, kind: str, lenient: bool):
    return (
        load_recipe(path, lenient=lenient) if kind == "solver" else load_net(path, lenient=lenient)
    )


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_file_is_read(path: Path) -> None:
    kind = sniff_kind(path)
    row = _manifest().get(f"{path.parent.name}/{path.name}")
    if row is not None:
        assert kind == row["kind"], f"{path}: sniffed {kind}, manifest says {row['kind']}"
    try:
        result = _load(path, kind, lenient=False)
        strict_ok = True
    except InputError as err:
        strict_ok = False
        assert err.location is not None and err.location.path == str(path)
        assert err.location.line is not None, str(err)
    if strict_ok:
        assert result is not None
        return
    result = _load(path, kind, lenient=True)
    notes = result.solver.notes if kind == "solver" else result.notes
    skipped = [n for n in notes if n.code.startswith("lenient.")]
    assert skipped, f"{path}: strict read failed but lenient skipped nothing"
    for note in skipped:
        assert note.location is not None and note.location.line is not None
    if row is not None and "NONSTD-solver-fields:" in row["notable_features"]:
        names = row["notable_features"].split("NONSTD-solver-fields:")[1].split()[0].split(",")
        for name in names:
            hits = [n for n in skipped if name in n.message]
            assert hits and all(n.affects_training for n in hits), (path, name)


def test_corpus_params_and_upgrades() -> None:
    """Spot facts from the manifest: the V1 net is upgraded with its blobs_lr multipliers, the
    siamese net shares params, the BatchNorm nets have their statistics frozen."""
    by_name = {p.name: p for p in FILES}
    spots = {
        "v1": "finetuning__voc_2007_prototxt__pascal_finetune_train.prototxt",
        "siamese": "examples__siamese__mnist_siamese_train_test.prototxt",
        "mobilenet": "mobilenet_deploy.prototxt",
    }
    missing = sorted(name for name in spots.values() if name not in by_name)
    assert not missing, f"corpus at {CORPUS} lacks {missing} (renamed? update this test)"
    net = load_net(by_name[spots["v1"]])
    assert net.legacy_format == "V1"
    lrs = {round(b.lr_mult) for b in net.params}
    assert {1, 2, 10, 20} <= lrs
    net = load_net(by_name[spots["siamese"]])
    assert any(b.sharers for b in net.params)
    net = load_net(by_name[spots["mobilenet"]])
    bn = [b for b in net.params if b.layer_type == "BatchNorm"]
    assert bn and all(b.lr_mult == 0 and b.decay_mult == 0 for b in bn)


def test_cli_sweep() -> None:
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    runner = CliRunner()
    for path in FILES:
        for extra in ([], ["--lenient"], ["--lenient", "--format", "json"]):
            res = runner.invoke(cli, ["inspect", str(path), *extra])
            where = f"{path} {extra}"
            assert res.exit_code in (0, 2), (where, res.output)
            if res.exception is not None:
                assert isinstance(res.exception, SystemExit), (where, repr(res.exception))
            assert "Traceback" not in res.output and "Traceback" not in res.stderr, where
            if extra:
                assert res.exit_code == 0, (where, res.stderr)
            else:
                assert res.exit_code == 0 or res.stderr.count("error:") == 1, where


def test_cli_subprocess_on_a_fork_file() -> None:
    forks = [
        p
        for p in FILES
        if "FORK" in _manifest().get(f"{p.parent.name}/{p.name}", {}).get("notable_features", "")
    ]
    assert forks, f"no file marked FORK in {CORPUS / 'MANIFEST.tsv'} (the corpus has several)"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # a fork caffe2tf reads as a known dialect (NVIDIA, yolo, TSN: docs/forks.md) reads
    # strictly; the first fork file of another fork must be refused strictly
    for path in forks:
        strict = subprocess.run(
            [sys.executable, "-m", "caffe2tf", "inspect", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert strict.returncode in (0, 2) and "Traceback" not in strict.stderr, strict.stderr
        if strict.returncode == 2:
            break
        assert "read as" in strict.stdout, f"{path} read strictly without a known dialect"
    assert strict.returncode == 2, "every FORK file of the corpus read strictly"
    assert f"{path}:" in strict.stderr and "--lenient" in strict.stderr
    lenient = subprocess.run(
        [sys.executable, "-m", "caffe2tf", "inspect", str(path), "--lenient"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert lenient.returncode == 0 and "Traceback" not in lenient.stderr
    assert "skipped" in lenient.stdout
