"""A TensorFlow candidate next to Caffe's rule compiled with TensorFlow (the host engine on
Keras' TensorFlow backend, caffe2tf/rule/tf_executor.py): the comparison reduced by TensorFlow
(caffe2tf/verify/tf_compare.py; NumPy on the host for a small net on the CPU), and one model
and optimizer serve every run of a precision
(:class:`caffe2tf.verify.keras_harness.CandidateSession`). It must judge as the NumPy path
judges: the same deviations up to the two references' float32 rounding, the same norms, and a
wrong port fails the same components."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import require

require("tensorflow")

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[1]
LENET = str(REPO / "fixtures/lenet/solver.prototxt")


@pytest.fixture(scope="module")
def keras_tf():
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("the TensorFlow candidate path")
    from caffe2tf._quiet import import_keras_quietly

    return import_keras_quietly()


def _verify(**kwargs):
    from caffe2tf.app.verify import verify_solver

    return verify_solver(LENET, steps=6, **kwargs)


def _runs(report):
    return {(r.component, r.label): r.comparison for r in report.runs}


@pytest.fixture
def tf_comparison(monkeypatch):
    """TensorFlow's compiled comparison on LeNet too (it compares nets above
    ``HOST_COMPARE_MAX_ELEMENTS`` weights, or on a GPU)."""
    from caffe2tf.verify import engine

    monkeypatch.setattr(engine, "HOST_COMPARE_MAX_ELEMENTS", 0)


def _numpy_report(monkeypatch):
    """The same verify with Caffe's rule and the comparison in NumPy (no compiled executor
    supports the rule)."""
    from caffe2tf.rule import compiled

    with monkeypatch.context() as m:
        m.setattr(compiled, "supports", lambda rule, registry=None: False)
        return _verify(device="cpu")


def _judge_alike(a_report, b_report):
    assert a_report.passed and b_report.passed
    a, b = _runs(a_report), _runs(b_report)
    assert a.keys() == b.keys() and len(a) >= 3
    for key, ca in a.items():
        cb = b[key]
        assert ca.steps == cb.steps
        # the two references differ by float32 rounding of the weights (~1e-7 of |w| <= 1)
        assert ca.travelled == pytest.approx(cb.travelled, abs=1e-6)
        # both deviations are float32 rounding of the same run; far below the tolerance
        for blob in ca.per_blob:
            assert abs(ca.per_blob[blob] - cb.per_blob[blob]) < 2e-6, (key, blob)
    stream_a = a[next(k for k in a if k[0] == "stream")]
    stream_b = b[next(k for k in b if k[0] == "stream")]
    assert sorted(stream_a.reference_norms) == sorted(stream_b.reference_norms)
    for blob, norms in stream_a.candidate_norms.items():
        assert len(norms) == stream_a.steps
        np.testing.assert_allclose(norms, stream_b.candidate_norms[blob], rtol=1e-5)
        np.testing.assert_allclose(
            stream_a.reference_norms[blob], stream_b.reference_norms[blob], rtol=1e-5
        )


def test_caffes_rule_on_tensorflow_judges_as_numpy_does(keras_tf, monkeypatch):
    on_tf = _verify(device="cpu")
    in_numpy = _numpy_report(monkeypatch)
    assert "TensorFlow CPU" in on_tf.device and "comparison in NumPy" in on_tf.device
    assert "NumPy on the host CPU" in in_numpy.device
    _judge_alike(on_tf, in_numpy)


def test_the_tensorflow_comparison_judges_as_numpy_does(keras_tf, monkeypatch, tf_comparison):
    on_tf = _verify(device="cpu")
    assert "TensorFlow CPU" in on_tf.device and "comparison too" in on_tf.device
    _judge_alike(on_tf, _numpy_report(monkeypatch))


def test_a_wrong_port_fails_on_the_tensorflow_comparison(keras_tf, tf_comparison, tmp_path):
    from caffe2tf.api import convert

    convert(LENET).write(tmp_path / "out")
    module = tmp_path / "out" / "optimizer.py"
    text = module.read_text()
    assert '("L2", 0.00025)' in text
    module.write_text(text.replace('("L2", 0.00025)', '("L2", 0.0005)'))  # decay x2
    report = _verify(device="cpu", module_path=str(module))
    assert not report.passed
    failed = {v["component"] for v in report.component_verdicts() if not v["passed"]}
    assert {"stream", "decay"} <= failed


def test_a_gpu_tensorflow_lacks_is_refused(keras_tf):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("TensorFlow sees a GPU here")
    from caffe2tf.errors import InputError

    with pytest.raises(InputError, match="--device gpu: TensorFlow sees no such device"):
        _verify(device="gpu")


def test_one_model_serves_every_run_of_a_precision(keras_tf, monkeypatch):
    from caffe2tf.verify import keras_harness

    built = []
    real = keras_harness.build_candidate

    def counting(*args, **kwargs):
        built.append(kwargs.get("dtype", "float32"))
        return real(*args, **kwargs)

    monkeypatch.setattr(keras_harness, "build_candidate", counting)
    report = _verify(device="cpu")
    assert report.passed
    float32_runs = [r for r in report.runs if r.comparison.steps and r.component != "decay"]
    assert len(float32_runs) >= 3
    # the float32 stream and windows share one model; the float64 probes (cut blobs) another
    # and the schedule check its own
    assert built.count("float32") <= 2, built


@pytest.fixture
def lean(monkeypatch, tf_comparison):
    """The paths a net of VGG16's size takes, forced on LeNet: the step compiled with XLA
    (caffe2tf/verify/loops/tensorflow.py ``XLA_MIN_ELEMENTS``) and TensorFlow's comparison
    reduced a block of Caffe rows at a time (caffe2tf/verify/jax_compare.py
    ``BLOCK_ELEMENTS``)."""
    import tensorflow as tf

    from caffe2tf.verify import jax_compare
    from caffe2tf.verify.loops import tensorflow as tf_loop

    compiled = []
    real = tf.function

    def recording(fn=None, **kwargs):
        if getattr(fn, "__module__", None) == tf_loop.__name__:  # the candidate's step only
            compiled.append(kwargs.get("jit_compile"))
        return real(fn, **kwargs)

    monkeypatch.setattr(tf_loop, "XLA_MIN_ELEMENTS", 0)
    monkeypatch.setattr(tf, "function", recording)
    monkeypatch.setattr(jax_compare, "BLOCK_ELEMENTS", 1000)  # ip1/0 (500x800): 400 blocks
    jax_compare._blocks.cache_clear()  # cut by the size just set
    yield compiled
    jax_compare._blocks.cache_clear()


def test_the_xla_step_and_blocked_comparison_judge_as_the_plain_ones(keras_tf, lean):
    lean_report = _verify(device="cpu")
    assert True in lean, "the step was not compiled with XLA"
    assert None not in lean and False not in lean, "XLA was refused: the plain trace ran"
    lean.clear()
    from caffe2tf.verify import jax_compare
    from caffe2tf.verify.loops import tensorflow as tf_loop

    tf_loop.XLA_MIN_ELEMENTS = 2**62
    jax_compare.BLOCK_ELEMENTS = 2**62
    jax_compare._blocks.cache_clear()
    plain_report = _verify(device="cpu")
    assert lean and True not in lean
    assert lean_report.passed and plain_report.passed
    a, b = _runs(lean_report), _runs(plain_report)
    assert a.keys() == b.keys()
    for key, ca in a.items():
        cb = b[key]
        assert ca.travelled == cb.travelled
        for blob in ca.per_blob:  # the same arithmetic up to XLA's float32 rounding (an
            # ulp of a weight, next to a window's short motion: a few 1e-6 here)
            assert abs(ca.per_blob[blob] - cb.per_blob[blob]) < 1e-5, (key, blob)
        for blob, norms in ca.candidate_norms.items():
            np.testing.assert_allclose(norms, cb.candidate_norms[blob], rtol=1e-6)
            np.testing.assert_allclose(
                ca.reference_norms[blob], cb.reference_norms[blob], rtol=1e-6
            )


def test_a_wrong_port_fails_on_the_xla_step(keras_tf, lean, tmp_path):
    from caffe2tf.api import convert

    convert(LENET).write(tmp_path / "out")
    module = tmp_path / "out" / "optimizer.py"
    text = module.read_text()
    module.write_text(text.replace('("L2", 0.00025)', '("L2", 0.0005)'))  # decay x2
    report = _verify(device="cpu", module_path=str(module))
    assert True in lean
    assert not report.passed
    failed = {v["component"] for v in report.component_verdicts() if not v["passed"]}
    assert {"stream", "decay"} <= failed


def test_caffes_rule_is_made_after_the_candidate_is_loaded(keras_tf, monkeypatch):
    """Caffe's compiled rule is made, or reset for the next run, only once the candidate's
    model is built or reset (caffe2tf/verify/engine.py ``Deferred``), so the two never peak
    together; one executor per precision serves every run (reset, not made again)."""
    from caffe2tf.rule.tf_executor import TfExecutor
    from caffe2tf.verify import keras_harness

    events = []
    real_model_for = keras_harness.CandidateSession.model_for
    real_init, real_reset = TfExecutor.__init__, TfExecutor.reset

    def model_for(self, *args, **kwargs):
        out = real_model_for(self, *args, **kwargs)
        events.append("candidate loaded")
        return out

    def init(self, *args, **kwargs):
        events.append("rule made")
        return real_init(self, *args, **kwargs)

    def reset(self, *args, **kwargs):
        events.append("rule reset")
        return real_reset(self, *args, **kwargs)

    monkeypatch.setattr(keras_harness.CandidateSession, "model_for", model_for)
    monkeypatch.setattr(TfExecutor, "__init__", init)
    monkeypatch.setattr(TfExecutor, "reset", reset)
    report = _verify(device="cpu")
    assert report.passed
    made = [i for i, e in enumerate(events) if e == "rule made"]
    reset_at = [i for i, e in enumerate(events) if e == "rule reset"]
    assert len(made) == 2, events  # float32 (stream, windows) and float64 (the probes)
    assert len(made) + len(reset_at) >= 5, events  # the stream, the windows and the probes
    for i in made + reset_at:
        assert i > 0 and events[i - 1] == "candidate loaded", events


def test_a_step_xla_cannot_compile_is_traced_plainly(keras_tf, lean, tmp_path):
    """A candidate whose step holds an op XLA has no kernel for (``tf.numpy_function`` in a
    regularizer, adding nothing) still verifies: the step is traced again without XLA
    (caffe2tf/verify/loops/tensorflow.py)."""
    from caffe2tf.api import convert

    convert(LENET).write(tmp_path / "out")
    module = tmp_path / "out" / "optimizer.py"
    module.write_text(
        module.read_text()
        + """

