"""prepare_model: Caffe blobs -> Keras variables by name, on built and pretrained-style models."""

from __future__ import annotations

import warnings

import pytest
from conftest import require

from caffe2tf.rule.model import AddDecay, LrSchedule, Momentum, ParamGroup, ScaleByLr, UpdateRule
from caffe2tf.targets.keras.plan import plan

keras = require("keras")
pytestmark = pytest.mark.keras


def _rule(groups: list[ParamGroup], wd: float = 0.001) -> UpdateRule:
    steps = (AddDecay("L2", wd), ScaleByLr(LrSchedule("fixed", 0.1)), Momentum(0.9))
    return UpdateRule(solver="SGD", steps=steps, params=tuple(groups), max_iter=10)


def test_mobilenet_depthwise_and_batchnorm() -> None:
    from caffe2tf.targets.keras.build import prepare_model

    model = keras.applications.MobileNet(
        weights=None, input_shape=(32, 32, 3), alpha=0.25, include_top=False
    )
    groups = [
        ParamGroup("conv1/0", layer_type="Convolution"),
        ParamGroup("conv_dw_1/0", layer_type="Convolution", decay_mult=2.0),
        ParamGroup("conv1_bn/0", layer_type="Scale", decay_mult=0.0),
        ParamGroup("conv1_bn/1", layer_type="Scale", lr_mult=0.0),
    ]
    p = plan(_rule(groups))
    with pytest.warns(UserWarning, match="no Caffe counterpart"):
        bound = prepare_model(model, p)
    by_path = {v.path: v for v in model.variables}
    assert bound["conv_dw_1/kernel"] == "conv_dw_1/0"
    dw = by_path["conv_dw_1/kernel"]
    assert isinstance(model.get_layer("conv_dw_1"), keras.layers.DepthwiseConv2D)
    assert isinstance(dw.regularizer, keras.regularizers.L2)
    assert dw.regularizer.l2 == pytest.approx(0.001 * 2 / 2)
    assert by_path["conv1/kernel"].regularizer.l2 == pytest.approx(0.0005)
    assert by_path["conv1_bn/gamma"].regularizer is None  # decay_mult 0
    beta = by_path["conv1_bn/beta"]
    assert beta.trainable is False and beta.path not in {v.path for v in model.trainable_variables}
    # the penalties really reach the loss (conv1 kernel and the depthwise kernel)
    assert len(model.losses) == 2


def test_regularizer_attribute_after_build_does_nothing() -> None:
    """Why prepare_model sets variable.regularizer: the layer kwarg is only read in build."""
    dense = keras.layers.Dense(2, name="fc")
    dense.build((None, 3))
    dense.kernel_regularizer = keras.regularizers.L2(0.5)
    assert dense.losses == []
    dense.kernel.regularizer = keras.regularizers.L2(0.5)
    assert len(dense.losses) == 1


def test_missing_layers_are_listed_in_one_error() -> None:
    from caffe2tf.targets.keras.build import prepare_model

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    groups = [
        ParamGroup("fc/0", layer_type="InnerProduct"),
        ParamGroup("fc/1", layer_type="InnerProduct"),
        ParamGroup("ghost/0", layer_type="InnerProduct"),
        ParamGroup("conv9/1", layer_type="Convolution"),
    ]
    with pytest.raises(ValueError) as err:
        prepare_model(model, plan(_rule(groups)))
    assert "'ghost' blob 0" in str(err.value) and "'conv9' blob 1" in str(err.value)
    assert "fc" not in str(err.value).split(":", 1)[1].replace("--layer-map", "")


def test_existing_regularizers_replaced_and_layer_map_used() -> None:
    from caffe2tf.targets.keras.build import prepare_model

    dense = keras.layers.Dense(
        2,
        name="dense_7",
        kernel_regularizer=keras.regularizers.L2(9.0),
        bias_regularizer=keras.regularizers.L1(9.0),
    )
    model = keras.Sequential([keras.Input((3,)), dense])
    groups = [
        ParamGroup("ip/0", layer_type="InnerProduct", decay_mult=0.0),
        ParamGroup("ip/1", layer_type="InnerProduct"),
    ]
    p = plan(_rule(groups), layer_map={"ip": "dense_7"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every variable is mapped: no warning
        prepare_model(model, p)
    assert dense.kernel.regularizer is None
    assert dense.bias.regularizer.l2 == pytest.approx(0.0005)
    assert len(model.losses) == 1


def test_blob_keys_of_keras_variable_names() -> None:
    from caffe2tf.targets.keras.runtime import caffe_blob_key

    layers = [
        keras.layers.Embedding(10, 4, name="emb"),
        keras.layers.PReLU(name="prelu"),
        keras.layers.Conv2DTranspose(3, 2, name="deconv"),
        keras.layers.SeparableConv2D(3, 2, name="sep"),
        keras.layers.Conv1D(2, 2, name="c1"),
    ]
    shapes = [(None, 5), (None, 4), (None, 4, 4, 2), (None, 4, 4, 2), (None, 5, 2)]
    keys = set()
    for layer, shape in zip(layers, shapes, strict=True):
        layer.build(shape)
        keys |= {caffe_blob_key(v.path) for v in layer.weights}
    assert {"emb/0", "prelu/0", "deconv/0", "deconv/1", "sep/0", "sep/1", "c1/0", "c1/1"} <= keys
    assert caffe_blob_key("model/sub/block/fc/kernel") == "fc/0"
    assert caffe_blob_key("bn/moving_mean") is None


def test_unknown_net_decays_every_variable() -> None:
    from caffe2tf.targets.keras.build import build_optimizer, prepare_model

    p = plan(_rule([], wd=0.002))
    assert p.route == "builtin" and not p.blobs
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, name="a"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    prepare_model(model, p)
    regs = {v.path: v.regularizer for v in model.trainable_variables}
    assert len(regs) == 4
    assert all(r is not None and r.l2 == pytest.approx(0.001) for r in regs.values())
    assert isinstance(build_optimizer(p), keras.optimizers.SGD)
