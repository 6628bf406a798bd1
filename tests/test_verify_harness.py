"""The Keras mirror + contract loop of caffe2tf.verify.keras_harness, checked against hand-written
NumPy updates (no emitted module needed): layout, regularizer losses in the gradient, one
apply_gradients per micro-batch, loop == fit, and the JAX backend in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import require

require("tensorflow")
keras = require("keras")

from caffe2tf.verify import candidate, mirror, streams  # noqa: E402
from caffe2tf.verify import keras_harness as kh  # noqa: E402

pytestmark = pytest.mark.keras

SHAPES = {"ip1/0": (4, 3), "ip1/1": (4,), "p/0": (2, 5)}
TYPES = {"ip1": "InnerProduct", "p": "Parameter"}


def _data(steps: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [
        {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(steps)
    ]
    return init, grads


def _numpy_sgd(init, grads, lr, mu, wd, iter_size):
    """Caffe SGD with L2 decay on every blob: h = mu h + lr (G/S + wd w); w -= h."""
    w = {k: v.astype(np.float64) for k, v in init.items()}
    h = {k: np.zeros_like(v) for k, v in w.items()}
    out = []
    for g in grads:
        for k in w:
            h[k] = mu * h[k] + lr * (g[k] / iter_size + wd * w[k])
            w[k] = w[k] - h[k]
        out.append({k: v.copy() for k, v in w.items()})
    return out


def _candidate(lr, mu, wd, iter_size, regularize=True):
    def prepare(model):
        if regularize:
            for var in model.trainable_variables:
                var.regularizer = keras.regularizers.L2(wd / 2)
        return model

    def build():
        return keras.optimizers.SGD(
            lr, momentum=mu, gradient_accumulation_steps=(iter_size if iter_size > 1 else None)
        )

    return candidate.Candidate("sgd", build, prepare)


def _maxdiff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x[k], np.float64) - y[k])))
        for x, y in zip(a, b, strict=True)
        for k in x
    )


def test_mirror_layout_and_names():
    layers = mirror.mirror_layers_from_shapes(SHAPES, TYPES)
    model = mirror.build_mirror_model(layers)
    assert [layer.name for layer in model.caffe_layers] == ["ip1", "p"]
    dense = model.caffe_layers[0]
    assert isinstance(dense, keras.layers.Dense)
    assert tuple(dense.kernel.shape) == (3, 4) and tuple(dense.bias.shape) == (4,)
    init, _ = _data()
    mirror.set_caffe_weights(model, init)
    np.testing.assert_array_equal(np.asarray(dense.kernel.value), init["ip1/0"].T)
    back = mirror.get_caffe_weights(model)
    for key in SHAPES:
        np.testing.assert_array_equal(back[key], init[key])


def test_layer_without_bias_and_unsupported_type():
    layers = mirror.mirror_layers_from_shapes({"fc/0": (2, 3)}, {"fc": "InnerProduct"})
    model = mirror.build_mirror_model(layers)
    assert model.caffe_layers[0].use_bias is False
    from caffe2tf.errors import InputError

    with pytest.raises(InputError, match="LSTM"):
        mirror.mirror_layers_from_shapes({"l/0": (2, 3)}, {"l": "LSTM"})


def test_convolution_layout_round_trip():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    k = mirror.caffe_to_keras("Convolution", 0, w)
    assert k.shape == (4, 5, 3, 2) and k[1, 2, 0, 1] == w[1, 0, 1, 2]
    np.testing.assert_array_equal(mirror.keras_to_caffe("Convolution", 0, k), w)


def test_split_micro_batches_sum_to_total_and_differ():
    _, grads = _data(1)
    parts = streams.split_micro_batches(grads[0], 3, seed=1, step=0)
    assert len(parts) == 3
    for key in SHAPES:
        total = sum(p[key].astype(np.float64) for p in parts)
        np.testing.assert_allclose(total, grads[0][key], atol=1e-5)
        assert not np.allclose(parts[0][key], parts[1][key])
    again = streams.split_micro_batches(grads[0], 3, seed=1, step=0)
    assert all(
        np.array_equal(a[k], b[k]) for a, b in zip(parts, again, strict=True) for k in SHAPES
    )


@pytest.mark.parametrize("iter_size", [1, 3])
@pytest.mark.parametrize("route", ["loop", "fit"])
def test_contract_loop_matches_numpy_sgd(route, iter_size):
    init, grads = _data()
    lr, mu, wd = 0.1, 0.9, 0.05
    layers = mirror.mirror_layers_from_shapes(SHAPES, TYPES)
    got = kh.run_candidate(
        _candidate(lr, mu, wd, iter_size), layers, init, grads, iter_size=iter_size, route=route
    )
    want = _numpy_sgd(init, grads, lr, mu, wd, iter_size)
    assert len(got) == len(grads)
    assert _maxdiff(got, want) < 1e-5


def test_regularizer_losses_reach_the_gradient():
    """Without model.losses in the differentiated loss the decay would vanish: a run with the
    regularizer must differ from one without it by about the decay's effect."""
    init, grads = _data()
    layers = mirror.mirror_layers_from_shapes(SHAPES, TYPES)
    with_reg = kh.run_candidate(_candidate(0.1, 0.9, 0.05, 1), layers, init, grads)
    without = kh.run_candidate(_candidate(0.1, 0.9, 0.05, 1, regularize=False), layers, init, grads)
    assert _maxdiff(with_reg, without) > 1e-2
    assert _maxdiff(without, _numpy_sgd(init, grads, 0.1, 0.9, 0.0, 1)) < 1e-5


