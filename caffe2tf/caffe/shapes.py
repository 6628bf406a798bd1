"""Shape inference for BVLC Caffe layers: top shapes and learnable-blob shapes.

Caffe learns a layer's blob shapes in ``Layer::SetUp`` from the bottoms' shapes; we reproduce the
arithmetic of each BVLC layer's ``LayerSetUp``/``Reshape`` (paths below are relative to BVLC/caffe
``src/caffe/layers/`` at 9b891540, identical to Debian's 1.0.0+git20180821.99bd997 for these files).

A *shape* here is ``None`` (rank unknown) or a tuple whose entries are ``int`` or ``None`` (that
dimension unknown). Unknown dimensions propagate: a convolution whose input height is unknown
still has a fully known weight as long as the channel count is known.

Each rule is a pure function ``rule(layer, bottoms) -> LayerShapes`` registered in
:data:`RULES` by layer type. A rule raises :class:`ShapeError` for a configuration Caffe itself
rejects (its ``CHECK`` failures); the net builder turns that into an ``InputError`` with the
layer's location.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Dim = int | None
Shape = tuple[Dim, ...] | None


class ShapeError(Exception):
    """A layer configuration that Caffe rejects during ``SetUp`` (a fatal ``CHECK``)."""


@dataclass(frozen=True)
class LayerShapes:
    """What a layer produces: its top shapes and its blobs (learnable params) shapes.

    ``blobs`` lists one shape per blob (the blob *count* is always known for a registered type).
    ``unknown`` is a human-readable reason when some shape could not be inferred (else "").
    ``assumed`` states an assumption made to go on (e.g. a 4-D input of unknown rank), else "".
    """

    tops: tuple[Shape, ...]
    blobs: tuple[Shape, ...] = ()
    unknown: str = ""
    assumed: str = ""


Rule = Callable[[object, Sequence[Shape]], LayerShapes]
RULES: dict[str, Rule] = {}

#: Data layers whose top shapes depend on the contents of files or databases.
DATA_DEPENDENT = frozenset({"Data", "ImageData", "HDF5Data", "WindowData"})


def register(*types: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# helpers


def known(shape: Shape) -> bool:
    """True when the rank and every dimension are known."""
    return shape is not None and all(d is not None for d in shape)


def prod(dims: Sequence[Dim]) -> Dim:
    """Product of dims (Caffe's ``Blob::count``); None if any is unknown."""
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= d
    return out


def _cdiv(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero), as in Caffe's output-size formulas."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def canonical_axis(axis: int, rank: int) -> int:
    """``Blob::CanonicalAxisIndex`` (include/caffe/blob.hpp:99-110): negative axes count back."""
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} out of range for {rank}-D blob")
    return axis + rank if axis < 0 else axis


def dim(shape: Shape, i: int) -> Dim:
    if shape is None:
        return None
    return shape[i]


def _n_tops(layer) -> int:
    return len(layer.top)


def same_as_bottom(layer, bottoms: Sequence[Shape]) -> LayerShapes:
    first = bottoms[0] if bottoms else None
    return LayerShapes(tuple(first for _ in layer.top))


def _blob_shape(bs) -> tuple[int, ...]:
    return tuple(int(d) for d in bs.dim)


def _legacy_channels(shape: Shape) -> Dim:
    """``Blob::channels()`` = ``shape(1)`` (blob.hpp legacy accessors; needs >= 2 axes)."""
    if shape is None or len(shape) < 2:
        return None
    return shape[1]


# ---------------------------------------------------------------------------------------------
# element-wise and other layers whose top has bottom[0]'s shape and no blobs

ELEMENTWISE = tuple(
    "AbsVal BNLL Clip Dropout ELU Exp Log Power ReLU Sigmoid Swish TanH Threshold MVN LRN "
    "Softmax Split".split()
)
register(*ELEMENTWISE)(same_as_bottom)


@register("Eltwise")
def eltwise(layer, bottoms):
    """eltwise_layer.cpp:31-38: every bottom must have bottom[0]'s shape; the top has it too."""
    first = bottoms[0] if bottoms else None
    for b in bottoms[1:]:
        if first is not None and b is not None:
            same = len(b) == len(first) and all(
                None in (u, v) or u == v for u, v in zip(b, first, strict=True)
            )
            if not same:
                raise ShapeError(f"Eltwise bottoms must all have the same shape ({first} vs {b})")
    return LayerShapes((first,))


# ---------------------------------------------------------------------------------------------
# data / input layers


@register("Input")
def input_layer(layer, bottoms):
    """input_layer.cpp:10-22: one shape for all tops, or one per top."""
    shapes = [_blob_shape(s) for s in layer.input_param.shape]
    n = _n_tops(layer)
    if not shapes:
        return LayerShapes(tuple(None for _ in range(n)), unknown="Input without shape")
    if len(shapes) not in (1, n):
        raise ShapeError(
            f"Number of shapes must be 1 or equal to the number of tops: {n} tops vs. "
            f"{len(shapes)} shapes"
        )
    return LayerShapes(tuple(shapes[0 if len(shapes) == 1 else i] for i in range(n)))


@register("DummyData")
def dummy_data(layer, bottoms):
    """dummy_data_layer.cpp:14-90: ``shape`` (1 or per top) or legacy num/channels/height/width."""
    p = layer.dummy_data_param
    n = _n_tops(layer)
    legacy = bool(len(p.num) or len(p.channels) or len(p.height) or len(p.width))
    tops = []
    if legacy:
        if len(p.shape):
            raise ShapeError("Both shape and legacy fields were specified")
        for field in ("num", "channels", "height", "width"):
            if len(getattr(p, field)) not in (1, n):
                raise ShapeError(f"Must specify '{field}' once, or once per top blob ({n})")

        def pick(vals, i):
            return int(vals[0 if len(vals) == 1 else i])

        for i in range(n):
            tops.append((pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i)))
    else:
        if len(p.shape) not in (1, n):
            raise ShapeError(f"Must specify 'shape' once, or once per top blob ({n})")
        for i in range(n):
            tops.append(_blob_shape(p.shape[0 if len(p.shape) == 1 else i]))
    return LayerShapes(tuple(tops))


