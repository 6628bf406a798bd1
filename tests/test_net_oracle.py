"""The param table agrees with the real Caffe 1.0 (Debian bullseye root, pycaffe in a chroot).

For every net below (our own, plus corpus nets with their data layers swapped for DummyData of
the same declared shape and their loss layers dropped), Caffe builds ``caffe.Net(path, TRAIN)``
and reports ``net.params`` (every blob, sharers included, with its owner) plus the effective
lr_mult/decay_mult of each owner measured by two SGD updates (see
``caffe2tf.verify.oracle.caffe_param_tables``). We compare keys, order, shapes, sharing and
multipliers with :func:`caffe2tf.caffe.net.build_net_spec`. Nets Caffe rejects must be rejected
by us too. All nets go to ONE chroot process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe2tf.caffe import shapes as shp
from caffe2tf.caffe._proto import caffe_pb2
from caffe2tf.caffe.load import load_net
from caffe2tf.caffe.net import OPAQUE_KNOWN, blob_shapes, build_net_spec
from caffe2tf.errors import InputError

pytestmark = pytest.mark.oracle

CORPUS = Path(
    os.environ.get("CAFFE2TF_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
)

INPUT = """
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 17 dim: 19 } shape { dim: 2 } } }
"""

NETS: dict[str, str] = {
    "conv_variants": INPUT
    + """
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 group: 2 bias_term: false } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" param { lr_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 2 kernel_size: 3 dilation: 2 pad: 2
    stride: 1 stride: 2 } }
layer { name: "d1" type: "Deconvolution" bottom: "c3" top: "d1"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 group: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "d1" top: "ip"
  inner_product_param { num_output: 5 } }
""",
    "conv_nd": """
layer { name: "x" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 1 dim: 2 dim: 5 dim: 6 dim: 7 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 1 } }
layer { name: "c1d" type: "Convolution" bottom: "c" top: "c1d"
  convolution_param { num_output: 2 kernel_size: 1 axis: 2 } }
""",
    "ip_embed": """
layer { name: "x" type: "DummyData" top: "x" top: "ids"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 3 } } }
layer { name: "ip_ax2" type: "InnerProduct" bottom: "x" top: "a"
  inner_product_param { num_output: 7 axis: 2 } }
layer { name: "ip_t" type: "InnerProduct" bottom: "x" top: "b"
  inner_product_param { num_output: 6 transpose: true bias_term: false } }
layer { name: "ip_neg" type: "InnerProduct" bottom: "x" top: "c" param { decay_mult: 0 }
  inner_product_param { num_output: 2 axis: -1 } }
layer { name: "emb" type: "Embed" bottom: "ids" top: "e"
  param { lr_mult: 0.5 } embed_param { num_output: 4 input_dim: 10 } }
layer { name: "emb2" type: "Embed" bottom: "ids" top: "e2"
  embed_param { num_output: 3 input_dim: 5 bias_term: false } }
""",
    "scale_bias_prelu_bn": INPUT
    + """
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "bn2" type: "BatchNorm" bottom: "data" top: "bn2"
  param { lr_mult: 0 decay_mult: 0 } }
layer { name: "s1" type: "Scale" bottom: "bn" top: "s1" scale_param { bias_term: true } }
layer { name: "s2" type: "Scale" bottom: "bn" top: "s2" scale_param { axis: 2 num_axes: 2 } }
layer { name: "s3" type: "Scale" bottom: "bn" top: "s3" scale_param { axis: 0 num_axes: 0 } }
layer { name: "s4" type: "Scale" bottom: "bn" top: "s4" scale_param { axis: 1 num_axes: -1 } }
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 3 dim: 17 } } }
layer { name: "s5" type: "Scale" bottom: "bn" bottom: "w" top: "s5"
  scale_param { bias_term: true } }
layer { name: "b1" type: "Bias" bottom: "bn" top: "b1" }
layer { name: "b2" type: "Bias" bottom: "bn" top: "b2" bias_param { axis: -1 num_axes: 1 } }
layer { name: "b3" type: "Bias" bottom: "bn" bottom: "w" top: "b3" }
layer { name: "p1" type: "PReLU" bottom: "bn" top: "p1" }
layer { name: "p2" type: "PReLU" bottom: "bn" top: "p2" prelu_param { channel_shared: true } }
""",
    "recurrent": """
layer { name: "x" type: "DummyData" top: "x" top: "cont" top: "xs"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 dim: 2 } shape { dim: 4 dim: 2 }
    shape { dim: 2 dim: 5 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 5 } }
layer { name: "lstm_s" type: "LSTM" bottom: "x" bottom: "cont" bottom: "xs" top: "hs"
  recurrent_param { num_output: 3 } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "r"
  param { lr_mult: 2 } recurrent_param { num_output: 4 } }
