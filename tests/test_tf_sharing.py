"""Arrays handed to TensorFlow without a copy (caffe2tf/rule/tf_executor.py ``shared_tensor``):
a 64-byte aligned C-order array is shared through DLPack, anything else is copied once into an
aligned buffer; TensorFlow's own kernels (which abort the process on a misaligned buffer) run
on both. verify's initial weights are made aligned so that they are shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

tf = require("tensorflow")

from caffe2tf.rule.tf_executor import ALIGNMENT, aligned_empty, shared_tensor  # noqa: E402
from caffe2tf.verify.inputs import initial_weights  # noqa: E402


def _misaligned(shape):
    raw = np.empty(int(np.prod(shape)) * 4 + ALIGNMENT + 16, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT + 16
    out = raw[start : start + int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
    assert out.ctypes.data % ALIGNMENT == 16
    return out


@pytest.mark.parametrize("shape", [(3,), (40, 7), (2, 3, 5, 5), ()])
def test_aligned_arrays_are_shared_and_others_copied(shape):
    a = aligned_empty(shape, np.float32)
    assert a.ctypes.data % ALIGNMENT == 0 and a.flags.c_contiguous and a.shape == shape
    a[...] = 1.5
    shared = shared_tensor(a, np.float32)
    a[...] = 2.5  # the tensor sees the array's own buffer
    assert float(tf.reduce_sum(shared)) == pytest.approx(2.5 * a.size)

    b = _misaligned(shape)  # never aligned by chance (a small NumPy array can be)
    b[...] = 1.5
    copied = shared_tensor(b, np.float32)
    b[...] = 9.0  # a copy: unchanged
    # an op TensorFlow runs itself (not XLA) checks its buffer's alignment
    assert float(tf.reduce_sum(copied * 2.0)) == pytest.approx(3.0 * b.size)


def test_other_dtypes_and_layouts_are_converted():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    t = shared_tensor(a, np.float32)
    assert t.dtype == tf.float32 and np.array_equal(t.numpy(), a.astype(np.float32))
    t = shared_tensor(a.T, np.float64)  # not C order
    assert np.array_equal(t.numpy(), a.T)


def test_jax_arrays_are_shared():
    jnp = require("jax.numpy")
    j = jnp.arange(64, dtype=jnp.float32)
    t = shared_tensor(j, np.float32)
    assert np.asarray(j).ctypes.data % ALIGNMENT == 0
    assert np.array_equal(t.numpy(), np.asarray(j))


def test_initial_weights_are_aligned_and_unchanged_in_value():
    shapes = {"a/0": (20, 1, 5, 5), "a/1": (20,), "b/0": (500, 800), "s/0": ()}
    w = initial_weights(shapes, 7)
    for k, v in w.items():
        assert v.ctypes.data % ALIGNMENT == 0 and v.dtype == np.float32, k
    # the same draws as NumPy's own arrays would hold (a seed gives the same weights as before)
    rng = np.random.default_rng([7, 0x1A17])
    for k in sorted(shapes):
        expected = rng.standard_normal(shapes[k], dtype=np.float32) * np.float32(0.5)
        np.testing.assert_array_equal(w[k], expected)


@pytest.mark.parametrize("xla", [False, True])
def test_the_executor_never_writes_into_a_shared_init(monkeypatch, xla):
    """verify's w0 is the run's init array, shared with TensorFlow: Caffe's rule on TensorFlow,
    made from it, stepped, reset from it (compiled with XLA or not) and stepped again, must
    leave it as it was."""
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule import tf_executor
    from caffe2tf.rule.lower import lower

    monkeypatch.setattr(tf_executor, "XLA_RESET_MIN_ELEMENTS", 0 if xla else 2**62)
    rule = lower(
        load_recipe(str(Path(__file__).resolve().parents[1] / "fixtures/lenet/solver.prototxt"))
    )
    init = {"ip1/0": aligned_empty((30, 20), np.float32)}
    init["ip1/0"][...] = 1.0
    kept = init["ip1/0"].copy()
    grad = {"ip1/0": np.full((30, 20), 0.5, np.float32)}
    ex = tf_executor.TfExecutor(rule, init, updates=10)
    ex.step(grad)
    moved = ex.weights["ip1/0"].numpy()
    ex.reset(init, updates=10)
    np.testing.assert_array_equal(ex.weights["ip1/0"].numpy(), kept)
    ex.step(grad)
    np.testing.assert_array_equal(ex.weights["ip1/0"].numpy(), moved)  # fresh state again
    np.testing.assert_array_equal(init["ip1/0"], kept)


def test_loading_a_model_shares_each_transposed_blob_with_its_variable(monkeypatch):
    """``set_caffe_weights`` (below ``XLA_RESET_MIN_ELEMENTS`` weights) puts each blob in its
    Keras layout in an aligned buffer and hands TensorFlow a tensor sharing it, which the
    variable adopts: TensorFlow makes no converted copy of its own. The values are the
    transposed blob; a misaligned buffer (planted) makes TensorFlow copy again."""
    import keras

    from caffe2tf.verify import mirror

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    a = aligned_empty((6, 4), np.float32)
    a[...] = np.arange(24, dtype=np.float32).reshape(6, 4)
    copied = []
    convert = tf.convert_to_tensor

    def counting(value, *args, **kwargs):
        if isinstance(value, np.ndarray) and value.size > 1:
            copied.append(value.shape)
        return convert(value, *args, **kwargs)

    monkeypatch.setattr(tf, "convert_to_tensor", counting)
    t = mirror._assignable(mirror._aligned_copy(a.T, np.float32))
    assert np.array_equal(t.numpy(), a.T) and not copied
    mirror._assignable(_misaligned((4, 6)))
    assert copied == [(4, 6)]


def _buffer(var):
    return np.from_dlpack(tf.convert_to_tensor(var.value)).ctypes.data


def test_a_big_net_is_loaded_in_place_with_the_host_paths_values(monkeypatch):
    """From ``XLA_RESET_MIN_ELEMENTS`` weights, ``set_caffe_weights`` on TensorFlow writes every
    blob but the BatchNorm statistics into the variables' own buffers with one compiled program
    (``in_place_loader``, the layouts transposed there): the values are exactly those the host
    path assigns, every variable keeps its buffer, and the statistics still load divided by
    their factor. A planted layout mistake in the compiled loader (a kernel's spatial axes
    swapped, same shape) is seen by the same comparison."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow loader")
    from caffe2tf.rule import tf_executor
    from caffe2tf.verify import mirror

    shapes = {"c/0": (4, 3, 3, 3), "c/1": (4,), "ip/0": (5, 36), "ip/1": (5,)}
    shapes |= {"bn/0": (5,), "bn/1": (5,), "bn/2": (1,), "sc/0": (5,), "sc/1": (5,)}
    types = {"c": "Convolution", "ip": "InnerProduct", "bn": "BatchNorm", "sc": "Scale"}
    model = mirror.build_mirror_model(
        mirror.mirror_layers_from_shapes(shapes, types, pairs={"sc": "bn"})
    )
    init, other = initial_weights(shapes, 7), initial_weights(shapes, 8)
    for w in (init, other):
        w["bn/1"] = np.abs(w["bn/1"])
        w["bn/2"] = np.array([0.5], np.float32)
    blobs = model.blob_variables()

    monkeypatch.setattr(tf_executor, "XLA_RESET_MIN_ELEMENTS", 2**62)  # the host path
    mirror.set_caffe_weights(model, init)
    host = {k: v[0].numpy().copy() for k, v in blobs.items()}

    monkeypatch.setattr(tf_executor, "XLA_RESET_MIN_ELEMENTS", 0)
    mirror.set_caffe_weights(model, other)  # compiles the loader; later loads reuse it
    before = {k: _buffer(v[0]) for k, v in blobs.items()}
    mirror.set_caffe_weights(model, init)
    direct = set(mirror._IN_PLACE_LOADERS[model][0])
    assert direct == set(blobs) - {"bn/0", "bn/1"}
    for k, (var, _, _) in blobs.items():
        np.testing.assert_array_equal(var.numpy(), host[k], err_msg=k)
        if k in direct:
            assert _buffer(var) == before[k], k  # written in place
    back = mirror.get_caffe_weights(model)
    for k in init:
        np.testing.assert_allclose(back[k], init[k], rtol=1e-6, err_msg=k)

    def swapped_loader(blobs_, keys):
        perms = [(3, 2, 1, 0) if blobs_[k][1] == "Convolution" and k.endswith("/0") else
                 mirror.keras_axes(blobs_[k][1], blobs_[k][2]) for k in keys]  # fmt: skip
        return tf_executor.in_place_loader([blobs_[k][0] for k in keys], perms)

    monkeypatch.setattr(mirror, "_in_place_loader", swapped_loader)
    mirror._IN_PLACE_LOADERS.pop(model)
    mirror.set_caffe_weights(model, init)
    planted = {k: v[0].numpy() for k, v in blobs.items()}
    assert not np.array_equal(planted["c/0"], host["c/0"])
    np.testing.assert_array_equal(planted["ip/0"], host["ip/0"])