@register("MemoryData")
def memory_data(layer, bottoms):
    """memory_data_layer.cpp:12-28: data (batch, channels, height, width), label (batch,)."""
    p = layer.memory_data_param
    b = int(p.batch_size)
    tops = [(b, int(p.channels), int(p.height), int(p.width)), (b,)]
    return LayerShapes(tuple(tops[: _n_tops(layer)]))


def _transform_hw(layer) -> tuple[Dim, Dim]:
    crop = int(layer.transform_param.crop_size)
    return (crop, crop) if crop else (None, None)


def _transform_channels(layer) -> Dim:
    """The channel count the transform parameters state, else None: ``force_color`` (3) or
    ``force_gray`` (1) decode every encoded datum to that many channels
    (data_transformer.cpp:497-518 InferBlobShape), and ``mean_value`` given more than once
    must be given once per channel (data_transformer.cpp:30-36, :97-100 CHECKs)."""
    t = layer.transform_param
    if t.force_color:
        return 3
    if t.force_gray:
        return 1
    if len(t.mean_value) > 1:
        return len(t.mean_value)
    return None


@register("Data")
def data_layer(layer, bottoms):
    """data_layer.cpp:33-56: (batch, datum channels, H, W) where H=W=crop_size if set, else the
    datum's; the label top is (batch,). Channels come from the database unless the transform
    parameters state them (:func:`_transform_channels`); uncropped sizes from the database."""
    b = int(layer.data_param.batch_size)
    h, w = _transform_hw(layer)
    c = _transform_channels(layer)
    tops = [(b, c, h, w), (b,)]
    unknown = "" if c is not None and h is not None else "shape depends on the database"
    return LayerShapes(tuple(tops[: _n_tops(layer)]), unknown=unknown)


@register("ImageData")
def image_data(layer, bottoms):
    """image_data_layer.cpp:63-97 with data_transformer InferBlobShape: channels 3 if is_color
    else 1; H/W = crop_size, else new_height/new_width when set, else the image's."""
    p = layer.image_data_param
    b = int(p.batch_size)
    c = 3 if p.is_color else 1
    h, w = _transform_hw(layer)
    if h is None and p.new_height and p.new_width:
        h, w = int(p.new_height), int(p.new_width)
    tops = [(b, c, h, w), (b,)]
    unknown = "" if h is not None else "image size depends on the image files"
    return LayerShapes(tuple(tops[: _n_tops(layer)]), unknown=unknown)


@register("WindowData")
def window_data(layer, bottoms):
    """window_data_layer.cpp:170-186: (batch, 3, crop_size, crop_size), label (batch,)."""
    p = layer.window_data_param
    b = int(p.batch_size)
    crop = int(layer.transform_param.crop_size) or int(p.crop_size)
    tops = [(b, 3, crop, crop), (b,)]
    return LayerShapes(tuple(tops[: _n_tops(layer)]))


@register("HDF5Data")
def hdf5_data(layer, bottoms):
    """hdf5_data_layer.cpp:92-113: each top is (batch, dataset dims[1:]) read from the files."""
    b = int(layer.hdf5_data_param.batch_size)
    return LayerShapes(
        tuple(None for _ in layer.top), unknown=f"HDF5 dataset shapes (batch {b}) come from files"
    )


#: the conventional input where the data decide (a Data layer's database, HDF5 files, a
#: Python layer): an ImageNet-sized 3-channel image, a label per item (docs/verify.md)
CONVENTIONAL_CHANNELS = 3
CONVENTIONAL_SIZE = 224


def feeds_the_net(layer) -> bool:
    """A layer that brings data into the net: a data layer type, or a layer with no bottoms
    whose type has no rule here (a Python data layer; a fork's ``VideoData`` or
    ``DenseImageData`` read with ``--lenient``)."""
    if layer.type in DATA_LAYERS:
        return True
    return not len(layer.bottom) and layer.type not in RULES


#: every BVLC data layer type (tops made from outside the net)
DATA_LAYERS = frozenset(
    {"Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DummyData", "Input"}
)


#: the channel counts tried, in order, where a data layer's is unknown: the first that gives a
#: net Caffe would build (a database of image pairs has 2, of gray images 1)
CHANNEL_GUESSES = (3, 1, 2, 4)


def conventional_tops(
    layer, tops: Sequence[Shape], batch: Dim = None, channels: int = CONVENTIONAL_CHANNELS
) -> tuple[tuple[Shape, ...], list[str]]:
    """``tops`` with every unknown dimension of a data layer's top filled with the conventional
    value, and one phrase per filled dimension naming it: top 0 is an image batch
    ``(N, C, H, W)`` (C ``channels``, 3 by default, H = W 224, N 1 when the batch size is
    unknown), every other top a
    label per item ``(N,)``. Only the shapes of the learnable blobs depend on these, and
    only through C, H and W, so any value gives both update rules the same shapes."""
    n = batch if batch else 1
    out: list[Shape] = []
    said: list[str] = []
    image = ("batch", "channels", "height", "width")
    fill = (n, channels, CONVENTIONAL_SIZE, CONVENTIONAL_SIZE)
    for i, top in enumerate(tops):
        name = layer.top[i] if i < len(layer.top) else f"#{i}"
        if top is None:
            top = (None, None, None, None) if i == 0 else (None,)
        filled = list(top)
        words = []
        for j, d in enumerate(top):
            if d is not None:
                continue
            if j == 0:
                filled[j] = n
            else:
                filled[j] = fill[j] if i == 0 and j < 4 else 1
            label = image[j] if j == 0 or (i == 0 and len(top) == 4) else f"dimension {j}"
            words.append(f"{label} {filled[j]}")
        if words:
            said.append(f"{', '.join(words)} of top '{name}'")
        out.append(tuple(filled))
    return tuple(out), said