layer { name: "rnn_s" type: "RNN" bottom: "x" bottom: "cont" bottom: "xs" top: "rs"
  recurrent_param { num_output: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "o"
  inner_product_param { num_output: 2 axis: 2 } }
""",
    "shape_only": """
layer { name: "x" type: "DummyData" top: "x" top: "y" top: "idx"
  dummy_data_param { shape { dim: 2 dim: 4 dim: 13 dim: 11 } shape { dim: 2 dim: 4 dim: 8 dim: 9 }
    shape { dim: 3 } } }
layer { name: "pool_ceil" type: "Pooling" bottom: "x" top: "p1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "c_p1" type: "Convolution" bottom: "p1" top: "cp1"
  convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "c_trunc" type: "Convolution" bottom: "x" top: "ctr"
  convolution_param { num_output: 1 kernel_h: 14 kernel_w: 1 stride: 2 } }
layer { name: "ip_trunc" type: "InnerProduct" bottom: "ctr" top: "ip_ctr"
  inner_product_param { num_output: 1 } }
layer { name: "ip_p1" type: "InnerProduct" bottom: "p1" top: "ip_p1"
  inner_product_param { num_output: 1 } }
layer { name: "pool_pad" type: "Pooling" bottom: "x" top: "p2" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ip_p2" type: "InnerProduct" bottom: "p2" top: "ip_p2"
  inner_product_param { num_output: 1 } }
layer { name: "pool_ave" type: "Pooling" bottom: "x" top: "p3"
  pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "ip_p3" type: "InnerProduct" bottom: "p3" top: "ip_p3"
  inner_product_param { num_output: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "x" top: "g"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip_g" type: "InnerProduct" bottom: "g" top: "ip_g"
  inner_product_param { num_output: 1 } }
layer { name: "cat" type: "Concat" bottom: "x" bottom: "x" top: "cat" }
layer { name: "ip_cat" type: "InnerProduct" bottom: "cat" top: "ip_cat"
  inner_product_param { num_output: 1 axis: 3 } }
layer { name: "cat2" type: "Concat" bottom: "x" bottom: "x" top: "cat2" concat_param { axis: 2 } }
layer { name: "ip_cat2" type: "InnerProduct" bottom: "cat2" top: "ip_cat2"
  inner_product_param { num_output: 1 axis: 2 } }
layer { name: "sl" type: "Slice" bottom: "x" top: "s_a" top: "s_b" top: "s_c"
  slice_param { axis: 2 slice_point: 3 slice_point: 10 } }
layer { name: "ip_sa" type: "InnerProduct" bottom: "s_a" top: "ip_sa"
  inner_product_param { num_output: 1 } }
layer { name: "ip_sc" type: "InnerProduct" bottom: "s_c" top: "ip_sc"
  inner_product_param { num_output: 1 } }
layer { name: "sl2" type: "Slice" bottom: "x" top: "t_a" top: "t_b" }
layer { name: "ip_ta" type: "InnerProduct" bottom: "t_a" top: "ip_ta"
  inner_product_param { num_output: 1 } }
layer { name: "rs" type: "Reshape" bottom: "x" top: "rs"
  reshape_param { shape { dim: 0 dim: -1 dim: 11 } } }
layer { name: "ip_rs" type: "InnerProduct" bottom: "rs" top: "ip_rs"
  inner_product_param { num_output: 1 axis: 2 } }
layer { name: "rs2" type: "Reshape" bottom: "x" top: "rs2"
  reshape_param { shape { dim: 11 dim: -1 } axis: 2 } }
layer { name: "ip_rs2" type: "InnerProduct" bottom: "rs2" top: "ip_rs2"
  inner_product_param { num_output: 1 axis: 3 } }
layer { name: "fl" type: "Flatten" bottom: "x" top: "fl" flatten_param { axis: 2 } }
layer { name: "ip_fl" type: "InnerProduct" bottom: "fl" top: "ip_fl"
  inner_product_param { num_output: 1 axis: 2 } }
layer { name: "crop" type: "Crop" bottom: "x" bottom: "y" top: "crop"
  crop_param { axis: 2 offset: 1 } }
layer { name: "ip_crop" type: "InnerProduct" bottom: "crop" top: "ip_crop"
  inner_product_param { num_output: 1 } }
layer { name: "elt" type: "Eltwise" bottom: "x" bottom: "x" top: "elt" }
layer { name: "tile" type: "Tile" bottom: "x" top: "tile" tile_param { axis: 3 tiles: 3 } }
layer { name: "ip_tile" type: "InnerProduct" bottom: "tile" top: "ip_tile"
  inner_product_param { num_output: 1 axis: 3 } }
layer { name: "red" type: "Reduction" bottom: "x" top: "red" reduction_param { axis: 2 } }
layer { name: "ip_red" type: "InnerProduct" bottom: "red" top: "ip_red"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "am" type: "ArgMax" bottom: "x" top: "am"
  argmax_param { top_k: 2 out_max_val: true } }
layer { name: "ip_am" type: "InnerProduct" bottom: "am" top: "ip_am"
  inner_product_param { num_output: 1 axis: 1 } }
layer { name: "am2" type: "ArgMax" bottom: "x" top: "am2" argmax_param { axis: 3 top_k: 3 } }
layer { name: "ip_am2" type: "InnerProduct" bottom: "am2" top: "ip_am2"
  inner_product_param { num_output: 1 axis: 1 } }
layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 3 } }
layer { name: "ip_spp" type: "InnerProduct" bottom: "spp" top: "ip_spp"
  inner_product_param { num_output: 1 } }