def test_one_apply_per_micro_batch():
    init, grads = _data(4)
    layers = mirror.mirror_layers_from_shapes(SHAPES, TYPES)
    opt = keras.optimizers.SGD(0.01)
    cand = candidate.Candidate("count", lambda: opt, lambda m: m)
    kh.run_candidate(cand, layers, init, grads, iter_size=3)
    assert int(opt.iterations.numpy()) == 12


def test_micro_grads_are_used_as_given():
    init, grads = _data(2)
    micro = [g for g in grads for _ in range(2)]  # each update: the same pass twice
    layers = mirror.mirror_layers_from_shapes(SHAPES, TYPES)
    cand = candidate.Candidate("plain", lambda: keras.optimizers.SGD(1.0), lambda m: m)
    got = kh.run_candidate(cand, layers, init, grads, iter_size=2, micro_grads=micro)
    # SGD lr 1 without accumulation: two applies of g per update -> w -= 2 g
    want = init["ip1/0"] - 2 * grads[0]["ip1/0"]
    np.testing.assert_allclose(got[0]["ip1/0"], want, atol=1e-6)
    with pytest.raises(ValueError):
        kh.run_candidate(cand, layers, init, grads, iter_size=2, micro_grads=micro[:3])


_JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from caffe2tf.verify import candidate, mirror
    from caffe2tf.verify import keras_harness as kh
    rng = np.random.default_rng(0)
    shapes = {"ip1/0": (4, 3), "ip1/1": (4,), "p/0": (2, 5)}
    layers = mirror.mirror_layers_from_shapes(shapes, {"ip1": "InnerProduct", "p": "Parameter"})
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(10)]
    def prep(m):
        for v in m.trainable_variables:
            v.regularizer = keras.regularizers.L2(0.025)
        return m
    out = {"backend": keras.backend.backend()}
    for route, jit in (("loop", True), ("loop", False), ("fit", True)):
        cand = candidate.Candidate("sgd", lambda: keras.optimizers.SGD(
            0.1, momentum=0.9, gradient_accumulation_steps=3), prep)
        tr = kh.run_candidate(cand, layers, init, grads, iter_size=3, route=route, jit=jit)
        out[f"{route}-{jit}"] = {k: [t[k].tolist() for t in tr] for k in shapes}
    out["init"] = {k: v.tolist() for k, v in init.items()}
    out["grads"] = {k: [g[k].tolist() for g in grads] for k in shapes}
    json.dump(out, sys.stdout)
""")


def test_jax_backend_matches_numpy_sgd():
    require("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["backend"] == "jax"
    init = {k: np.array(v, np.float32) for k, v in out["init"].items()}
    grads = [{k: np.array(out["grads"][k][t], np.float32) for k in init} for t in range(10)]
    want = _numpy_sgd(init, grads, 0.1, 0.9, 0.05, 3)
    for route in ("loop-True", "loop-False", "fit-True"):
        got = [{k: np.array(out[route][k][t]) for k in init} for t in range(10)]
        assert _maxdiff(got, want) < 1e-5, route


def test_deconvolution_and_embed_mirror():
    shapes = {"d/0": (3, 5, 2, 2), "d/1": (5,), "e/0": (10, 4)}
    layers = mirror.mirror_layers_from_shapes(shapes, {"d": "Deconvolution", "e": "Embed"})
    model = mirror.build_mirror_model(layers)
    deconv, embed = model.caffe_layers
    assert isinstance(deconv, keras.layers.Conv2DTranspose) and deconv.filters == 5
    assert tuple(deconv.kernel.shape) == (2, 2, 5, 3)
    assert isinstance(embed, keras.layers.Embedding)
    rng = np.random.default_rng(1)
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    mirror.set_caffe_weights(model, init)
    assert np.asarray(deconv.kernel.value)[1, 0, 4, 2] == init["d/0"][2, 4, 1, 0]
    back = mirror.get_caffe_weights(model)
    assert all(np.array_equal(back[k], init[k]) for k in shapes)
