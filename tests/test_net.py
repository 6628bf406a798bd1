"""build_net_spec: TRAIN-phase filtering, Caffe's AppendParam param table, Caffe's net checks.

Expected values come from Caffe's rules (net.cpp:141-156, 260-353, 422-515;
batch_norm_layer.cpp:37-48), worked out by hand for each small net.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe2tf.caffe._proto import caffe_pb2
from caffe2tf.caffe.net import build_net_spec, state_meets_rule, train_state
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note

INPUT = """
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
"""


def net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def spec(text: str, **kw):
    return build_net_spec(net(text), path="n.prototxt", **kw)


def conv(name, bottom="data", params="", extra=""):
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
        f"{params} convolution_param {{ num_output: 4 kernel_size: 3 {extra} }} }}\n"
    )


def ip(name, params="", n=5, bottom="data", extra=""):
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
        f"{params} inner_product_param {{ num_output: {n} {extra} }} }}\n"
    )


# ------------------------------------------------------------------------------ param table


def test_defaults_without_param_blocks():
    s = spec(INPUT + conv("c"))
    assert [p.key for p in s.params] == ["c/0", "c/1"]
    w, b = s.params
    assert (w.shape, b.shape) == ((4, 3, 3, 3), (4,))
    for p in (w, b):
        assert (p.lr_mult, p.decay_mult) == (1.0, 1.0)
        assert not p.lr_mult_explicit and not p.decay_mult_explicit
        assert p.sharers == () and p.share_name == ""
        assert (p.layer, p.layer_type) == ("c", "Convolution")
    assert (w.index, b.index) == (0, 1)


def test_one_param_block_for_two_blobs_leaves_the_bias_at_defaults():
    s = spec(INPUT + conv("c", params="param { lr_mult: 0.5 decay_mult: 0 }"))
    w, b = s.params
    assert (w.lr_mult, w.decay_mult, w.lr_mult_explicit, w.decay_mult_explicit) == (
        0.5,
        0.0,
        True,
        True,
    )
    assert (b.lr_mult, b.decay_mult, b.lr_mult_explicit, b.decay_mult_explicit) == (
        1.0,
        1.0,
        False,
        False,
    )


def test_multipliers_are_float32_values():
    s = spec(INPUT + conv("c", params="param { lr_mult: 0.1 }"))
    assert s.params[0].lr_mult == pytest.approx(0.1, rel=1e-7)
    assert s.params[0].lr_mult != 0.1  # caffe.proto declares lr_mult float


def test_lr_mult_zero_is_still_a_learnable_param():
    s = spec(INPUT + conv("c", params="param { lr_mult: 0 } param { lr_mult: 0 }"))
    assert [p.lr_mult for p in s.params] == [0.0, 0.0]


def test_too_many_params_is_rejected_with_location():
    text = INPUT + ip("fc", "param {} param {} param {}")
    locs = [SourceLocation("n.prototxt", 2, 1), SourceLocation("n.prototxt", 4, 1)]
    with pytest.raises(InputError, match="Too many params specified for layer fc") as err:
        build_net_spec(net(text), path="n.prototxt", layer_locations=locs)
    assert err.value.location == locs[1]


def test_too_many_params_counts_blobs_not_two():
    # bias_term: false -> one blob, so two param blocks are too many
    with pytest.raises(InputError, match="Too many params"):
        spec(INPUT + ip("fc", "param {} param {}", extra="bias_term: false"))
    assert len(spec(INPUT + ip("fc", "param {}", extra="bias_term: false")).params) == 1


def test_sharing_owner_and_sharers():
    text = (
        INPUT
        + ip("a", 'param { name: "w" lr_mult: 2 }')
        + ip("b", 'param { name: "w" }')
        + ip("c", 'param { name: "w" lr_mult: 2 }')
    )
    s = spec(text)
    assert [p.key for p in s.params] == ["a/0", "a/1", "b/1", "c/1"]
    owner = s.param("a/0")
    assert owner.sharers == ("b/0", "c/0")
    assert owner.share_name == "w" and owner.lr_mult == 2.0 and owner.shape == (5, 192)


def test_sharer_explicit_value_replaces_owner_implicit_value():
    text = (
        INPUT
        + ip("a", 'param { name: "w" }')
        + ip("b", 'param { name: "w" decay_mult: 0 }')
        + ip("c", 'param { name: "w" lr_mult: 3 }')
    )
    owner = spec(text).param("a/0")
    assert (owner.lr_mult, owner.decay_mult) == (3.0, 0.0)
    assert owner.lr_mult_explicit and owner.decay_mult_explicit


@pytest.mark.parametrize(
    "first,second,what",
    [("lr_mult: 1", "lr_mult: 2", "lr_mult"), ("decay_mult: 1", "decay_mult: 0", "decay_mult")],
)
def test_conflicting_explicit_multipliers_are_rejected(first, second, what):
    text = (
        INPUT
        + ip("a", f'param {{ name: "w" {first} }}')
        + ip("b", f'param {{ name: "w" {second} }}')
    )
    with pytest.raises(InputError, match=f"Shared param 'w' has mismatched {what}"):
        spec(text)


def test_conflict_after_implicit_replacement_is_rejected():
    # b makes decay explicit (0); c then conflicts with that value
    text = (
        INPUT
        + ip("a", 'param { name: "w" }')
        + ip("b", 'param { name: "w" decay_mult: 0 }')
        + ip("c", 'param { name: "w" decay_mult: 1 }')
    )
    with pytest.raises(InputError, match="mismatched decay_mult"):
        spec(text)


def test_equal_explicit_multipliers_are_fine():
    text = (
        INPUT
        + ip("a", 'param { name: "w" lr_mult: 2 }')
        + ip("b", 'param { name: "w" lr_mult: 2 }')
    )
    assert spec(text).param("a/0").lr_mult == 2.0


def test_strict_shape_mismatch_is_rejected():
    text = INPUT + ip("a", 'param { name: "w" }') + ip("b", 'param { name: "w" }', n=6)
    with pytest.raises(InputError, match="shape mismatch"):
        spec(text)


def test_strict_rejects_same_count_different_shape():
    text = (
        INPUT
        + ip("a", 'param { name: "w" }')
        + ip("b", 'param { name: "w" }', extra="transpose: true")
    )
    with pytest.raises(InputError, match="shape mismatch"):
        spec(text)


def test_permissive_checks_count_only():
    text = (
        INPUT
        + ip("a", 'param { name: "w" }')
        + ip("b", 'param { name: "w" share_mode: PERMISSIVE }', extra="transpose: true")
    )
    s = spec(text)
    assert s.param("a/0").shape == (5, 192) and s.param("a/0").sharers == ("b/0",)
    bad = (
        INPUT
        + ip("a", 'param { name: "w" }')
        + ip("b", 'param { name: "w" share_mode: PERMISSIVE }', n=6)
    )
    with pytest.raises(InputError, match="count mismatch"):
        spec(bad)


def test_permissive_on_the_owner_does_not_relax_the_sharer_check():
    # AppendParam reads the *sharer's* share_mode (net.cpp:475-476)
    text = (
        INPUT
        + ip("a", 'param { name: "w" share_mode: PERMISSIVE }')
        + ip("b", 'param { name: "w" }', extra="transpose: true")
    )
    with pytest.raises(InputError, match="shape mismatch"):
        spec(text)


def test_batchnorm_blobs_are_learnable_with_lr_zero():
    s = spec(INPUT + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }')
    assert [p.key for p in s.params] == ["bn/0", "bn/1", "bn/2"]
    assert [p.shape for p in s.params] == [(3,), (3,), (1,)]
    assert all(p.lr_mult == 0.0 and p.lr_mult_explicit for p in s.params)
    assert all(p.decay_mult == 1.0 and not p.decay_mult_explicit for p in s.params)


def test_batchnorm_partial_param_blocks():
    s = spec(
        INPUT + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
        "param { lr_mult: 0 decay_mult: 0 } }"
    )
    assert [(p.lr_mult, p.decay_mult) for p in s.params] == [(0, 0), (0, 1), (0, 1)]


@pytest.mark.parametrize(
    "param",
    [
        "param { lr_mult: 1 }",
        "param { decay_mult: 0 }",
        "param { lr_mult: 0 } param { lr_mult: 0.1 }",
    ],
)
def test_batchnorm_nonzero_lr_is_rejected(param):
    with pytest.raises(InputError, match="batch normalization statistics"):
        spec(INPUT + f'layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn" {param} }}')


def test_batchnorm_four_param_blocks_too_many():
    four = "param { lr_mult: 0 } " * 4
    with pytest.raises(InputError, match="Too many params"):
        spec(INPUT + f'layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn" {four} }}')


def test_params_follow_layer_then_blob_order():
    text = (
        INPUT + conv("c1") + 'layer { name: "s" type: "Scale" bottom: "c1" top: "c1" '
        "scale_param { bias_term: true } }\n" + ip("fc", bottom="c1")
    )
    assert [p.key for p in spec(text).params] == ["c1/0", "c1/1", "s/0", "s/1", "fc/0", "fc/1"]


def test_layers_notes_and_format_are_recorded():
    given = Note("x.y", "from the parser")
    s = build_net_spec(
        net('name: "nn"\n' + INPUT + conv("c")), path="p", notes=[given], legacy_format="V1"
    )
    assert s.name == "nn" and s.path == "p" and s.legacy_format == "V1"
    assert s.notes[0] == given
    assert [(layer.name, layer.type, layer.bottoms, layer.tops) for layer in s.layers] == [
        ("data", "Input", (), ("data", "label")),
        ("c", "Convolution", ("data",), ("c",)),
    ]


# ------------------------------------------------------------------------------ phase rules


def _layer_names(text, **kw):
    return [layer.name for layer in spec(text, **kw).layers]


PHASED = (
    INPUT
    + """
