"""TensorFlow's native start-up lines (oneDNN, CUDA probing) stay out of verify's output, and
a failure inside the captured block still shows what the native side printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffe2tf._quiet import native_stderr_captured

REPO = Path(__file__).resolve().parents[1]


def test_verify_output_has_no_native_tensorflow_chatter(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "caffe2tf",
            "verify",
            str(REPO / "fixtures/lenet/solver.prototxt"),
            "--net",
            str(REPO / "fixtures/lenet/train.prototxt"),
            "--steps",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    for noise in ("oneDNN", "cuda_platform", "cudart_stub", "absl::InitializeLog"):
        assert noise not in proc.stderr, proc.stderr


def test_captured_native_output_is_replayed_when_the_body_fails(capfd) -> None:
    with pytest.raises(RuntimeError), native_stderr_captured():
        os.write(2, b"native library says why\n")
        raise RuntimeError("import failed")
    assert "native library says why" in capfd.readouterr().err


def test_captured_native_output_is_dropped_on_success(capfd) -> None:
    with native_stderr_captured():
        os.write(2, b"routine start-up line\n")
    assert "routine start-up line" not in capfd.readouterr().err
