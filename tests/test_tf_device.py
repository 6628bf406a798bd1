"""The fused TensorFlow engine (caffe2tf/verify/tf_device.py): on Keras' TensorFlow backend a
long verify runs the gradients, the candidate's ``apply_gradients``, Caffe's rule and the
comparison as one XLA loop, and says so. It reaches the host engine's verdicts on recipes of
every kind of solver, sees a wrong port and a planted mistake in Caffe's rule, keeps the
weight norms for ``--plot``, and hands a candidate XLA cannot compile to the host engine."""

from __future__ import annotations

import textwrap

import numpy as np
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

    lenet = {"conv1/0": (20, 1, 5, 5), "conv1/1": (20,), "conv2/0": (50, 20, 5, 5),
             "conv2/1": (50,), "ip1/0": (500, 800), "ip1/1": (500,), "ip2/0": (10, 500),
             "ip2/1": (10,)}  # fmt: skip
    vgg16 = {"fc6/0": (4096, 25088), "fc7/0": (4096, 4096)}
    # 128 blobs of 7M weights in all, as GoogLeNet's
    googlenet = {f"b{i}/0": (54_700,) for i in range(128)}

    def runs(shapes, *updates):
        return [Run(shapes=shapes, updates=n) for n in updates]

    assert tf_device.fused_applies(runs(lenet, 1000, 300, 60))  # --steps 1000
    # --steps 100: 400 updates of LeNet's 431k weights, 1.7e8 >= 8 blobs x 1.5e7
    assert tf_device.fused_applies(runs(lenet, 100, 300))
    assert not tf_device.fused_applies(runs(lenet, 20, 60))  # --steps 20: 3.4e7
    assert tf_device.fused_applies(runs({"a": (4000, 1000)}, 100, 200))  # 1.2e9 weight-updates
    assert tf_device.fused_applies(runs(vgg16, 20, 150))  # VGG16 --steps 20: any size
    assert not tf_device.fused_applies(runs({"a": (10, 10)}, 999))
    # many blobs: the per-blob rule would ask for 1.9e9, the plain one for 1e9
    assert not tf_device.fused_applies(runs(googlenet, 20, 100))  # 8.4e8
    assert tf_device.fused_applies(runs(googlenet, 20, 130))  # 1.05e9
    assert not tf_device.fused_applies([])


def test_the_runs_of_one_program_go_to_it_together_where_they_pay_for_it():
    """LeNet's --steps 1000: the stream and its schedule windows share the float32 program
    (1,300 updates) and take the fused loop; the float64 probes (60 updates of cut blobs)
    would pay 2 s for their own program and run on the host engine. At --steps 100 (400
    updates of 8 blobs) the float32 group is still enough, at --steps 20 neither group is. The
    report's device line names the runs on the host engine."""
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.verify.components import plan_runs
    from caffe2tf.verify.inputs import SeededWeights

    rule = load_pipeline("fixtures/lenet/solver.prototxt").rule
    shapes = {p.key: tuple(p.shape) for p in rule.params}

    def plan(steps):
        return plan_runs(rule, shapes, SeededWeights(shapes, 0), steps=steps, seed=0)

    runs = plan(1000)
    fused = tf_device.fused_runs(runs)
    chosen = {(r.component, r.start): f for r, f in zip(runs, fused, strict=True)}
    assert {c for (c, _), f in chosen.items() if f} == {"stream", "schedule"}
    assert {c for (c, _), f in chosen.items() if not f} == {"decay", "state"}
    for steps, fused_components in ((100, {"stream", "schedule"}), (20, set())):
        runs = plan(steps)
        fused = tf_device.fused_runs(runs)
        assert {r.component for r, f in zip(runs, fused, strict=True) if f} == fused_components
    report = verify_solver("fixtures/lenet/solver.prototxt", steps=1000)
    assert report.passed
    assert report.device == (
        "TensorFlow CPU (both rules and the comparison, one XLA program; decay, state: both "
        "rules, Caffe's compiled with XLA, the comparison in NumPy on the host)"
    )


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