layer { name: "lrn" type: "LRN" bottom: "x" top: "lrn" }
layer { name: "relu" type: "ReLU" bottom: "lrn" top: "lrn" }
layer { name: "drop" type: "Dropout" bottom: "lrn" top: "drop" }
layer { name: "sm" type: "Softmax" bottom: "drop" top: "sm" }
layer { name: "mvn" type: "MVN" bottom: "sm" top: "mvn" }
layer { name: "ip_mvn" type: "InnerProduct" bottom: "mvn" top: "ip_mvn"
  inner_product_param { num_output: 1 } }
layer { name: "i2c" type: "Im2col" bottom: "x" top: "i2c"
  convolution_param { kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ip_i2c" type: "InnerProduct" bottom: "i2c" top: "ip_i2c"
  inner_product_param { num_output: 1 axis: 1 } }
layer { name: "br" type: "BatchReindex" bottom: "x" bottom: "idx" top: "br" }
layer { name: "ip_br" type: "InnerProduct" bottom: "br" top: "ip_br"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "split" type: "Split" bottom: "x" top: "sp1" top: "sp2" }
layer { name: "ip_sp2" type: "InnerProduct" bottom: "sp2" top: "ip_sp2"
  inner_product_param { num_output: 1 axis: 3 } }
layer { name: "sil" type: "Silence" bottom: "sp1" }
""",
    "shape_only_2": """
layer { name: "x" type: "DummyData" top: "x" top: "y" top: "v" top: "lab"
  dummy_data_param { shape { dim: 2 dim: 4 dim: 13 dim: 11 } shape { dim: 1 dim: 2 dim: 3 dim: 4 }
    shape { dim: 5 dim: 7 } shape { dim: 5 } } }
layer { name: "rs0" type: "Reshape" bottom: "x" top: "rs0"
  reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 } }
layer { name: "ip_rs0" type: "InnerProduct" bottom: "rs0" top: "ip_rs0"
  inner_product_param { num_output: 1 axis: 2 } }
layer { name: "crop1" type: "Crop" bottom: "x" bottom: "y" top: "crop1" crop_param { axis: 1 } }
layer { name: "ip_crop1" type: "InnerProduct" bottom: "crop1" top: "ip_crop1"
  inner_product_param { num_output: 1 } }
layer { name: "fl0" type: "Flatten" bottom: "x" top: "fl0"
  flatten_param { axis: 0 end_axis: 1 } }
layer { name: "ip_fl0" type: "InnerProduct" bottom: "fl0" top: "ip_fl0"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "am" type: "ArgMax" bottom: "v" top: "am" }
layer { name: "ip_am" type: "InnerProduct" bottom: "am" top: "ip_am"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "acc" type: "Accuracy" bottom: "v" bottom: "lab" top: "acc" top: "per_class" }
layer { name: "ip_acc" type: "InnerProduct" bottom: "per_class" top: "ip_acc"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "sc" type: "Scale" bottom: "x" top: "sc" scale_param { axis: -1 bias_term: true } }
layer { name: "dc" type: "Deconvolution" bottom: "x" top: "dc"
  convolution_param { num_output: 2 kernel_size: 4 stride: 3 pad: 1 dilation: 2 } }
layer { name: "ip_dc" type: "InnerProduct" bottom: "dc" top: "ip_dc"
  inner_product_param { num_output: 1 axis: 2 } }
layer { name: "pool_floor" type: "Pooling" bottom: "x" top: "pf"
  pooling_param { kernel_size: 2 stride: 2 round_mode: FLOOR } }
layer { name: "ip_pf" type: "InnerProduct" bottom: "pf" top: "ip_pf"
  inner_product_param { num_output: 1 } }
layer { name: "h" type: "DummyData" top: "H" dummy_data_param { shape { dim: 7 dim: 7 } } }
layer { name: "ig_loss" type: "InfogainLoss" bottom: "v" bottom: "lab" bottom: "H" top: "l"
  top: "prob" loss_weight: 1 loss_weight: 0 infogain_loss_param { axis: 1 } }
layer { name: "ip_prob" type: "InnerProduct" bottom: "prob" top: "ip_prob"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "auto_top_loss" type: "EuclideanLoss" bottom: "v" bottom: "v" }
layer { name: "c2" type: "Convolution" bottom: "x" bottom: "x" top: "c2a" top: "c2b"
  convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "ip_c2b" type: "InnerProduct" bottom: "c2b" top: "ip_c2b"
  inner_product_param { num_output: 1 } }
""",
    "lstm_expose_hidden": """
layer { name: "x" type: "DummyData" top: "x" top: "cont" top: "h0" top: "c0"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 6 } shape { dim: 4 dim: 2 }
    shape { dim: 1 dim: 2 dim: 3 } shape { dim: 1 dim: 2 dim: 3 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0"
  top: "h" top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true } }
