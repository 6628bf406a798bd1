"""Shape rules of caffe2tf.caffe.shapes, one BVLC layer type at a time.

Each expected shape is worked out by hand from the Caffe formula cited in the rule's docstring.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from caffe2tf.caffe import shapes as shp
from caffe2tf.caffe._proto import caffe_pb2


def L(text: str) -> caffe_pb2.LayerParameter:  # noqa: N802 - reads like the prototxt keyword
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def run(text, *bottoms):
    return shp.infer(L(text), list(bottoms))


X = (2, 3, 17, 19)


# ---------------------------------------------------------------------------- param layers


def test_convolution_basic_and_bias():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 6 kernel_size: 3 '
        "stride: 2 pad: 1 }",
        X,
    )
    # (17 + 2 - 3)//2 + 1 = 9 ; (19 + 2 - 3)//2 + 1 = 10
    assert r.tops == ((2, 6, 9, 10),)
    assert r.blobs == ((6, 3, 3, 3), (6,))


def test_convolution_group_no_bias_rect_kernel():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 4 kernel_h: 3 '
        "kernel_w: 1 group: 2 bias_term: false }",
        (1, 6, 5, 5),
    )
    assert r.blobs == ((4, 3, 3, 1),)
    assert r.tops == ((1, 4, 3, 5),)


def test_convolution_dilation_and_per_dim_stride():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 8 kernel_size: 2 '
        "kernel_size: 3 dilation: 2 pad: 2 stride: 1 stride: 2 }",
        (1, 2, 10, 10),
    )
    # extents 3 and 5: (10+4-3)//1+1 = 12 ; (10+4-5)//2+1 = 5
    assert r.tops == ((1, 8, 12, 5),)
    assert r.blobs[0] == (8, 2, 2, 3)


def test_convolution_nd_and_axis():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 3 kernel_size: 2 '
        "kernel_size: 3 kernel_size: 1 }",
        (1, 2, 5, 6, 7),
    )
    assert r.blobs[0] == (3, 2, 2, 3, 1) and r.tops == ((1, 3, 4, 4, 7),)
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 2 kernel_size: 1 axis: 2 }',
        (1, 3, 4, 6, 7),
    )
    assert r.blobs[0] == (2, 4, 1, 1) and r.tops == ((1, 3, 2, 6, 7),)


def test_convolution_keeps_channels_when_spatial_unknown():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 5 kernel_size: 3 }',
        (None, 7, None, None),
    )
    assert r.blobs == ((5, 7, 3, 3), (5,))
    assert r.tops == ((None, 5, None, None),)


def test_convolution_unknown_channels():
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 5 kernel_size: 3 }',
        (4, None, 9, 9),
    )
    assert r.blobs[0] == (5, None, 3, 3) and not shp.known(r.blobs[0])
    assert r.tops == ((4, 5, 7, 7),)


def test_convolution_unknown_rank_assumes_4d_and_says_so():
    r = run('type: "Convolution" top: "y" convolution_param { num_output: 5 kernel_size: 3 }', None)
    assert r.tops == ((None, 5, None, None),) and r.assumed


@pytest.mark.parametrize(
    "conv",
    [
        "num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3",
        "num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3",
        "num_output: 0 kernel_size: 3",
        "num_output: 4 kernel_size: 3 group: 2",  # 3 channels not divisible by 2
        "num_output: 3 kernel_size: 1 group: 3 stride: 0",
    ],
)
def test_convolution_caffe_checks(conv):
    with pytest.raises(shp.ShapeError):
        run(f'type: "Convolution" top: "y" convolution_param {{ {conv} }}', X)


def test_deconvolution():
    r = run(
        'type: "Deconvolution" top: "y" convolution_param { num_output: 4 kernel_size: 4 '
        "stride: 2 pad: 1 }",
        (1, 6, 5, 7),
    )
    # weight (C_in, out/group, k, k); out = 2*(5-1) + 4 - 2 = 10 ; 2*(7-1) + 4 - 2 = 14
    assert r.blobs == ((6, 4, 4, 4), (4,))
    assert r.tops == ((1, 4, 10, 14),)
    r = run(
        'type: "Deconvolution" top: "y" convolution_param { num_output: 4 kernel_size: 2 '
        "group: 2 bias_term: false }",
        (1, 6, 5, 5),
    )
    assert r.blobs == ((6, 2, 2, 2),)


def test_inner_product_axis_and_transpose():
    r = run('type: "InnerProduct" top: "y" inner_product_param { num_output: 7 }', (2, 3, 4, 5))
    assert r.blobs == ((7, 60), (7,)) and r.tops == ((2, 7),)
    r = run(
        'type: "InnerProduct" top: "y" inner_product_param { num_output: 7 axis: 2 }', (2, 3, 4, 5)
    )
    assert r.blobs == ((7, 20), (7,)) and r.tops == ((2, 3, 7),)
    r = run(
        'type: "InnerProduct" top: "y" inner_product_param { num_output: 6 transpose: true '
        "bias_term: false axis: -1 }",
        (2, 3, 4, 5),
    )
    assert r.blobs == ((5, 6),) and r.tops == ((2, 3, 4, 6),)


def test_inner_product_unknown_input():
    r = run('type: "InnerProduct" top: "y" inner_product_param { num_output: 7 }', (2, None, 4))
    assert r.blobs == ((7, None), (7,)) and r.unknown


def test_embed():
    r = run('type: "Embed" top: "y" embed_param { num_output: 4 input_dim: 10 }', (2, 3))
    assert r.blobs == ((10, 4), (4,)) and r.tops == ((2, 3, 4),)
    r = run(
        'type: "Embed" top: "y" embed_param { num_output: 4 input_dim: 10 bias_term: false }', (2,)
    )
    assert r.blobs == ((10, 4),)


def test_scale_one_bottom():
    r = run('type: "Scale" top: "y" scale_param { bias_term: true }', X)
    assert r.blobs == ((3,), (3,)) and r.tops == (X,)
    assert run('type: "Scale" top: "y" scale_param { axis: 2 num_axes: 2 }', X).blobs == ((17, 19),)
    assert run('type: "Scale" top: "y" scale_param { axis: 0 num_axes: 0 }', X).blobs == ((),)
    assert run('type: "Scale" top: "y" scale_param { num_axes: -1 }', X).blobs == ((3, 17, 19),)
    assert run('type: "Scale" top: "y" scale_param { axis: -1 }', X).blobs == ((19,),)


def test_scale_two_bottoms():
    assert run('type: "Scale" top: "y"', X, (3, 17)).blobs == ()
    r = run('type: "Scale" top: "y" scale_param { bias_term: true }', X, (3, 17))
    assert r.blobs == ((3, 17),)  # bias over bottom[1]'s rank from axis 1


def test_scale_axes_past_the_end():
    with pytest.raises(shp.ShapeError):
        run('type: "Scale" top: "y" scale_param { axis: 3 num_axes: 2 }', X)


def test_bias():
    assert run('type: "Bias" top: "y"', X).blobs == ((3,),)
    assert run('type: "Bias" top: "y" bias_param { axis: 0 num_axes: -1 }', X).blobs == (X,)
    assert run('type: "Bias" top: "y"', X, (3,)).blobs == ()


def test_prelu():
    assert run('type: "PReLU" top: "y"', X).blobs == ((3,),)
    assert run('type: "PReLU" top: "y" prelu_param { channel_shared: true }', X).blobs == ((),)
    with pytest.raises(shp.ShapeError):
        run('type: "PReLU" top: "y"', (5,))


def test_batch_norm():
    r = run('type: "BatchNorm" top: "y"', X)
    assert r.blobs == ((3,), (3,), (1,)) and r.tops == (X,)
    assert run('type: "BatchNorm" top: "y"', (7,)).blobs == ((1,), (1,), (1,))


def test_parameter():
    r = run('type: "Parameter" top: "w" parameter_param { shape { dim: 3 dim: 4 } }')
    assert r.blobs == ((3, 4),) and r.tops == ((3, 4),)


def test_lstm():
    x, cont, xs = (4, 2, 3, 2), (4, 2), (2, 5)
    r = run('type: "LSTM" top: "h" recurrent_param { num_output: 5 }', x, cont)
    # W_xc (4H, D=3*2), b_c (4H), W_hc (4H, H)
    assert r.blobs == ((20, 6), (20,), (20, 5)) and r.tops == ((4, 2, 5),)
    r = run('type: "LSTM" top: "h" recurrent_param { num_output: 3 }', x, cont, xs)
    assert r.blobs == ((12, 6), (12,), (12, 5), (12, 3))


def test_lstm_expose_hidden_is_not_a_static_input():
    x, cont, h0, c0 = (4, 2, 6), (4, 2), (1, 2, 3), (1, 2, 3)
    r = run(
        'type: "LSTM" top: "h" top: "hT" top: "cT" recurrent_param { num_output: 3 '
        "expose_hidden: true }",
        x,
        cont,
        h0,
        c0,
    )
    assert r.blobs == ((12, 6), (12,), (12, 3))
    assert r.tops == ((4, 2, 3), (1, 2, 3), (1, 2, 3))


def test_rnn():
    r = run('type: "RNN" top: "o" recurrent_param { num_output: 4 }', (4, 2, 3), (4, 2))
    # W_xh (H, D), b_h (H), W_hh (H, H), W_ho (H, H), b_o (H)
    assert r.blobs == ((4, 3), (4,), (4, 4), (4, 4), (4,))
    r = run('type: "RNN" top: "o" recurrent_param { num_output: 2 }', (4, 2, 3), (4, 2), (2, 5))
    assert r.blobs == ((2, 3), (2,), (2, 5), (2, 2), (2, 2), (2,))


# ---------------------------------------------------------------------------- data layers


def test_input_and_dummy_data():
    assert run('type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 } }').tops == (
        (1, 2),
        (1, 2),
    )
    r = run(
        'type: "DummyData" top: "a" top: "b" dummy_data_param { num: 2 channels: 3 '
        "channels: 4 height: 5 width: 6 }"
    )
    assert r.tops == ((2, 3, 5, 6), (2, 4, 5, 6))
    with pytest.raises(shp.ShapeError):
        run(
            'type: "Input" top: "a" top: "b" top: "c" input_param { shape { dim: 1 } '
            "shape { dim: 2 } }"
        )


def test_memory_window_image_data():
    r = run(
        'type: "MemoryData" top: "d" top: "l" memory_data_param { batch_size: 4 channels: 3 '
        "height: 5 width: 6 }"
    )
    assert r.tops == ((4, 3, 5, 6), (4,))
    r = run(
        'type: "WindowData" top: "d" top: "l" transform_param { crop_size: 7 } '
        "window_data_param { batch_size: 2 }"
    )
    assert r.tops == ((2, 3, 7, 7), (2,))
    r = run(
        'type: "ImageData" top: "d" top: "l" image_data_param { batch_size: 2 '
        "is_color: false new_height: 9 new_width: 8 }"
    )
    assert r.tops == ((2, 1, 9, 8), (2,)) and not r.unknown
    r = run('type: "ImageData" top: "d" image_data_param { batch_size: 2 }')
    assert r.tops == ((2, 3, None, None),) and r.unknown


def test_data_and_hdf5_data_are_unknown():
    r = run(
        'type: "Data" top: "d" top: "l" transform_param { crop_size: 5 } '
        "data_param { batch_size: 8 }"
    )
    assert r.tops == ((8, None, 5, 5), (8,)) and r.unknown
    r = run('type: "HDF5Data" top: "d" top: "l" hdf5_data_param { batch_size: 8 }')
    assert r.tops == (None, None) and r.unknown


# ---------------------------------------------------------------------------- shape-only


def test_pooling_ceil_floor_and_pad_clip():
    x = (2, 4, 13, 11)
    r = run('type: "Pooling" top: "p" pooling_param { kernel_size: 3 stride: 2 }', x)
    # ceil((13-3)/2)+1 = 6 ; ceil((11-3)/2)+1 = 5
    assert r.tops == ((2, 4, 6, 5),)
    r = run('type: "Pooling" top: "p" pooling_param { kernel_size: 2 stride: 2 }', (1, 1, 7, 7))
    assert r.tops == ((1, 1, 4, 4),)  # ceil(5/2)+1 = 4 (floor would give 3)
    r = run(
        'type: "Pooling" top: "p" pooling_param { kernel_size: 2 stride: 2 round_mode: FLOOR }',
        (1, 1, 7, 7),
    )
    assert r.tops == ((1, 1, 3, 3),)
    # pad 1: ceil((13+2-2)/2)+1 = 8 -> (8-1)*2 = 14 >= 13+1 -> clipped to 7
    #        ceil((11+2-2)/2)+1 = 7 -> (7-1)*2 = 12 >= 11+1 -> clipped to 6
    r = run(
        'type: "Pooling" top: "p" top: "m" pooling_param { kernel_size: 2 stride: 2 pad: 1 }', x
    )
    assert r.tops == ((2, 4, 7, 6), (2, 4, 7, 6))


def test_pooling_rect_and_global():
    r = run(
        'type: "Pooling" top: "p" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 '
        "stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 0 }",
        (1, 1, 13, 11),
    )
    # ceil((13+2-3)/3)+1 = 5 -> (5-1)*3 = 12 < 14 keep ; (11-2)/1+1 = 10
    assert r.tops == ((1, 1, 5, 10),)
    r = run(
        'type: "Pooling" top: "p" pooling_param { pool: AVE global_pooling: true }',
        (2, 4, None, None),
    )
    assert r.tops == ((2, 4, 1, 1),)


@pytest.mark.parametrize(
    "p",
    [
        "kernel_size: 2 kernel_h: 2 kernel_w: 2",
        "kernel_h: 2",
        "global_pooling: true kernel_size: 2",
    ],
)
def test_pooling_caffe_checks(p):
    with pytest.raises(shp.ShapeError):
        run(f'type: "Pooling" top: "p" pooling_param {{ {p} }}', X)


def test_concat_slice():
    a, b = (2, 3, 5), (2, 4, 5)
    assert run('type: "Concat" top: "c"', a, b).tops == ((2, 7, 5),)
    assert run('type: "Concat" top: "c" concat_param { axis: -1 }', a, a).tops == ((2, 3, 10),)
    assert run('type: "Concat" top: "c" concat_param { concat_dim: 0 }', a, a).tops == ((4, 3, 5),)
    assert run('type: "Concat" top: "c"', a, (2, None, 5)).tops == ((2, None, 5),)
    r = run(
        'type: "Slice" top: "a" top: "b" top: "c" slice_param { axis: 2 slice_point: 1 '
        "slice_point: 4 }",
        (2, 3, 5),
    )
    assert r.tops == ((2, 3, 1), (2, 3, 3), (2, 3, 1))
    assert run('type: "Slice" top: "a" top: "b"', (2, 6)).tops == ((2, 3), (2, 3))
    with pytest.raises(shp.ShapeError):
        run('type: "Slice" top: "a" top: "b"', (2, 5))


def test_reshape_flatten():
    x = (2, 4, 13, 11)
    assert run(
        'type: "Reshape" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 11 } }', x
    ).tops == ((2, 52, 11),)
    assert run(
        'type: "Reshape" top: "r" reshape_param { shape { dim: 11 dim: -1 } axis: 2 }', x
    ).tops == ((2, 4, 11, 13),)
    assert run(
        'type: "Reshape" top: "r" reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }', x
    ).tops == ((2, 1, 4, 13, 11),)
    assert run('type: "Reshape" top: "r" reshape_param { shape { dim: -1 } axis: -2 }', x).tops == (
        (2, 4, 13, 11),
    )
    with pytest.raises(shp.ShapeError):
        run('type: "Reshape" top: "r" reshape_param { shape { dim: 5 dim: -1 } }', x)
    assert run('type: "Flatten" top: "f"', x).tops == ((2, 572),)
    assert run('type: "Flatten" top: "f" flatten_param { axis: 2 }', x).tops == ((2, 4, 143),)
    assert run('type: "Flatten" top: "f" flatten_param { axis: 0 end_axis: 1 }', x).tops == (
        (8, 13, 11),
    )


def test_crop_tile_reduction_argmax():
    x, y = (2, 4, 13, 11), (2, 4, 8, 9)
    assert run('type: "Crop" top: "c" crop_param { axis: 2 }', x, y).tops == ((2, 4, 8, 9),)
    assert run('type: "Crop" top: "c" crop_param { axis: 1 }', x, (1, 2, 3, 4)).tops == (
        (2, 2, 3, 4),
    )
    assert run('type: "Tile" top: "t" tile_param { axis: 3 tiles: 3 }', x).tops == ((2, 4, 13, 33),)
    assert run('type: "Reduction" top: "r"', x).tops == ((),)
    assert run('type: "Reduction" top: "r" reduction_param { axis: 2 }', x).tops == ((2, 4),)
    assert run('type: "ArgMax" top: "a" argmax_param { top_k: 2 out_max_val: true }', x).tops == (
        (2, 2, 2, 1),
    )
    assert run('type: "ArgMax" top: "a"', (5, 7)).tops == ((5, 1, 1),)
    assert run('type: "ArgMax" top: "a" argmax_param { axis: 3 top_k: 3 }', x).tops == (
        (2, 4, 13, 3),
    )


def test_spp_im2col_batch_reindex_filter():
    x = (2, 4, 13, 11)
    assert run('type: "SPP" top: "s" spp_param { pyramid_height: 3 }', x).tops == ((2, 4 * 21),)
    # C*k*k = 36 ; (13+2-3)//2+1 = 7 ; (11+2-3)//2+1 = 6
    assert run(
        'type: "Im2col" top: "i" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', x
    ).tops == ((2, 36, 7, 6),)
    assert run('type: "BatchReindex" top: "b"', x, (3,)).tops == ((3, 4, 13, 11),)
    assert run('type: "Filter" top: "a" top: "b"', x, (2, 5), (2,)).tops == (
        (None, 4, 13, 11),
        (None, 5),
    )


@pytest.mark.parametrize(
    "t",
    [
        "ReLU",
        "Sigmoid",
        "TanH",
        "ELU",
        "AbsVal",
        "BNLL",
        "Power",
        "Exp",
        "Log",
        "Threshold",
        "Dropout",
        "LRN",
        "MVN",
        "Softmax",
        "Eltwise",
        "Clip",
        "Swish",
    ],
)
def test_elementwise_layers_keep_the_shape(t):
    r = run(f'type: "{t}" top: "y"', X, X)
    assert r.tops == (X,) and r.blobs == ()


def test_split_loss_accuracy_silence():
    assert run('type: "Split" top: "a" top: "b"', X).tops == (X, X)
    assert run('type: "SoftmaxWithLoss" top: "l"', X, (2,)).tops == ((),)
    assert run('type: "SoftmaxWithLoss" top: "l" top: "p"', X, (2,)).tops == ((), X)
    for t in (
        "EuclideanLoss",
        "HingeLoss",
        "SigmoidCrossEntropyLoss",
        "ContrastiveLoss",
        "MultinomialLogisticLoss",
        "InfogainLoss",
    ):
        assert run(f'type: "{t}" top: "l"', X, X).tops == ((),)
    assert run('type: "Accuracy" top: "a" top: "pc"', X, (2,)).tops == ((), (3,))
    assert run('type: "Silence"', X).tops == ()
    assert run('type: "HDF5Output"', X, X).tops == ()


def test_lstm_unit():
    assert run('type: "LSTMUnit" top: "c" top: "h"', (1, 2, 3), (1, 2, 12), (1, 2)).tops == (
        (1, 2, 3),
        (1, 2, 3),
    )


def test_unknown_type_has_no_rule():
    assert shp.infer(L('type: "ROIPooling" top: "r"'), [X]) is None


def test_helpers():
    assert shp.prod([2, 3, 4]) == 24 and shp.prod([2, None]) is None and shp.prod([]) == 1
    assert shp.canonical_axis(-1, 4) == 3
    with pytest.raises(shp.ShapeError):
        shp.canonical_axis(4, 4)
    assert shp.known((1, 2)) and not shp.known((1, None)) and not shp.known(None)


def test_concat_and_eltwise_shape_checks():
    with pytest.raises(shp.ShapeError):
        run('type: "Concat" top: "c"', (2, 3, 5), (2, 3, 6))
    with pytest.raises(shp.ShapeError):
        run('type: "Eltwise" top: "e"', (2, 3, 5), (2, 3, 6))
    assert run('type: "Eltwise" top: "e"', (2, None, 5), (2, 3, 5)).tops == ((2, None, 5),)


# caffe.layer_type_list() of Debian's caffe 1.0.0+git20180821.99bd997 (a fact of that build).
BVLC_TYPES = """AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss
Convolution Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter
Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM
LSTMUnit Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU
Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss
Split Swish TanH Threshold Tile WindowData""".split()


def test_rules_cover_every_bvlc_type_but_python():
    assert set(shp.RULES) == set(BVLC_TYPES) - {"Python"}
    assert set(shp.BLOB_COUNTS) | {"LSTM", "RNN"} == set(BVLC_TYPES) - {"Python"}


def test_crop_checks_and_cpp_division():
    with pytest.raises(shp.ShapeError):  # 13 - 6 < 8
        run('type: "Crop" top: "c" crop_param { axis: 2 offset: 6 }', (2, 4, 13, 11), (2, 4, 8, 9))
    with pytest.raises(shp.ShapeError):  # 3 offsets for 2 cropped axes
        run(
            'type: "Crop" top: "c" crop_param { axis: 2 offset: 1 offset: 1 offset: 1 }',
            (2, 4, 13, 11),
            (2, 4, 8, 9),
        )
    # (3 + 0 - 4) / 2 truncates to 0 in C++ -> output 1 (Python floor would give 0)
    r = run(
        'type: "Convolution" top: "y" convolution_param { num_output: 1 kernel_size: 4 stride: 2 }',
        (1, 1, 3, 3),
    )
    assert r.tops == ((1, 1, 1, 1),)


def test_recurrent_cont_checks():
    with pytest.raises(shp.ShapeError):
        run('type: "LSTM" top: "h" recurrent_param { num_output: 2 }', (4, 2, 3), (4, 3))
    with pytest.raises(shp.ShapeError):
        run('type: "RNN" top: "h" recurrent_param { num_output: 2 }', (4, 2, 3), (4, 2, 1))


@pytest.mark.parametrize(
    "text,bottoms,n",
    [
        ('type: "Convolution" convolution_param { bias_term: false }', 1, 1),
        ('type: "Deconvolution"', 1, 2),
        ('type: "InnerProduct"', 1, 2),
        ('type: "Embed" embed_param { bias_term: false }', 1, 1),
        ('type: "Scale" scale_param { bias_term: true }', 2, 1),
        ('type: "Scale"', 1, 1),
        ('type: "Bias"', 2, 0),
        ('type: "BatchNorm"', 1, 3),
        ('type: "LSTM"', 3, 4),
        ('type: "RNN" recurrent_param { expose_hidden: true }', 3, 5),
        ('type: "ReLU"', 1, 0),
    ],
)
def test_blob_count_matches_the_rules(text, bottoms, n):
    layer = L(text + "".join(f' bottom: "b{i}"' for i in range(bottoms)))
    assert shp.blob_count(layer) == n
