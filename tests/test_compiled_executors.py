"""The compiled executors of Caffe's rule (caffe2tf/rule/compiled.py's steps, on JAX and on
TensorFlow with XLA) against the NumPy reference (float32 and float64), the committed traces of
the real Caffe (fixtures/golden) and the real Caffe 1.0 on the whole update-rule matrix; a
planted mistake (decay x2) must fail on each."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from executors import EXECUTORS

from caffe2tf.app.matrix import write_case_files
from caffe2tf.caffe.load import load_recipe
from caffe2tf.rule import compiled
from caffe2tf.rule.compiled import STEP_FUNCTIONS, supports
from caffe2tf.rule.lower import lower
from caffe2tf.rule.model import AddDecay, NvidiaSGD
from caffe2tf.rule.reference import run_reference
from caffe2tf.verify import matrix
from caffe2tf.verify.compare import compare_trajectories

#: measured max deviations (bench/RESULTS.md): float32 5.6e-7 from the NumPy reference
FLOAT32_BAR = 1e-5
FLOAT64_BAR = 1e-12


def _lowered(case, directory: Path):
    solver, net = write_case_files(case, directory / case.name)
    return lower(load_recipe(solver, net_path=net))


@pytest.fixture(scope="module")
def cases():
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for case in matrix.matrix_cases(100):
            out.append((case, _lowered(case, Path(tmp))))
    return out


BACKENDS = sorted(EXECUTORS)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def float32_runs(cases, backend):
    """Every matrix case through the backend's compiled executor (float32), once per backend."""
    run = EXECUTORS[backend]
    return {case.name: run(rule, case.init, case.grads) for case, rule in cases}


def test_every_matrix_rule_is_supported(cases):
    assert all(supports(rule) for _, rule in cases)
    nvidia = cases[0][1].__class__(solver="SGD", steps=(NvidiaSGD(0.9),))
    assert supports(nvidia)  # NVIDIA's steps too (tests/test_nvidia_executors.py)


def test_float32_agrees_with_the_numpy_reference_on_the_matrix(cases, float32_runs):
    worst = 0.0
    for case, rule in cases:
        ref = run_reference(rule, case.init, case.grads)
        dev = compare_trajectories(case.init, ref, float32_runs[case.name]).deviation
        assert dev <= FLOAT32_BAR, (case.name, dev)
        worst = max(worst, dev)
    assert worst > 0  # XLA rounds differently somewhere: the comparison is not vacuous


def test_float64_agrees_with_the_numpy_reference(cases, backend):
    for case, rule in cases[::3]:
        ref = run_reference(rule, case.init, case.grads, precision="float64")
        got = EXECUTORS[backend](rule, case.init, case.grads, precision="float64")
        assert got[0][next(iter(case.init))].dtype == np.float64
        dev = compare_trajectories(case.init, ref, got).deviation
        assert dev <= FLOAT64_BAR, (case.name, dev)


def test_agrees_with_the_committed_caffe_traces(tmp_path, backend):
    golden = matrix.golden_cases()
    assert golden
    for g in golden:
        rule = _lowered(g.case, tmp_path)
        got = EXECUTORS[backend](rule, g.case.init, g.case.grads)
        dev = compare_trajectories(g.case.init, g.weights, got).deviation
        assert dev <= FLOAT32_BAR, (g.case.name, dev)


def test_a_run_entered_later_matches_the_reference(cases, backend):
    """Windows enter at a milestone with fresh state: the host scalars follow fast_forward."""
    for case, rule in cases[:12]:
        if rule.schedule.policy not in ("multistep", "step"):
            continue
        start = 57
        ref = run_reference(rule, case.init, case.grads[:20], start=start)
        got = EXECUTORS[backend](rule, case.init, case.grads[:20], start=start)
        assert compare_trajectories(case.init, ref, got).deviation <= FLOAT32_BAR, case.name


@pytest.mark.oracle
def test_agrees_with_the_real_caffe_on_the_matrix(caffe_root, cases, float32_runs, backend):
    from caffe2tf.verify import oracle

    caffe = oracle.run_cases([case.oracle_case() for case, _ in cases], root=caffe_root)
    worst = 0.0
    for case, _ in cases:
        dev = compare_trajectories(case.init, caffe[case.name], float32_runs[case.name]).deviation
        assert dev <= FLOAT32_BAR, (case.name, dev)
        worst = max(worst, dev)
    print(f"{backend} executor vs the real Caffe on {len(cases)} cases: max deviation {worst:.2e}")


def test_planted_decay_x2_is_caught(cases, backend):
    """The same comparison fails an executor whose decay is doubled, on every case that
    decays a trained blob."""

    def doubled(step, env):
        compiled.add_decay(AddDecay(step.kind, 2 * step.weight_decay), env)

    registry = {**STEP_FUNCTIONS, AddDecay: doubled}
    decayed = [
        (case, rule)
        for case, rule in cases
        if rule.step(AddDecay) is not None and any(g.decay_mult and g.lr_mult for g in rule.params)
    ]
    assert len(decayed) >= 10
    for case, rule in decayed[:6]:
        ref = run_reference(rule, case.init, case.grads)
        wrong = EXECUTORS[backend](rule, case.init, case.grads, registry=registry)
        dev = compare_trajectories(case.init, ref, wrong).deviation
        assert dev > 1e-3, (case.name, dev)


def test_a_tensorflow_executor_reset_for_another_run_starts_afresh(cases):
    """verify keeps one TensorFlow executor per precision and shapes and resets it for each run
    (its variables reused): a reset one must step as a new one, and as the NumPy reference."""
    from conftest import require

    require("tensorflow")
    from caffe2tf.rule.tf_executor import TfExecutor

    momentum = [(c, r) for c, r in cases if r.solver in ("SGD", "Adam", "AdaDelta")][:4]
    assert momentum
    for case, rule in momentum:
        ex = TfExecutor(rule, case.init, updates=30)
        for g in case.grads[:30]:
            ex.step(g)
        ex.reset(case.init, start=57, updates=20)
        got = []
        for g in case.grads[:20]:
            w = ex.step(g)
            got.append({k: np.asarray(v) for k, v in w.items()})
        ref = run_reference(rule, case.init, case.grads[:20], start=57)
        assert compare_trajectories(case.init, ref, got).deviation <= FLOAT32_BAR, case.name