layer { name: "ip_hT" type: "InnerProduct" bottom: "hT" top: "ip_hT"
  inner_product_param { num_output: 1 axis: 0 } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" bottom: "h0" top: "r" top: "rT"
  recurrent_param { num_output: 3 expose_hidden: true } }
layer { name: "ip_rT" type: "InnerProduct" bottom: "rT" top: "ip_rT"
  inner_product_param { num_output: 1 axis: 0 } }
""",
    "sharing": INPUT
    + """
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
  param { name: "w" } param { name: "bias" lr_mult: 2 }
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
  param { name: "w" lr_mult: 3 decay_mult: 0.5 } param { name: "bias" lr_mult: 2 }
  inner_product_param { num_output: 4 } }
layer { name: "c" type: "InnerProduct" bottom: "data" top: "c"
  param { name: "w" share_mode: PERMISSIVE } param { name: "bias" }
  inner_product_param { num_output: 4 } }
layer { name: "r" type: "Reshape" bottom: "data" top: "r"
  reshape_param { shape { dim: 2 dim: 3 dim: 323 } } }
layer { name: "d" type: "InnerProduct" bottom: "r" top: "d"
  param { name: "w2" share_mode: PERMISSIVE } param { name: "w2b" }
  inner_product_param { num_output: 4 axis: 1 } }
layer { name: "e" type: "InnerProduct" bottom: "data" top: "e"
  param { name: "w2" share_mode: PERMISSIVE } param { name: "w2b" }
  inner_product_param { num_output: 4 transpose: true } }
""",
    "phases": """
state { stage: "s1" }
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 } } }
layer { name: "tr" type: "InnerProduct" bottom: "data" top: "o"
  include { phase: TRAIN } inner_product_param { num_output: 2 } }
layer { name: "te" type: "InnerProduct" bottom: "data" top: "o"
  include { phase: TEST } inner_product_param { num_output: 3 } }
layer { name: "st" type: "InnerProduct" bottom: "data" top: "st"
  include { stage: "s1" } inner_product_param { num_output: 4 } }
layer { name: "st2" type: "InnerProduct" bottom: "data" top: "st2"
  include { stage: "s1" stage: "s2" } inner_product_param { num_output: 4 } }
layer { name: "nst" type: "InnerProduct" bottom: "data" top: "nst"
  include { not_stage: "s1" } inner_product_param { num_output: 4 } }
layer { name: "ex" type: "InnerProduct" bottom: "data" top: "ex"
  exclude { stage: "s1" } inner_product_param { num_output: 4 } }
layer { name: "ex2" type: "InnerProduct" bottom: "data" top: "ex2"
  exclude { phase: TEST } inner_product_param { num_output: 5 } }
layer { name: "lv" type: "InnerProduct" bottom: "data" top: "lv"
  include { min_level: 1 } include { max_level: 0 phase: TRAIN }
  inner_product_param { num_output: 6 } }
layer { name: "lv2" type: "InnerProduct" bottom: "data" top: "lv2"
  include { min_level: 1 } inner_product_param { num_output: 6 } }
""",
}

# Legacy nets: Caffe upgrades them itself when it reads the file (upgrade_proto.cpp); ours go
# through caffe2tf.caffe.load.load_net (parser + upgrader + build_net_spec).
LEGACY_NETS: dict[str, str] = {
    "v1_multipliers_and_sharing": """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "ip_a" type: INNER_PRODUCT bottom: "conv1" top: "a" param: "w" blobs_lr: 3
  inner_product_param { num_output: 5 } }
layers { name: "ip_b" type: INNER_PRODUCT bottom: "conv1" top: "b" param: "w" param: ""
  weight_decay: 0.5 weight_decay: 0 inner_product_param { num_output: 5 } }
layers { name: "relu" type: RELU bottom: "a" top: "a" }
layers { name: "ip_c" type: INNER_PRODUCT bottom: "a" top: "c" blobs_lr: 0
  inner_product_param { num_output: 2 } }
""",
    "v0_multipliers": """
name: "v0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "data" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 }
  bottom: "conv1" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 3 blobs_lr: 0.5 }
  bottom: "pool1" top: "fc" }
""",
}

# Nets Caffe refuses (CHECK failures); we must refuse them too.
BAD_NETS: dict[str, str] = {
    "too_many_params": INPUT
    + """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { } param { } param { } inner_product_param { num_output: 2 } }
""",
    "too_many_params_no_bias": INPUT
    + """
layer { name: "c" type: "Convolution" bottom: "data" top: "c" param { } param { }
  convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
""",
    "shared_shape_mismatch": INPUT
    + """
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" }
  inner_product_param { num_output: 4 transpose: true } }
""",
    "shared_count_mismatch_permissive": INPUT
    + """
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
  param { name: "w" share_mode: PERMISSIVE } inner_product_param { num_output: 5 } }
""",
    "shared_lr_mismatch": INPUT
    + """
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" lr_mult: 1 }
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" lr_mult: 2 }
  inner_product_param { num_output: 4 } }
""",
    "shared_decay_mismatch_after_implicit": INPUT
    + """
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
  param { name: "w" decay_mult: 0 } inner_product_param { num_output: 4 } }
