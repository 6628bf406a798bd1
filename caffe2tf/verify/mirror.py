"""The Keras model that mirrors a Caffe net for verify, and Caffe <-> Keras blob layouts.

:func:`build_mirror_model` builds a Keras model whose layers carry the Caffe layer names and
whose variables have the Caffe blobs' shapes in Keras layout (InnerProduct ``(out, in)`` ->
``Dense.kernel`` ``(in, out)``; Convolution ``(out, in, kh, kw)`` -> ``Conv2D.kernel``
``(kh, kw, in, out)``; Parameter -> a layer with one weight). A Caffe BatchNorm and the Scale
after it (the rule's ``scale_pairs``, as the plan pairs them) are one ``BatchNormalization``
named after the BatchNorm: gamma/beta hold the Scale's blobs 0/1, moving_mean/moving_variance
the BatchNorm's statistics divided by its factor blob; a lone Scale is a layer with
``gamma``/``beta``; PReLU's slope is ``alpha``. Every mapped variable is checked against
``runtime.caffe_blob_key``, the lookup the emitted ``prepare_model`` uses (:func:`_check_binding`).
Keras is imported lazily, inside the functions.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from caffe2tf.errors import InputError

Weights = dict[str, np.ndarray]

# Caffe layer types the mirror knows, and the Keras layer used for them.
SUPPORTED_TYPES = (
    "InnerProduct",
    "Convolution",
    "Deconvolution",
    "Embed",
    "Parameter",
    "BatchNorm",
    "Scale",
    "PReLU",
    "BN",
    "SyncBN",
)
_SPATIAL = ("Convolution", "Deconvolution")

# Caffe BatchNorm blobs (batch_norm_layer.cpp LayerSetUp: mean, variance, moving-average
# factor) -> the Keras BatchNormalization variable holding them ("" = none: Keras keeps no
# factor, its moving statistics are already divided by it).
_BN_STATISTICS = {0: "moving_mean", 1: "moving_variance", 2: ""}
_BN_AFFINE = {0: "gamma", 1: "beta"}  # the paired Scale's blobs
# TSN's BN/SyncBN (docs/forks.md#tsn): slope, bias, running mean, running variance, each (1, C)
_TSN_BN = {0: "gamma", 1: "beta", 2: "moving_mean", 3: "moving_variance"}


@dataclass(frozen=True)
class MirrorBlob:
    """One Caffe owner blob: ``key = "{layer}/{index}"``, ``shape`` in Caffe layout.

    ``layer_type`` is the Caffe type of ``layer`` (it differs from the mirror layer's type when
    a Scale's blobs live in the BatchNormalization named after the BatchNorm before it);
    ``variable`` names the Keras variable that holds it where that is not the layer type's
    rule (``""``: the rule of :func:`_variable_for`)."""

    key: str
    layer: str
    index: int
    shape: tuple[int, ...]
    layer_type: str = ""
    variable: str = ""


@dataclass(frozen=True)
class MirrorLayer:
    """One Keras layer of the mirror: ``name`` is the Keras layer name (the Caffe name, or for a
    BatchNorm+Scale pair the BatchNorm's), ``type`` the Caffe type it stands for."""

    name: str
    type: str
    blobs: tuple[MirrorBlob, ...]

    @property
    def statistics(self) -> tuple[MirrorBlob, ...]:
        """Caffe BatchNorm statistic blobs (lr_mult 0 in Caffe; no Keras trainable variable)."""
        return tuple(b for b in self.blobs if b.layer_type == "BatchNorm")


# ---- layout conversion -----------------------------------------------------------------------


def keras_axes(layer_type: str, index: int) -> tuple[int, ...] | None:
    """The ``transpose`` axes that take blob ``index`` of a ``layer_type`` layer from Caffe's
    layout to Keras' (``None``: the same layout).

    InnerProduct W ``(N_out, K_in)`` (``inner_product_layer.cpp:32-39``) -> Dense ``(in, out)``;
    Convolution ``(out, in/g, kh, kw)`` -> Conv2D ``(kh, kw, in/g, out)`` and Deconvolution
    ``(in, out/g, kh, kw)`` -> Conv2DTranspose ``(kh, kw, out, in)`` (``base_conv_layer.cpp``
    ``LayerSetUp``, the weight shape with ``conv_out_channels_``/``conv_in_channels_`` swapped for
    deconvolution): both ``(2, 3, 1, 0)``; Embed ``(input_dim, num_output)`` and biases keep
    their layout."""
    if index == 0 and layer_type == "InnerProduct":
        return (1, 0)
    if index == 0 and layer_type in _SPATIAL:
        return (2, 3, 1, 0)
    return None


def caffe_axes(layer_type: str, index: int) -> tuple[int, ...] | None:
    """The inverse of :func:`keras_axes`: Keras' layout back to Caffe's."""
    axes = keras_axes(layer_type, index)
    return None if axes is None else tuple(int(a) for a in np.argsort(axes))


def caffe_to_keras(layer_type: str, index: int, value: np.ndarray) -> np.ndarray:
    """Caffe blob layout -> Keras variable layout (:func:`keras_axes`)."""
    value = np.asarray(value)
    axes = keras_axes(layer_type, index)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))


