"""The reference against the committed real-Caffe golden traces (fixtures/golden, no root)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_rule_mistakes import MISTAKES, plant

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
        "SGD",
        "Nesterov",
        "AdaGrad",
        "RMSProp",
        "AdaDelta",
        "Adam",
    }


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("golden", GOLDENS, ids=[g.case.name for g in GOLDENS])
def test_reference_matches_golden_trace(golden, precision, tmp_path):
    case = golden.case
    rule = lower(recipe_for(case, tmp_path))
    ref = run_reference(rule, case.init, case.grads, precision=precision)
    cmp = compare_trajectories(case.init, list(golden.weights), ref, tolerance=TOLERANCE)
    assert cmp.passed, cmp.summary()


CLEAR_EFFECT = 10 * TOLERANCE


def _max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x[k]) - np.asarray(y[k]))))
        for x, y in zip(a, b, strict=True)
        for k in x
    )


@pytest.mark.parametrize("golden", GOLDENS, ids=[g.case.name for g in GOLDENS])
def test_golden_catches_every_mistake_that_applies(golden, tmp_path):
    """Each planted mistake (test_rule_mistakes.MISTAKES) that applies to this case -- it moves
    the reference's trajectory by more than 10x the tolerance -- fails the comparison with the
    real-Caffe golden trace. (A plant that moves nothing, or less, e.g. the momentum form under
    a fixed rate or eps inside the root with a tiny delta, does not apply to the case.)"""
    case = golden.case
    recipe = recipe_for(case, tmp_path)
    rule = lower(recipe)
    right = run_reference(rule, case.init, case.grads)
    missed = []
    for mistake in MISTAKES:
        wrong_rule, registry = plant(mistake, rule, recipe)
        wrong = run_reference(wrong_rule, case.init, case.grads, registry=registry)
        if _max_diff(right, wrong) <= CLEAR_EFFECT:
            continue
        if compare_trajectories(case.init, list(golden.weights), wrong, tolerance=TOLERANCE).passed:
            missed.append(mistake)
    assert not missed, f"{case.name}: the golden trace does not catch {missed}"


def test_most_mistakes_apply_to_some_golden(tmp_path):
    """The goldens are a net worth having: most planted mistakes have a clear effect on at
    least one of them (so the per-case test above asserts something for them)."""
    applied = set()
    for golden in GOLDENS:
        case = golden.case
        recipe = recipe_for(case, tmp_path)
        rule = lower(recipe)
        right = run_reference(rule, case.init, case.grads)
        for mistake in MISTAKES:
            wrong_rule, registry = plant(mistake, rule, recipe)
            wrong = run_reference(wrong_rule, case.init, case.grads, registry=registry)
            if _max_diff(right, wrong) > CLEAR_EFFECT:
                applied.add(mistake)
    assert {"decay_x2", "eps_inside_sqrt", "clip_after_decay"} <= applied, applied
    assert len(applied) > len(MISTAKES) // 2, applied
