"""The bar for the emitted optimizer: for every case of the update-rule matrix, the emitted
``optimizer.py`` used exactly per its contract (:mod:`caffe2tf.verify.keras_harness`) reproduces
the REAL Caffe 1.0 trajectory within 1e-3 (deviation of :mod:`caffe2tf.verify.compare`) after 100
updates, on the TensorFlow backend and on the JAX backend (a subprocess), each with a custom loop
for every case and with compile + fit for a few;
and the usual wrong ports (:mod:`caffe2tf.verify.wrong_ports`) FAIL the same comparison.

Data: each case's seeded stream, with the gradients of ``lr_mult: 0`` blobs zeroed as Caffe
computes them (``caffe2tf.verify.inputs.frozen_blobs_get_no_gradient``); all Caffe trajectories
come from ONE batched ``oracle.run_cases`` call.

Documented xfail list: :data:`XFAIL` (case name -> precise reason); empty when every case passes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from caffe2tf.app.matrix import (
    convert_case,
    keras_case_data,
    run_keras_case,
    save_trajectories,
    write_case_files,
)
from caffe2tf.verify import matrix, oracle, wrong_ports
from caffe2tf.verify.compare import compare_trajectories

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.oracle, pytest.mark.keras, pytest.mark.slow]

STEPS = 100
TOLERANCE = 1e-3

CASES = matrix.matrix_cases(STEPS)


def _teeth_case(tag: str, variant: int = 0, **combo: object) -> matrix.MatrixCase:
    base = {"policy": "fixed", "decay": "none", "mults": "default", "clip": "off", "iter_size": 1}
    case = matrix.build_case({**base, **combo}, STEPS, variant=variant)
    return dataclasses.replace(case, name=f"teeth-{tag}")


#: Plain recipes where one mistake is the only difference (the drift figures in
#: bench/RESULTS.md): SGD momentum 0.9 and Adam with L2 decay; RMSProp (Caffe's default
#: rms_decay 0.99, delta 1e-5) and AdaGrad without decay. (With ``rms_decay: 0.9``, Keras'
#: default rho, RMSprop with only the lr set is within 0.1% of Caffe on a fixed lr: too close to
#: show the mistake, so the plain RMSProp case keeps Caffe's default.)
TEETH = [
    _teeth_case("sgd-l2", solver="SGD", decay="L2"),
    _teeth_case("adam-l2", solver="Adam", decay="L2"),
    _teeth_case("rmsprop", variant=1, solver="RMSProp"),
    _teeth_case("adagrad", solver="AdaGrad"),
]
ALL = CASES + TEETH

#: case name -> why the emitted module does not (yet) match Caffe there.
XFAIL: dict[str, str] = {}

#: cases also run through model.compile(optimizer=build_optimizer()) + model.fit
FIT_CASES = [c for c in CASES if c.iter_size > 1 and c.factors.get("clip") == "on"][:2] + [
    next(c for c in CASES if c.factors.get("solver") == "Adam")
]


def _ids(case: matrix.MatrixCase) -> str:
    return case.name


def _port_applies(case: matrix.MatrixCase, port: str) -> bool:
    if port in ("kernel_l2", "decoupled_wd"):
        return case.factors.get("decay") == "L2"
    return case.factors.get("solver") in ("RMSProp", "AdaGrad")


WRONG = [(c, p) for c in ALL for p in wrong_ports.PORTS if _port_applies(c, p)]


@pytest.fixture(scope="module")
def caffe_runs(caffe_root):
    data = {c.name: keras_case_data(c) for c in ALL}
    cases = [
        oracle.OracleCase(
            name=c.name,
            solver_text=c.solver_text,
            net_text=c.net_text,
            init=data[c.name].init,
            grads=data[c.name].grads,
        )
        for c in ALL
    ]
    return data, oracle.run_cases(cases, root=caffe_root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keras-oracle")


_modules: dict[str, object] = {}


def _module(case: matrix.MatrixCase, workdir: Path):
    from caffe2tf.verify.candidate import load_module

    if case.name not in _modules:
        _modules[case.name] = load_module(convert_case(case, workdir / case.name))
    return _modules[case.name]


def _deviation(case, caffe_runs, candidate, **kw):
    data, caffe = caffe_runs
    traj = run_keras_case(case, data[case.name], candidate, **kw)
    return compare_trajectories(data[case.name].init, caffe[case.name], traj, tolerance=TOLERANCE)


def _xfail(case: matrix.MatrixCase) -> None:
    if case.name in XFAIL:
        pytest.xfail(XFAIL[case.name])


@pytest.mark.parametrize("case", ALL, ids=_ids)
def test_tf_matches_caffe(case, caffe_runs, workdir):
    _xfail(case)
    cmp = _deviation(case, caffe_runs, _module(case, workdir))
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", FIT_CASES, ids=_ids)
def test_tf_compile_fit_matches_caffe(case, caffe_runs, workdir):
    _xfail(case)
    cmp = _deviation(case, caffe_runs, _module(case, workdir), route="fit")
    assert cmp.passed, f"{case.name} (compile + fit): {cmp.summary()}"


def _jax_run(caffe_runs, workdir: Path, cases, *extra: str) -> dict:
    require("jax")
    _, caffe = caffe_runs
    ref = workdir / "caffe-trajectories.npz"
    if not ref.exists():
        save_trajectories(ref, {c.name: caffe[c.name] for c in CASES})
    out = workdir / f"jax{'-'.join(extra)}.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "keras_matrix.py"),
            "--reference",
            str(ref),
            "--out",
            str(out),
            "--names",
            *[c.name for c in cases],
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["backend"].split("/")[1].split()[0] == "jax", result["backend"]
    assert set(result["cases"]) == {c.name for c in cases}
    return result["cases"]


@pytest.fixture(scope="module")
def jax_results(caffe_runs, workdir):
    return _jax_run(caffe_runs, workdir, CASES)


@pytest.fixture(scope="module")
def jax_fit_results(caffe_runs, workdir):
    return _jax_run(caffe_runs, workdir, FIT_CASES, "--route", "fit")


def _check_jax(case, res, how: str) -> None:
    _xfail(case)
    assert "error" not in res, res.get("error")
    assert res["deviation"] <= TOLERANCE, (
        f"{case.name} on JAX ({how}): deviation {res['deviation']:.3e}"
    )


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_jax_matches_caffe(case, jax_results):
    _check_jax(case, jax_results[case.name], "loop")


@pytest.mark.parametrize("case", FIT_CASES, ids=_ids)
def test_jax_compile_fit_matches_caffe(case, jax_fit_results):
    _check_jax(case, jax_fit_results[case.name], "compile + fit")


@pytest.mark.parametrize("case,port", WRONG, ids=[f"{c.name}-{p}" for c, p in WRONG])
def test_wrong_port_fails(case, port, caffe_runs, workdir, record_property):
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule.lower import lower

    solver, net = write_case_files(case, workdir / f"{case.name}-rule")
    rule = lower(load_recipe(solver, net_path=net))
    assert wrong_ports.applies(port, rule), "the test's applicability disagrees with the port's"
    cmp = _deviation(case, caffe_runs, wrong_ports.build_port(port, rule, STEPS))
    drift = 100 * cmp.deviation
    record_property("drift_percent_of_travel", round(drift, 1))
    print(f"\nwrong port {port} on {case.name}: drift {drift:.1f}% of distance travelled")
    assert not cmp.passed, f"{port} on {case.name} passed ({cmp.summary()}): no teeth"
