"""The Keras layer names convert gives Caffe layers that Keras or TensorFlow refuse
(docs/keras-target.md#layer-names): one rule, collisions resolved, --layer-map first."""

from __future__ import annotations

from caffe2tf.targets.keras.layers import (
    keras_layer_name,
    keras_layer_names,
    sanitized_name,
    valid_keras_name,
)


def test_valid_names_stay_and_refused_characters_become_underscores():
    assert valid_keras_name("conv1") and valid_keras_name("res2a_branch2a.x-y")
    for bad in ("conv1/7x7_s2", "a b", "caf\u00e9", "", "x\\y", "tab\t"):
        assert not valid_keras_name(bad)
    assert sanitized_name("conv1/7x7_s2") == "conv1_7x7_s2"
    assert sanitized_name("caf\u00e9 au lait") == "caf__au_lait"
    assert sanitized_name("") == "_"


def test_collisions_get_the_first_free_suffix_in_net_order():
    blob_layers = ["conv1/7x7_s2", "a/b", "a b", "x/y"]
    all_layers = [*blob_layers, "conv1_7x7_s2", "a_b_2"]  # valid names are taken as they are
    names = keras_layer_names(blob_layers, all_layers)
    assert names == {
        "conv1/7x7_s2": "conv1_7x7_s2_2",
        "a/b": "a_b",
        "a b": "a_b_3",
        "x/y": "x_y",
    }
    assert len(set(names.values()) | {"conv1_7x7_s2", "a_b_2"}) == 6
    assert keras_layer_names(blob_layers, all_layers) == names  # the same every time


def test_layer_map_wins_and_its_names_are_taken():
    names = keras_layer_names(["a/b", "c/d"], ["a/b", "c/d"], {"c/d": "a_b"})
    assert names == {"c/d": "a_b", "a/b": "a_b_2"}


def test_a_paired_scale_lives_in_its_batchnorm_keras_layer():
    pairs = {"scale/1": "bn/1"}
    names = keras_layer_names(["bn/1", "scale/1"], ["bn/1", "scale/1"], None, pairs)
    assert names == {"bn/1": "bn_1"}
    assert keras_layer_name("scale/1", names, pairs) == "bn_1"
    assert keras_layer_name("bn/1", names, pairs) == "bn_1"
