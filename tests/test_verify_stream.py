"""The pieces that let verify run at the scale of real recipes: Caffe's rate over a whole
``max_iter`` (10^6..10^7 iterations) without a Python call per iteration; gradients made one
update at a time from counters (the same numbers in NumPy and JAX); the deviation reduced as
the updates come, equal to the whole-trajectory comparison."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import lr_sequence
from caffe2tf.verify.compare import StreamingComparison, compare_trajectories
from caffe2tf.verify.schedule_check import lr_array
from caffe2tf.verify.streams import GradientSpec, NumpyGradients, mix, spiked


def f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.parametrize(
    "schedule",
    [
        LrSchedule("fixed", f32(0.01)),
        LrSchedule("step", f32(0.01), gamma=f32(0.96), stepsize=7),
        LrSchedule("exp", f32(0.01), gamma=f32(0.999)),
        LrSchedule("inv", f32(0.01), gamma=f32(1e-4), power=f32(0.75)),
        LrSchedule("multistep", f32(0.1), gamma=f32(0.1), stepvalue=(50, 50, 900, 1200)),
        LrSchedule("poly", f32(0.01), power=f32(0.5), max_iter=3000),
        LrSchedule("poly", f32(0.01), power=2.0, max_iter=1000),  # past max_iter: NaN/inf
        LrSchedule("sigmoid", f32(0.01), gamma=f32(0.05), stepsize=1000),
    ],
    ids=lambda s: s.policy,
)
def test_vectorised_rates_equal_caffes_float32_expressions(schedule):
    want = lr_sequence(schedule, 3000)
    got = lr_array(schedule, 3000)
    assert got.dtype == np.float32
    assert np.array_equal(got, want, equal_nan=True)


# ---- counter-based gradients: any update on its own, the same numbers in NumPy and JAX -------

SHAPES = {"a/0": (5, 7, 3, 3), "a/1": (5,), "b/0": (2,), "c/0": (1000,)}


def test_an_update_is_a_pure_function_of_its_counters():
    spec = GradientSpec("stream", 3, iter_size=2, frozen=("b/0",))
    made = NumpyGradients(spec, SHAPES)
    late_micro, late_total = made.update(7)
    made.update(2)
    again_micro, again_total = NumpyGradients(spec, SHAPES).update(7)
    for key in SHAPES:
        assert np.array_equal(late_total[key], again_total[key])
        assert np.array_equal(late_micro[1][key], again_micro[1][key])
        assert late_total[key].dtype == np.float32 and late_total[key].shape == SHAPES[key]
    assert not np.any(late_total["b/0"])  # frozen: Caffe never writes its diff
    # Caffe's diff is the float32 running sum of the micro-batches, in pass order
    assert np.array_equal(late_total["c/0"], late_micro[0]["c/0"] + late_micro[1]["c/0"])
    # another update, another micro-batch, another seed: other numbers
    other = made.update(8)[1]["c/0"]
    assert not np.array_equal(other, late_total["c/0"])
    assert not np.array_equal(late_micro[0]["c/0"], late_micro[1]["c/0"])
    seeded = NumpyGradients(GradientSpec("stream", 4, iter_size=2), SHAPES).update(7)[1]
    assert not np.array_equal(seeded["c/0"], late_total["c/0"])


def test_the_stream_has_drift_spikes_and_dead_elements():
    made = NumpyGradients(GradientSpec("stream", 0), SHAPES)
    totals = [made.update(k)[1]["c/0"] for k in range(40)]
    dead = totals[0] == 0
    assert 0.05 < dead.mean() < 0.15 and all(np.array_equal(t == 0, dead) for t in totals)
    norms = np.array([np.linalg.norm(t) for t in totals])
    assert spiked(0, 1) and not spiked(0, 0) and norms[1] > 4 * norms[0]  # update 1: x8
    calm = [t for k, t in enumerate(totals) if not spiked(0, k)]
    mean = np.mean(calm, axis=0)  # the drift persists: momentum builds up
    assert np.corrcoef(mean[~dead], calm[0][~dead])[0, 1] > 0.3
    assert np.all(np.abs(np.concatenate(totals)) <= 8 * (2**-4 + 2**-3))


def test_probes_carry_what_they_claim():
    made = NumpyGradients(GradientSpec("norm", 9, iter_size=3, dtype="float64", norm=2.1), SHAPES)
    micro, total = made.update(4)
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in total.values()))
    assert abs(norm - 2.1) < 1e-12 and len(micro) == 3 and not np.any(micro[2]["c/0"])
    cancel = NumpyGradients(GradientSpec("cancel", 5, iter_size=3, dtype="float64"), SHAPES)
    micro, total = cancel.update(0)
    assert np.std(micro[0]["c/0"]) > 2 * np.std(total["c/0"])  # parts much larger than the sum
    assert np.allclose(sum(m["c/0"] for m in micro), total["c/0"], rtol=0, atol=1e-12)
    impulse = NumpyGradients(GradientSpec("impulse", 1, dtype="float64", scale=1.0), SHAPES)
    assert abs(np.std(impulse.update(0)[1]["c/0"]) - 1.0) < 0.1
    assert not np.any(impulse.update(1)[1]["c/0"])


def test_jax_makes_the_same_numbers():
    require("jax")
    import jax

    from caffe2tf.verify import stream_program
    from caffe2tf.verify.device import JaxGradients

    for values in [(1, 2, 3), (0xB55A4F09, 7, 2), (0xFD7046C5, 123456789, 77)]:
        assert int(stream_program.mix(stream_program.jax_ops(), *values)) == mix(*values)
    for spec in (GradientSpec("stream", 3, 3, frozen=("b/0",)), GradientSpec("stream", 2**32 - 1)):
        numpy_made, jax_made = NumpyGradients(spec, SHAPES), JaxGradients(spec, SHAPES)
        for k in (0, 1, 5):
            (mn, tn), (mj, tj) = numpy_made.update(k), jax_made.update(k)
            for key in SHAPES:  # bit for bit
                assert np.array_equal(tn[key], tj[key]) and tj[key].dtype == np.float32
                assert all(np.array_equal(a[key], b[key]) for a, b in zip(mn, mj, strict=True))
    with jax.enable_x64(True):
        probes = [
            GradientSpec("zeros", 5, 2, dtype="float64"),
            GradientSpec("impulse", 5, 2, dtype="float64"),
            GradientSpec("uniform", 5, 2, dtype="float64", scale=1e-4),
            GradientSpec("norm", 6, 2, dtype="float64", norm=0.37, frozen=("b/0",)),
            GradientSpec("norm", 6, 2, dtype="float64", norm=2.5),
            GradientSpec("cancel", 5, 3, dtype="float64", scale=1e-3),
        ]
        for spec in probes:
            numpy_made, jax_made = NumpyGradients(spec, SHAPES), JaxGradients(spec, SHAPES)
            for k in (0, 1, 3):
                (mn, tn), (mj, tj) = numpy_made.update(k), jax_made.update(k)
                for key in SHAPES:
                    if spec.kind in ("norm", "cancel"):  # XLA's order of sums and differences
                        for a, b in zip([tn, *mn], [tj, *mj], strict=True):
                            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-13)
                        continue
                    # bit for bit, the diff and every micro-batch
                    assert np.array_equal(tn[key], tj[key]), (spec.kind, k, key)
                    assert all(np.array_equal(a[key], b[key]) for a, b in zip(mn, mj, strict=True))
        # the probe kinds differ in the program's arguments, not in the program
        made = {JaxGradients(spec, SHAPES).fn for spec in probes if spec.kind != "cancel"}
        assert len(made) == 2  # one with the frozen blob, one without


def _tf_made(spec, shapes, axes=None, *, planted=None):
    """A run's gradients made by the TensorFlow program of the fused TensorFlow engine, compiled
    with XLA as it runs there: ``f(k) -> (micro-batches, diff)`` as NumPy arrays."""
    import tensorflow as tf

    from caffe2tf.verify import stream_program as sp

    ops = planted or sp.tf_ops()
    fn = sp.gradient_function(spec, shapes, axes, ops=ops)
    salts = {k: tf.constant(v) for k, v in sp.salts_of(spec, shapes).items()}
    knobs = tuple(tf.constant(x) for x in sp.knobs_of(spec))
    seed = tf.constant(np.uint32(spec.seed & 0xFFFFFFFF))
    compiled = tf.function(lambda k: fn(k, seed, salts, knobs), jit_compile=True)

    def update(k):
        micro, total = compiled(tf.constant(np.uint32(k)))
        return [{a: b.numpy() for a, b in m.items()} for m in micro], {
            a: b.numpy() for a, b in total.items()
        }

    return update


def test_tensorflow_makes_the_same_numbers():
    """The fused TensorFlow engine's gradients (:mod:`caffe2tf.verify.stream_program` over
    TensorFlow, compiled with XLA) are NumPy's, bit for bit where no sum is reordered, in
    Caffe's layout and in Keras'; a planted hash constant changes them."""
    require("tensorflow")
    import tensorflow as tf

    from caffe2tf.verify import stream_program as sp
    from caffe2tf.verify.mirror import caffe_to_keras, keras_axes

    ops = sp.tf_ops()
    for values in [(1, 2, 3), (0xB55A4F09, 7, 2), (0xFD7046C5, 123456789, 77)]:
        assert int(sp.mix(ops, *values).numpy()) == mix(*values)
    specs = [
        GradientSpec("stream", 3, 3, frozen=("b/0",)),
        GradientSpec("stream", 2**32 - 1),
        GradientSpec("zeros", 5, 2, dtype="float64"),
        GradientSpec("impulse", 5, 2, dtype="float64"),
        GradientSpec("uniform", 5, 2, dtype="float64", scale=1e-4),
        GradientSpec("norm", 6, 2, dtype="float64", norm=0.37, frozen=("b/0",)),
        GradientSpec("cancel", 5, 3, dtype="float64", scale=1e-3),
    ]
    for spec in specs:
        numpy_made, tf_made = NumpyGradients(spec, SHAPES), _tf_made(spec, SHAPES)
        for k in (0, 1, 5):
            (mn, tn), (mt, tt) = numpy_made.update(k), tf_made(k)
            for key in SHAPES:
                for a, b in zip([tn, *mn], [tt, *mt], strict=True):
                    assert b[key].dtype == np.dtype(spec.dtype)
                    if spec.kind in ("norm", "cancel"):  # XLA's order of sums and differences
                        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-13)
                    else:
                        assert np.array_equal(a[key], b[key]), (spec.kind, k, key)
    # in Keras' layout: Caffe's numbers, transposed
    shapes = {**SHAPES, "d/0": (6, 4)}
    layers = {"a/0": ("Convolution", 0), "a/1": ("Convolution", 1), "d/0": ("InnerProduct", 0)}
    axes = {k: keras_axes(*layers[k]) for k in layers}
    spec = GradientSpec("stream", 7, 2)
    _, plain = _tf_made(spec, shapes)(4)
    _, laid = _tf_made(spec, shapes, axes)(4)
    for key in shapes:
        want = caffe_to_keras(*layers.get(key, ("Bias", 1)), plain[key])
        assert np.array_equal(laid[key], want), key

    class Planted(sp.TfHashOps):  # MurmurHash's second constant off by one
        def __init__(self):
            super().__init__()

            def mul(a, b):
                if isinstance(b, tf.Tensor) and b.shape == () and b.dtype == tf.uint32:
                    b = tf.where(b == tf.constant(0xC2B2AE35, tf.uint32), b + 1, b)
                return tf.multiply(a, b)

            self.mul = mul

    _, good = NumpyGradients(spec, SHAPES).update(2)
    _, bad = _tf_made(spec, SHAPES, planted=Planted())(2)
    assert not any(np.array_equal(good[key], bad[key]) for key in SHAPES)


def test_jax_makes_them_in_keras_layout_without_transposing():
    """The fused engine makes each gradient in its Keras variable's layout (element by element
    from its Caffe index): the same numbers as Caffe's layout, transposed."""
    require("jax")
    import jax

    from caffe2tf.verify.device import gradient_function, knobs_of, salts_of
    from caffe2tf.verify.mirror import caffe_to_keras, keras_axes

    shapes = {**SHAPES, "d/0": (6, 4)}
    layers = {"a/0": ("Convolution", 0), "a/1": ("Convolution", 1), "d/0": ("InnerProduct", 0)}
    axes = {k: keras_axes(*layers[k]) for k in layers}
    for spec in (GradientSpec("stream", 7, 2), GradientSpec("uniform", 7, scale=0.5)):
        plain = jax.jit(gradient_function(spec, shapes))
        laid = jax.jit(gradient_function(spec, shapes, axes))
        for k in (0, 1, 4):
            args = (np.uint32(k), np.uint32(spec.seed), salts_of(spec, shapes), knobs_of(spec))
            (mp, tp), (ml, tl) = plain(*args), laid(*args)
            for key in shapes:
                want = caffe_to_keras(*layers.get(key, ("Bias", 1)), np.asarray(tp[key]))
                assert np.array_equal(np.asarray(tl[key]), want)
                for a, b in zip(mp, ml, strict=True):
                    want = caffe_to_keras(*layers.get(key, ("Bias", 1)), np.asarray(a[key]))
                    assert np.array_equal(np.asarray(b[key]), want)
    assert axes["a/0"] == (2, 3, 1, 0) and axes["a/1"] is None  # a conv kernel moves


