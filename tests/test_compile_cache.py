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


def _verify(cache: str) -> tuple[dict, str]:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_LOG_COMPILES": "1",  # JAX then logs each persistent-cache hit
        "CAFFE2TF_CACHE_DIR": cache,
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    args = ["verify", "fixtures/lenet/solver.prototxt", "--steps", "5", "--format", "json"]
    proc = subprocess.run(
        [sys.executable, "-m", "caffe2tf", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
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