def test_big_blobs_are_reduced_by_blocks_with_the_whole_blobs_figures(monkeypatch):
    """``_blockwise`` over blocks of rows (and the rows left over) gives what one reduction of
    the whole array gives; the extremes and the NaN sit in the last, partial block, so a block
    left out shows."""
    import tensorflow as tf

    monkeypatch.setattr(tf_device, "BLOCK_ELEMENTS", 1000)

    def figures(r, c, s):  # a NaN counted as inf, as the loop counts it
        d = tf.abs(c - r)
        return (
            tf.reduce_max(tf.where(tf.math.is_nan(d), np.float32(np.inf), d)),
            tf.reduce_max(tf.abs(r - s)),
            tf.reduce_sum(r * r),
            tf.reduce_any(tf.math.is_nan(c)),
        )

    combine = (tf.maximum, tf.maximum, tf.add, tf.logical_or)
    blocked = tf.function(lambda *a: tf_device._blockwise(a, figures, combine), jit_compile=True)
    rng = np.random.default_rng(5)
    for shape in [(103, 37), (7, 3, 11, 13)]:
        r, c, s = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
        c[-1].flat[0] = r[-1].flat[0] + 9.0  # the largest |c - r|, in the last row
        s[-1].flat[-1] = r[-1].flat[-1] - 7.0  # the largest |r - w0|
        c_nan = c.copy()
        c_nan[-1].flat[1] = np.nan
        for cand in (c, c_nan):
            got = [x.numpy() for x in blocked(r, cand, s)]
            whole = [x.numpy() for x in figures(r, cand, s)]
            assert got[0] == whole[0] == (np.inf if cand is c_nan else np.float32(9.0))
            assert got[1] == whole[1] == np.float32(7.0)
            assert got[3] == whole[3] == (cand is c_nan)
            assert got[2] == pytest.approx(whole[2], rel=1e-5)


def test_the_loop_reduces_big_blobs_by_blocks_to_the_same_figures(fused, monkeypatch):
    """LeNet with blocks of 4,096 elements (every blob but the biases cut) against LeNet with
    every blob reduced whole: the same maxima, norms within float32 sums' rounding; a wrong
    port still fails."""
    whole = verify_solver("fixtures/lenet/solver.prototxt", steps=3, norms=True)
    monkeypatch.setattr(tf_device, "BLOCK_ELEMENTS", 2**12)
    blocked = verify_solver("fixtures/lenet/solver.prototxt", steps=3, norms=True)
    assert "one XLA program" in blocked.device and blocked.passed
    for a, b in zip(whole.runs, blocked.runs, strict=True):
        assert a.comparison.travelled == b.comparison.travelled
        assert a.comparison.per_blob_step == b.comparison.per_blob_step
    ref_a = whole.runs[0].comparison.reference_norms
    ref_b = blocked.runs[0].comparison.reference_norms
    for k in ref_a:
        assert ref_b[k] == pytest.approx(ref_a[k], rel=1e-5)


def test_index_arrays_made_in_every_update_give_the_same_figures(fused, monkeypatch):
    """Above HOIST_MAX_ELEMENTS weights the loop adds a loop-variant zero to every element's
    index (so XLA makes the index arrays in each update instead of holding them): LeNet run
    so moves its weights as far as LeNet run with the arrays kept, and a planted origin of one
    (every gradient element taken from its neighbour's hash) changes that."""
    kept = verify_solver("fixtures/lenet/solver.prototxt", steps=3)
    monkeypatch.setattr(tf_device, "HOIST_MAX_ELEMENTS", 0)
    remade = verify_solver("fixtures/lenet/solver.prototxt", steps=3)
    assert "one XLA program" in remade.device and remade.passed
    for a, b in zip(kept.runs, remade.runs, strict=True):
        # the same gradients; XLA fuses the two programs' updates apart (float32 roundings)
        assert b.comparison.travelled == pytest.approx(a.comparison.travelled, rel=1e-6)
        assert a.comparison.deviation < 1e-5 and b.comparison.deviation < 1e-5

    def one(origin, k):  # planted: an origin of one from the second update on
        import tensorflow as tf

        return tf.bitwise.bitwise_or(origin, tf.constant(1, tf.uint32))

    monkeypatch.setattr(tf_device, "_next_origin", one)
    shifted = verify_solver("fixtures/lenet/solver.prototxt", steps=3)
    moved = [r.comparison.travelled for r in shifted.runs if r.component == "stream"]
    before = [r.comparison.travelled for r in kept.runs if r.component == "stream"]
    assert moved != pytest.approx(before, rel=1e-4)


