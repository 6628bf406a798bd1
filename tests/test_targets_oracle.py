"""The bar for the torch, optax and tf-compat-v1 targets: for every case of the update-rule
matrix, the module ``caffe2tf convert --target torch|optax|tf-compat-v1`` writes, used exactly
per its contract (:mod:`caffe2tf.verify.torch_harness`, :mod:`caffe2tf.verify.optax_harness`,
:mod:`caffe2tf.verify.tf_v1_harness`), reproduces the
REAL Caffe 1.0 trajectory within 1e-3 (deviation of :mod:`caffe2tf.verify.compare`) over 100
updates; and the usual wrong ports of each framework (:mod:`caffe2tf.verify.target_ports`)
FAIL the same comparison.

Data: each case's seeded stream with the gradients of ``lr_mult: 0`` blobs zeroed, as Caffe
computes them; every Caffe trajectory comes from ONE batched ``oracle.run_cases`` call. The
whole matrix runs in this one process (torch, JAX and TensorFlow on the CPU), about a minute.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from conftest import require

sys.path.insert(0, str(Path(__file__).parent))

import target_support as ts  # noqa: E402

from caffe2tf.verify import matrix, oracle, target_ports  # noqa: E402
from caffe2tf.verify.compare import compare_trajectories  # noqa: E402

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

CASES = matrix.matrix_cases(ts.STEPS)

#: Plain recipes where one mistake is the only difference: SGD momentum 0.9 under a step
#: schedule (no decay), Adam and SGD with L2 decay under a constant rate.
TEETH = [
    ts.teeth_case("sgd-step", solver="SGD", policy="step"),
    ts.teeth_case("adam-l2", solver="Adam", decay="L2"),
    ts.teeth_case("sgd-l2", solver="SGD", decay="L2"),
]
ALL = CASES + TEETH
TARGETS = ("torch", "optax", "tf-compat-v1")


@pytest.fixture(scope="module")
def caffe_runs(caffe_root):
    data = {c.name: ts.case_data(c) for c in ALL}
    cases = [
        oracle.OracleCase(c.name, c.solver_text, c.net_text, data[c.name].init, data[c.name].grads)
        for c in ALL
    ]
    return data, oracle.run_cases(cases, root=caffe_root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("targets-oracle")


_converted: dict[tuple[str, str], tuple[object, object]] = {}


def _converted_case(case, target: str, workdir: Path):
    """(rule, module) of the case converted for ``target`` as a user runs convert."""
    key = (case.name, target)
    if key not in _converted:
        path = ts.convert_case(case, workdir / case.name, target)
        rule = ts.case_rule(case, workdir / case.name)
        _converted[key] = (rule, ts.load_module(path))
    return _converted[key]


def _trajectory(target: str, build, rule, data, plan_blobs=None):
    if target == "tf-compat-v1":
        from caffe2tf.targets.tf_compat_v1.plan import plan
        from caffe2tf.verify.tf_v1_harness import run_tf_v1

        return run_tf_v1(build, plan(rule).blobs, data.init, data.micro, iter_size=data.iter_size)
    if target == "torch":
        from caffe2tf.targets.torch.plan import plan
        from caffe2tf.verify.torch_harness import run_torch

        blobs = plan_blobs if plan_blobs is not None else plan(rule).blobs
        return run_torch(build, blobs, data.init, data.micro, iter_size=data.iter_size)
    from caffe2tf.verify.optax_harness import run_optax

    return run_optax(build, data.init, data.micro, iter_size=data.iter_size)


def _require(target: str) -> None:
    if target == "tf-compat-v1":
        require("tensorflow")
    elif target == "torch":
        require("torch")
    else:
        require("jax")
        require("optax")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_emitted_module_matches_caffe(case, target, caffe_runs, workdir, record_property):
    _require(target)
    data, caffe = caffe_runs
    rule, module = _converted_case(case, target, workdir)
    build = module.build_train_op if target == "tf-compat-v1" else module.build_optimizer
    traj = _trajectory(target, build, rule, data[case.name])
    cmp = compare_trajectories(data[case.name].init, caffe[case.name], traj, tolerance=ts.TOLERANCE)
    record_property("deviation", cmp.deviation)
    assert cmp.passed, f"{target} on {case.name}: {cmp.summary()}"


def _rules() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="caffe2tf-ports-") as tmp:
        return {c.name: ts.case_rule(c, Path(tmp) / c.name) for c in ALL}


_RULES = _rules()
WRONG = [(c, p) for c in ALL for p in target_ports.PORTS if target_ports.applies(p, _RULES[c.name])]


def test_every_port_is_tested_somewhere() -> None:
    assert {port for _, port in WRONG} == set(target_ports.PORTS)


@pytest.mark.parametrize("case,port", WRONG, ids=[f"{c.name}-{p}" for c, p in WRONG])
def test_wrong_port_fails(case, port, caffe_runs, workdir, record_property):
    target = {"torch": "torch", "optax": "optax", "tf": "tf-compat-v1"}[port.split("_")[0]]
    _require(target)
    data, caffe = caffe_runs
    rule, module = _converted_case(case, target, workdir)
    if target == "torch":
        build = target_ports.torch_port(port, rule, module, ts.STEPS)
    elif target == "optax":
        build = target_ports.optax_port(port, rule, module)
    else:
        build = target_ports.tf_port(port, rule, module)
    traj = _trajectory(target, build, rule, data[case.name])
    cmp = compare_trajectories(data[case.name].init, caffe[case.name], traj, tolerance=ts.TOLERANCE)
    drift = 100 * cmp.deviation
    record_property("drift_percent_of_travel", round(drift, 1))
    print(f"\nwrong port {port} on {case.name}: drift {drift:.1f}% of distance travelled")
    assert not cmp.passed, f"{port} on {case.name} passed ({cmp.summary()}): no teeth"