def caffe_layout_perm(layer_type: str, index: int) -> tuple[int, ...] | None:
    """The axis permutation :func:`caffe_to_keras` applies (``None``: the same layout); its
    inverse is :func:`keras_layout_perm`."""
    if index == 0 and layer_type == "InnerProduct":
        return (1, 0)
    if index == 0 and layer_type in _SPATIAL:
        return (2, 3, 1, 0)
    return None


def keras_layout_perm(layer_type: str, index: int) -> tuple[int, ...] | None:
    """The axis permutation :func:`keras_to_caffe` applies (``None``: the same layout)."""
    if index == 0 and layer_type == "InnerProduct":
        return (1, 0)
    if index == 0 and layer_type in _SPATIAL:
        return (3, 2, 0, 1)
    return None


def keras_to_caffe(layer_type: str, index: int, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    axes = caffe_axes(layer_type, index)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))


# ---- describing the net ----------------------------------------------------------------------


def mirror_layers_from_rule(
    rule: Any,
    layer_map: Mapping[str, str] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[MirrorLayer, ...]:
    """From an :class:`caffe2tf.rule.model.UpdateRule` (owners only, Caffe order): the blobs'
    shapes and layer types, and the rule's BatchNorm+Scale pairs (the pairs the plan, and so
    ``prepare_model``, uses). The Keras layers are named as the plan names them:
    ``layer_map`` (``--layer-map``) and, for the Caffe names Keras refuses, the automatic
    renames of :func:`caffe2tf.targets.keras.layers.keras_layer_names`. ``shapes``: other
    blob shapes than the net's (the probes' cut blobs)."""
    from caffe2tf.targets.keras.layers import keras_layer_names

    given = shapes
    shapes = {}
    types: dict[str, str] = {}
    for group in rule.params:
        if given is not None and group.key in given:
            shapes[group.key] = tuple(int(d) for d in given[group.key])
            types[group.layer] = group.layer_type
            continue
        if group.shape is None:
            raise InputError(
                f"the shape of {group.key} ({group.layer_type}) cannot be inferred "
                f"from the net, so no mirror model can be built for verification",
                group.location,
            )
        shapes[group.key] = tuple(int(d) for d in group.shape)
        types[group.layer] = group.layer_type
    pairs = dict(rule.scale_pairs)
    names = keras_layer_names([g.layer for g in rule.params], rule.layers, layer_map, pairs)
    return mirror_layers_from_shapes(shapes, types, pairs, names)


def mirror_layers_for(rule: Any, layer_map: Mapping[str, str] | None = None) -> Any:
    """``layers(shapes)``: :func:`mirror_layers_from_rule` for blobs of the given shapes (the
    net's, or the probes' cut ones), cached per set of shapes."""
    cache: dict[tuple, tuple[MirrorLayer, ...]] = {}

    def layers(shapes: Mapping[str, Sequence[int]]) -> tuple[MirrorLayer, ...]:
        key = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in shapes.items()))
        if key not in cache:
            cache[key] = mirror_layers_from_rule(rule, layer_map, shapes)
        return cache[key]

    return layers


