"""One update's comparison reduced by JAX, for the host engine when Caffe's rule runs compiled
(docs/verify.md#streams): the reference's weights are JAX arrays already, the candidate's
variables are shared with JAX (DLPack from TensorFlow, as they are on Keras' JAX backend),
and one compiled function per blob gives ``max|cand - ref|``, the largest finite
``|ref - w0|``, whether either side holds a NaN or inf and, when asked, both sides' L2 norms
(for the plot) -- the scalars of
:meth:`caffe2tf.verify.compare.StreamingComparison.observe_scalars`. The Caffe layout is made
inside that function (a transposed read, fused with the differences), so no converted copy of
a blob is ever held (the NumPy path transposes, subtracts and takes the absolute value in three
passes, each a copy of the blob)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Scalars = tuple[
    dict[str, float],
    dict[str, float],
    dict[str, tuple[bool, bool, bool, bool]],
    dict[str, tuple[float, float]] | None,
]


class _Capsule:
    """A DLPack capsule with the protocol ``jax.dlpack.from_dlpack`` asks for (TensorFlow
    hands out bare capsules)."""

    def __init__(self, capsule: Any) -> None:
        self.capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: TensorFlow's CPU tensors


def as_jax(value: Any) -> Any:
    """A backend tensor (JAX, TensorFlow on the CPU, or NumPy) as a JAX array, shared where
    the backend allows it."""
    import jax
    import jax.numpy as jnp

    if isinstance(value, jax.Array):
        return value
    if isinstance(value, np.ndarray):
        return jnp.asarray(value)
    try:
        import tensorflow as tf

        if isinstance(value, tf.Tensor | tf.Variable) and "CPU" in value.device.upper():
            tensor = value.value() if isinstance(value, tf.Variable) else value
            return jax.dlpack.from_dlpack(_Capsule(tf.experimental.dlpack.to_dlpack(tensor)))
    except Exception:  # not TensorFlow's, or not shareable: copy through NumPy
        pass
    import keras

    return jnp.asarray(keras.ops.convert_to_numpy(value))


def run_device(executor: Any) -> Any:
    """The JAX device holding a compiled reference's weights (None: JAX's default)."""
    for value in getattr(executor, "weights", {}).values():
        devices = getattr(value, "devices", None)
        if callable(devices):
            return next(iter(devices()), None)
    return None


#: blobs above this many elements are reduced a block of Caffe rows at a time: XLA on the CPU
#: writes the transposed read out before reducing it, a whole extra copy of VGG16's fc6
#: (411 MB) at once otherwise
BLOCK_ELEMENTS = 2**22


def _reduce(
    cand: Any,
    ref: Any,
    w0: Any,
    start: Any,
    perm: tuple[int, ...] | None,
    rows: int,
    norms: bool,
) -> tuple[Any, ...]:
    """The scalars of Caffe rows ``start .. start + rows`` of one blob (``rows`` = all of
    them for a small blob): ``max|c - r|``, the largest finite ``|r - w0|``, NaN/inf flags of
    both sides and, with ``norms``, both sides' sums of squares."""
    import jax
    import jax.numpy as jnp

    if ref.ndim == 0:  # a scalar blob, reduced as one element
        ref, cand, w0 = ref.reshape(1), cand.reshape(1), w0.reshape(1)
        rows = 1
    if rows < ref.shape[0]:
        ref = jax.lax.dynamic_slice_in_dim(ref, start, rows, 0)
        w0 = jax.lax.dynamic_slice_in_dim(w0, start, rows, 0)
        cand = jax.lax.dynamic_slice_in_dim(cand, start, rows, 0 if perm is None else perm[0])
    c = cand.transpose(perm) if perm is not None else cand
    c = c.astype(ref.dtype)
    moved = jnp.abs(ref - w0)
    figures = (
        jnp.max(jnp.abs(c - ref), initial=0.0),
        jnp.max(jnp.where(jnp.isfinite(moved), moved, 0.0), initial=0.0),
        jnp.any(jnp.isnan(ref)),
        jnp.any(jnp.isinf(ref)),
        jnp.any(jnp.isnan(c)),
        jnp.any(jnp.isinf(c)),
    )
    if not norms:
        return figures
    flat_r, flat_c = ref.reshape(-1), c.reshape(-1)
    return (*figures, jnp.dot(flat_r, flat_r), jnp.dot(flat_c, flat_c))


def _stacked(
    items: tuple[tuple[Any, Any, Any, Any], ...],
    perms: tuple[tuple[int, ...] | None, ...],
    rows: tuple[int, ...],
    norms: bool,
) -> Any:
    """:func:`_reduce` of several ``(cand, ref, w0, start)`` blocks in one program, as one
    array (a row per block, its flags as 0/1): one call and one read back per update for a
    whole net, where a call and a read back per figure cost 10 ms per update on LeNet."""
    import jax.numpy as jnp

    return jnp.stack(
        [
            jnp.stack([x.astype(ref.dtype) for x in _reduce(c, ref, w0, start, p, n, norms)])
            for (c, ref, w0, start), p, n in zip(items, perms, rows, strict=True)
        ]
    )


