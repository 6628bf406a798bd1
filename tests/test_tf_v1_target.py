"""The TF1-style graph target (``tf.compat.v1``) without the Caffe root (the real-Caffe bar is
tests/test_targets_oracle.py):

* its registries cover every solver step and lr policy of the rule, and every custom step or
  rate they name is a block of the runtime;
* the goldens (tests/cases/<case>/expected_tf-compat-v1/train_op_v1.py) equal a fresh
  rendering; every emitted module (case directories and the whole matrix, built-in and custom
  routes) is ruff-clean at line length 88 and 100 and imports only TensorFlow and the standard
  library;
* the emitted module, used per its contract (one ``session.run(train_op)`` per pass), follows
  the real Caffe's committed traces (fixtures/golden), and on the custom route the NumPy
  reference on every matrix case;
* the contract's edges: variables bind by tf.compat.v1.layers (kernel/bias) and
  tf.contrib.layers (weights/biases) names under any scope, a Caffe blob without a variable is
  an error naming it, a variable without a blob trains with lr_mult 1 and no decay after a
  warning; ``check --target tf-compat-v1`` fails a module whose decay was doubled.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import pytest
from conftest import require

sys.path.insert(0, str(Path(__file__).parent))

import target_support as ts  # noqa: E402

from caffe2tf.verify import matrix  # noqa: E402

TARGET = "tf-compat-v1"
MODULE = "train_op_v1.py"
MATRIX = matrix.matrix_cases(ts.STEPS)
GOLDEN_TRACES = matrix.golden_cases()
WITH_NET = [c for c in ts.CASE_DIRS if (c / "net.prototxt").exists()]


@pytest.fixture(scope="module")
def tf():
    from caffe2tf._quiet import import_keras_quietly

    require("tensorflow")
    import_keras_quietly()
    import tensorflow

    return tensorflow


def test_registries_cover_the_rule() -> None:
    from caffe2tf.rule.model import SOLVERS, LrSchedule, SolverStep
    from caffe2tf.rule.schedules import POLICIES
    from caffe2tf.targets.common import runtime_blocks
    from caffe2tf.targets.tf_compat_v1.plan import _CUSTOM_BLOCKS
    from caffe2tf.targets.tf_compat_v1.schedules import BUILTIN_SCHEDULES, CUSTOM_POLICIES
    from caffe2tf.targets.tf_compat_v1.solvers import SOLVER_MAPPINGS

    bvlc = {type(e.build(**dict.fromkeys(e.reads, 0.5))) for e in SOLVERS.values()}
    assert bvlc <= set(SOLVER_MAPPINGS) <= set(typing.get_args(SolverStep))
    assert set(BUILTIN_SCHEDULES) == set(POLICIES)
    for policy in POLICIES:
        mapped = BUILTIN_SCHEDULES[policy](
            LrSchedule(policy, 0.1, 0.5, 0.75, 10, (5,), 100, stagelr=(0.1,), stageiter=(5,))
        )
        # a fork's policy may be left unmapped (docs/forks.md)
        fork = POLICIES[policy].dialect is not None
        assert not isinstance(mapped, str) or policy in CUSTOM_POLICIES or fork
    for entry in SOLVERS.values():
        step = entry.build(**dict.fromkeys(entry.reads, 0.5))
        assert SOLVER_MAPPINGS[type(step)].custom(step).cls in _CUSTOM_BLOCKS
    names = [*_CUSTOM_BLOCKS.values(), *(f"policy_{p}" for p in CUSTOM_POLICIES)]
    assert runtime_blocks("caffe2tf.targets.tf_compat_v1", names + ["binder", "builtin"])


@pytest.mark.parametrize("case", ts.CASE_DIRS, ids=[c.name for c in ts.CASE_DIRS])
def test_goldens(case: Path) -> None:
    ts.check_goldens(case, TARGET)


def test_emitted_modules_are_ruff_clean_and_import_only_tensorflow(tmp_path: Path) -> None:
    from caffe2tf.targets.tf_compat_v1.plan import plan
    from caffe2tf.targets.tf_compat_v1.render_python import render_python

    folder = tmp_path / "modules"
    folder.mkdir()
    for case in ts.CASE_DIRS:
        (folder / f"case_{case.name}.py").write_text(ts.render_case(case, TARGET)[MODULE])
    for i, case in enumerate(MATRIX):
        rule = ts.case_rule(case, tmp_path / "rules" / case.name)
        for builtins in (True, False):
            text = render_python(plan(rule, builtins=builtins))
            (folder / f"matrix_{i}_{int(builtins)}.py").write_text(text)
    ts.ruff_clean(folder)
    allowed = {"__future__", "tensorflow", "math", "warnings", "collections", "typing"}
    for path in folder.glob("*.py"):
        roots = ts.import_roots(path.read_text())
        assert roots <= allowed, (path.name, roots)


def _run(module, p, data, **kw):
    from caffe2tf.verify.tf_v1_harness import run_tf_v1

    return run_tf_v1(module.build_train_op, p.blobs, data.init, data.micro, **kw)


def _refused_with_force_backward(golden) -> bool:
    """The clipped recipes whose committed streams give lr_mult 0 blobs a gradient (Caffe's
    clip norm counts it, as under force_backward): the TF1 target refuses that combination."""
    return golden.case.factors.get("clip") == "on" and any(
        lr == 0 for lr, _ in golden.case.multipliers.values()
    )


@pytest.mark.parametrize("golden", GOLDEN_TRACES, ids=[g.case.name for g in GOLDEN_TRACES])
def test_emitted_module_follows_the_committed_caffe_trace(golden, tf, tmp_path) -> None:
    from caffe2tf.notes import Exactness
    from caffe2tf.targets.tf_compat_v1.plan import plan
    from caffe2tf.targets.tf_compat_v1.render_python import render_python
    from caffe2tf.verify.compare import compare_trajectories

    case = golden.case
    rule = dataclasses.replace(ts.case_rule(case, tmp_path), force_backward=True)
    p = plan(rule)
    if _refused_with_force_backward(golden):
        assert any(n.exactness is Exactness.UNSUPPORTED for n in p.notes)
        return
    path = tmp_path / MODULE
    path.write_text(render_python(p))
    data = ts.CaseData(case.name, dict(case.init), list(case.micro_grads), [], case.iter_size)
    traj = _run(ts.load_module(path), p, data, iter_size=case.iter_size)
    cmp = compare_trajectories(case.init, golden.weights, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_custom_route_follows_the_reference(case, tf, tmp_path) -> None:
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.targets.tf_compat_v1.plan import plan
    from caffe2tf.targets.tf_compat_v1.render_python import render_python
    from caffe2tf.verify.compare import compare_trajectories

    rule = ts.case_rule(case, tmp_path)
    p = plan(rule, builtins=False)
    assert not p.builtin
    path = tmp_path / MODULE
    path.write_text(render_python(p))
    data = ts.case_data(case)
    traj = _run(ts.load_module(path), p, data, iter_size=data.iter_size)
    reference = run_reference(rule, data.init, data.grads)
    cmp = compare_trajectories(data.init, reference, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", WITH_NET, ids=[c.name for c in WITH_NET])
def test_case_modules_follow_the_reference(case: Path, tf) -> None:
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import streams
    from caffe2tf.verify.compare import compare_trajectories
    from caffe2tf.verify.inputs import (
        frozen_blobs_get_no_gradient,
        initial_weights,
        never_written_blobs,
    )

    rule, p = ts.case_plan(case, TARGET)
    module = ts.load_module(case / f"expected_{TARGET}" / MODULE)
    shapes = {g.key: tuple(g.shape or ()) for g in rule.params}
    init = initial_weights(shapes, 7)
    micro = streams.micro_batches(shapes, ts.STEPS, 7, iter_size=rule.iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(rule.params, rule.force_backward)
    )
    grads = streams.accumulate(micro, rule.iter_size)
    data = ts.CaseData(case.name, init, micro, grads, rule.iter_size)
    traj = _run(module, p, data, iter_size=rule.iter_size)
    cmp = compare_trajectories(init, run_reference(rule, init, grads), traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


# ---- the contract's edges -------------------------------------------------------------------


def _graph(tf, names: list[tuple[str, tuple[int, ...]]]):
    graph = tf.Graph()
    with graph.as_default():
        variables = [
            tf.compat.v1.get_variable(name, shape, initializer=tf.compat.v1.ones_initializer())
            for name, shape in names
        ]
        loss = tf.add_n([tf.reduce_sum(v) for v in variables])
    return graph, variables, loss


def _lenet_module():
    return ts.load_module(ts.CASES / "lenet_sgd_multistep" / f"expected_{TARGET}" / MODULE)


def test_variables_bind_by_layers_and_slim_names_under_any_scope(tf) -> None:
    module = _lenet_module()
    names = [("net/ip1/kernel", (5, 4)), ("net/ip1/bias", (4,))]
    names += [("tower/ip2/weights", (4, 3)), ("tower/ip2/biases", (3,))]
    graph, variables, loss = _graph(tf, names)
    with graph.as_default():
        bound = module.bind_caffe_blobs(variables, module.CAFFE_BLOBS, module.DEFAULT_BLOB)
        train_op, global_step = module.build_train_op(loss)
    assert [(v.op.name, lr) for v, lr, _ in bound] == [
        ("net/ip1/kernel", 1.0),
        ("net/ip1/bias", 2.0),
        ("tower/ip2/weights", 1.0),
        ("tower/ip2/biases", 2.0),
    ]
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(train_op)
        assert session.run(global_step) == 1


def test_a_caffe_blob_without_a_variable_is_named(tf) -> None:
    module = _lenet_module()
    graph, _, loss = _graph(tf, [("ip1/kernel", (5, 4)), ("ip1/bias", (4,))])
    with graph.as_default(), pytest.raises(ValueError, match=r"'ip2' blob 0.*'ip2' blob 1"):
        module.build_train_op(loss)


def test_a_variable_without_a_blob_trains_with_lr_mult_1_and_no_decay(tf) -> None:
    module = _lenet_module()
    names = [("ip1/kernel", (5, 4)), ("ip1/bias", (4,)), ("ip2/kernel", (4, 3))]
    names += [("ip2/bias", (3,)), ("head/scale", (2,))]
    graph, variables, loss = _graph(tf, names)
    with graph.as_default(), pytest.warns(UserWarning, match="head/scale"):
        bound = module.bind_caffe_blobs(variables, module.CAFFE_BLOBS, module.DEFAULT_BLOB)
    assert bound[-1][1:] == (1.0, 0.0)


def test_check_target_tf_compat_v1_fails_a_doubled_decay(tf, tmp_path) -> None:
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    out = tmp_path / "out"
    solver, files = ts.cli_convert(TARGET, out)
    runner = CliRunner()
    assert sorted(p.name for p in out.iterdir()) == [MODULE]
    res = runner.invoke(cli, ["check", solver, str(out), *files, "--target", TARGET])
    assert res.exit_code == 0 and "check PASSED" in res.output, res.output
    module = out / MODULE
    text = module.read_text()
    wd = "weight_decay=0.0005,  # weight_decay"
    assert wd in text
    module.write_text(text.replace(wd, "weight_decay=2 * 0.0005,  # 'undoing' l2_loss's 1/2"))
    res = runner.invoke(cli, ["check", solver, str(out), *files, "--target", TARGET])
    assert res.exit_code == 1 and "check FAILED" in res.output, res.output
