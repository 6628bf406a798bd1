"""The registries agree with each other: every solver Caffe knows has a step, a reference
function and a Keras mapping; every lr policy has a rate, a Keras mapping and a runtime rate
(docs/architecture.md, "One table per fact")."""

from __future__ import annotations

import typing

from conftest import require

from caffe2tf.caffe.solver import LR_POLICIES, NVIDIA_SOLVER_TYPES, SOLVER_TYPES
from caffe2tf.rule.model import NVIDIA_SOLVERS, SOLVER_TABLES, SOLVERS, SolverStep
from caffe2tf.rule.schedules import POLICIES
from caffe2tf.rule.steps import STEP_FUNCTIONS
from caffe2tf.targets.keras.schedules import BUILTIN_SCHEDULES
from caffe2tf.targets.keras.solvers import SOLVER_MAPPINGS


def test_the_rule_knows_exactly_caffes_solver_types_and_policies() -> None:
    assert set(SOLVERS) == set(SOLVER_TYPES)
    # BVLC's seven, and the forks' each with its dialect (tests/test_yolo_dialect.py)
    assert {p for p, v in POLICIES.items() if v.dialect is None} == set(LR_POLICIES)


def test_every_solver_step_has_a_reference_function_and_a_keras_mapping() -> None:
    step_types = set(typing.get_args(SolverStep))
    built = {
        type(entry.build(**dict.fromkeys(entry.reads, 0.5)))
        for table in SOLVER_TABLES.values()
        for entry in table.values()
    }
    assert built == step_types
    assert set(NVIDIA_SOLVERS) | {"SAG"} == set(NVIDIA_SOLVER_TYPES)
    assert step_types <= set(STEP_FUNCTIONS)
    assert set(SOLVER_MAPPINGS) == step_types


def test_every_policy_has_a_keras_mapping_and_a_runtime_rate() -> None:
    assert set(BUILTIN_SCHEDULES) == set(POLICIES)
    require("keras")
    from caffe2tf.targets.keras.runtime import CAFFE_POLICY_RATES

    assert set(CAFFE_POLICY_RATES) == set(POLICIES)


def test_every_custom_class_is_a_caffe_optimizer_of_the_runtime() -> None:
    require("keras")
    from caffe2tf.targets.keras import runtime

    for step_type, mapping in SOLVER_MAPPINGS.items():
        entries = [e for t in SOLVER_TABLES.values() for e in t.values()]
        entry = next(e for e in entries if step_type in _built(e))
        step = entry.build(**dict.fromkeys(entry.reads, 0.5))
        cls = getattr(runtime, mapping.custom(step).cls)
        assert issubclass(cls, runtime.CaffeOptimizer) and cls is not runtime.CaffeOptimizer


def _built(entry: typing.Any) -> set[type]:
    return {type(entry.build(**dict.fromkeys(entry.reads, 0.5)))}