layer { name: "c" type: "InnerProduct" bottom: "data" top: "c"
  param { name: "w" decay_mult: 1 } inner_product_param { num_output: 4 } }
""",
    "batchnorm_lr": INPUT
    + """
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" param { lr_mult: 1 } }
""",
    "batchnorm_implicit_lr": INPUT
    + """
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" param { decay_mult: 0 } }
""",
    "loss_two_tops_one_weight": """
layer { name: "x" type: "DummyData" top: "v" top: "lab"
  dummy_data_param { shape { dim: 5 dim: 7 } shape { dim: 5 } } }
layer { name: "l" type: "SoftmaxWithLoss" bottom: "v" bottom: "lab" top: "l" top: "prob" }
""",
    "softmax_loss_two_tops_two_weights": """
layer { name: "x" type: "DummyData" top: "v" top: "lab"
  dummy_data_param { shape { dim: 5 dim: 7 } shape { dim: 5 } } }
layer { name: "l" type: "SoftmaxWithLoss" bottom: "v" bottom: "lab" top: "l" top: "prob"
  loss_weight: 1 loss_weight: 0 }
""",
    "relu_two_loss_weights": """
layer { name: "x" type: "DummyData" top: "v" dummy_data_param { shape { dim: 5 dim: 7 } } }
layer { name: "r" type: "ReLU" bottom: "v" top: "r" loss_weight: 1 loss_weight: 1 }
""",
    "inner_product_two_bottoms": INPUT
    + """
layer { name: "ip" type: "InnerProduct" bottom: "data" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 } }
""",
    "conv_two_bottoms_one_top": INPUT
    + """
layer { name: "c" type: "Convolution" bottom: "data" bottom: "data" top: "c"
  convolution_param { num_output: 2 kernel_size: 1 } }
""",
    "ave_pool_with_mask_top": INPUT
    + """
layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m"
  pooling_param { pool: AVE kernel_size: 2 } }
""",
    "concat_mismatch": INPUT
    + """
layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 } }
layer { name: "c" type: "Concat" bottom: "data" bottom: "p" top: "c" }
""",
    "eltwise_mismatch": INPUT
    + """
layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 } }
layer { name: "e" type: "Eltwise" bottom: "data" bottom: "p" top: "e" }
""",
    "propagate_down_count": INPUT
    + """
layer { name: "r" type: "ReLU" bottom: "data" top: "r" propagate_down: true
  propagate_down: false }
""",
    "crop_out_of_bounds": INPUT
    + """
layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 } }
layer { name: "c" type: "Crop" bottom: "data" bottom: "p" top: "c" crop_param { offset: 9 } }
""",
    "lstm_cont_mismatch": """
layer { name: "x" type: "DummyData" top: "x" top: "cont"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 dim: 3 } } }
layer { name: "l" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 2 } }
""",
    "include_and_exclude": INPUT
    + """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  include { phase: TRAIN } exclude { phase: TEST } inner_product_param { num_output: 2 } }
""",
}


# ------------------------------------------------------------------------- corpus data swap

DATA_TYPES = frozenset(
    {"Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DenseImageData", "VideoData"}
)
DROP_TYPES_SUFFIX = ("Loss",)
DROP_TYPES = frozenset({"Accuracy", "Silence"})


def swap_data_layers(net, *, batch: int = 1, channels: int = 3, size: int = 64):
    """A copy of ``net`` whose data layers are DummyData of the same declared shape (unknown
    dims filled with ``batch``/``channels``/``size``), legacy net inputs turned into an Input
    layer, and loss/accuracy layers (no params; their label checks are data-specific) dropped.
    Python layers without bottoms count as data layers."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    if len(net.input):
        layer = out.layer.add(name="input", type="Input")
        dims = list(net.input_dim)
        for i, name in enumerate(net.input):
            layer.top.append(name)
            s = layer.input_param.shape.add()
            s.dim.extend(
                list(net.input_shape[i].dim)
                if i < len(net.input_shape)
                else dims[4 * i : 4 * i + 4]
            )
        out.ClearField("input")
        out.ClearField("input_dim")
        out.ClearField("input_shape")
    for layer in net.layer:
        if layer.type.endswith(DROP_TYPES_SUFFIX) or layer.type in DROP_TYPES:
            continue
        is_data = layer.type in DATA_TYPES or (layer.type == "Python" and not len(layer.bottom))
        if not is_data:
            out.layer.add().CopyFrom(layer)
            continue
        known = shp.infer(layer, []) if layer.type in shp.RULES else None
        dummy = out.layer.add(name=layer.name, type="DummyData")
        dummy.top.extend(layer.top)
        dummy.include.extend(layer.include)
        dummy.exclude.extend(layer.exclude)
        for t in range(len(layer.top)):
            shape = known.tops[t] if known is not None and t < len(known.tops) else None
            if shape is None:
                shape = (batch, channels, size, size) if t == 0 else (batch,)
            fill = [batch, channels, size, size]
            dims = [d if d is not None else fill[min(i, 3)] for i, d in enumerate(shape)]
            dummy.dummy_data_param.shape.add().dim.extend(dims)
    return out


