"""NVIDIA Caffe's steps on the compiled executors (caffe2tf/rule/compiled.py ``nvidia_sgd``,
``nvidia_decay``, on JAX and on TensorFlow): against the NumPy reference (float64 to 1e-12,
float32) and the float64 restatement of NVIDIA's GPU source (tests/nvidia_restatement.py) on
every NVIDIA recipe of tests/test_nvidia_rule.py and a few more (SAG with L2, decay policy under
Adam, L1), and a planted mistake (LARC's norm taken of the decayed gradient) caught."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import require

sys.path.insert(0, str(Path(__file__).parent))

import nvidia_restatement as nv  # noqa: E402
from executors import EXECUTORS  # noqa: E402
from test_nvidia_rule import RECIPES, STEPS  # noqa: E402
from test_nvidia_rule import _setup as _setup_recipe  # noqa: E402

jax = require("jax")

from caffe2tf.rule import compiled  # noqa: E402
from caffe2tf.rule.compiled import STEP_FUNCTIONS, supports  # noqa: E402
from caffe2tf.rule.jax_executor import run_jax  # noqa: E402
from caffe2tf.rule.model import NvidiaDecay, NvidiaSGD  # noqa: E402
from caffe2tf.rule.reference import run_reference  # noqa: E402
from caffe2tf.verify.compare import compare_trajectories  # noqa: E402

#: recipes beyond test_nvidia_rule's, so that every branch of the two steps runs
MORE = {
    "sag_larc_scale_turbo_l2": (
        'type: "SAG"\nbase_lr: 0.4\nlr_policy: "fixed"\nmomentum: 0.8\nlarc: true\n'
        "larc_eta: 0.03\nlarc_turbo: true\nweight_decay: 0.05\n",
        1.0,
    ),
    "adam_decay_policy": (
        'type: "Adam"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.2\n'
        'weight_decay_policy: "poly"\nmax_weight_decay: 2\nweight_decay_power: 2\n',
        1.0,
    ),
    "sgd_l1_momentum_poly_larc_scale": (
        'base_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.5\nmomentum_policy: "poly"\n'
        "max_momentum: 0.9\nlarc: true\nlarc_eta: 0.01\n"
        'regularization_type: "L1"\nweight_decay: 0.01\n',
        0.1,
    ),
}
ALL = sorted(RECIPES) + sorted(MORE)


def _setup(tmp: Path, name: str):
    if name in RECIPES:
        return _setup_recipe(tmp, name)
    text, scale = MORE[name]
    RECIPES[name] = (text, scale, ())  # borrowed for _setup only, removed at once
    try:
        return _setup_recipe(tmp, name)
    finally:
        del RECIPES[name]


def _dev(init, ref, got) -> float:
    return compare_trajectories(init, ref, got, keys=list(init)).deviation


@pytest.mark.parametrize("backend", sorted(EXECUTORS))
@pytest.mark.parametrize("name", ALL)
def test_the_executors_follow_the_reference_and_nvidia(
    tmp_path: Path, name: str, backend: str
) -> None:
    rule, _, p, mults, init, grads = _setup(tmp_path, name)
    assert supports(rule)
    run = EXECUTORS[backend]
    ref64 = run_reference(rule, init, grads, precision="float64")
    got64 = run(rule, init, grads, precision="float64")
    assert _dev(init, ref64, got64) <= 1e-12
    ref32 = run_reference(rule, init, grads)
    got32 = run(rule, init, grads)
    assert _dev(init, ref32, got32) <= 1e-5
    restated = nv.run(p, mults, init, grads)
    assert _dev(init, restated, got64) <= 1e-6
    assert _dev(init, restated, got32) <= 1e-4


def test_the_recipes_cover_every_branch(tmp_path: Path) -> None:
    seen = set()
    for name in ALL:
        rule = _setup(tmp_path / name if (tmp_path / name).mkdir() is None else tmp_path, name)[0]
        for s in rule.steps:
            if isinstance(s, NvidiaSGD):
                seen.add(("sag" if s.sag else "sgd", s.larc, s.larc_turbo, s.decay_kind))
            if isinstance(s, NvidiaDecay):
                seen.add(("decay", s.kind))
    assert ("decay", "L2") in seen
    assert {("sag", "scale", True, "WD"), ("sag", "scale", True, "L2")} <= seen
    assert {("sgd", "clip", True, "L2"), ("sgd", "scale", False, "WD")} <= seen
    assert ("sgd", "scale", False, "L1") in seen


def test_a_later_window_matches_the_reference(tmp_path: Path) -> None:
    """Entered at k = 40 with fresh state: the host feeds mu_k and lambda_k of k >= 40."""
    rule, *_, init, grads = _setup(tmp_path, "momentum_and_decay_policies")
    ref = run_reference(rule, init, grads[:30], start=40, precision="float64")
    with jax.enable_x64(True):
        got = run_jax(rule, init, grads[:30], start=40, precision="float64")
    assert _dev(init, ref, got) <= 1e-12


def test_a_planted_larc_norm_of_the_decayed_gradient_is_caught(tmp_path: Path) -> None:
    """NVIDIA's GPU path forms LARC's ||g|| before the fused decay; a port that decays first
    (as the CPU path does) fails the comparison with the restatement."""
    rule, _, p, mults, init, grads = _setup(tmp_path, "larc_clip_turbo")
    step = next(s for s in rule.steps if isinstance(s, NvidiaSGD))
    assert step.larc and step.decay_kind == "L2"

    def decayed_first(s: NvidiaSGD, env) -> None:
        for key in env.keys:
            local = env.wd * env.s(env.groups[key].decay_mult)
            env.grads[key] = env.grads[key] + local * env.weights[key]
        compiled.nvidia_sgd(replace(s, decay_kind=""), env)

    registry = {**STEP_FUNCTIONS, NvidiaSGD: decayed_first}
    # the weight decay of the recipe is small; scale it so the difference is plain
    big = replace(
        rule, steps=tuple(replace(s, weight_decay=0.5) if s is step else s for s in rule.steps)
    )
    p_big = replace(p, weight_decay=np.float32(0.5).item())
    restated = nv.run(p_big, mults, init, grads)
    with jax.enable_x64(True):
        right = run_jax(big, init, grads, precision="float64")
        wrong = run_jax(big, init, grads, precision="float64", registry=registry)
    assert _dev(init, restated, right) <= 1e-6
    assert _dev(init, restated, wrong) >= 0.01
    assert STEPS == len(grads)


@pytest.mark.keras
@pytest.mark.slow
def test_verify_runs_an_nvidia_recipe_on_the_jax_device() -> None:
    """``caffe2tf verify`` on Keras' JAX backend, as a user runs it: NVIDIA's rule now runs in
    the one compiled program with the candidate, and the report says so."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    res = subprocess.run(
        [sys.executable, "-m", "caffe2tf", "verify", "fixtures/nvidia/solver.prototxt"]
        + ["--steps", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=root,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    device = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("device"))
    assert "both rules and the comparison, one JAX program" in device, device
    assert "PASS" in res.stdout
