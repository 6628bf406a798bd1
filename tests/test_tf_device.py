"""The fused TensorFlow engine (caffe2tf/verify/tf_device.py): on Keras' TensorFlow backend a
long verify runs the gradients, the candidate's ``apply_gradients``, Caffe's rule and the
comparison as one XLA loop, and says so. It reaches the host engine's verdicts on recipes of
every kind of solver, sees a wrong port and a planted mistake in Caffe's rule, keeps the
weight norms for ``--plot``, and hands a candidate XLA cannot compile to the host engine."""

from __future__ import annotations

import textwrap

import pytest
from conftest import require

require("tensorflow")

from caffe2tf.app.verify import verify_solver  # noqa: E402
from caffe2tf.verify import tf_device  # noqa: E402

pytestmark = pytest.mark.keras

WRONG = textwrap.dedent('''
    """A hand port that forgets Caffe's weight decay and its schedule."""
    import keras


    def build_optimizer():
        return keras.optimizers.SGD(0.01, momentum=0.9)


    def prepare_model(model):
        return {}
''')

#: a right port of LeNet's recipe whose step XLA cannot compile (a NumPy call in it)
UNCOMPILABLE = textwrap.dedent('''
    """LeNet's emitted optimizer, with each gradient passed through NumPy."""
    import keras
    import tensorflow as tf

    import optimizer as emitted


    class ThroughNumpy(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            same = tf.numpy_function(lambda x: x, [gradient], gradient.dtype)
            same.set_shape(gradient.shape)
            return super().update_step(same, variable, learning_rate)


    def build_optimizer():
        plain = keras.optimizers.SGD
        keras.optimizers.SGD = ThroughNumpy  # the emitted sub-optimizers (LeNet's are SGD)
        try:
            return emitted.build_optimizer()
        finally:
            keras.optimizers.SGD = plain


    prepare_model = emitted.prepare_model
''')


def test_which_verifies_the_fused_engine_takes():
    from types import SimpleNamespace as Run

    lenet = {"ip1/0": (500, 800), "conv1/0": (20, 1, 5, 5)}
    vgg16 = {"fc6/0": (4096, 25088), "fc7/0": (4096, 4096)}

    def runs(shapes, *updates):
        return [Run(shapes=shapes, updates=n) for n in updates]

    assert tf_device.fused_applies(runs(lenet, 1000, 300, 60))  # --steps 1000
    assert not tf_device.fused_applies(runs(lenet, 100, 300, 60))  # --steps 100
    assert tf_device.fused_applies(runs({"a": (4000, 1000)}, 100, 200))  # 1.2e9 weight-updates
    assert not tf_device.fused_applies(runs(vgg16, 1000, 3000))  # above 2^24 weights
    assert not tf_device.fused_applies([])


@pytest.fixture
def fused(monkeypatch):
    """Every verify on the fused engine, however few its updates."""
    monkeypatch.setattr(tf_device, "FUSED_MIN_UPDATES", 0)


GOLDEN = "fixtures/golden/{}.solver.prototxt", "fixtures/golden/{}.net.prototxt"
RECIPES = [
    ("fixtures/lenet/solver.prototxt", None),
    ("fixtures/zoo/resnet/solver.prototxt", None),  # BatchNorm + Scale + Eltwise
    *(  # iter_size 3 with clipping; Caffe's adaptive solvers
        tuple(p.format(case) for p in GOLDEN)
        for case in (
            "adam-poly-l1-default-clipon-is3",
            "adagrad-exp-l1-oneblock-clipoff-is3",
            "adadelta-multistep-l2-explicit-clipoff-is1",
        )
    ),
]


@pytest.mark.parametrize(("recipe", "net"), RECIPES)
def test_the_fused_engine_reaches_the_host_engines_verdicts(recipe, net, monkeypatch):
    on_host = verify_solver(recipe, net_path=net, steps=4)
    monkeypatch.setattr(tf_device, "FUSED_MIN_UPDATES", 0)
    on_device = verify_solver(recipe, net_path=net, steps=4)
    assert "both rules and the comparison, one XLA program" in on_device.device
    assert "one XLA program" not in on_host.device
    assert on_device.passed and on_host.passed, (on_device.device, on_host.device)
    for a, b in zip(on_host.runs, on_device.runs, strict=True):
        assert (a.component, a.start, a.dtype) == (b.component, b.start, b.dtype)
        assert a.comparison.steps == b.comparison.steps > 0
        # the same gradients and rule: Caffe's weights travel as far on both engines
        assert b.comparison.travelled == pytest.approx(a.comparison.travelled, rel=1e-5)
        # both within float32 roundings of Caffe's rule, run by run
        assert b.comparison.deviation < 1e-4 and a.comparison.deviation < 1e-4


def test_a_wrong_port_and_a_planted_rule_mistake_fail_there(fused, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    report = verify_solver("fixtures/lenet/solver.prototxt", steps=5, module_path=wrong)
    assert "one XLA program" in report.device
    assert not report.passed and report.comparison.deviation > 1e-3

    from caffe2tf.rule import compiled
    from caffe2tf.rule.model import AddDecay

    plain = compiled.STEP_FUNCTIONS[AddDecay]

    def doubled(step, env):  # Caffe's decay counted twice, in the executor on TensorFlow
        plain(step, env)
        plain(step, env)

    monkeypatch.setitem(compiled.STEP_FUNCTIONS, AddDecay, doubled)
    planted = verify_solver("fixtures/lenet/solver.prototxt", steps=5)
    assert "one XLA program" in planted.device
    assert not planted.passed
    failed = {c["component"] for c in planted.component_verdicts() if not c["passed"]}
    assert "decay" in failed, planted.component_verdicts()


def test_the_weight_norms_for_the_plot_come_from_the_loop(fused):
    report = verify_solver("fixtures/zoo/resnet/solver.prototxt", steps=3, norms=True)
    assert report.passed and "one XLA program" in report.device
    stream = next(r for r in report.runs if r.component == "stream").comparison
    ref, cand = stream.reference_norms, stream.candidate_norms
    assert sorted(ref) == sorted(report.shapes)
    assert {len(v) for v in ref.values()} == {3}
    gaps = [abs(c - r) / r for k in ref for r, c in zip(ref[k], cand[k], strict=True) if r > 0]
    assert max(gaps) < 1e-5 and min(min(v) for v in ref.values()) >= 0
    plain = verify_solver("fixtures/zoo/resnet/solver.prototxt", steps=3)
    assert not any(r.comparison.reference_norms for r in plain.runs)


def test_a_step_xla_cannot_compile_runs_on_the_host_engine(fused, tmp_path):
    from caffe2tf.app.convert import convert_solver

    out = tmp_path / "lenet"
    convert_solver("fixtures/lenet/solver.prototxt", out_dir=out)
    (out / "through_numpy.py").write_text(UNCOMPILABLE)
    import sys

    sys.path.insert(0, str(out))
    try:
        report = verify_solver(
            "fixtures/lenet/solver.prototxt", steps=3, module_path=out / "through_numpy.py"
        )
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("optimizer", None)
    assert report.passed, report.device
    assert "one XLA program" not in report.device
    assert "XLA refused the whole loop" in report.device and "PyFunc" in report.device
