"""One update's comparison reduced by TensorFlow, next to a candidate on Keras' TensorFlow
backend and Caffe's rule compiled with TensorFlow (:class:`caffe2tf.rule.tf_executor.TfExecutor`):
the figures of :mod:`caffe2tf.verify.jax_compare` (same blocks, same driver,
:class:`~caffe2tf.verify.jax_compare.JaxComparer`), computed by one
``tf.function(jit_compile=True)`` over the candidate's variables, the reference's variables and
``w0`` (the run's own init arrays, shared through DLPack, not copied)
(docs/verify.md#both-rules-on-one-device)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.tf_executor import shared_tensor
from caffe2tf.verify.jax_compare import JaxComparer


def _reduce(
    cand: Any,
    ref: Any,
    w0: Any,
    start: Any,
    perm: tuple[int, ...] | None,
    rows: int,
    norms: bool,
) -> list[Any]:
    """:func:`caffe2tf.verify.jax_compare._reduce` in TensorFlow: the figures of Caffe rows
    ``start .. start + rows`` of one blob, each as the reference's dtype."""
    import tensorflow as tf

    cand, ref, w0 = (tf.convert_to_tensor(x) for x in (cand, ref, w0))
    if ref.shape.rank == 0:  # a scalar blob, reduced as one element
        ref, cand, w0 = (tf.reshape(x, (1,)) for x in (ref, cand, w0))
        rows = 1
    if rows < ref.shape[0]:

        def cut(x: Any, axis: int) -> Any:
            begin = tf.one_hot(axis, x.shape.rank, on_value=start, off_value=0, dtype=tf.int32)
            size = [rows if i == axis else d for i, d in enumerate(x.shape)]
            return tf.slice(x, begin, size)

        ref, w0 = cut(ref, 0), cut(w0, 0)
        cand = cut(cand, 0 if perm is None else perm[0])
    c = tf.transpose(cand, perm) if perm is not None else cand
    c = tf.cast(c, ref.dtype)
    moved = tf.abs(ref - tf.cast(w0, ref.dtype))
    zero = tf.zeros((), ref.dtype)
    figures = [
        tf.reduce_max(tf.abs(c - ref)),
        tf.reduce_max(tf.where(tf.math.is_finite(moved), moved, zero)),
        tf.reduce_any(tf.math.is_nan(ref)),
        tf.reduce_any(tf.math.is_inf(ref)),
        tf.reduce_any(tf.math.is_nan(c)),
        tf.reduce_any(tf.math.is_inf(c)),
    ]
    if norms:
        figures += [tf.reduce_sum(ref * ref), tf.reduce_sum(c * c)]
    return [tf.cast(x, ref.dtype) for x in figures]


def _stacked(
    items: tuple[tuple[Any, Any, Any, Any], ...],
    perms: tuple[tuple[int, ...] | None, ...],
    rows: tuple[int, ...],
    norms: bool,
) -> Any:
    """:func:`caffe2tf.verify.jax_compare._stacked` in TensorFlow: a row of figures per block.
    The blocks' dtypes agree within a run, so the rows stack as they are."""
    import tensorflow as tf

    return tf.stack(
        [
            tf.stack(_reduce(c, ref, w0, start, p, n, norms))
            for (c, ref, w0, start), p, n in zip(items, perms, rows, strict=True)
        ]
    )


@functools.cache
def _compiled_stacked(signature: tuple) -> Any:
    """The compiled :func:`_stacked` of one call ``signature`` (the blocks' shapes and dtypes,
    their permutations and rows, ``norms``), kept for the process: every run of a verify (and
    every verify of a ``check``) with the same blobs reuses its trace and XLA program. One
    ``tf.function`` per signature, each of a ``functools.partial`` of its own: TensorFlow
    counts traces per Python code object (``_get_key_for_call_stats``), and one function that
    traced a big net's many block shapes in turn logged its retracing warning into verify's
    output."""
    import tensorflow as tf

    return tf.function(functools.partial(_stacked), jit_compile=True, autograph=False)


def _signature(items: tuple[tuple[Any, ...], ...], *static: Any) -> tuple:
    """What a call of :func:`_stacked` is traced for: each block's array shapes and dtypes,
    then the static arguments (permutations, rows, ``norms``)."""
    arrays = tuple(tuple((tuple(x.shape), str(x.dtype)) for x in item[:3]) for item in items)
    return (arrays, *static)


#: on the CPU, nets of up to this many weights are compared in NumPy on the host: TensorFlow's
#: compiled reduction costs more there (LeNet, 431k weights: 5.2 ms an update, against 2.4 ms
#: in NumPy; bench/RESULTS.md), while a big net's host copies cost more than the reduction
HOST_COMPARE_MAX_ELEMENTS = 2**22


class TfComparer(JaxComparer):
    """Keeps ``w0`` of ``keys`` (shared with the run's init arrays) and reduces each update
    with TensorFlow, on ``device`` (a TensorFlow device name; None: TensorFlow's choice)."""

    def __init__(
        self,
        init: Mapping[str, np.ndarray],
        keys: Sequence[str],
        device: str | None = None,
        *,
        norms: bool = True,
    ) -> None:
        import tensorflow as tf

        self.keys = tuple(keys)
        self.device = device
        self.w0 = {k: shared_tensor(init[k], np.asarray(init[k]).dtype) for k in self.keys}
        self.norms = norms

        def fn(items: tuple[tuple[Any, ...], ...], *static: Any) -> Any:
            compiled = _compiled_stacked(_signature(items, *static))
            # each block's first row as a tensor: a NumPy scalar is a constant of the trace
            items = tuple((*item[:3], tf.constant(item[3], tf.int32)) for item in items)
            if device is None:
                return compiled(items, *static)
            with tf.device(device):
                return compiled(items, *static)

        self.fn = fn

    def _array(self, value: Any) -> Any:
        import tensorflow as tf

        if isinstance(value, tf.Tensor | tf.Variable):
            return value
        return shared_tensor(value, np.asarray(value).dtype)


def tf_device(kind: str = "auto") -> str | None:
    """The TensorFlow device name for ``--device``: ``cpu``, ``gpu`` (an error when TensorFlow
    sees none) or ``auto`` (None: TensorFlow's own choice, its first GPU if it has one)."""
    if kind == "auto":
        return None
    import tensorflow as tf

    found = tf.config.list_logical_devices(kind.upper())
    if not found:
        raise ValueError(f"--device {kind}: TensorFlow sees no such device")
    return found[0].name


def describe_tf(device: str | None) -> str:
    """``"CPU"`` or ``"GPU: <name>"`` for a TensorFlow device name (None: TensorFlow's
    default device)."""
    import tensorflow as tf

    if device is None:
        gpus = tf.config.list_logical_devices("GPU")
        device = gpus[0].name if gpus else "/device:CPU:0"
    if "GPU" not in device.upper():
        return "CPU"
    details = tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[int(device.rsplit(":", 1)[-1])]
    )
    return f"GPU: {details.get('device_name', device)}"


__all__ = ["TfComparer", "describe_tf", "tf_device"]
