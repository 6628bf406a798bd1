"""Which Keras variable holds which Caffe blob: the rule ``prepare_model`` follows (no Keras).

A Caffe learnable blob is ``"{layer}/{index}"``. Its Keras variable is found by **name**:

* the Keras layer is named like the Caffe layer, or as ``--layer-map`` says
  (``{caffe_name: keras_name}``; Keras names cannot contain ``/``, so Caffe names such as
  ``conv1/dw`` need a map entry);
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

from collections.abc import Mapping

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
    "Parameter": "a one-weight layer whose variable is named like the layer",
    # SSD's L2 normalization with a learnable channel scale (NVIDIA Caffe, SSD forks): the
    # scale is blob 0, the layer's one weight, named gamma as Keras ports of SSD name it
    "Normalize": "an L2-normalization layer whose one weight (the scale) is named gamma",
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
