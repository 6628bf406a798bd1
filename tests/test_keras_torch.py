"""The emitted optimizer.py on Keras' torch backend: `caffe2tf verify` (convert, import the
module, train per its contract, compare with the float32 reference) in a subprocess with
KERAS_BACKEND=torch, over the case directories whose nets the harness can mirror.

PyTorch is not among the dev extras (a CUDA build is several GB), so this runs where torch is
installed (`pip install torch` next to caffe2tf) and is skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASES = [
    "lenet_sgd_multistep",
    "adam_no_momentum",
    "rmsprop_step",
    "adagrad_poly",
    "adadelta_sigmoid",
    "clip_decay_sgd",
    "itersize3_inv",
    "l1_nesterov_exp",
    "bn_scale_step",
]

pytestmark = [
    pytest.mark.keras,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="PyTorch is not installed (not a dev extra; pip install torch)",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_emitted_optimizer_matches_reference_on_torch(case: str, tmp_path: Path) -> None:
    case_dir = REPO / "tests" / "cases" / case
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "caffe2tf",
            "verify",
            str(case_dir / "solver.prototxt"),
            "--net",
            str(case_dir / "net.prototxt"),
            "--steps",
            "100",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert "torch" in report["backend"]
    assert report["passed"] and report["comparison"]["deviation"] <= 1e-3