# Corpus nets the oracle does not compare, each with why. Every other net of the corpus manifest
# must be compared (test_every_corpus_net_is_compared_or_excluded), so a net that newly fails to
# load or newly needs an unknown layer type shows up as a failure, not as a silent drop. Each
# exclusion is also checked against the real Caffe: it must reject the net too.
CORPUS_EXCLUDED = {
    "alexgkendall__SegNet-Tutorial/Models__segnet_basic_train.prototxt": (
        "SegNet's Caffe fork: layer types BN, Upsample are not in BVLC Caffe 1.0"
    ),
    "rbgirshick__fast-rcnn/models__CaffeNet__train.prototxt": (
        "fast-rcnn's Caffe fork: layer type ROIPooling is not in BVLC Caffe 1.0"
    ),
    "rbgirshick__py-faster-rcnn/models__pascal_voc__VGG16__faster_rcnn_end2end__train.prototxt": (
        "py-faster-rcnn's Caffe fork: layer type ROIPooling is not in BVLC Caffe 1.0, and its "
        "Python layers (rpn.*) need the project's own Python modules"
    ),
    "yjxiong__temporal-segment-networks/models__ucf101__tsn_bn_inception_rgb_train_val.prototxt": (
        "TSN's Caffe fork: layer type BN is not in BVLC Caffe 1.0"
    ),
}