def test_one_nan_weight_is_reported_on_both_engines(fused, tmp_path, monkeypatch):
    """TensorFlow's XLA takes a maximum over NaN as the maximum of the rest (its fast min/max
    on the CPU): one NaN weight must still fail the run, with the message the host engine
    gives."""
    from caffe2tf.app.convert import convert_solver

    out = tmp_path / "lenet"
    convert_solver("fixtures/lenet/solver.prototxt", out_dir=out)
    from keras_support import ONE_NAN

    (out / "one_nan.py").write_text(ONE_NAN)
    import sys

    sys.path.insert(0, str(out))
    try:
        reports = {}
        for engine, least in (("fused", 0), ("host", 10**9)):
            monkeypatch.setattr(tf_device, "FUSED_MIN_UPDATES", least)
            reports[engine] = verify_solver(
                "fixtures/lenet/solver.prototxt", steps=3, module_path=out / "one_nan.py"
            )
            sys.modules.pop("optimizer", None)
    finally:
        sys.path.remove(str(out))
    fused_report, host_report = reports["fused"], reports["host"]
    assert "one XLA program" in fused_report.device
    assert "one XLA program" not in host_report.device
    for report in (fused_report, host_report):
        assert not report.passed
        stream = report.runs[0].comparison
        assert stream.nonfinite.startswith("the candidate has NaN in "), stream.nonfinite
        assert stream.nonfinite.endswith("after update 2"), stream.nonfinite
    assert fused_report.runs[0].comparison.nonfinite == host_report.runs[0].comparison.nonfinite


def test_the_host_copy_of_the_seeded_weights_is_let_go_during_the_loop(fused, monkeypatch):
    """The fused loop runs with the host's seeded initial weights released (VGG16: 552 MB
    less at its peak), and the runs' figures are those of weights held throughout."""
    import caffe2tf.app.verify as app_verify
    from caffe2tf.verify.inputs import SeededWeights, initial_weights

    made: list[SeededWeights] = []

    def seeded(shapes, seed):
        made.append(SeededWeights(shapes, seed))
        return made[-1]

    held_in_loop: list[bool] = []
    plain_program = tf_device._chunk_program

    def watched(*args, **kwargs):
        program = plain_program(*args, **kwargs)

        def call(*a):
            held_in_loop.append(any(s.drawn for s in made))
            return program(*a)

        return call

    monkeypatch.setattr(app_verify, "SeededWeights", seeded)
    monkeypatch.setattr(tf_device, "_chunk_program", watched)
    released = verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    assert released.passed and "one XLA program" in released.device
    assert held_in_loop and not any(held_in_loop)
    # the watch has teeth: an engine that keeps the host's copy is seen holding it
    held_in_loop.clear()
    monkeypatch.setattr(tf_device, "release_host_copy", lambda weights: None)
    verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    assert held_in_loop and all(held_in_loop)
    # the same runs with the weights a plain dict, held all along
    monkeypatch.setattr(app_verify, "SeededWeights", initial_weights)
    held = verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    for a, b in zip(held.runs, released.runs, strict=True):
        assert (a.component, a.start) == (b.component, b.start)
        assert a.comparison.per_step == b.comparison.per_step
        assert a.comparison.travelled == b.comparison.travelled
        assert a.comparison.floor == b.comparison.floor
