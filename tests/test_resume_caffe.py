"""Continue a Caffe run in Keras: the real Caffe 1.0 trains N updates and snapshots after k
(.caffemodel + .solverstate); ``caffe2tf.import_caffe_snapshot`` loads that into the mirror
model and the emitted optimizer, which then trains updates k+1..N per its contract. Its
trajectory must match Caffe continuing its own run, for every solver and for the builtin, multi
and custom routes; loading into a fresh optimizer instead (state lost) must not."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf import import_caffe_snapshot  # noqa: E402
from caffe2tf.app.matrix import keras_case_data, write_case_files  # noqa: E402
from caffe2tf.cli import cli  # noqa: E402
from caffe2tf.verify import keras_harness, matrix, mirror  # noqa: E402
from caffe2tf.verify.compare import compare_trajectories  # noqa: E402
from caffe2tf.verify.oracle import OracleCase  # noqa: E402
from caffe2tf.verify.oracle_snapshot import run_with_snapshot  # noqa: E402

pytestmark = [pytest.mark.oracle, pytest.mark.keras, pytest.mark.slow]
STEPS, AT = 30, 12
_ids = itertools.count()

COMBOS = {  # route: builtin / multi / custom, and every solver once
    "sgd-multistep-multi": dict(solver="SGD", policy="multistep", decay="L2", mults="explicit"),
    "nesterov-step": dict(solver="Nesterov", policy="step", decay="L2", mults="default"),
    "adam-builtin": dict(solver="Adam", policy="fixed", decay="L2", mults="default"),
    "rmsprop-builtin": dict(solver="RMSProp", policy="exp", decay="none", mults="default"),
    "adadelta-builtin": dict(solver="AdaDelta", policy="fixed", decay="L2", mults="default"),
    "adagrad-custom-clip": dict(solver="AdaGrad", policy="inv", decay="L1", mults="one_block"),
    "sgd-custom-itersize": dict(solver="SGD", policy="poly", decay="L2", mults="default"),
}


def _case(name: str):
    combo = {"clip": "off", "iter_size": 1, **COMBOS[name]}
    if name == "adagrad-custom-clip":
        combo["clip"] = "on"
    if name == "sgd-custom-itersize":
        combo["iter_size"] = 3
    return matrix.build_case(combo, STEPS)


@pytest.mark.parametrize("name", sorted(COMBOS))
def test_keras_continues_a_caffe_snapshot(name: str, tmp_path: Path, caffe_root: Path) -> None:
    case = _case(name)
    data = keras_case_data(case)  # frozen blobs get no gradient, as in Caffe
    run = run_with_snapshot(
        OracleCase(case.name, case.solver_text, case.net_text, data.init, data.grads),
        AT,
        root=caffe_root,
    )
    model_file, state_file = tmp_path / "s.caffemodel", tmp_path / "s.solverstate"
    model_file.write_bytes(run.caffemodel)
    state_file.write_bytes(run.solverstate)
    solver, net = write_case_files(case, tmp_path / "recipe")
    result = CliRunner().invoke(cli, ["convert", str(solver), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location(
        f"resume_opt_{next(_ids)}", tmp_path / "out" / "optimizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shapes = {k: np.shape(v) for k, v in data.init.items()}
    s = data.iter_size

    def continued(with_state: bool) -> list[dict[str, np.ndarray]]:
        model = mirror.build_mirror_model(
            mirror.mirror_layers_from_shapes(shapes, case.layer_types)
        )
        mirror.set_caffe_weights(model, data.init)
        module.prepare_model(model)
        optimizer = module.build_optimizer()
        if with_state:
            got = import_caffe_snapshot(solver, model, optimizer, model_file, state_file, net=net)
            assert got == AT
        else:  # the weights only: what a port without the solver state would do
            mirror.set_caffe_weights(model, run.trajectory[AT - 1])
        return keras_harness.run_contract(
            model, optimizer, data.grads[AT:], iter_size=s, micro_grads=data.micro[AT * s :]
        )

    caffe_rest = run.trajectory[AT:]
    good = compare_trajectories(run.trajectory[AT - 1], caffe_rest, continued(True))
    assert good.passed, good.summary()
    lost = compare_trajectories(run.trajectory[AT - 1], caffe_rest, continued(False))
    assert not lost.passed, "losing the solver state went unnoticed: the test has no teeth"
    print(f"{name}: with the state {good.deviation:.2e}, without {lost.deviation:.2e}")