def _corpus_net_names() -> list[str]:
    """The ``saved_name`` of every net of the corpus manifest (empty without a corpus)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with open(manifest, newline="") as f:
        return [
            row["saved_name"] for row in csv.DictReader(f, delimiter="\t") if row["kind"] == "net"
        ]


def _corpus_nets() -> tuple[dict[str, caffe_pb2.NetParameter], dict[str, str]]:
    """``(compared, excluded)``: every corpus net, data-swapped, keyed ``corpus:<saved_name>``,
    lands in exactly one. Excluded (with the reason found) are the nets that, once swapped,
    hold layer types we have no shape rule for, or no layer at all. A net that fails to load is
    an error of ours and raises."""
    compared, excluded = {}, {}
    for saved_name in _corpus_net_names():
        net = load_net(str(CORPUS / saved_name), lenient=True).message
        # Filler channel counts: the first that makes a valid net for us (the siamese net
        # slices a 2-channel pair), else 3 and Caffe must reject it as we do.
        candidates = [swap_data_layers(net, channels=c) for c in (3, 1, 2)]
        swapped = next((c for c in candidates if _valid(c)), candidates[0])
        unknown = sorted({layer.type for layer in swapped.layer} - set(shp.RULES))
        key = "corpus:" + saved_name
        if not len(swapped.layer):
            excluded[key] = "no layer left after the data swap"
        elif unknown:
            excluded[key] = "layer types without a shape rule: " + ", ".join(unknown)
        else:
            compared[key] = swapped
    return compared, excluded


def _valid(net) -> bool:
    try:
        build_net_spec(net, path="<swap>")
    except InputError:
        return False
    return True


# ------------------------------------------------------------------------------- the oracle


@pytest.fixture(scope="module")
def caffe_tables(caffe_root):
    """Caffe's tables for every net (one chroot process). ``caffe_root`` (tests/conftest.py)
    skips when the root is absent, and fails under CI=true."""
    from caffe2tf.verify import oracle

    good = {name: text_format.Parse(text, caffe_pb2.NetParameter()) for name, text in NETS.items()}
    compared, excluded = _corpus_nets()
    good.update(compared)
    swapped_excluded = {}
    for key in excluded:  # sent to Caffe too: it must reject each of them
        net = load_net(str(CORPUS / key.removeprefix("corpus:")), lenient=True).message
        # 224: the filler size the TSN net's Reshape needs to get as far as its BN layers
        swapped_excluded[key] = text_format.MessageToString(swap_data_layers(net, size=224))
    names = list(good) + list(BAD_NETS) + list(LEGACY_NETS) + list(swapped_excluded)
    texts = (
        [text_format.MessageToString(good[n]) for n in good]
        + list(BAD_NETS.values())
        + list(LEGACY_NETS.values())
        + list(swapped_excluded.values())
    )
    tables = oracle.caffe_param_tables(texts, probe=True, root=caffe_root)
    return good, dict(zip(names, tables, strict=True))


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def test_every_corpus_net_is_compared_or_excluded():
    """Each corpus net is compared against Caffe or listed in CORPUS_EXCLUDED with its reason;
    a net newly dropped (or a listed one that now works) fails here."""
    names = _corpus_net_names()
    if not names:
        pytest.skip(f"no corpus manifest at {CORPUS / 'MANIFEST.tsv'} (the corpus is optional)")
    compared, excluded = _corpus_nets()
    assert set(compared) | set(excluded) == {"corpus:" + n for n in names}
    found = {k.removeprefix("corpus:"): why for k, why in excluded.items()}
    assert set(found) == set(CORPUS_EXCLUDED), (
        f"excluded now: {found}; listed: {sorted(CORPUS_EXCLUDED)}"
    )
    for name, why in found.items():  # the listed reason names the types actually missing
        missing = why.split(": ", 1)[1].split(", ") if ": " in why else []
        for layer_type in missing:
            assert layer_type in CORPUS_EXCLUDED[name], (name, layer_type)


def test_excluded_corpus_nets_are_rejected_by_caffe(caffe_tables):
    if not _corpus_net_names():
        pytest.skip(f"no corpus manifest at {CORPUS / 'MANIFEST.tsv'} (the corpus is optional)")
    _, tables = caffe_tables
    for saved_name in CORPUS_EXCLUDED:
        key = "corpus:" + saved_name
        if key in tables:
            assert isinstance(tables[key], Exception), f"Caffe accepted excluded {saved_name}"
            # for the reason listed: a fork layer type, or a Python layer's missing module
            msg = str(tables[key])
            assert "Unknown layer type" in msg or "No module named 'rpn'" in msg, (
                saved_name,
                msg[:500],
            )


@pytest.mark.parametrize("name", list(NETS))
def test_own_nets_match_caffe(caffe_tables, name):
    _compare(caffe_tables, name)


def test_corpus_nets_match_caffe(caffe_tables):
    good, _ = caffe_tables
    corpus = [n for n in good if n.startswith("corpus:")]
    failures = []
    for name in corpus:
        try:
            _compare(caffe_tables, name)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(LEGACY_NETS))
def test_legacy_nets_match_caffe_after_both_upgrades(caffe_tables, name, tmp_path):
    path = tmp_path / f"{name}.prototxt"
    path.write_text(LEGACY_NETS[name])
    spec = load_net(str(path))
    assert spec.legacy_format == name[:2].upper()
    _compare(caffe_tables, name, spec)


def _compare(caffe_tables, name, spec=None):
    good, tables = caffe_tables
    table = tables[name]
    if isinstance(table, Exception) and name.startswith("corpus:"):
        # The filler dims of the swap can make a corpus net invalid (e.g. the siamese net
        # slices a 2-channel pair); then we must reject it as Caffe did.
        with pytest.raises(InputError):
            build_net_spec(good[name], path=name)
        return
    assert not isinstance(table, Exception), f"Caffe rejected {name}: {table}"
    if spec is None:
        spec = build_net_spec(good[name], path=name)
    owners = [row for row in table if row.owner == row.key]
    assert [p.key for p in spec.params] == [row.key for row in owners]
    by_key = {p.key: p for p in spec.params}
    for row in owners:
        ours = by_key[row.key]
        assert ours.shape == row.shape, f"{row.key}: ours {ours.shape}, Caffe {row.shape}"
        if row.lr_mult is not None:
            assert _close(ours.lr_mult, row.lr_mult), (row.key, ours.lr_mult, row.lr_mult)
        if row.decay_mult is not None:
            assert _close(ours.decay_mult, row.decay_mult), (
                row.key,
                ours.decay_mult,
                row.decay_mult,
            )
    sharers = {row.key: row.owner for row in table if row.owner != row.key}
    ours_sharers = {s: p.key for p in spec.params for s in p.sharers}
    assert ours_sharers == sharers
    layer_names = {layer.name for layer in spec.layers}
    assert {row.layer for row in table} <= layer_names


@pytest.mark.parametrize("name", list(BAD_NETS))
def test_bad_nets_rejected_by_both(caffe_tables, name):
    _, tables = caffe_tables
    assert isinstance(tables[name], Exception), f"Caffe accepted {name}"
    net = text_format.Parse(BAD_NETS[name], caffe_pb2.NetParameter())
    with pytest.raises(InputError):
        build_net_spec(net, path=name)


def test_every_registered_caffe_layer_type_has_a_shape_rule(caffe_root):
    """The Debian Caffe's layer registry (caffe.layer_type_list()) equals our rule registry plus
    the opaque Python layer, so no BVLC type is read as an unknown fork type."""
    import subprocess

    out = subprocess.run(
        [
            "chroot",
            str(caffe_root),
            "/usr/bin/python3",
            "-c",
            "import caffe; print('\\n'.join(caffe.layer_type_list()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GLOG_minloglevel": "2"},
    ).stdout.split()
    assert set(out) == set(shp.RULES) | OPAQUE_KNOWN


_DUMP_BLOBS = """
import json, sys
import caffe
caffe.set_mode_cpu()
job, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n):
    net = caffe.Net("%s/n%d.prototxt" % (job, i), caffe.TRAIN)
    out.append({str(k): [int(d) for d in v.data.shape] for k, v in net.blobs.items()})
with open(job + "/out.json", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def caffe_blobs(caffe_root, caffe_tables):
    """pycaffe's ``net.blobs`` shapes of every net Caffe accepted (one chroot process)."""
    good, tables = caffe_tables
    names = [n for n in good if not isinstance(tables[n], Exception)]
    (Path(caffe_root) / "tmp").mkdir(exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="caffe2tf-netblobs-", dir=Path(caffe_root) / "tmp"))
    try:
        for i, name in enumerate(names):
            (job / f"n{i}.prototxt").write_text(text_format.MessageToString(good[name]))
        (job / "dump.py").write_text(_DUMP_BLOBS)
        inside = "/" + str(job.relative_to(caffe_root))
        subprocess.run(
            [
                "chroot",
                str(caffe_root),
                "/usr/bin/python3",
                f"{inside}/dump.py",
                inside,
                str(len(names)),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "GLOG_minloglevel": "2",
                "OPENBLAS_NUM_THREADS": "1",
            },
        )
        result = json.loads((job / "out.json").read_text())
    finally:
        shutil.rmtree(job, ignore_errors=True)
    return good, dict(zip(names, result, strict=True))