def test_an_origin_of_zero_changes_no_number():
    """The fused engine passes a uint32 zero through an ``optimization_barrier`` as every
    index's origin (so that XLA makes the index arrays in the loop instead of keeping them
    whole): with it the gradients are bit for bit those without it, in either layout; an
    origin of 1 (a planted off-by-one) moves every number."""
    require("jax")
    import jax

    from caffe2tf.verify.device import gradient_function, knobs_of, salts_of
    from caffe2tf.verify.mirror import keras_axes

    shapes = {**SHAPES, "d/0": (6, 4)}
    axes = {"a/0": keras_axes("Convolution", 0), "d/0": keras_axes("InnerProduct", 0)}
    for spec in (GradientSpec("stream", 7, 2), GradientSpec("uniform", 7, scale=0.5)):
        for layout in (None, axes):
            fn = jax.jit(gradient_function(spec, shapes, layout))
            args = (np.uint32(3), np.uint32(spec.seed), salts_of(spec, shapes), knobs_of(spec))
            _, plain = fn(*args)
            _, zero = fn(*args, np.uint32(0))
            _, one = fn(*args, np.uint32(1))
            for key in shapes:
                assert np.array_equal(np.asarray(plain[key]), np.asarray(zero[key])), key
                if key not in spec.frozen:
                    assert not np.array_equal(np.asarray(plain[key]), np.asarray(one[key])), key


