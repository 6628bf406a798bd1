"""The reference against the committed real-Caffe golden traces (fixtures/golden, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_rule_mistakes import plant

from caffe2tf.caffe.load import load_recipe
from caffe2tf.rule.lower import lower
from caffe2tf.rule.reference import run_reference
from caffe2tf.verify.compare import compare_trajectories
from caffe2tf.verify.matrix import golden_cases
from caffe2tf.verify.oracle import retarget_solver_text

TOLERANCE = 1e-4
GOLDENS = golden_cases()


def recipe_for(case, directory: Path):
    net = directory / f"{case.name}.net.prototxt"
    net.write_text(case.net_text)
    solver = directory / f"{case.name}.solver.prototxt"
    solver.write_text(retarget_solver_text(case.solver_text, str(net)))
    return load_recipe(solver)


def test_goldens_are_present():
    assert len(GOLDENS) >= 6
    assert {g.case.factors["solver"] for g in GOLDENS} == {
        "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("golden", GOLDENS, ids=[g.case.name for g in GOLDENS])
def test_reference_matches_golden_trace(golden, precision, tmp_path):
    case = golden.case
    rule = lower(recipe_for(case, tmp_path))
    ref = run_reference(rule, case.init, case.grads, precision=precision)
    cmp = compare_trajectories(case.init, list(golden.weights), ref, tolerance=TOLERANCE)
    assert cmp.passed, cmp.summary()


def test_goldens_catch_doubled_decay(tmp_path):
    caught = 0
    for golden in GOLDENS:
        case = golden.case
        recipe = recipe_for(case, tmp_path)
        rule, registry = plant("decay_x2", lower(recipe), recipe)
        ref = run_reference(rule, case.init, case.grads, registry=registry)
        caught += not compare_trajectories(case.init, list(golden.weights), ref,
                                           tolerance=TOLERANCE).passed
    assert caught >= 1