# ---------------------------------------------------------------------------------------------
# layers with learnable blobs


def _spatial_param(conv, name: str, n: int, default: int) -> list[int]:
    """base_conv_layer.cpp:23-107: a repeated field given once or once per spatial dim, or the
    ``_h``/``_w`` pair (2-D only)."""
    h, w = name + "_h", name + "_w"
    rep = "kernel_size" if name == "kernel" else name
    values = list(getattr(conv, rep))
    if conv.HasField(h) or conv.HasField(w):
        if n != 2:
            raise ShapeError(f"{h} & {w} can only be used for 2D convolution.")
        if values:
            raise ShapeError(f"Either {rep} or {h}/{w} should be specified; not both.")
        return [int(getattr(conv, h)), int(getattr(conv, w))]
    if name == "kernel":
        if len(values) not in (1, n):
            raise ShapeError(
                f"kernel_size must be specified once, or once per spatial dimension "
                f"(kernel_size specified {len(values)} times; {n} spatial dims)."
            )
    elif len(values) not in (0, 1, n):
        raise ShapeError(f"{rep} must be specified once, or once per spatial dimension")
    if not values:
        return [default] * n
    return [int(values[0 if len(values) == 1 else i]) for i in range(n)]


def _guess_spatial_axes(conv) -> int | None:
    """Number of spatial axes from the kernel spec alone (when the bottom's rank is unknown)."""
    if conv.HasField("kernel_h") or conv.HasField("kernel_w"):
        return 2
    if len(conv.kernel_size) > 1:
        return len(conv.kernel_size)
    return None