# ---- the deviation reduced as the updates come ------------------------------------------------


def _trajectories(nan: bool):
    r = np.random.default_rng(0)
    init = {
        "a": r.normal(size=(3, 4)).astype(np.float32),
        "b": r.normal(size=5).astype(np.float32),
        "e": np.zeros((0,), np.float32),
    }
    ref = [{k: (v + r.normal(size=v.shape) * 0.1).astype(np.float32) for k, v in init.items()}]
    for _ in range(6):
        ref.append(
            {k: (v + r.normal(size=v.shape) * 0.1).astype(np.float32) for k, v in ref[-1].items()}
        )
    cand = [
        {k: (v + r.normal(size=v.shape) * 1e-4).astype(np.float32) for k, v in w.items()}
        for w in ref
    ]
    if nan:
        cand[4]["b"][1] = np.nan
        ref[5]["a"][0, 0] = np.inf
    return init, ref, cand


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("floor", [0.01, 0.0])
def test_streaming_comparison_equals_the_whole_trajectory_comparison(nan, floor):
    init, ref, cand = _trajectories(nan)
    whole = compare_trajectories(init, ref, cand, floor_fraction=floor)
    streamed = StreamingComparison(init, floor_fraction=floor)
    scalars = StreamingComparison(init, floor_fraction=floor)
    for r, c in zip(ref, cand, strict=True):
        streamed.observe(r, c)
        diffs, moved, flags = {}, {}, {}
        for k in init:
            d = np.abs(r[k].astype(np.float64) - init[k])
            moved[k] = float(np.max(np.where(np.isfinite(d), d, 0), initial=0))
            diffs[k] = float(np.max(np.abs(c[k] - r[k]), initial=0))
            flags[k] = (
                bool(np.isnan(r[k]).any()),
                bool(np.isinf(r[k]).any()),
                bool(np.isnan(c[k]).any()),
                bool(np.isinf(c[k]).any()),
            )
        scalars.observe_scalars(diffs, moved, flags)
    for got in (streamed.result(), scalars.result()):
        # the same verdict and figures, up to float32 rounding of the differences (2^-24)
        assert (got.passed, got.nonfinite, got.worst_key, got.worst_step) == (
            whole.passed,
            whole.nonfinite,
            whole.worst_key,
            whole.worst_step,
        )
        assert got.travelled == pytest.approx(whole.travelled, rel=1e-7)
        assert got.deviation == pytest.approx(whole.deviation, rel=1e-6)
        assert got.per_step == pytest.approx(whole.per_step, rel=1e-6)
    assert whole.passed is (not nan and whole.deviation <= 1e-3)


# ---- the progress bar ---------------------------------------------------------------------


class _Terminal:
    """A stream that says it is a terminal."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_silence_elsewhere():
    from caffe2tf.app.verify import progress_bar

    term = _Terminal()
    with progress_bar("verify", 300, "table", term) as advance:
        for _ in range(300):
            advance(1)
    assert "caffe2tf verify" in term.text and "300/300" in term.text
    for fmt, total, stream in (("json", 300, _Terminal()), ("table", 50, _Terminal())):
        with progress_bar("verify", total, fmt, stream) as advance:
            advance(total)
        assert stream.text == ""
    import io

    plain = io.StringIO()  # not a terminal (a CI log, a pipe)
    with progress_bar("verify", 300, "table", plain) as advance:
        advance(300)
    assert plain.getvalue() == ""