def _max(a: float, b: float) -> float:
    """The larger of two blocks' figures; a NaN (a side gone non-finite) wins."""
    return a if (a != a or a >= b) else b


@functools.cache
def _blocks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(start, rows)`` blocks of Caffe's first axis, each about :data:`BLOCK_ELEMENTS`."""
    n = int(np.prod(shape, dtype=np.int64))
    if not shape or n <= BLOCK_ELEMENTS:
        return [(0, shape[0] if shape else 0)]
    rows = max(1, BLOCK_ELEMENTS // max(1, n // shape[0]))
    return [(a, min(rows, shape[0] - a)) for a in range(0, shape[0], rows)]


def _size(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64))


class JaxComparer:
    """Keeps ``w0`` of ``keys`` on the device and reduces each update there. Subclasses
    change the array library (:class:`caffe2tf.verify.tf_compare.TfComparer`): how a value
    becomes one of its arrays (:meth:`_array`) and the compiled :func:`_stacked`."""

    def __init__(
        self,
        init: Mapping[str, np.ndarray],
        keys: Sequence[str],
        device: Any = None,
        *,
        norms: bool = True,
    ) -> None:
        import jax
        import jax.numpy as jnp

        self.keys = tuple(keys)
        # on the CPU w0 is the run's own init array, aliased (it is only read), not a copy
        on_cpu = device is None or getattr(device, "platform", "cpu") == "cpu"
        self.w0 = {
            k: jnp.asarray(np.asarray(init[k]), copy=False)
            if on_cpu
            else jax.device_put(np.asarray(init[k]), device)
            for k in self.keys
        }
        self.norms = norms
        self.fn = jax.jit(_stacked, static_argnums=(1, 2, 3))

    def _array(self, value: Any) -> Any:
        """A backend value (a variable's, a reference's weights) as this library's array."""
        return as_jax(value)

    def scalars(self, reference: Mapping[str, Any], candidate: Any) -> Scalars:
        """``reference``: Caffe-layout weights (JAX or NumPy); ``candidate``: a
        :class:`caffe2tf.verify.mirror.CaffeWeightsView` (its :meth:`raw` gives a variable and
        the permutation to Caffe layout, or None where the view must compute the blob)."""
        diffs: dict[str, float] = {}
        moved: dict[str, float] = {}
        flags: dict[str, tuple[bool, bool, bool, bool]] = {}
        norms: dict[str, tuple[float, float]] = {}
        blocks = []  # (key, (cand, ref, w0, start), perm, rows)
        for k in self.keys:
            if _size(self.w0[k]) == 0:
                if self.norms:
                    norms[k] = (0.0, 0.0)
                continue
            raw = candidate.raw(k)
            if raw is None:
                cand, perm = self._array(np.asarray(candidate[k])), None
            else:
                cand, perm = self._array(raw[0]), raw[1]
            ref = self._array(reference[k])
            diffs[k], moved[k], flags[k] = 0.0, 0.0, (False, False, False, False)
            for start, rows in _blocks(tuple(ref.shape)):
                blocks.append((k, (cand, ref, self.w0[k], np.int32(start)), perm, rows))
        # one program for a net of up to BLOCK_ELEMENTS weights; above, one per block (a blob
        # above BLOCK_ELEMENTS is cut in blocks), so that no two transposed reads are held at
        # once
        whole = sum(_size(b[1][1]) for b in blocks) <= BLOCK_ELEMENTS
        groups = [blocks] if whole else [[b] for b in blocks]
        pending = []
        for group in groups:
            args = tuple(b[1] for b in group), tuple(b[2] for b in group)
            pending.append(([b[0] for b in group], self.fn(*args, tuple(b[3] for b in group),
                                                           self.norms)))  # fmt: skip
        squares: dict[str, list[float]] = {}
        for group_keys, out in pending:
            for k, row in zip(group_keys, np.asarray(out).tolist(), strict=True):
                d, m, *f = row
                diffs[k], moved[k] = _max(diffs[k], float(d)), _max(moved[k], float(m))
                was = flags[k]
                flags[k] = (was[0] or f[0] != 0, was[1] or f[1] != 0, was[2] or f[2] != 0,
                            was[3] or f[3] != 0)  # fmt: skip
                if self.norms:
                    sr, sc = f[4:]
                    acc = squares.setdefault(k, [0.0, 0.0])
                    acc[0] += float(sr)
                    acc[1] += float(sc)
        for k, (sr, sc) in squares.items():
            norms[k] = (float(np.sqrt(sr)), float(np.sqrt(sc)))
        return diffs, moved, flags, norms if self.norms else None
