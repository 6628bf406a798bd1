"""verify keeps JAX's compiled programs between runs (caffe2tf/_quiet.py use_compile_cache,
docs/verify.md#compiled-programs-kept-between-runs): a second run of the same recipe loads them
and judges the same; ``CAFFE2TF_CACHE_DIR=`` (empty) keeps nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from caffe2tf._quiet import compile_cache_dir, host_tag

REPO = Path(__file__).resolve().parents[1]


def test_the_cache_directory_follows_the_environment(tmp_path: Path) -> None:
    tag = host_tag()
    assert compile_cache_dir({"CAFFE2TF_CACHE_DIR": str(tmp_path)}) == tmp_path / "xla" / tag
    assert compile_cache_dir({"CAFFE2TF_CACHE_DIR": ""}) is None
    assert compile_cache_dir({"CAFFE2TF_CACHE_DIR": "c"}) == Path.cwd() / "c" / "xla" / tag
    xdg = compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "caffe2tf" / "xla" / tag
    assert compile_cache_dir({}) == Path.home() / ".cache" / "caffe2tf" / "xla" / tag
    machine, digest = tag.rsplit("-", 1)
    assert machine and len(digest) == 12


def _verify(cache: str, backend: str = "jax", steps: int = 5) -> tuple[dict, str]:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_LOG_COMPILES": "1",  # JAX then logs each persistent-cache hit
        "CAFFE2TF_CACHE_DIR": cache,
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("TF_XLA_FLAGS", None)
    args = ["verify", "fixtures/lenet/solver.prototxt", "--steps", str(steps), "--format", "json"]
    proc = subprocess.run(
        [sys.executable, "-m", "caffe2tf", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_a_second_verify_loads_the_compiled_programs(tmp_path: Path) -> None:
    require("jax")
    require("filelock")
    hit = "Persistent compilation cache hit for 'jit_chunk'"
    first, log = _verify(str(tmp_path))
    where = tmp_path / "xla" / host_tag()
    assert first["passed"] and hit not in log
    kept = sorted(p.name for p in where.iterdir() if p.name.startswith("jit_chunk"))
    assert kept, sorted(p.name for p in where.iterdir())
    second, log = _verify(str(tmp_path))
    # every program of the run (the stream's and the probes') read back, none compiled again
    assert log.count(hit) == log.count("Compiling jit(chunk)") >= 2, log[-3000:]
    assert [r["comparison"] for r in second["runs"]] == [r["comparison"] for r in first["runs"]]
    # set empty: nothing is read (the programs are compiled again), nothing is kept
    before = sorted(where.iterdir())
    third, log = _verify("")
    assert hit not in log and "Compiling jit(chunk)" in log
    assert third["passed"] and sorted(where.iterdir()) == before


def test_tensorflow_programs_are_kept_beside_jax_ones(tmp_path: Path, monkeypatch) -> None:
    """``keep_tensorflow_programs`` points TensorFlow's own persistent XLA cache at the
    directory, leaves a user's own setting alone, and bounds the directory's size by removing
    the oldest files (TensorFlow does not)."""
    from caffe2tf import _quiet

    where = tmp_path / "xla-tensorflow" / host_tag()
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    _quiet.keep_tensorflow_programs(where)
    flags = os.environ["TF_XLA_FLAGS"]
    assert flags == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={where}"
    assert where.is_dir()
    # a user's own cache directory wins
    own = "--tf_xla_persistent_cache_directory=/somewhere/else"
    monkeypatch.setenv("TF_XLA_FLAGS", own)
    _quiet.keep_tensorflow_programs(where)
    assert os.environ["TF_XLA_FLAGS"] == own
    # over the bound, the oldest files go first
    monkeypatch.delenv("TF_XLA_FLAGS")
    for age, name in enumerate(["newest", "middle", "oldest"]):
        f = where / f"{name}.pb"
        f.write_bytes(b"x" * 400)
        os.utime(f, (1e9 - age * 100, 1e9 - age * 100))
    monkeypatch.setattr(_quiet, "CACHE_MAX_BYTES", 1000)
    _quiet.keep_tensorflow_programs(where)
    assert sorted(p.name for p in where.iterdir()) == ["middle.pb", "newest.pb"]
    # as verify sets it up: beside JAX's directory, or nowhere with CAFFE2TF_CACHE_DIR empty
    for name in ("TF_XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAFFE2TF_CACHE_DIR", "")
    _quiet.use_compile_cache()
    assert "TF_XLA_FLAGS" not in os.environ
    monkeypatch.setenv("CAFFE2TF_CACHE_DIR", str(tmp_path / "c"))
    _quiet.use_compile_cache()
    beside = tmp_path / "c" / "xla-tensorflow" / host_tag()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={beside}"


@pytest.mark.slow
def test_a_second_tensorflow_verify_compiles_nothing(tmp_path: Path) -> None:
    """On TensorFlow, verify's fused loop (from 1000 updates on) is compiled by XLA once:
    the next run of the recipe finds every program in the cache and adds none."""
    require("tensorflow")
    where = tmp_path / "xla-tensorflow" / host_tag()
    reports, kept = [], []
    for _ in range(2):
        reports.append(_verify(str(tmp_path), "tensorflow", steps=1000)[0])
        kept.append(sorted((p.name, p.stat().st_mtime) for p in where.iterdir()))
    assert "one XLA program" in reports[0]["device"]
    assert len(kept[0]) >= 2 and kept[1] == kept[0]  # the stream's program, Caffe's rule's
    assert [r["comparison"] for r in reports[1]["runs"]] == [
        r["comparison"] for r in reports[0]["runs"]
    ]