_emitted_prepare_model = prepare_model


def prepare_model(model):
    import numpy as np
    import tensorflow as tf

    out = _emitted_prepare_model(model)
    for variable in model.trainable_variables:
        emitted = variable.regularizer
        if emitted is not None:

            def through_numpy(x, emitted=emitted):
                host = tf.numpy_function(lambda a: np.asarray(a), [x.value], x.dtype)
                return emitted(x) + 0.0 * tf.reduce_sum(host)

            variable.regularizer = through_numpy
    return out
"""
    )
    report = _verify(device="cpu", module_path=str(module))
    assert True in lean and None in lean, "XLA was not tried first, or not given up"
    assert report.passed


def test_blocks_of_many_shapes_log_no_retracing_warning(keras_tf, tf_comparison, monkeypatch):
    """A big net's comparison is one call per block of many shapes (here LeNet cut in blocks of
    20,000 weights): each shape gets a compiled function of its own, so TensorFlow logs no
    retracing warning into verify's output. Planted: one function for every shape (as before
    2026-12-06) logs it."""
    import logging

    import tensorflow as tf

    from caffe2tf.verify import jax_compare, tf_compare

    monkeypatch.setattr(jax_compare, "BLOCK_ELEMENTS", 20000)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    tf.get_logger().addHandler(handler)
    try:
        assert _verify(device="cpu").passed
        assert not [r for r in records if "retracing" in r]
        one = tf.function(tf_compare._stacked, jit_compile=True)
        monkeypatch.setattr(tf_compare, "_compiled_stacked", lambda signature: one)
        _verify(device="cpu")
        assert [r for r in records if "retracing" in r]
    finally:
        tf.get_logger().removeHandler(handler)


def test_the_candidates_step_is_traced_without_autograph(keras_tf, monkeypatch, tf_comparison):
    """The host engine's traced step (caffe2tf/verify/loops/tensorflow.py) and TensorFlow's
    comparison (caffe2tf/verify/tf_compare.py) are not converted by AutoGraph, which cost about
    0.5 s of every verify and changes nothing there (their branches read static values, and
    what Keras calls is never converted). Planted: traced with AutoGraph, as before 2026-12-07,
    both are seen converted."""
    import functools

    import tensorflow as tf
    from tensorflow.python.autograph.impl import api

    from caffe2tf.verify import tf_compare

    converted: list[str] = []
    convert = api._convert_actual

    def spy(entity, program_ctx):  # noqa: ANN001, ANN202
        converted.append(f"{entity.__module__}.{entity.__qualname__}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", spy)
    assert _verify(device="cpu").passed
    assert not [name for name in converted if name.startswith("caffe2tf.")], converted

    plain = tf.function
    monkeypatch.setattr(tf, "function", lambda fn, **kw: plain(fn, **{**kw, "autograph": True}))
    # the comparison's compiled functions are kept for the process: traced again here
    monkeypatch.setattr(
        tf_compare, "_compiled_stacked", functools.cache(tf_compare._compiled_stacked.__wrapped__)
    )
    assert _verify(device="cpu").passed
    assert "caffe2tf.verify.loops.tensorflow.run.<locals>.step" in converted, converted
    assert "caffe2tf.verify.tf_compare._stacked" in converted, converted
