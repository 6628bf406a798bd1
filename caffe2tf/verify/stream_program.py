"""The counter-based gradients of :mod:`caffe2tf.verify.streams` as a traced program, bit for
bit :class:`caffe2tf.verify.streams.NumpyGradients`' numbers (the same counters and hash in
uint32, the same float32 operations), written once against a small table of array operations
per backend: :class:`JaxHashOps` (``jax.lax``, for the fused JAX engine and the host engine's
JAX gradients) and :class:`TfHashOps` (TensorFlow, for the fused TensorFlow engine,
:mod:`caffe2tf.verify.tf_device`). Each element is computed from its Caffe index, so a blob can
be made directly in its Keras variable's layout (docs/verify.md#streams).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.verify import streams
from caffe2tf.verify.streams import GradientSpec


class JaxHashOps:
    """The operations the gradient program uses, as ``jax.lax`` calls (a fraction of
    ``jax.numpy``'s cost to trace, which is most of a verify's tracing: the gradients hash
    every blob in every update)."""

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.lax, self.jnp = lax, jnp
        self.xor, self.mul, self.add = lax.bitwise_xor, lax.mul, lax.add
        self.bitand, self.where, self.sqrt = lax.bitwise_and, jnp.where, jnp.sqrt
        self.broadcast_in_dim = lax.broadcast_in_dim
        self.canonical = jax.dtypes.canonicalize_dtype

    def dtype(self, name: str) -> Any:
        return self.jnp.float32 if name == "float32" else self.jnp.float64

    def u32(self, value: Any) -> Any:
        """A uint32 constant (of a Python int) or a traced value converted."""
        if isinstance(value, int | np.integer):
            return np.uint32(int(value) & 0xFFFFFFFF)
        return self.jnp.asarray(value).astype(self.jnp.uint32)

    def shr(self, h: Any, bits: int) -> Any:
        return self.lax.shift_right_logical(h, np.uint32(bits))

    def to_float(self, h: Any, dtype: Any) -> Any:
        return self.lax.convert_element_type(h, dtype)

    def const(self, value: float, dtype: Any) -> Any:
        return np.dtype(dtype).type(value)

    def cast(self, x: Any, dtype: Any) -> Any:
        return self.jnp.asarray(x).astype(dtype)

    def arange(self, n: int) -> Any:
        return self.jnp.arange(n, dtype=self.jnp.uint32)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return x.reshape(tuple(shape))

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.jnp.zeros(tuple(shape), dtype)

    def sum_squares(self, x: Any) -> Any:
        """In float64 in JAX's 64-bit mode (asked when traced), else float32."""
        wide = self.canonical(self.jnp.float64)
        return self.jnp.sum(self.jnp.square(x.astype(wide)))