def test_every_top_shape_matches_caffe(caffe_blobs):
    """Every blob of every accepted net (own and corpus): our inferred shape equals Caffe's
    ``net.blobs`` shape; for our own nets every shape must be fully known."""
    good, caffe = caffe_blobs
    failures = []
    for name, blobs in caffe.items():
        ours = blob_shapes(good[name], path=name)
        for blob, shape in blobs.items():
            if ("_split_" in blob or blob == "(automatic)") and blob not in ours:
                continue  # Caffe's Split blobs (insert_splits.cpp) and AutoTopBlobs' anonymous top
            mine = ours.get(blob, "missing")
            if mine is None or mine == "missing":
                if not name.startswith("corpus:"):
                    failures.append(f"{name}: {blob}: ours {mine}, Caffe {tuple(shape)}")
                continue
            same = len(mine) == len(shape) and all(
                a is None or a == b for a, b in zip(mine, shape, strict=True)
            )
            if not same or (not name.startswith("corpus:") and None in mine):
                failures.append(f"{name}: {blob}: ours {mine}, Caffe {tuple(shape)}")
    assert not failures, "\n".join(failures)


# Solver train_state over the net's own state (solver.cpp:106-114): Caffe builds the train net
# through the solver; we pass the solver's train_state to build_net_spec.
STATE_NET = """
state { stage: "a" level: 5 }
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "tr" type: "InnerProduct" bottom: "data" top: "tr" include { phase: TRAIN }
  inner_product_param { num_output: 2 } }
layer { name: "te" type: "InnerProduct" bottom: "data" top: "te" include { phase: TEST }
  inner_product_param { num_output: 3 } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" include { stage: "a" }
  inner_product_param { num_output: 4 } }
layer { name: "ab" type: "InnerProduct" bottom: "data" top: "ab" include { stage: "a" stage: "b" }
  inner_product_param { num_output: 5 } }
layer { name: "lv5" type: "InnerProduct" bottom: "data" top: "lv5" include { min_level: 5 }
  inner_product_param { num_output: 6 } }
layer { name: "lv1" type: "InnerProduct" bottom: "data" top: "lv1" include { max_level: 1 }
  inner_product_param { num_output: 7 } }
layer { name: "not_b" type: "InnerProduct" bottom: "data" top: "nb" exclude { stage: "b" }
  inner_product_param { num_output: 8 } }
"""

TRAIN_STATES = {
    "none": "",
    "stage_b_level_1": 'train_state { stage: "b" level: 1 }',
    "level_only": "train_state { level: 0 }",
    "phase_test": "train_state { phase: TEST }",
}

_DUMP_SOLVER_NETS = """
import json, sys
import caffe
caffe.set_mode_cpu()
job, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n):
    s = caffe.get_solver("%s/s%d.prototxt" % (job, i))
    out.append([[str(k), [list(b.data.shape) for b in v]] for k, v in s.net.params.items()])
with open(job + "/out.json", "w") as f:
    json.dump(out, f)
"""


def test_solver_train_state_matches_caffe(caffe_root):
    (Path(caffe_root) / "tmp").mkdir(exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="caffe2tf-netstate-", dir=Path(caffe_root) / "tmp"))
    inside = "/" + str(job.relative_to(caffe_root))
    try:
        (job / "net.prototxt").write_text(STATE_NET)
        for i, extra in enumerate(TRAIN_STATES.values()):
            (job / f"s{i}.prototxt").write_text(
                f'net: "{inside}/net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n{extra}\n'
            )
        (job / "dump.py").write_text(_DUMP_SOLVER_NETS)
        subprocess.run(
            [
                "chroot",
                str(caffe_root),
                "/usr/bin/python3",
                f"{inside}/dump.py",
                inside,
                str(len(TRAIN_STATES)),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GLOG_minloglevel": "2"},
        )
        caffe = json.loads((job / "out.json").read_text())
    finally:
        shutil.rmtree(job, ignore_errors=True)
    net = text_format.Parse(STATE_NET, caffe_pb2.NetParameter())
    seen = set()
    for (name, extra), theirs in zip(TRAIN_STATES.items(), caffe, strict=True):
        solver = text_format.Parse(extra, caffe_pb2.SolverParameter())
        state = solver.train_state if solver.HasField("train_state") else None
        spec = build_net_spec(net, path=name, state=state)
        ours = [(p.layer, list(p.shape)) for p in spec.params]
        assert ours == [(layer, shape) for layer, shapes in theirs for shape in shapes], name
        seen.add(tuple(layer for layer, _ in theirs))
    assert len(seen) == len(TRAIN_STATES)  # every state selects a different set of layers