def mirror_layers_from_shapes(
    shapes: Mapping[str, Sequence[int]],
    layer_types: Mapping[str, str],
    pairs: Mapping[str, str] | None = None,
    layer_map: Mapping[str, str] | None = None,
) -> tuple[MirrorLayer, ...]:
    """From ``{"{layer}/{i}": shape}`` (Caffe layout), ``{layer: caffe type}`` and ``pairs``
    (``{Scale layer: the BatchNorm before it}``, the rule's ``scale_pairs``). The Keras
    layer of each Caffe layer is :func:`caffe2tf.targets.keras.layers.keras_layer_name` with
    ``layer_map``: a paired Scale's gamma/beta join the BatchNormalization named after its
    BatchNorm."""
    from caffe2tf.targets.keras.layers import keras_layer_name

    pairs = dict(pairs or {})
    by_layer: dict[str, list[MirrorBlob]] = {}
    for key, shape in shapes.items():
        layer, _, idx = key.rpartition("/")
        if not layer or not idx.isdigit():
            raise ValueError(f"blob key {key!r} is not '<layer>/<index>'")
        ltype = layer_types.get(layer, "")
        if ltype not in SUPPORTED_TYPES:
            raise InputError(
                f"verify cannot mirror layer {layer!r} of type {ltype or '?'} "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
        variable = ""
        if ltype == "BatchNorm":
            variable = _BN_STATISTICS.get(int(idx), "?")
        elif ltype in ("BN", "SyncBN"):
            variable = _TSN_BN.get(int(idx), "?")
        elif layer in pairs:
            variable = _BN_AFFINE.get(int(idx), "?")
        by_layer.setdefault(keras_layer_name(layer, dict(layer_map or {}), pairs), []).append(
            MirrorBlob(
                key=key,
                layer=layer,
                index=int(idx),
                shape=tuple(int(d) for d in shape),
                layer_type=ltype,
                variable=variable,
            )
        )
    layers = []
    for name, blobs in by_layer.items():
        # a BatchNorm+Scale pair is one BatchNormalization; any other Keras layer holds the
        # blobs of one Caffe layer
        bn = any(b.layer_type == "BatchNorm" for b in blobs)
        ltype = "BatchNorm" if bn else blobs[0].layer_type
        odd = [b.key for b in blobs if b.variable == "?"]
        if odd:
            raise InputError(
                f"verify cannot mirror {', '.join(odd)}: a Caffe BatchNorm has 3 "
                f"blobs and its Scale at most 2 (scale, bias)"
            )
        layers.append(
            MirrorLayer(
                name=name,
                type=ltype,
                blobs=tuple(
                    sorted(blobs, key=lambda b: (b.layer_type != "BatchNorm", b.layer, b.index))
                ),
            )
        )
    return tuple(layers)


# ---- the Keras side ----------------------------------------------------------------------------


def _parameter_layer_class() -> type:
    import keras

    class CaffeParameter(keras.layers.Layer):
        """Caffe's ``Parameter`` layer: one learnable blob, output = the blob
        (``parameter_layer.hpp``). The weight is named after the layer."""

        def __init__(self, shape: Sequence[int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.param_shape = tuple(int(d) for d in shape)
            self.kernel = self.add_weight(
                shape=self.param_shape, name=self.name, initializer="zeros"
            )
            self.built = True

        def call(self, inputs: Any) -> Any:
            return self.kernel

    return CaffeParameter


def _scale_layer_class() -> type:
    import keras

    class CaffeScale(keras.layers.Layer):
        """A Caffe ``Scale`` layer with no BatchNorm before it: ``y = x * gamma (+ beta)``
        (``scale_layer.cpp``). Its variables are named ``gamma``/``beta``, the names
        ``prepare_model`` binds to Caffe blobs 0/1 (``runtime.CAFFE_BLOB_OF_KERAS_NAME``)."""

        def __init__(self, shapes: Mapping[int, Sequence[int]], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.gamma = self.beta = None
            if 0 in shapes:
                self.gamma = self.add_weight(
                    shape=tuple(shapes[0]), name="gamma", initializer="ones"
                )
            if 1 in shapes:
                self.beta = self.add_weight(
                    shape=tuple(shapes[1]), name="beta", initializer="zeros"
                )
            self.built = True

        def call(self, inputs: Any) -> Any:
            out = inputs if self.gamma is None else inputs * self.gamma
            return out if self.beta is None else out + self.beta

    return CaffeScale


def _tsn_bn_layer_class() -> type:
    import keras

    class CaffeTsnBN(keras.layers.Layer):
        """TSN's ``BN`` layer for the mirror: its four blobs in Caffe's ``(1, C)`` layout,
        the slope and bias named ``gamma``/``beta`` (the names ``prepare_model`` binds to
        blobs 0/1) and the running statistics ``moving_mean``/``moving_variance``, which it
        never binds (lr_mult 0 in the fork, ``bn_layer.cpp:56-59``)."""

        def __init__(self, shapes: Mapping[int, Sequence[int]], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            for index, name in _TSN_BN.items():
                if index in shapes:
                    var = self.add_weight(
                        shape=tuple(shapes[index]),
                        name=name,
                        initializer="zeros",
                        trainable=index < 2,
                    )
                    setattr(self, name, var)
            self.built = True

        def call(self, inputs: Any) -> Any:
            return inputs

    return CaffeTsnBN


def _make_batch_norm(spec: MirrorLayer, dtype: str) -> Any:
    """Keras ``BatchNormalization`` (channels last) for a Caffe BatchNorm and, if paired, the
    Scale after it: ``scale``/``center`` on exactly when the Scale has blob 0/1."""
    import keras

    roles = {b.variable: b for b in spec.blobs}
    channels = {b.shape for b in spec.blobs if b.variable}  # all but the factor
    if len(channels) != 1 or len(next(iter(channels))) != 1:
        raise InputError(
            f"BatchNorm {spec.name!r}: the mirror needs 1-D per-channel blobs of "
            f"one length; got {', '.join(f'{b.key} {b.shape}' for b in spec.blobs)}"
            " (a Scale with axis/num_axes other than one channel axis has no "
            "BatchNormalization gamma)"
        )
    if {"moving_mean", "moving_variance", ""} - set(roles):
        raise InputError(
            f"BatchNorm {spec.name!r} should have 3 blobs (mean, variance, "
            f"factor); got {sorted(b.key for b in spec.blobs)}"
        )
    layer = keras.layers.BatchNormalization(
        axis=-1, scale="gamma" in roles, center="beta" in roles, name=spec.name, dtype=dtype
    )
    layer.build((None, next(iter(channels))[0]))
    return layer


def _make_layer(spec: MirrorLayer, dtype: str = "float32") -> Any:
    """The Keras layer of one mirror layer, its variables in ``dtype``."""
    import keras

    indices = {b.index for b in spec.blobs}
    shape0 = next((b.shape for b in spec.blobs if b.index == 0), None)
    if spec.type == "BatchNorm":
        return _make_batch_norm(spec, dtype)
    if spec.type in ("BN", "SyncBN"):
        return _tsn_bn_layer_class()(
            {b.index: b.shape for b in spec.blobs}, name=spec.name, dtype=dtype
        )
    if spec.type == "Scale":
        if not indices or not indices <= {0, 1}:
            raise InputError(
                f"Scale layer {spec.name!r}: blobs {sorted(indices)}, want 0 (and optionally 1)"
            )
        return _scale_layer_class()(
            {b.index: b.shape for b in spec.blobs}, name=spec.name, dtype=dtype
        )
    if spec.type == "PReLU":
        if indices != {0}:
            raise InputError(f"PReLU layer {spec.name!r} should have exactly one blob")
        # Caffe's slope (C,) or (1,) when channel_shared (prelu_layer.cpp LayerSetUp); Keras'
        # alpha takes the shape of the input's non-batch axes, so (None, C) gives alpha (C,).
        layer = keras.layers.PReLU(name=spec.name, dtype=dtype)
        layer.build((None,) + tuple(shape0))
        return layer
    if spec.type == "Parameter":
        if indices != {0}:
            raise InputError(f"Parameter layer {spec.name!r} should have exactly one blob")
        return _parameter_layer_class()(shape0, name=spec.name, dtype=dtype)
    if shape0 is None or not indices <= {0, 1}:
        raise InputError(
            f"layer {spec.name!r}: the mirror needs blob 0 (and optionally 1) as "
            f"owners; got {sorted(indices)}"
        )
    use_bias = 1 in indices
    if spec.type == "InnerProduct":
        if len(shape0) != 2:
            raise InputError(f"InnerProduct {spec.name!r} weight has shape {shape0}, want 2-D")
        layer = keras.layers.Dense(
            shape0[0], use_bias=use_bias, name=spec.name, dtype=dtype, **_LOADED
        )
        layer.build((None, shape0[1]))
        return layer
    if spec.type == "Convolution":
        if len(shape0) != 4:
            raise InputError(f"Convolution {spec.name!r} weight has shape {shape0}, want 4-D")
        layer = keras.layers.Conv2D(
            shape0[0], (shape0[2], shape0[3]), use_bias=use_bias, name=spec.name, dtype=dtype,
            **_LOADED,
        )  # fmt: skip
        layer.build((None, None, None, shape0[1]))
        return layer
    if spec.type == "Deconvolution":
        if len(shape0) != 4:
            raise InputError(f"Deconvolution {spec.name!r} weight has shape {shape0}, want 4-D")
        layer = keras.layers.Conv2DTranspose(
            shape0[1], (shape0[2], shape0[3]), use_bias=use_bias, name=spec.name, dtype=dtype,
            **_LOADED,
        )  # fmt: skip
        layer.build((None, None, None, shape0[0]))
        return layer
    if spec.type == "Embed":
        if len(shape0) != 2 or use_bias:
            raise InputError(
                f"Embed {spec.name!r}: the mirror supports a 2-D weight and no "
                f"bias (Keras Embedding has none); got blobs {sorted(indices)}"
            )
        layer = keras.layers.Embedding(shape0[0], shape0[1], name=spec.name, dtype=dtype)
        layer.build((None,))
        return layer
    raise InputError(f"verify cannot mirror layer type {spec.type}")


#: a mirror layer's weights are loaded from Caffe's right after it is built: made as zeros,
#: not drawn from Keras' random initializers (two more copies of the weights on VGG16)
_LOADED = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}


def _variable_for(layer: Any, spec: MirrorLayer, blob: MirrorBlob | int) -> Any:
    """The Keras variable holding ``blob`` (None for Caffe's BatchNorm factor, which Keras does
    not keep)."""
    if isinstance(blob, int):  # older callers pass the index
        blob = next(b for b in spec.blobs if b.index == blob)
    if blob.variable:
        return getattr(layer, blob.variable)
    if blob.layer_type == "BatchNorm":
        return None
    if spec.type == "Parameter":
        return layer.kernel
    if spec.type == "Embed":
        return layer.embeddings
    if spec.type == "PReLU":
        return layer.alpha
    if spec.type == "Scale":
        return layer.gamma if blob.index == 0 else layer.beta
    return layer.kernel if blob.index == 0 else layer.bias


def _check_binding(model: Any) -> None:
    """The mirror must put each Caffe blob where ``prepare_model`` looks for it: the key that
    :func:`caffe2tf.targets.keras.runtime.caffe_blob_key` (the emitted module's own lookup)
    reads off the variable's path must be ``"<mirror layer>/<Caffe blob index>"``, and the
    BatchNorm statistics must be invisible to it (prepare_model never binds them)."""
    from caffe2tf.targets.keras.runtime import caffe_blob_key

    for spec, layer in zip(model.specs, model.caffe_layers, strict=True):
        for b in spec.blobs:
            var = _variable_for(layer, spec, b)
            if var is None:
                continue
            never_bound = b.layer_type == "BatchNorm" or b.variable.startswith("moving_")
            want = None if never_bound else f"{spec.name}/{b.index}"
            got = caffe_blob_key(var.path)
            if got != want:
                raise RuntimeError(
                    f"mirror bug: {b.key} sits in {var.path}, which "
                    f"prepare_model reads as {got!r}, not {want!r}"
                )


def build_mirror_model(layers: Sequence[MirrorLayer], dtype: str = "float32") -> Any:
    """A built Keras model with one layer per Caffe layer (same names), its variables in
    ``dtype`` (float64 for the probes, whose terms can be far below float32 resolution). Its
    ``call(x)`` takes a batch of flattened Keras-layout gradients (see :meth:`feed_order`) and
    returns the linear loss ``sum(stop_gradient(x) * v)`` per sample, so ``compile`` + ``fit``
    can train it."""
    import keras
    from keras import ops

    class CaffeMirror(keras.Model):
        def __init__(self, specs: Sequence[MirrorLayer]) -> None:
            super().__init__(name="caffe_mirror", dtype=dtype)
            self.specs = tuple(specs)
            self.caffe_layers = [_make_layer(s, dtype) for s in self.specs]
            self._feed: list[tuple[Any, int, int, tuple[int, ...]]] = []
            # Caffe BatchNorm factor blob (no Keras variable) -> its value; set with the weights
            self.caffe_constants: dict[str, np.ndarray] = {}
            self.built = True

        def blob_variables(self) -> dict[str, tuple[Any, str, int]]:
            """``{caffe key: (variable, caffe layer type, blob index)}`` for every Caffe blob
            with a Keras variable (BatchNorm mean/variance: the non-trainable moving
            statistics)."""
            out = {}
            for spec, layer in zip(self.specs, self.caffe_layers, strict=True):
                for b in spec.blobs:
                    var = _variable_for(layer, spec, b)
                    if var is not None:
                        out[b.key] = (var, b.layer_type or spec.type, b.index)
            return out

        def statistic_factors(self) -> dict[str, str]:
            """``{BatchNorm mean/variance key: the key of its factor blob}``."""
            return {
                b.key: f"{b.layer}/2"
                for spec in self.specs
                for b in spec.statistics
                if b.index in (0, 1)
            }

        def feed_order(self) -> list[str]:
            return [k for k, _ in sorted(self.blob_variables().items())]

        def set_feed(self) -> int:
            self._feed = []
            pos = 0
            for key in self.feed_order():
                var = self.blob_variables()[key][0]
                n = int(np.prod(var.shape))
                self._feed.append((var, pos, pos + n, tuple(var.shape)))
                pos += n
            return pos

        def call(self, x: Any) -> Any:
            total = None
            for var, lo, hi, shape in self._feed:
                g = ops.stop_gradient(ops.reshape(x[:, lo:hi], (-1,) + shape))
                term = ops.sum(ops.reshape(g * var, (ops.shape(g)[0], -1)), axis=1)
                total = term if total is None else total + term
            return ops.expand_dims(total, -1)

    model = CaffeMirror(layers)
    _check_binding(model)
    return model


def _inverse_factor(factor: np.ndarray) -> np.float32:
    """Caffe's ``scale_factor = blobs_[2][0] == 0 ? 0 : 1 / blobs_[2][0]``
    (``batch_norm_layer.cpp`` Forward_cpu, ``use_global_stats`` branch), in float32."""
    f = np.float32(np.asarray(factor, np.float32).reshape(-1)[0])
    return np.float32(0.0) if f == 0 else np.float32(np.float32(1.0) / f)


def set_caffe_weights(model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Load Caffe-layout ``weights``. A BatchNorm's mean/variance go into Keras' moving
    statistics divided by the factor blob, as Caffe's forward uses them (Keras keeps no factor);
    the factor itself is kept on the model (``caffe_constants``)."""
    blobs = model.blob_variables()
    factors = model.statistic_factors()
    constants = sorted(
        {k for k in factors.values()}
        | {b.key for spec in model.specs for b in spec.statistics} - set(blobs)
    )
    missing = [k for k in [*blobs, *constants] if k not in weights]
    if missing:
        raise ValueError(f"initial weights lack {missing}")
    model.caffe_constants = {k: np.array(weights[k], np.float32) for k in constants}
    model.caffe_statistics = {}
    direct = _loaded_in_place(blobs, factors)
    for key, (var, ltype, idx) in blobs.items():
        if key in direct:
            _check_shape(key, var, keras_shape(ltype, idx, np.shape(weights[key])))
            continue
        value = caffe_to_keras(ltype, idx, np.asarray(weights[key], np.float32))
        if key in factors:
            value = value * _inverse_factor(weights[factors[key]])
        value = _aligned_copy(value, _np_dtype(var))
        if key in factors:  # read back as loaded while Keras leaves it alone (see below)
            model.caffe_statistics[key] = (value.copy(), np.array(weights[key], _np_dtype(var)))
        _check_shape(key, var, value.shape)
        var.assign(_assignable(value))
    if direct:
        from caffe2tf.rule.tf_executor import shared_tensor

        load = _IN_PLACE_LOADERS.get(model)
        if load is None or load[0] != tuple(direct):
            load = _IN_PLACE_LOADERS[model] = (tuple(direct), _in_place_loader(blobs, direct))
        f32 = np.float32
        load[1]([shared_tensor(np.asarray(weights[k], f32), f32) for k in direct])


def _check_shape(key: str, var: Any, shape: Sequence[int]) -> None:
    if tuple(shape) != tuple(var.shape):
        raise ValueError(
            f"{key}: Keras variable {var.path} has shape {tuple(var.shape)}, "
            f"the Caffe blob gives {tuple(shape)}"
        )


def keras_shape(layer_type: str, index: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The Keras layout's shape of a Caffe blob of ``shape`` (:func:`keras_axes`)."""
    axes = keras_axes(layer_type, index)
    return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


#: per model on TensorFlow, the blobs it loads in place and the compiled loader
_IN_PLACE_LOADERS: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _loaded_in_place(blobs: Mapping[str, Any], factors: Mapping[str, str]) -> list[str]:
    """The blobs :func:`set_caffe_weights` loads with one compiled program writing into the
    variables (:func:`caffe2tf.rule.tf_executor.in_place_loader`): on TensorFlow, for a net of
    at least :data:`caffe2tf.rule.tf_executor.XLA_RESET_MIN_ELEMENTS` weights, every blob but
    the BatchNorm statistics (divided by their factor on the host, as before). Elsewhere none:
    each is assigned from a host array in Keras' layout."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return []
    from caffe2tf.rule.tf_executor import XLA_RESET_MIN_ELEMENTS

    size = sum(int(np.prod(var.shape)) for var, _, _ in blobs.values())
    if size < XLA_RESET_MIN_ELEMENTS:
        return []
    return [k for k in blobs if k not in factors]


def _in_place_loader(blobs: Mapping[str, Any], keys: Sequence[str]) -> Any:
    from caffe2tf.rule.tf_executor import in_place_loader

    return in_place_loader(
        [blobs[k][0] for k in keys], [keras_axes(blobs[k][1], blobs[k][2]) for k in keys]
    )


def _aligned_copy(value: np.ndarray, dtype: type) -> np.ndarray:
    """``value`` in ``dtype``, C order, in a buffer that TensorFlow can share
    (:func:`caffe2tf.rule.tf_executor.aligned_empty`)."""
    from caffe2tf.rule.tf_executor import aligned_empty

    out = aligned_empty(value.shape, dtype)
    out[...] = value
    return out


def _assignable(value: np.ndarray) -> Any:
    """``value`` as ``Variable.assign`` takes it without a copy of its own: on TensorFlow a
    tensor sharing the buffer (:func:`caffe2tf.rule.tf_executor.shared_tensor`), which the
    variable adopts as its own storage (a NumPy array would be converted to a tensor first:
    VGG16's fc6, 392 MiB more at every run's reset); elsewhere the array. A big net on
    TensorFlow is loaded in place instead (:func:`_loaded_in_place`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return value
    from caffe2tf.rule.tf_executor import shared_tensor

    return shared_tensor(value, value.dtype)


def _np_dtype(var: Any) -> type:
    """The NumPy dtype of a mirror variable (float32, or float64 in the probes)."""
    return np.float64 if "float64" in str(var.dtype) else np.float32


def _to_numpy(var: Any) -> np.ndarray:
    import keras

    value = var.value
    if keras.backend.backend() == "tensorflow":
        return np.array(value.numpy(), dtype=_np_dtype(var))  # no __array__ deprecation path
    return np.array(keras.ops.convert_to_numpy(value), dtype=_np_dtype(var))


def get_caffe_weights(model: Any) -> Weights:
    """Caffe-layout weights: the inverse of :func:`set_caffe_weights` (moving statistics times
    the factor; the factor, which Keras does not hold, as loaded). A moving statistic that
    still holds what was loaded reads back as the Caffe value loaded: dividing by the factor
    and multiplying back is not exact in floating point, and the float64 probes, judged
    with no floor, would see that rounding next to a decay term of 1e-7 of the weights."""
    factors = model.statistic_factors()
    loaded = getattr(model, "caffe_statistics", {})
    out = {}
    for key, (var, ltype, idx) in model.blob_variables().items():
        value = keras_to_caffe(ltype, idx, _to_numpy(var))
        if key in loaded and np.array_equal(value, loaded[key][0]):
            out[key] = loaded[key][1].copy()
            continue
        if key in factors:
            value = (
                value * np.asarray(model.caffe_constants[factors[key]], np.float32).reshape(-1)[0]
            ).astype(np.float32)
        out[key] = value
    out.update({k: v.copy() for k, v in model.caffe_constants.items()})
    return out


class CaffeWeightsView(Mapping[str, np.ndarray]):
    """:func:`get_caffe_weights`, one blob at a time: each blob is read off its variable when
    it is looked up (a transposed view, not a copy), so a comparison that walks the blobs in
    turn never holds the whole net twice (VGG16: 552 MB per copy)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.blobs = model.blob_variables()
        self.factors = model.statistic_factors()
        self.loaded = getattr(model, "caffe_statistics", {})
        self.constants = model.caffe_constants

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.constants:
            return self.constants[key]
        var, ltype, idx = self.blobs[key]
        value = _to_numpy(var)
        if idx == 0 and ltype == "InnerProduct":
            value = value.T
        elif idx == 0 and ltype in _SPATIAL:
            value = value.transpose(3, 2, 0, 1)
        if key in self.loaded and np.array_equal(value, self.loaded[key][0]):
            return self.loaded[key][1]
        if key in self.factors:
            factor = np.asarray(self.constants[self.factors[key]], np.float32).reshape(-1)[0]
            value = (value * factor).astype(np.float32)
        return value

    def raw(self, key: str) -> tuple[Any, tuple[int, ...] | None] | None:
        """The backend value of a blob's variable and the permutation that puts it in Caffe
        layout, where the blob is that variable as it is (not a loaded statistic, a scaled
        moving statistic or a constant); else None (then look the blob up)."""
        if key in self.constants or key in self.factors or key in self.loaded:
            return None
        var, ltype, idx = self.blobs[key]
        return var.value, keras_layout_perm(ltype, idx)

    def __iter__(self) -> Any:
        return iter([*self.blobs, *self.constants])

    def __len__(self) -> int:
        return len(self.blobs) + len(self.constants)


# ---- gradient streams into micro-batches -----------------------------------------------------


def trained_pairs(model: Any) -> list[tuple[str, Any]]:
    """(caffe key, variable) for the mapped variables that are trainable, in feed order."""
    blobs = model.blob_variables()
    trainable = {id(v) for v in model.trainable_variables}
    return [(k, blobs[k][0]) for k in model.feed_order() if id(blobs[k][0]) in trainable]


def keras_grads(model: Any, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    blobs = model.blob_variables()
    out = {}
    for key, (var, ltype, idx) in blobs.items():
        g = part.get(key)
        dt = _np_dtype(var)
        out[key] = (
            np.zeros(tuple(var.shape), dt)
            if g is None
            else caffe_to_keras(ltype, idx, np.asarray(g, dt))
        )
    return out