layer { name: "tr" type: "ReLU" bottom: "data" top: "tr" include { phase: TRAIN } }
layer { name: "te" type: "ReLU" bottom: "data" top: "te" include { phase: TEST } }
layer { name: "ex_te" type: "ReLU" bottom: "data" top: "ex_te" exclude { phase: TEST } }
layer { name: "ex_tr" type: "ReLU" bottom: "data" top: "ex_tr" exclude { phase: TRAIN } }
layer { name: "st_a" type: "ReLU" bottom: "data" top: "st_a" include { stage: "a" } }
layer { name: "st_ab" type: "ReLU" bottom: "data" top: "st_ab" include { stage: "a" stage: "b" } }
layer { name: "not_a" type: "ReLU" bottom: "data" top: "not_a" include { not_stage: "a" } }
layer { name: "ex_a" type: "ReLU" bottom: "data" top: "ex_a" exclude { stage: "a" } }
layer { name: "lv_ge2" type: "ReLU" bottom: "data" top: "lv_ge2" include { min_level: 2 } }
layer { name: "lv_le1" type: "ReLU" bottom: "data" top: "lv_le1" include { max_level: 1 } }
layer { name: "either" type: "ReLU" bottom: "data" top: "either"
  include { stage: "zzz" } include { phase: TRAIN max_level: 0 } }
