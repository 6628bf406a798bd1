"""The emitted optimizer.py on the JAX backend (a subprocess with KERAS_BACKEND=jax): a few
cases covering the three routes (builtin, MultiOptimizer, custom CaffeOptimizer with clip,
iter_size and L1) follow the float32 reference within 1e-3 for 100 updates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

HERE = Path(__file__).parent
CASES = [
    "rmsprop_step",
    "lenet_sgd_multistep",
    "itersize3_inv",
    "clip_decay_sgd",
    "l1_nesterov_exp",
    "bn_scale_step",
]

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
import keras_support as ks
from caffe2tf.rule.reference import run_reference
out = {}
for name in sys.argv[2:]:
    case = ks.CASES / name
    rule, plan = ks.plan_of(case)
    module = ks.load_module(case / "expected" / "optimizer.py")
    init, grads = ks.streams(rule, 100, seed=3)
    ref = run_reference(rule, init, grads, precision="float32")
    cand = ks.run_keras(module.build_optimizer, module.prepare_model, rule, init, grads,
                        plan=plan)
    out[name] = ks.deviation(init, ref, cand)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.keras
@pytest.mark.slow
def test_emitted_matches_reference_jax(tmp_path: Path) -> None:
    require("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE), *CASES],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    deviations = json.loads(lines[-1][len("RESULT ") :])
    assert set(deviations) == set(CASES)
    bad = {k: v for k, v in deviations.items() if not v <= 1e-3}
    assert not bad, deviations
