"""``verify --plot`` draws the weight-norm trajectories of Caffe's rule and the candidate over
the stream run: the norms it keeps are the L2 norms of the weights each side had after each
update (checked against an independent run of Caffe's rule), a correct port's norms lie on
Caffe's, and a port with a planted decay mistake shows norms drifting apart."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

from caffe2tf.verify.compare import StreamingComparison


def test_streaming_comparison_keeps_the_norms_of_the_weights_it_sees() -> None:
    rng = np.random.default_rng(4)
    init = {"a/0": rng.normal(size=(3, 4)).astype("float32"), "a/1": np.zeros(0, "float32")}
    host = StreamingComparison(init)
    device = StreamingComparison(init)
    seen = []
    for _ in range(3):
        ref = {"a/0": rng.normal(size=(3, 4)).astype("float32"), "a/1": np.zeros(0, "float32")}
        cand = {"a/0": 2 * ref["a/0"], "a/1": np.zeros(0, "float32")}
        host.observe(ref, cand)
        norm = float(np.linalg.norm(ref["a/0"].astype(np.float64)))
        seen.append(norm)
        device.observe_scalars(
            {"a/0": 1.0, "a/1": 0.0},
            {"a/0": 1.0, "a/1": 0.0},
            {k: (False,) * 4 for k in init},
            {"a/0": (norm, 2 * norm), "a/1": (0.0, 0.0)},
        )
    for got in (host.result(), device.result()):
        assert got.reference_norms["a/0"] == pytest.approx(seen, rel=1e-6)
        assert got.candidate_norms["a/0"] == pytest.approx([2 * n for n in seen], rel=1e-6)
        assert got.reference_norms["a/1"] == (0.0, 0.0, 0.0)


COMBO = {
    "solver": "SGD",
    "policy": "fixed",
    "decay": "L2",
    "mults": "explicit",
    "clip": "off",
    "iter_size": 1,
}
STEPS = 30


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    require("tensorflow")
    require("matplotlib")
    from caffe2tf.app.matrix import write_case_files
    from caffe2tf.verify import matrix

    return write_case_files(matrix.build_case(COMBO, STEPS), tmp_path_factory.mktemp("norms"))


def _caffe_rule_norms(report, solver, net) -> dict[str, np.ndarray]:
    """||w_t|| per blob after each update of the stream run, from Caffe's rule run here on
    the run's own data (the NumPy reference in float64 on the float32 weights)."""
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.app.verify import frozen_keys
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import components
    from caffe2tf.verify.inputs import initial_weights, never_written_blobs

    rule = load_pipeline(solver, net_path=net).rule
    init = initial_weights(report.shapes, report.seed)
    frozen = frozen_keys(never_written_blobs(rule.params, rule.force_backward))
    runs = components.plan_runs(
        rule, report.shapes, init, steps=report.steps, seed=report.seed, frozen=frozen
    )
    stream = next(r for r in runs if r.component == "stream")
    run_init, _, diffs = stream.data()
    trajectory = run_reference(rule, run_init, diffs, precision="float32")
    return {
        k: np.array([np.linalg.norm(np.asarray(w[k], np.float64)) for w in trajectory])
        for k in report.shapes
    }


def _planted(tmp_path, solver, net):
    """The emitted module with its L2 factors 10x Caffe's: a decay mistake."""
    from caffe2tf.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(solver), "--net", str(net), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "optimizer.py").read_text()
    factors = re.findall(r'\("L2", ([0-9.e-]+)\)', text)
    assert factors, "no L2 regularizer in the emitted module"
    planted = re.sub(r'\("L2", ([0-9.e-]+)\)', lambda m: f'("L2", {float(m[1]) * 10!r})', text)
    (out / "optimizer.py").write_text(planted)
    return out / "optimizer.py"


@pytest.mark.keras
def test_plotted_norms_are_the_weights_norms_and_a_decay_mistake_drifts(recipe, tmp_path):
    from caffe2tf.app.verify import verify_solver
    from caffe2tf.verify.plot import norm_panels

    solver, net = recipe
    right = verify_solver(solver, net_path=net, steps=STEPS, plot_path=tmp_path / "right.png")
    assert right.passed
    want = _caffe_rule_norms(right, solver, net)
    stream = next(r for r in right.runs if r.component == "stream")
    panels, count = norm_panels(stream)
    assert count == len(panels) == 2  # fc1, fc2: one panel per Caffe layer
    plotted = {s.key: s for _, series in panels for s in series}
    assert set(plotted) == set(want)
    for key, series in plotted.items():
        assert series.iterations == tuple(range(1, STEPS + 1))
        np.testing.assert_allclose(series.reference, want[key], rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(series.candidate, want[key], rtol=1e-5, err_msg=key)
        assert series.gap < 1e-5
    assert (tmp_path / "right.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    module = _planted(tmp_path, solver, net)
    wrong = verify_solver(
        solver, net_path=net, steps=STEPS, module_path=module, plot_path=tmp_path / "wrong.png"
    )
    assert not wrong.passed
    stream = next(r for r in wrong.runs if r.component == "stream")
    panels, _ = norm_panels(stream)
    plotted = {s.key: s for _, series in panels for s in series}
    for key, series in plotted.items():  # Caffe's side is the same run as before
        np.testing.assert_allclose(series.reference, want[key], rtol=1e-5, err_msg=key)
    # the decayed blobs (decay_mult 1 and 2): 10x the decay shrinks the candidate's weights
    # away from Caffe's, more with every update
    for series in (plotted["fc1/0"], plotted["fc2/1"]):
        gaps = np.abs(np.subtract(series.candidate, series.reference)) / series.reference
        assert series.candidate[-1] < series.reference[-1], series.key
        assert gaps[-1] > 1e-2 and gaps[-1] > 10 * gaps[0], (series.key, gaps)
    # decay_mult 0 and lr_mult 0: the same gradients, no decay, so the same norms
    assert plotted["fc1/1"].gap < 1e-5 and plotted["fc2/0"].gap == 0.0
    assert (tmp_path / "wrong.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
