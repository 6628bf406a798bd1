"""Which Keras variable holds which Caffe blob: the rule ``prepare_model`` follows (no Keras).

A Caffe learnable blob is ``"{layer}/{index}"``. Its Keras variable is found by **name**:

* the Keras layer is named like the Caffe layer, or as ``--layer-map`` says
  (``{caffe_name: keras_name}``); a Caffe name that Keras or TensorFlow refuses (``/`` as in
  GoogLeNet's ``conv1/7x7_s2``, spaces, non-ASCII...) is renamed by :func:`keras_layer_names`
  (docs/keras-target.md#layer-names): every character outside ``[A-Za-z0-9_.>-]`` becomes
  ``_``, and a name already in use gets the first free suffix ``_2``, ``_3``...;
* a Caffe ``Scale`` layer right after a ``BatchNorm`` layer (same blob; the rule's
  ``scale_pairs``) is the ``gamma``/``beta`` of the Keras ``BatchNormalization`` named like the
  **BatchNorm** layer; the BatchNorm's own
  three blobs (mean, variance, factor) are Keras' non-trainable moving statistics;
* blob 0 is the variable named ``kernel`` (Dense, Conv1D/2D/3D, Conv2DTranspose,
  DepthwiseConv2D), ``depthwise_kernel``, ``embeddings`` (Embedding), ``gamma``
  (BatchNormalization) or ``alpha`` (PReLU), or a one-weight custom layer's variable named
  like the layer; blob 1 is ``bias`` or ``beta``.

``variable.path`` ends with ``<layer name>/<variable name>`` in Keras 3 (any model prefix is
ignored), which is how both ``prepare_model`` and the custom optimizer find the blob
(:func:`caffe2tf.targets.keras.runtime.caffe_blob_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Caffe layer type -> the Keras layers whose variables hold its blobs.
KERAS_LAYERS_OF_TYPE: dict[str, str] = {
    "Convolution": "Conv1D / Conv2D / Conv3D, or DepthwiseConv2D (group = channels)",
    "Deconvolution": "Conv2DTranspose",
    "InnerProduct": "Dense",
    "Embed": "Embedding",
    "Scale": "BatchNormalization (with the BatchNorm before it: gamma, beta)",
    "BatchNorm": "BatchNormalization (moving statistics, never optimized; NVIDIA Caffe's "
    "scale_bias blobs 3, 4: gamma, beta)",
    "PReLU": "PReLU (alpha)",
    # TSN's fork (yjxiong/caffe): slope and bias (blobs 0, 1, shape (1, C)) are the gamma and
    # beta (shape (C,)) of a BatchNormalization; its running statistics are Keras' moving ones
    "BN": "BatchNormalization (TSN's fork: slope, bias = gamma, beta)",
    "SyncBN": "BatchNormalization (TSN's fork: slope, bias = gamma, beta; synchronized)",
    "Parameter": "a one-weight layer whose variable is named like the layer",
    # SSD's L2 normalization with a learnable channel scale (NVIDIA Caffe, SSD forks): the
    # scale is blob 0, the layer's one weight, named gamma as Keras ports of SSD name it
    "Normalize": "an L2-normalization layer whose one weight (the scale) is named gamma",
    # cuda-convnet's unshared-weight ``local`` layer (caffe2tf/rule/lower_convnet.py); Keras 3
    # has no built-in one
    "LocallyConnected": "a locally connected layer whose variables are named kernel and bias",
}
SUPPORTED_LAYER_TYPES = frozenset(KERAS_LAYERS_OF_TYPE) | {
    "DepthwiseConvolution",
    "ConvolutionDepthwise",
}


def keras_layer_name(
    caffe_layer: str, layer_map: Mapping[str, str], pairs: Mapping[str, str]
) -> str:
    """The Keras layer that holds ``caffe_layer``'s blobs (see the module docstring)."""
    if caffe_layer in layer_map:
        return layer_map[caffe_layer]
    if caffe_layer in pairs:
        bn = pairs[caffe_layer]
        return layer_map.get(bn, bn)
    return caffe_layer


#: a name Keras accepts for a layer and TensorFlow for a name scope (Keras 3 forbids ``/``;
#: TensorFlow scope names hold only ``[A-Za-z0-9_.>-]``, tensorflow/python/framework/ops.py
#: ``_VALID_SCOPE_NAME_REGEX``, less the ``/`` and ``\\`` that Keras refuses)
VALID_NAME = re.compile(r"[A-Za-z0-9_.>-]+\Z")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9_.>-]")


def valid_keras_name(name: str) -> bool:
    return VALID_NAME.match(name) is not None


def sanitized_name(name: str) -> str:
    """``name`` with every character Keras/TensorFlow refuse replaced by ``_`` (one for one,
    so ``conv1/7x7_s2`` -> ``conv1_7x7_s2``; a code point, not a byte, per character)."""
    return _INVALID_CHAR.sub("_", name) or "_"


def keras_layer_names(
    blob_layers: Sequence[str],
    all_layers: Sequence[str],
    layer_map: Mapping[str, str] | None = None,
    pairs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The layer map ``prepare_model`` is written with: ``layer_map`` (``--layer-map``, which
    wins) plus an entry for every Caffe layer of ``blob_layers`` (those that own learnable
    blobs, in net order) whose name Keras refuses: :func:`sanitized_name`, and when that is
    already taken (by a Caffe layer's own valid name, an explicit map value, or an earlier
    renamed layer) the first of ``name_2``, ``name_3``... that is free. A Scale of ``pairs``
    (``{Scale: BatchNorm}``) gets no entry: its blobs live in its BatchNorm's Keras layer. The
    result is the same for the same net and map, so ``convert``, ``check`` and ``verify``
    agree on it."""
    explicit = dict(layer_map or {})
    taken = {n for n in all_layers if valid_keras_name(n)} | set(explicit.values())
    out = dict(explicit)
    for layer in dict.fromkeys(blob_layers):
        if layer in explicit or valid_keras_name(layer) or layer in (pairs or {}):
            continue
        base = sanitized_name(layer)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        out[layer] = name
    return out


def renamed_layers(full_map: Mapping[str, str], layer_map: Mapping[str, str] | None) -> dict:
    """The automatic renames of a :func:`keras_layer_names` map (the entries not given)."""
    given = dict(layer_map or {})
    return {k: v for k, v in full_map.items() if k not in given}