class TfHashOps:
    """The same operations as TensorFlow calls (uint32 arithmetic wraps, as in NumPy)."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf
        self.xor, self.bitand = tf.bitwise.bitwise_xor, tf.bitwise.bitwise_and
        self.mul, self.add, self.where, self.sqrt = tf.multiply, tf.add, tf.where, tf.sqrt

    def dtype(self, name: str) -> Any:
        return self.tf.float32 if name == "float32" else self.tf.float64

    def u32(self, value: Any) -> Any:
        if isinstance(value, int | np.integer):
            return self.tf.constant(int(value) & 0xFFFFFFFF, self.tf.uint32)
        return self.tf.cast(value, self.tf.uint32)

    def shr(self, h: Any, bits: int) -> Any:
        return self.tf.bitwise.right_shift(h, self.tf.constant(bits, self.tf.uint32))

    def to_float(self, h: Any, dtype: Any) -> Any:
        return self.tf.cast(h, dtype)

    def const(self, value: float, dtype: Any) -> Any:
        return self.tf.constant(value, dtype)

    def cast(self, x: Any, dtype: Any) -> Any:
        return self.tf.cast(x, dtype)

    def arange(self, n: int) -> Any:
        # XLA has no uint32 iota in TensorFlow: a signed one, wrapped as NumPy's uint32 wraps
        signed = self.tf.int32 if n < 2**31 else self.tf.int64
        return self.tf.cast(self.tf.range(n, dtype=signed), self.tf.uint32)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self.tf.reshape(x, tuple(shape))

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.tf.zeros(tuple(shape), dtype)

    def broadcast_in_dim(self, x: Any, shape: Sequence[int], dims: tuple[int, ...]) -> Any:
        """``x`` (one dimension) along axis ``dims[0]`` of ``shape``."""
        view = [1] * len(shape)
        view[dims[0]] = int(x.shape[0])
        return self.tf.broadcast_to(self.tf.reshape(x, view), tuple(shape))

    def sum_squares(self, x: Any) -> Any:
        # the run's own precision, as JAX's outside its 64-bit mode for float32 runs
        return self.tf.reduce_sum(self.tf.square(x))


@functools.cache
def jax_ops() -> JaxHashOps:
    return JaxHashOps()


@functools.cache
def tf_ops() -> TfHashOps:
    return TfHashOps()


def fmix32(ops: Any, h: Any) -> Any:
    """:func:`caffe2tf.verify.streams.fmix32` on a uint32 array (MurmurHash3's finalizer)."""
    h = ops.xor(h, ops.shr(h, 16))
    h = ops.mul(h, ops.u32(0x85EBCA6B))
    h = ops.xor(h, ops.shr(h, 13))
    h = ops.mul(h, ops.u32(0xC2B2AE35))
    return ops.xor(h, ops.shr(h, 16))


def mix(ops: Any, *values: Any) -> Any:
    """:func:`caffe2tf.verify.streams.mix` on uint32 scalars (traced or not)."""
    h = ops.u32(0x811C9DC5)
    for v in values:
        h = fmix32(ops, ops.xor(h, ops.u32(v)))
        h = ops.add(ops.mul(h, ops.u32(0x01000193)), ops.u32(0x7F4A7C15))
    return fmix32(ops, h)


def unit(ops: Any, h: Any, dtype: Any) -> Any:
    """Uniform numbers in [-1/2, 1/2) from the top 24 bits of ``h``
    (``caffe2tf/verify/streams.py`` ``_unit``)."""
    top = ops.to_float(ops.shr(h, 8), dtype)
    return ops.add(ops.mul(top, ops.const(2.0**-24, dtype)), ops.const(-0.5, dtype))


#: the gradient kinds one compiled program makes, told apart at run time by :func:`knobs_of`
#: (a verify's probes then share one program instead of compiling one each)
PROBE_KINDS = ("zeros", "impulse", "uniform", "norm")
_MODES = {"zeros": 0, "impulse": 1, "uniform": 2, "norm": 3}


def program_kind(spec: GradientSpec) -> str:
    """What a compiled program of ``spec``'s gradients is made for: ``stream``, ``cancel`` or
    ``probe`` (every kind of :data:`PROBE_KINDS`; the kind, ``scale`` and ``norm`` are then
    arguments, :func:`knobs_of`)."""
    return "probe" if spec.kind in PROBE_KINDS else spec.kind


def knobs_of(spec: GradientSpec) -> tuple[Any, np.int32, Any]:
    """A run's arguments of its compiled gradient program: the uniform numbers' factor
    ``scale / std(U[-1/2, 1/2))`` in the run's precision, the probe kind's number and the
    target global norm."""
    dt = np.float32 if spec.dtype == "float32" else np.float64
    factor = dt(spec.scale / streams._UNIT_STD)
    return factor, np.int32(_MODES.get(spec.kind, 0)), dt(spec.norm)


def salts_of(spec: GradientSpec, shapes: Mapping[str, Any]) -> dict[str, np.uint32]:
    """Each blob's salt (:func:`caffe2tf.verify.streams.blob_salt`), an argument of the program."""
    return {k: np.uint32(streams.blob_salt(spec.seed, k)) for k in sorted(shapes)}


def gradient_function(
    spec: GradientSpec,
    shapes: Mapping[str, Sequence[int]],
    axes: Mapping[str, tuple[int, ...] | None] | None = None,
    ops: Any = None,
) -> Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``f(k, seed, salts, knobs, origin=None) -> (micro-batches, diff)`` of update ``k``
    (traceable: ``k``, ``seed``, the per-blob ``salts`` and the ``knobs`` may be traced, so runs
    that differ only in them share one compiled program; :func:`program_kind` says which runs
    those are). ``salts``: :func:`salts_of`; ``knobs``: :func:`knobs_of`. ``origin``: a uint32
    zero added to every element's index; made loop-variant in a loop (an
    ``optimization_barrier`` on JAX), it keeps XLA from hoisting the index arrays out of the
    loop, where they would be kept whole (VGG16: 528 MiB of uint32), and makes them in the
    kernels that use them instead. ``axes``: per blob, the ``transpose`` axes of the layout to
    make it in (e.g. Keras', from :func:`caffe2tf.verify.mirror.keras_axes`): each element is
    computed from its Caffe index in place, so no array is transposed and the numbers are
    those of Caffe's layout, transposed. ``ops``: :func:`jax_ops` (the default) or
    :func:`tf_ops`."""
    ops = ops if ops is not None else jax_ops()
    keys = sorted(shapes)
    shapes = {k: tuple(int(d) for d in shapes[k]) for k in keys}
    axes = {k: (axes or {}).get(k) for k in keys}
    dt = ops.dtype(spec.dtype)
    f32 = ops.dtype("float32")
    s = max(1, spec.iter_size)
    live = [k for k in keys if k not in spec.frozen]
    frozen = set(keys) - set(live)
    family = program_kind(spec)
    u = ops.u32

    def shape_of(key: str) -> tuple[int, ...]:
        perm = axes[key]
        return shapes[key] if perm is None else tuple(shapes[key][a] for a in perm)

    def index(key: str, origin: Any) -> Any:
        """Each element's flat index in Caffe's layout, laid out as :func:`shape_of` says,
        plus ``origin`` (a uint32 zero, or None)."""
        shape, perm = shapes[key], axes[key]
        if perm is None:
            idx = ops.arange(int(np.prod(shape, dtype=np.int64)))
            return ops.reshape(idx if origin is None else ops.add(idx, origin), shape)
        strides = np.cumprod((1,) + shape[:0:-1])[::-1]  # Caffe's row-major strides
        out = shape_of(key)
        idx = None
        for d, a in enumerate(perm):
            # each axis' term made in one dimension and broadcast, the origin added to every
            # term (with it in the first only, TensorFlow folded the others, broadcast, into
            # blob-sized constants while converting the loop to XLA: bench/RESULTS.md)
            term = ops.mul(ops.arange(out[d]), u(int(strides[a])))
            if origin is not None:
                term = ops.add(term, origin)
            term = ops.broadcast_in_dim(term, out, (d,))
            idx = term if idx is None else ops.add(idx, term)
        return idx if idx is not None else ops.zeros(out, "uint32")

    def base(key: str, salts: Any, origin: Any = None) -> Any:
        return fmix32(ops, ops.add(ops.mul(index(key, origin), u(streams._GOLDEN)), salts[key]))

    def uniform(key: str, salts: Any, counter: Any, factor: Any, origin: Any) -> Any:
        """Uniform numbers of standard deviation ``factor * std(U[-1/2, 1/2))``."""
        h = fmix32(ops, ops.xor(base(key, salts, origin), counter))
        return ops.mul(unit(ops, h, dt), factor)

    def counter(k: Any, j: int) -> Any:
        return mix(ops, u(streams._MICRO), k, j)

    def spiked(k: Any, seed: Any) -> Any:
        thr = u(int(streams.STREAM_SPIKE_RATE * 2.0**32))
        return ops.where(k <= u(1), k == u(1), mix(ops, u(streams._SPIKE), seed, k) < thr)

    def zeros(frozen_only: bool = False) -> dict[str, Any]:
        """Zeros for every blob, or only for those that get no gradient."""
        return {k: ops.zeros(shape_of(k), dt) for k in keys if not frozen_only or k in frozen}

    def fn(
        k: Any, seed: Any, salts: Any, knobs: Any, origin: Any = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        k = u(k)
        factor, mode, target = knobs
        factor, target = ops.cast(factor, dt), ops.cast(target, dt)
        if family == "stream":
            # the counters are the same for every blob: hashed once per update (XLA would
            # merge the copies, but tracing and lowering them cost a third of the program's)
            counters = [counter(k, j) for j in range(s)]
            micro = [zeros(frozen_only=True) for _ in range(s)]
            total = zeros(frozen_only=True)
            spike = ops.where(
                spiked(k, seed), ops.const(streams.STREAM_SPIKE, f32), ops.const(1.0, f32)
            )
            for key in live:
                b = base(key, salts, origin)
                drift = ops.mul(unit(ops, b, f32), ops.const(streams.STREAM_DRIFT, f32))
                dead = None
                if np.prod(shapes[key], dtype=np.int64) >= 4:
                    dead = ops.bitand(b, u(0xFF)) < u(streams.STREAM_DEAD_BYTE)
                acc = None
                for j in range(s):
                    noise = unit(ops, fmix32(ops, ops.xor(b, counters[j])), f32)
                    noise = ops.mul(noise, ops.const(streams.STREAM_NOISE, f32))
                    value = ops.mul(ops.add(drift, noise), spike)
                    if dead is not None:
                        value = ops.where(dead, ops.const(0.0, f32), value)
                    part = ops.cast(value, dt)
                    micro[j][key] = part
                    # the sum from the first part on: 0 + x is x, since no -0.0 arises
                    # (see streams.py), so these are NumpyGradients' sums from zero
                    acc = part if acc is None else ops.add(acc, part)
                total[key] = acc
            total = {key: total[key] for key in keys}  # Caffe's blob order, as the others
            if s == 1:  # one array for both
                return [total], total
            return micro, total
        if family == "cancel":
            micro = [zeros() for _ in range(s)]
            total = zeros()
            three = ops.const(3.0 / streams._UNIT_STD, dt)
            counters = [counter(k, j) for j in range(s + 1)]
            for key in live:
                diff = uniform(key, salts, counters[s], factor, origin)
                rest = diff
                for j in range(s - 1):
                    part = uniform(key, salts, counters[j], three, origin)
                    micro[j][key] = part
                    rest = rest - part
                micro[s - 1][key] = rest
                acc = ops.zeros(shape_of(key), dt)
                for j in range(s):
                    acc = ops.add(acc, micro[j][key])
                total[key] = acc
            return micro, total
        if family != "probe":
            raise ValueError(f"unknown gradient kind {spec.kind!r}")
        # zeros (0): +0.0 everywhere; impulse (1): uniform at update 0 only; uniform (2) and
        # norm (3): uniform every update, norm's rescaled to the global norm ``target``
        on = (mode >= 2) | ((mode == 1) & (k == u(0)))
        total = zeros()
        first = counter(k, 0)
        for key in live:
            value = uniform(key, salts, first, factor, origin)
            total[key] = ops.where(on, value, ops.zeros(shape_of(key), dt))
        if live:
            norm = ops.sqrt(sum(ops.sum_squares(v) for v in total.values()))
            one = ops.const(1.0, norm.dtype)
            scale = ops.where(norm > 0, ops.cast(target, norm.dtype) / norm, one)
            scaled = {key: ops.cast(v * scale, dt) for key, v in total.items()}
            total = {key: ops.where(mode == 3, scaled[key], v) for key, v in total.items()}
        rest = [zeros() for _ in range(s - 1)]
        return [total, *rest], total

    return fn


__all__ = [
    "PROBE_KINDS",
    "JaxHashOps",
    "TfHashOps",
    "fmix32",
    "gradient_function",
    "jax_ops",
    "knobs_of",
    "mix",
    "program_kind",
    "salts_of",
    "tf_ops",
    "unit",
]