"""
)


def test_default_train_state():
    assert _layer_names(PHASED) == ["data", "tr", "ex_te", "not_a", "ex_a", "lv_le1", "either"]


def test_solver_train_state_stages_and_level():
    st = caffe_pb2.NetState(stage=["a", "b"], level=2)
    assert _layer_names(PHASED, state=st) == ["data", "tr", "ex_te", "st_a", "st_ab", "lv_ge2"]


def test_net_state_is_merged_below_the_solver_state():
    text = 'state { stage: "a" level: 5 }\n' + PHASED
    # net state: stage a, level 5; solver adds stage b and sets level 1
    st = caffe_pb2.NetState(stage=["b"], level=1)
    assert _layer_names(text, state=st) == ["data", "tr", "ex_te", "st_a", "st_ab", "lv_le1"]
    assert _layer_names(text) == ["data", "tr", "ex_te", "st_a", "lv_ge2"]


def test_explicit_test_phase_in_state_wins_and_is_noted():
    s = spec(PHASED, state=caffe_pb2.NetState(phase=caffe_pb2.TEST))
    assert [layer.name for layer in s.layers] == ["data", "te", "ex_tr", "not_a", "ex_a", "lv_le1"]
    assert any(n.code == "net.phase_test" and n.affects_training for n in s.notes)


def test_train_state_starts_from_train():
    n = net(INPUT)
    assert n.state.phase == caffe_pb2.TEST  # caffe.proto default
    assert train_state(n).phase == caffe_pb2.TRAIN


def test_state_meets_rule_directly():
    st = caffe_pb2.NetState(phase=caffe_pb2.TRAIN, level=3, stage=["x"])
    rule = caffe_pb2.NetStateRule
    assert state_meets_rule(st, rule(min_level=3, max_level=3))
    assert not state_meets_rule(st, rule(min_level=4))
    assert not state_meets_rule(st, rule(stage=["x", "y"]))
    assert not state_meets_rule(st, rule(not_stage=["x"]))
    assert state_meets_rule(st, rule(not_stage=["y"], stage=["x"], phase=caffe_pb2.TRAIN))


def test_include_and_exclude_on_one_layer_is_rejected():
    text = (
        INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
        "include { phase: TRAIN } exclude { phase: TEST } }"
    )
    with pytest.raises(InputError, match="either include rules or exclude rules"):
        spec(text)


def test_filtered_layers_do_not_own_params():
    text = INPUT + ip("a", extra="").replace("top:", "include { phase: TEST } top:") + ip("b")
    assert [p.key for p in spec(text).params] == ["b/0", "b/1"]


def test_phase_twins_share_top_names():
    text = (
        INPUT
        + ip("a").replace('top: "a"', 'top: "o" include { phase: TRAIN }')
        + ip("b").replace('top: "b"', 'top: "o" include { phase: TEST }')
        + ip("c", bottom="o")
    )
    s = spec(text)
    assert s.param("c/0").shape == (5, 5)


# ------------------------------------------------------------------------------ other checks


def test_unknown_bottom_strict_and_lenient():
    text = INPUT + ip("fc", bottom="nope")
    with pytest.raises(InputError, match="Unknown bottom blob 'nope'"):
        spec(text)
    s = spec(text, lenient=True)
    assert s.param("fc/0").shape is None and s.param("fc/1").shape == (5,)
    assert any(n.code == "net.unknown_bottom" for n in s.notes)


def test_top_produced_twice_is_rejected():
    text = INPUT + ip("a").replace('top: "a"', 'top: "o"') + ip("b").replace('top: "b"', 'top: "o"')
    with pytest.raises(InputError, match="produced by multiple sources"):
        spec(text)


def test_unknown_layer_type_strict_and_lenient():
    text = (
        INPUT
        + 'layer { name: "roi" type: "ROIPooling" bottom: "data" top: "roi" }\n'
        + 'layer { name: "bnf" type: "BNfork" bottom: "data" top: "b" param { lr_mult: 1 } '
        "param { lr_mult: 1 decay_mult: 0 } }\n" + ip("fc", bottom="roi")
    )
    with pytest.raises(InputError, match="Unknown layer type: ROIPooling"):
        spec(text)
    s = spec(text, lenient=True)
    notes = {n.message.split("'")[1]: n for n in s.notes if n.code == "net.unknown_layer_type"}
    assert not notes["roi"].affects_training
    assert notes["bnf"].affects_training
    assert [p.key for p in s.params] == ["bnf/0", "bnf/1", "fc/0", "fc/1"]
    assert s.param("bnf/1").decay_mult == 0.0 and s.param("bnf/0").shape is None
    assert s.param("fc/0").shape is None


def test_python_layer_is_accepted_with_a_note():
    text = (
        'layer { name: "data" type: "Python" top: "data" top: "label" '
        'python_param { module: "m" layer: "L" } }\n' + conv("c1") + conv("c2", bottom="c1")
    )
    s = spec(text)
    # a Python data layer's tops are unknown: the conventional image batch is assumed
    assert s.param("c1/0").shape == (4, 3, 3, 3)
    assert s.param("c2/0").shape == (4, 4, 3, 3)  # known from c1's num_output
    codes = {n.code for n in s.notes}
    assert {"net.python_layer", "net.shape_assumed"} <= codes
    assumed = next(n for n in s.notes if n.code == "net.shape_assumed")
    assert "channels 3" in assumed.message and "--input-shape data=" in assumed.message
    # a Python layer in the middle of the net is not a data layer: nothing is assumed for it
    mid = (
        INPUT
        + 'layer { name: "p" type: "Python" bottom: "data" top: "q" }\n'
        + conv("c1", bottom="q")
    )
    m = spec(mid)
    assert m.param("c1/0").shape is None
    assert "net.param_shape_unknown" in {n.code for n in m.notes}


def test_data_layer_without_declared_channels():
    text = (
        'layer { name: "d" type: "Data" top: "data" top: "label" '
        "transform_param { crop_size: 10 } data_param { batch_size: 4 } }\n"
        + conv("c1")
        + conv("c2", bottom="c1")
        + ip("fc", bottom="c2")
    )
    s = spec(text)
    # the database holds the channel count: 3 (image data) is assumed, and said
    assert s.param("c1/0").shape == (4, 3, 3, 3) and s.param("c1/1").shape == (4,)
    assert s.param("c2/0").shape == (4, 4, 3, 3)
    assert s.param("fc/0").shape == (5, 4 * 6 * 6)  # 10 -> 8 -> 6
    (note,) = [n for n in s.notes if n.code == "net.shape_assumed"]
    assert "channels 3 of top 'data'" in note.message and "height" not in note.message
    assert s.feeds[0].shapes == ((4, 3, 10, 10), (4,))
    # what the prototxt says wins over the convention: mean_value once per channel
    gray = text.replace("crop_size: 10", "crop_size: 10 mean_value: 1 mean_value: 2")
    assert spec(gray).param("c1/0").shape == (4, 2, 3, 3)
    assert not any(n.code == "net.shape_assumed" for n in spec(gray).notes)
    assert spec(text.replace("crop_size: 10", "crop_size: 10 force_gray: true")).param(
        "c1/0"
    ).shape == (4, 1, 3, 3)
    # no crop_size: height and width are the images', assumed 224 and said
    uncropped = spec(text.replace("transform_param { crop_size: 10 } ", ""))
    (note,) = [n for n in uncropped.notes if n.code == "net.shape_assumed"]
    assert "channels 3, height 224, width 224 of top 'data'" in note.message
    assert uncropped.feeds[0].shapes[0] == (4, 3, 224, 224)


def test_input_shape_overrides():
    text = (
        'layer { name: "d" type: "Data" top: "data" top: "label" data_param { batch_size: 4 } '
        "}\n" + conv("c1") + ip("fc", bottom="c1")
    )
    s = spec(text, input_shapes={"data": (8, 2, 5, 5)})
    assert s.param("c1/0").shape == (4, 2, 3, 3) and s.param("fc/0").shape == (5, 4 * 3 * 3)
    assert s.feeds[0].shapes == ((8, 2, 5, 5), (8,))  # the label follows the new batch
    assert not any(n.code == "net.shape_assumed" for n in s.notes)
    # an Input layer's declared shape is overridden too
    declared = spec(INPUT + conv("c1"), input_shapes={"data": (1, 7, 9, 9)})
    assert declared.param("c1/0").shape == (4, 7, 3, 3)
    with pytest.raises(InputError, match="no layer of the train net .* 'nope'"):
        spec(text, input_shapes={"nope": (1, 2)})


def test_sharing_with_unknown_shape_is_noted_not_fatal():
    text = (  # a Python layer in the middle of the net: its top's shape is unknown
        INPUT
        + 'layer { name: "p" type: "Python" bottom: "data" top: "q" }\n'
        + conv("a", bottom="q", params='param { name: "w" }')
        + conv("b", bottom="q", params='param { name: "w" }')
    )
    s = spec(text)
    assert s.param("a/0").sharers == ("b/0",)
    assert any(n.code == "net.share_unchecked" for n in s.notes)


def test_layer_check_failures_are_input_errors():
    text = (
        INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        "convolution_param { num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3 } }"
    )
    with pytest.raises(InputError, match="layer 'c'"):
        spec(text)
    s = spec(text, lenient=True)
    assert any(n.code == "net.layer_rejected" for n in s.notes)


def test_legacy_net_inputs_are_blobs():
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 5\n' + conv("c")
    assert spec(text).param("c/0").shape == (4, 2, 3, 3)


@pytest.mark.parametrize(
    "layer",
    [
        'type: "InnerProduct" bottom: "data" bottom: "data" top: "o" '
        "inner_product_param { num_output: 2 }",
        'type: "Convolution" bottom: "data" bottom: "data" top: "o" '
        "convolution_param { num_output: 2 kernel_size: 1 }",
        'type: "Pooling" bottom: "data" top: "o" top: "m" '
        "pooling_param { pool: AVE kernel_size: 2 }",
        'type: "Crop" bottom: "data" top: "o"',
        'type: "ReLU" bottom: "data"',
    ],
)
def test_bottom_and_top_counts_are_checked(layer):
    with pytest.raises(InputError, match="Layer (takes|produces)"):
        spec(INPUT + f'layer {{ name: "bad" {layer} }}')


def test_loss_layers_may_omit_their_top():
    s = spec(INPUT + 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" }')
    assert [layer.name for layer in s.layers] == ["data", "l"]


def test_loss_weight_counts():
    ok = INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" loss_weight: 2 }'
    assert len(spec(ok).layers) == 2
    for bad in (
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" loss_weight: 1 loss_weight: 1 }',
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "l" '
        'top: "p" }',
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "l" '
        'top: "p" loss_weight: 1 loss_weight: 0 }',
    ):
        with pytest.raises(InputError, match="loss_weight must be unspecified"):
            spec(INPUT + bad)


# ------------------------------------------------------------------------------ corpus sweep

CORPUS = Path(
    os.environ.get("CAFFE2TF_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
)


def _corpus_net_files() -> list[str]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with open(manifest, newline="") as f:
        return [r["saved_name"] for r in csv.DictReader(f, delimiter="\t") if r["kind"] == "net"]


@pytest.mark.skipif(not _corpus_net_files(), reason="no corpus at ../shared/corpus")
@pytest.mark.parametrize("name", _corpus_net_files())
def test_corpus_net_builds_strictly_or_leniently(name):
    """Every corpus net is read (strictly, or leniently for forks) without a traceback; what we
    could not size is said in notes, and every listed blob either has a shape or a note."""
    from caffe2tf.caffe.load import load_net

    path = str(CORPUS / name)
    try:
        s = load_net(path)
    except InputError:
        s = load_net(path, lenient=True)
    assert s.layers
    if any(p.shape is None for p in s.params):
        assert any(n.code.startswith("net.") for n in s.notes)
    keys = [p.key for p in s.params] + [k for p in s.params for k in p.sharers]
    assert len(keys) == len(set(keys))


def test_propagate_down_count_and_duplicate_names():
    bad = (
        INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" propagate_down: true '
        "propagate_down: false }"
    )
    with pytest.raises(InputError, match="propagate_down"):
        spec(bad)
    dup = INPUT + ip("a") + ip("a").replace('top: "a"', 'top: "a2"')
    s = spec(dup)
    assert len(s.params) == 4
    assert any(n.code == "net.duplicate_layer_name" for n in s.notes)