def _conv_common(layer, bottoms, reverse: bool) -> LayerShapes:
    conv = layer.convolution_param
    x = bottoms[0] if bottoms else None
    num_output = int(conv.num_output)
    if num_output <= 0:
        raise ShapeError("num_output must be > 0 (base_conv_layer.cpp:119)")
    group = int(conv.group)
    bias = bool(conv.bias_term)
    assumed = ""
    if x is None:
        n_sp = _guess_spatial_axes(conv)
        if n_sp is None and int(conv.axis) in (1, -3):
            # The bottom's rank is unknown (e.g. a Python data layer): assume the usual 4-D
            # (N, C, H, W) input, so that the layers after this one get known channel counts.
            n_sp = 2
            assumed = "input of unknown rank assumed 4-D (N, C, H, W)"
        channels: Dim = None
        spatial_in: list[Dim] = [None] * (n_sp or 0)
        axis_ok = n_sp is not None and int(conv.axis) in (1, -(n_sp + 1))
        lead: Shape = (None,) if axis_ok else None
    else:
        ax = canonical_axis(int(conv.axis), len(x))
        n_sp = len(x) - ax - 1
        if n_sp < 0:
            raise ShapeError("convolution input has no channel axis")
        channels = x[ax]
        spatial_in = list(x[ax + 1 :])
        lead = x[:ax]
    if n_sp is None:
        blobs = [None] + ([(num_output,)] if bias else [])
        return LayerShapes(
            tuple(None for _ in layer.top), tuple(blobs), unknown="input rank unknown"
        )
    kernel = _spatial_param(conv, "kernel", n_sp, 0)
    if any(k <= 0 for k in kernel):
        raise ShapeError("Filter dimensions must be nonzero.")
    stride = _spatial_param(conv, "stride", n_sp, 1)
    if any(s <= 0 for s in stride):
        raise ShapeError("Stride dimensions must be nonzero.")
    pad = _spatial_param(conv, "pad", n_sp, 0)
    dil_values = list(conv.dilation)
    if len(dil_values) not in (0, 1, n_sp):
        raise ShapeError("dilation must be specified once, or once per spatial dimension")
    dilation = [
        int(dil_values[0 if len(dil_values) == 1 else i]) if dil_values else 1 for i in range(n_sp)
    ]
    if channels is not None and channels % group:
        raise ShapeError(f"channels ({channels}) must be a multiple of group ({group})")
    if num_output % group:
        raise ShapeError("Number of output should be multiples of group.")
    if reverse:  # deconv_layer.cpp / base_conv_layer.cpp:124-130
        out_ch, in_ch = channels, num_output
    else:
        out_ch, in_ch = num_output, channels
    weight = (out_ch, None if in_ch is None else in_ch // group, *kernel)
    blobs: list[Shape] = [weight] + ([(num_output,)] if bias else [])
    out_sp: list[Dim] = []
    for i in range(n_sp):
        size = spatial_in[i] if i < len(spatial_in) else None
        ext = dilation[i] * (kernel[i] - 1) + 1
        if size is None:
            out_sp.append(None)
        elif reverse:  # deconv_layer.cpp:10-22 compute_output_shape
            out_sp.append(stride[i] * (size - 1) + ext - 2 * pad[i])
            if out_sp[-1] < 0:
                raise ShapeError(f"output size {out_sp[-1]} < 0 (Blob::Reshape CHECK_GE)")
        else:  # conv_layer.cpp:10-24 compute_output_shape (C++ int division)
            out_sp.append(_cdiv(size + 2 * pad[i] - ext, stride[i]) + 1)
        if out_sp[-1] is not None and out_sp[-1] < 0:
            raise ShapeError(f"output size {out_sp[-1]} < 0 (Blob::Reshape CHECK_GE)")
    top: Shape = None if lead is None else (*lead, num_output, *out_sp)
    unknown = "" if all(known(b) for b in blobs) else "input channels unknown"
    return LayerShapes(tuple(top for _ in layer.top), tuple(blobs), unknown, assumed)


@register("Convolution")
def convolution(layer, bottoms):
    """base_conv_layer.cpp:12-182: weight (num_output, C/group, *kernel), bias (num_output,)
    when bias_term; output size floor((in + 2p - (d(k-1)+1))/s) + 1 (conv_layer.cpp:10-24).
    Every bottom gets its own top of the same shape."""
    return _conv_common(layer, bottoms, reverse=False)


@register("Deconvolution")
def deconvolution(layer, bottoms):
    """deconv_layer.cpp:10-22 + base_conv_layer.cpp:124-139: weight (C, num_output/group,
    *kernel); output size s(in-1) + d(k-1)+1 - 2p."""
    return _conv_common(layer, bottoms, reverse=True)


@register("InnerProduct")
def inner_product(layer, bottoms):
    """inner_product_layer.cpp:10-75: K = count(axis..); weight (N, K), or (K, N) when
    ``transpose``; bias (N,); top = bottom.shape[:axis] + (N,)."""
    p = layer.inner_product_param
    n = int(p.num_output)
    x = bottoms[0] if bottoms else None
    if x is None:
        k: Dim = None
        top: Shape = None
    else:
        ax = canonical_axis(int(p.axis), len(x))
        k = prod(x[ax:])
        top = (*x[:ax], n)
    weight = (k, n) if p.transpose else (n, k)
    blobs = [weight] + ([(n,)] if p.bias_term else [])
    return LayerShapes((top,), tuple(blobs), "" if k is not None else "input size unknown")


@register("Embed")
def embed(layer, bottoms):
    """embed_layer.cpp:10-56: weight (input_dim, num_output), bias (num_output,) when bias_term;
    top = bottom.shape + (num_output,)."""
    p = layer.embed_param
    n, k = int(p.num_output), int(p.input_dim)
    x = bottoms[0] if bottoms else None
    blobs = [(k, n)] + ([(n,)] if p.bias_term else [])
    return LayerShapes((None if x is None else (*x, n),), tuple(blobs))


def _axes_slice(x: Shape, axis: int, num_axes: int) -> Shape:
    if x is None:
        return None
    ax = canonical_axis(axis, len(x))
    if num_axes < -1:
        raise ShapeError("num_axes must be non-negative, or -1 to extend to the end of bottom[0]")
    if num_axes >= 0 and len(x) < ax + num_axes:
        raise ShapeError(f"blob's shape extends past bottom[0]'s shape (axis {ax})")
    return tuple(x[ax:]) if num_axes == -1 else tuple(x[ax : ax + num_axes])


@register("Scale")
def scale(layer, bottoms):
    """scale_layer.cpp:12-73: with one bottom, blobs[0] = scale of shape
    bottom.shape[axis:axis+num_axes]; with ``bias_term`` an extra bias blob whose shape is
    bottom[0].shape[axis:axis+k], k = num_axes (one bottom) or bottom[1]'s rank (two bottoms).
    With two bottoms the scale comes from bottom[1] and only the bias (if any) is a blob."""
    p = layer.scale_param
    x = bottoms[0] if bottoms else None
    blobs: list[Shape] = []
    if len(bottoms) == 1:
        blobs.append(_axes_slice(x, int(p.axis), int(p.num_axes)))
    if p.bias_term:
        if len(bottoms) > 1:
            b1 = bottoms[1]
            blobs.append(None if b1 is None else _axes_slice(x, int(p.axis), len(b1)))
        else:
            blobs.append(_axes_slice(x, int(p.axis), int(p.num_axes)))
    unknown = "" if all(known(b) for b in blobs) else "input shape unknown"
    return LayerShapes((x,), tuple(blobs), unknown)


@register("Bias")
def bias(layer, bottoms):
    """bias_layer.cpp:10-37: with one bottom, one blob of shape bottom.shape[axis:axis+num_axes];
    with two bottoms no blobs."""
    p = layer.bias_param
    x = bottoms[0] if bottoms else None
    blobs: list[Shape] = []
    if len(bottoms) == 1:
        blobs.append(_axes_slice(x, int(p.axis), int(p.num_axes)))
    unknown = "" if all(known(b) for b in blobs) else "input shape unknown"
    return LayerShapes((x,), tuple(blobs), unknown)


@register("PReLU")
def prelu(layer, bottoms):
    """prelu_layer.cpp:10-40: one blob, a scalar (shape ()) when channel_shared, else
    (channels,) with channels = bottom.shape(1)."""
    x = bottoms[0] if bottoms else None
    if x is not None and len(x) < 2:
        raise ShapeError("Number of axes of bottom blob must be >=2.")
    w: Shape = (
        ()
        if layer.prelu_param.channel_shared
        else (None if _legacy_channels(x) is None else (_legacy_channels(x),))
    )
    return LayerShapes((x,), (w,), "" if known(w) else "input channels unknown")


@register("BatchNorm")
def batch_norm(layer, bottoms):
    """batch_norm_layer.cpp:10-49: blobs mean (C,), variance (C,), factor (1,), C =
    bottom.shape(1) (1 for a 1-D bottom)."""
    x = bottoms[0] if bottoms else None
    c: Dim = None if x is None else (1 if len(x) == 1 else x[1])
    stat: Shape = None if c is None else (c,)
    blobs: tuple[Shape, ...] = (stat, stat, (1,))
    if nvidia_scale_bias(layer):
        blobs += (stat, stat)
    return LayerShapes((x,), blobs, "" if c is not None else "channels unknown")


def nvidia_scale_bias(layer) -> bool:
    """NVIDIA Caffe's BatchNorm owns a learnable scale and bias (blobs 3 and 4, shape (C,)) when
    ``scale_bias`` is true or a scale or bias filler is given (NVIDIA/caffe
    ``src/caffe/layers/batch_norm_layer.cpp:26-56``); BVLC's BatchNormParameter has none."""
    p = layer.batch_norm_param
    names = {f.name for f in p.DESCRIPTOR.fields}
    if "scale_bias" not in names:
        return False
    return bool(p.scale_bias or p.HasField("scale_filler") or p.HasField("bias_filler"))


@register("Parameter")
def parameter(layer, bottoms):
    """parameter_layer.hpp:17-33: one blob of parameter_param.shape; the top is that blob."""
    shape = _blob_shape(layer.parameter_param.shape)
    return LayerShapes((shape,), (shape,))


def _recurrent(layer, bottoms, gates: int, rnn: bool) -> LayerShapes:
    """recurrent_layer.cpp:14-165 + lstm_layer.cpp / rnn_layer.cpp FillUnrolledNet.

    The layer's blobs are the owners of its unrolled net's params in creation order:
    LSTM: W_xc (4H, D), b_c (4H,), [W_xc_static (4H, S)], W_hc (4H, H);
    RNN:  W_xh (H, D), b_h (H,), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H,);
    with D = x.count(2) (InnerProduct axis 2), S = x_static.count(1) (axis 1),
    H = recurrent_param.num_output. The static input is present when there are more than
    2 + (expose_hidden ? #recurrent states : 0) bottoms (recurrent_layer.cpp:42-48).
    """
    p = layer.recurrent_param
    h = int(p.num_output)
    if h <= 0:
        raise ShapeError("num_output must be positive")
    x = bottoms[0] if bottoms else None
    if x is not None and len(x) < 2:
        raise ShapeError("bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...)")
    cont = bottoms[1] if len(bottoms) > 1 else None
    if cont is not None:  # recurrent_layer.cpp:23-26
        if len(cont) != 2:
            raise ShapeError("bottom[1] must have exactly 2 axes -- (#timesteps, #streams)")
        if x is not None and None not in (*x[:2], *cont) and tuple(x[:2]) != tuple(cont):
            raise ShapeError(f"bottom[1] {cont} must be (T, N) = {tuple(x[:2])}")
    n_recur = 1 if rnn else 2
    static = len(bottoms) > 2 + (n_recur if p.expose_hidden else 0)
    d = None if x is None else prod(x[2:])
    g = gates * h
    blobs: list[Shape] = [(g, d) if d is not None else None, (g,)]
    if static:
        xs = bottoms[2]
        s = None if xs is None else prod(xs[1:])
        blobs.append((g, s) if s is not None else None)
    blobs.append((g, h))
    if rnn:
        blobs += [(h, h), (h,)]
    top: Shape = None if x is None else (x[0], x[1], h)
    tops = [top]
    for _ in range(len(layer.top) - 1):
        tops.append(None if x is None else (1, x[1], h))
    unknown = "" if all(known(b) for b in blobs) else "input size unknown"
    return LayerShapes(tuple(tops), tuple(blobs), unknown)


@register("LSTM")
def lstm(layer, bottoms):
    return _recurrent(layer, bottoms, gates=4, rnn=False)


@register("RNN")
def rnn(layer, bottoms):
    return _recurrent(layer, bottoms, gates=1, rnn=True)


# ---------------------------------------------------------------------------------------------
# shape-only layers


@register("Pooling")
def pooling(layer, bottoms):
    """pooling_layer.cpp:14-124: needs a 4-D bottom; out = ceil((in + 2p - k)/s) + 1 (CEIL,
    default) or floor (FLOOR); with padding, the last window must start inside the image
    (else one fewer). global_pooling: k = (H, W), out 1x1. A MAX pooling second top (mask) has
    the same shape."""
    p = layer.pooling_param
    x = bottoms[0] if bottoms else None
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ShapeError("With Global_pooling: true Filter size cannot specified")
    else:
        if p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise ShapeError("Filter size is kernel_size OR kernel_h and kernel_w; not both")
    if p.HasField("pad_h") or p.HasField("pad_w"):
        if p.HasField("pad") or not (p.HasField("pad_h") and p.HasField("pad_w")):
            raise ShapeError("pad is pad OR pad_h and pad_w are required.")
        pad = (int(p.pad_h), int(p.pad_w))
    else:
        pad = (int(p.pad), int(p.pad))
    if p.HasField("stride_h") or p.HasField("stride_w"):
        if p.HasField("stride") or not (p.HasField("stride_h") and p.HasField("stride_w")):
            raise ShapeError("Stride is stride OR stride_h and stride_w are required.")
        stride = (int(p.stride_h), int(p.stride_w))
    else:
        stride = (int(p.stride), int(p.stride))
    if x is not None and len(x) != 4:
        raise ShapeError("Input must have 4 axes, corresponding to (num, channels, height, width)")
    if x is None:
        return LayerShapes(tuple(None for _ in layer.top))
    if p.global_pooling:
        if pad != (0, 0) or stride != (1, 1):
            raise ShapeError("With Global_pooling: true; only pad = 0 and stride = 1")
        return LayerShapes(tuple((x[0], x[1], 1, 1) for _ in layer.top))
    kernel = (
        (int(p.kernel_size),) * 2
        if p.HasField("kernel_size")
        else (int(p.kernel_h), int(p.kernel_w))
    )
    if min(kernel) <= 0:
        raise ShapeError("Filter dimensions cannot be zero.")
    if min(stride) <= 0:
        raise ShapeError("stride must be positive")
    ceil_mode = getattr(p, "round_mode", 0) == 0  # RoundMode CEIL = 0 (default), FLOOR = 1
    out: list[Dim] = []
    for i in range(2):
        size = x[2 + i]
        if size is None:
            out.append(None)
            continue
        span = size + 2 * pad[i] - kernel[i]
        o = (math.ceil(span / stride[i]) if ceil_mode else math.floor(span / stride[i])) + 1
        if pad[i] and (o - 1) * stride[i] >= size + pad[i]:
            o -= 1
        if o < 0:
            raise ShapeError(f"pooled size {o} < 0 (Blob::Reshape CHECK_GE)")
        out.append(o)
    return LayerShapes(tuple((x[0], x[1], out[0], out[1]) for _ in layer.top))


@register("SPP")
def spp(layer, bottoms):
    """spp_layer.cpp:60-185: pools at 2^i x 2^i bins for i < pyramid_height, flattens and
    concatenates: top (N, C * sum(4^i))."""
    x = bottoms[0] if bottoms else None
    h = int(layer.spp_param.pyramid_height)
    if x is None:
        return LayerShapes((None,))
    if len(x) != 4:
        raise ShapeError("SPP input must have 4 axes")
    c = x[1]
    bins = sum(4**i for i in range(h))
    return LayerShapes(((x[0], None if c is None else c * bins),))


@register("Concat")
def concat(layer, bottoms):
    """concat_layer.cpp:17-50: sum along ``axis`` (or legacy ``concat_dim``), others equal."""
    p = layer.concat_param
    if any(b is None for b in bottoms):
        return LayerShapes((None,))
    rank = len(bottoms[0])
    axis = int(p.concat_dim) if p.HasField("concat_dim") else canonical_axis(int(p.axis), rank)
    for b in bottoms[1:]:
        if len(b) != rank:
            raise ShapeError("All inputs must have the same #axes.")
    for b in bottoms[1:]:
        for j in range(rank):
            if j != axis and None not in (b[j], bottoms[0][j]) and b[j] != bottoms[0][j]:
                raise ShapeError(
                    "All inputs must have the same shape, except at concat_axis "
                    f"({bottoms[0]} vs {b})"
                )
    sizes = [b[axis] for b in bottoms]
    total = None if any(v is None for v in sizes) else sum(sizes)  # type: ignore[arg-type]
    top = list(bottoms[0])
    top[axis] = total
    return LayerShapes((tuple(top),))


@register("Slice")
def slice_layer(layer, bottoms):
    """slice_layer.cpp:22-68: along ``axis`` (or legacy ``slice_dim``) at slice_point, or into
    equal parts when no slice_point is given."""
    p = layer.slice_param
    x = bottoms[0] if bottoms else None
    n = _n_tops(layer)
    if x is None:
        return LayerShapes(tuple(None for _ in range(n)))
    axis = int(p.slice_dim) if p.HasField("slice_dim") else canonical_axis(int(p.axis), len(x))
    total = x[axis]
    points = [int(v) for v in p.slice_point]
    sizes: list[Dim]
    if points:
        if len(points) != n - 1:
            raise ShapeError("slice_point count must be the number of tops - 1")
        prev = 0
        sizes = []
        for pt in points:
            if pt <= prev:
                raise ShapeError("slice_point must be increasing")
            sizes.append(pt - prev)
            prev = pt
        sizes.append(None if total is None else total - prev)
    else:
        if total is not None and total % n:
            raise ShapeError(f"Number of top blobs ({n}) should evenly divide input slice axis")
        sizes = [None if total is None else total // n] * n
    tops = []
    for s in sizes:
        t = list(x)
        t[axis] = s
        tops.append(tuple(t))
    return LayerShapes(tuple(tops))


@register("Reshape")
def reshape(layer, bottoms):
    """reshape_layer.cpp:10-87: replace axes [axis, axis+num_axes) by ``shape``; 0 copies the
    bottom dim, one -1 is inferred from the count."""
    p = layer.reshape_param
    x = bottoms[0] if bottoms else None
    new = [int(d) for d in p.shape.dim]
    if new.count(-1) > 1:
        raise ShapeError("new shape contains multiple -1 dims")
    if x is None:
        if 0 in new or -1 in new or int(p.num_axes) != -1 or int(p.axis) != 0:
            return LayerShapes((None,))
        return LayerShapes((tuple(new),))
    rank = len(x)
    start = int(p.axis) if p.axis >= 0 else rank + int(p.axis) + 1
    if not 0 <= start <= rank:
        raise ShapeError(f"axis {p.axis} out of range")
    end = rank if p.num_axes == -1 else start + int(p.num_axes)
    if end > rank:
        raise ShapeError("end_axis = axis + num_axes is out of range")
    top: list[Dim] = [*x[:start], *new, *x[end:]]
    for i, d in enumerate(new):
        if d == 0:
            if start + i >= rank:
                raise ShapeError(
                    "new shape contains a 0, but there was no corresponding bottom axis"
                )
            top[start + i] = x[start + i]
    if -1 in new:
        i = new.index(-1)
        others = [top[j] for j in range(len(top)) if j != start + i]
        explicit = prod(others)
        total = prod(x)
        if explicit is None or total is None:
            top[start + i] = None
        else:
            if explicit == 0 or total % explicit:
                raise ShapeError("bottom count must be divisible by the product of the new dims")
            top[start + i] = total // explicit
    return LayerShapes((tuple(top),))


@register("Flatten")
def flatten(layer, bottoms):
    """flatten_layer.cpp:8-26: collapse axes [axis, end_axis] into one."""
    p = layer.flatten_param
    x = bottoms[0] if bottoms else None
    if x is None:
        return LayerShapes((None,))
    a = canonical_axis(int(p.axis), len(x))
    e = canonical_axis(int(p.end_axis), len(x))
    return LayerShapes(((*x[:a], prod(x[a : e + 1]), *x[e + 1 :]),))


@register("Crop")
def crop(layer, bottoms):
    """crop_layer.cpp:36-70: axes >= axis take bottom[1]'s size."""
    x = bottoms[0] if bottoms else None
    ref = bottoms[1] if len(bottoms) > 1 else None
    if x is None:
        return LayerShapes((None,))
    p = layer.crop_param
    a = canonical_axis(int(p.axis), len(x))
    offsets = [int(o) for o in p.offset]
    if len(offsets) > 1 and a + len(offsets) != len(x):  # crop_layer.cpp:26-32
        raise ShapeError(
            "number of offset values specified must be equal to the number of dimensions "
            "following axis."
        )
    if ref is not None and len(ref) == len(x):
        for i in range(a, len(x)):  # crop_layer.cpp:62-65
            off = offsets[0] if len(offsets) == 1 else (offsets[i - a] if offsets else 0)
            if None not in (x[i], ref[i]) and x[i] - off < ref[i]:  # type: ignore[operator]
                raise ShapeError(
                    f"the crop for dimension {i} is out-of-bounds with size {ref[i]} and "
                    f"offset {off}"
                )
    if ref is None:
        return LayerShapes(((*x[:a], *([None] * (len(x) - a))),))
    if len(ref) != len(x):
        raise ShapeError("Crop bottoms must have the same number of axes")
    return LayerShapes(((*x[:a], *ref[a:]),))


@register("Tile")
def tile(layer, bottoms):
    """tile_layer.cpp:9-19: shape[axis] *= tiles."""
    x = bottoms[0] if bottoms else None
    if x is None:
        return LayerShapes((None,))
    a = canonical_axis(int(layer.tile_param.axis), len(x))
    t = list(x)
    t[a] = None if x[a] is None else x[a] * int(layer.tile_param.tiles)
    return LayerShapes((tuple(t),))


@register("Reduction")
def reduction(layer, bottoms):
    """reduction_layer.cpp:15-26: top = bottom.shape[:axis] (a scalar for axis 0)."""
    x = bottoms[0] if bottoms else None
    if x is None:
        return LayerShapes((None,))
    a = canonical_axis(int(layer.reduction_param.axis), len(x))
    return LayerShapes((tuple(x[:a]),))


@register("ArgMax")
def argmax(layer, bottoms):
    """argmax_layer.cpp:33-52: with ``axis``: shape[axis] = top_k; else (N, 1 or 2, top_k) and
    1 for the remaining axes (at least 3 axes)."""
    p = layer.argmax_param
    x = bottoms[0] if bottoms else None
    if x is None:
        return LayerShapes((None,))
    k = int(p.top_k)
    if p.HasField("axis"):
        a = canonical_axis(int(p.axis), len(x))
        t = list(x)
        t[a] = k
        return LayerShapes((tuple(t),))
    t = [1] * max(len(x), 3)
    t[0] = x[0]
    t[2] = k
    if p.out_max_val:
        t[1] = 2
    return LayerShapes((tuple(t),))


@register("Im2col")
def im2col(layer, bottoms):
    """im2col_layer.cpp:107-123: channels *= prod(kernel), spatial dims as a convolution."""
    conv = layer.convolution_param
    x = bottoms[0] if bottoms else None
    if x is None:
        return LayerShapes((None,))
    ax = canonical_axis(int(conv.axis), len(x))
    n = len(x) - ax - 1
    kernel = _spatial_param(conv, "kernel", n, 0)
    stride = _spatial_param(conv, "stride", n, 1)
    pad = _spatial_param(conv, "pad", n, 0)
    dil = list(conv.dilation) or [1]
    t = list(x)
    t[ax] = None if x[ax] is None else x[ax] * prod(kernel)
    for i in range(n):
        size = x[ax + 1 + i]
        d = int(dil[0 if len(dil) == 1 else i])
        ext = d * (kernel[i] - 1) + 1
        t[ax + 1 + i] = None if size is None else _cdiv(size + 2 * pad[i] - ext, stride[i]) + 1
    return LayerShapes((tuple(t),))


@register("BatchReindex")
def batch_reindex(layer, bottoms):
    """batch_reindex_layer.cpp:9-18: (len(bottom[1]),) + bottom[0].shape[1:]."""
    x = bottoms[0] if bottoms else None
    idx = bottoms[1] if len(bottoms) > 1 else None
    if x is None:
        return LayerShapes((None,))
    return LayerShapes(((dim(idx, 0) if idx else None, *x[1:]),))


@register("Filter")
def filter_layer(layer, bottoms):
    """filter_layer.cpp:16-58: each top is its bottom with a data-dependent first axis."""
    tops = []
    for i in range(len(layer.top)):
        b = bottoms[i] if i < len(bottoms) else None
        tops.append(None if b is None else (None, *b[1:]))
    return LayerShapes(tuple(tops))


@register("LSTMUnit")
def lstm_unit(layer, bottoms):
    """lstm_unit_layer.cpp:16-30: C and H have the shape of C_prev (bottom[0])."""
    x = bottoms[0] if bottoms else None
    return LayerShapes(tuple(x for _ in layer.top))


def _loss(layer, bottoms):
    """loss_layer.cpp:22-28: the loss top is a scalar (shape ()); SoftmaxWithLoss and
    InfogainLoss may add a second top with the probabilities (bottom[0]'s shape)."""
    x = bottoms[0] if bottoms else None
    tops: list[Shape] = [()]
    for _ in range(len(layer.top) - 1):
        tops.append(x)
    return LayerShapes(tuple(tops))


#: BVLC layers derived from LossLayer (include/caffe/layers/loss_layer.hpp).
LOSS_TYPES = frozenset(
    "SoftmaxWithLoss EuclideanLoss HingeLoss InfogainLoss ContrastiveLoss "
    "MultinomialLogisticLoss SigmoidCrossEntropyLoss".split()
)
register(*LOSS_TYPES)(_loss)


@register("Accuracy")
def accuracy(layer, bottoms):
    """accuracy_layer.cpp:30-50: top[0] scalar; optional top[1] (bottom[0].shape(axis),)."""
    x = bottoms[0] if bottoms else None
    tops: list[Shape] = [()]
    if len(layer.top) > 1:
        if x is None:
            tops.append(None)
        else:
            a = canonical_axis(int(layer.accuracy_param.axis), len(x))
            tops.append((x[a],))
    return LayerShapes(tuple(tops))


@register("Silence", "HDF5Output")
def no_tops(layer, bottoms):
    return LayerShapes(())


# ---------------------------------------------------------------------------------------------
# bottom/top counts: Layer::CheckBlobCounts (include/caffe/layer.hpp:343-383) with each layer's
# ExactNum/Min/Max{Bottom,Top}Blobs from include/caffe/layers/*.hpp. (min, max); None = no bound.

_ONE_ONE = ((1, 1), (1, 1))
_ONE_IN_ONE_OUT = (
    "AbsVal BNLL Clip Dropout ELU Exp Log Power PReLU ReLU Sigmoid Swish TanH Threshold "
    "BatchNorm LRN MVN Softmax Flatten Reshape Tile SPP Im2col ArgMax Reduction Embed "
    "InnerProduct".split()
)
BLOB_COUNTS: dict[str, tuple[tuple[int, int | None], tuple[int, int | None]]] = {
    **{t: _ONE_ONE for t in _ONE_IN_ONE_OUT},
    "Convolution": ((1, None), (1, None)),
    "Deconvolution": ((1, None), (1, None)),
    "Pooling": ((1, 1), (1, 2)),
    "Concat": ((1, None), (1, 1)),
    "Eltwise": ((2, None), (1, 1)),
    "Slice": ((1, 1), (1, None)),
    "Split": ((1, 1), (1, None)),
    "Crop": ((2, 2), (1, 1)),
    "BatchReindex": ((2, 2), (1, 1)),
    "Filter": ((2, None), (1, None)),
    "Scale": ((1, 2), (1, 1)),
    "Bias": ((1, 2), (1, 1)),
    "Parameter": ((0, 0), (1, 1)),
    "Input": ((0, 0), (1, None)),
    "DummyData": ((0, 0), (1, None)),
    "HDF5Data": ((0, 0), (1, None)),
    "Data": ((0, 0), (1, 2)),
    "ImageData": ((0, 0), (2, 2)),
    "WindowData": ((0, 0), (2, 2)),
    "MemoryData": ((0, 0), (2, 2)),
    "Silence": ((1, None), (0, 0)),
    "HDF5Output": ((2, 2), (0, 0)),
    "Accuracy": ((2, 2), (1, 2)),
    "LSTMUnit": ((3, 3), (2, 2)),
    # Loss layers set AutoTopBlobs (loss_layer.hpp): missing tops are added, so 0 is fine.
    "EuclideanLoss": ((2, 2), (0, 1)),
    "HingeLoss": ((2, 2), (0, 1)),
    "MultinomialLogisticLoss": ((2, 2), (0, 1)),
    "SigmoidCrossEntropyLoss": ((2, 2), (0, 1)),
    "SoftmaxWithLoss": ((2, 2), (0, 2)),
    "InfogainLoss": ((2, 3), (0, 2)),
    "ContrastiveLoss": ((3, 3), (0, 1)),
}


def _recurrent_counts(layer) -> tuple[tuple[int, int], tuple[int, int]]:
    """recurrent_layer.hpp:44-56: 2 or 3 bottoms (+ the exposed hidden states), 1 top (+ the
    exposed states); LSTM has 2 recurrent states (h, c), RNN 1 (h)."""
    hidden = (2 if layer.type == "LSTM" else 1) if layer.recurrent_param.expose_hidden else 0
    return (2 + hidden, 3 + hidden), (1 + hidden, 1 + hidden)


def check_blob_counts(layer) -> None:
    """Raise ShapeError when the number of bottoms/tops is outside what the layer accepts."""
    if layer.type in ("LSTM", "RNN"):
        counts = _recurrent_counts(layer)
    elif layer.type in BLOB_COUNTS:
        counts = BLOB_COUNTS[layer.type]
    else:
        return
    if layer.type == "Pooling" and layer.pooling_param.pool != 0:  # MAX = 0 may add a mask
        counts = (counts[0], (1, 1))
    for what, n, (lo, hi) in (
        ("bottom", len(layer.bottom), counts[0]),
        ("top", len(layer.top), counts[1]),
    ):
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise ShapeError(f"{layer.type} Layer takes {want} {what} blob(s), got {n}")
    if layer.type in ("Convolution", "Deconvolution") and len(layer.bottom) != len(layer.top):
        raise ShapeError(f"{layer.type} Layer produces one top blob as output per bottom blob")


def blob_count(layer) -> int:
    """How many blobs a BVLC layer owns, from its parameters alone (used when its shapes cannot
    be inferred): the counts the rules above produce."""
    t = layer.type
    if t in ("Convolution", "Deconvolution"):
        return 1 + bool(layer.convolution_param.bias_term)
    if t == "InnerProduct":
        return 1 + bool(layer.inner_product_param.bias_term)
    if t == "Embed":
        return 1 + bool(layer.embed_param.bias_term)
    if t == "Scale":
        return (len(layer.bottom) == 1) + bool(layer.scale_param.bias_term)
    if t == "Bias":
        return int(len(layer.bottom) == 1)
    if t in ("PReLU", "Parameter"):
        return 1
    if t == "BatchNorm":
        return 5 if nvidia_scale_bias(layer) else 3
    if t in ("LSTM", "RNN"):
        hidden = (2 if t == "LSTM" else 1) if layer.recurrent_param.expose_hidden else 0
        static = len(layer.bottom) > 2 + hidden
        return (3 if t == "LSTM" else 5) + static
    return 0


def _tsn_bn(layer, bottoms):
    """TSN's BN and SyncBN (yjxiong/caffe bn_layer.cpp:17-45, 72-80; sync_bn_layer.cpp:19-53):
    four blobs of shape (1, C) -- slope, bias, running mean, running variance -- with C =
    bottom.channels(); the top is shaped like the bottom."""
    x = bottoms[0] if bottoms else None
    c: Dim = None if x is None or len(x) < 2 else x[1]
    blob: Shape = None if c is None else (1, c)
    return LayerShapes((x,), (blob,) * 4, "" if c is not None else "channels unknown")


#: shape rules of a fork's own layer types, per dialect (caffe2tf/caffe/dialect.py); a type
#: here is known to that dialect only, so BVLC still refuses it
FORK_RULES: dict[str, dict[str, Rule]] = {"tsn": {"BN": _tsn_bn, "SyncBN": _tsn_bn}}


def infer(layer, bottoms: Sequence[Shape]) -> LayerShapes | None:
    """Run the rule registered for ``layer.type``; None when the type is not a BVLC layer."""
    rule = RULES.get(layer.type)
    if rule is None:
        return None
    return rule(layer, list(bottoms))
