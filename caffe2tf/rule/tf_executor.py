"""Caffe's rule compiled with TensorFlow: :mod:`caffe2tf.rule.compiled`'s step functions over
TensorFlow operations (:class:`TfOps`), one update a call of ``tf.function(jit_compile=True)``
(XLA). It is the executor of Caffe's rule next to a candidate on Keras' TensorFlow backend, on
the device TensorFlow computes on (docs/verify.md#both-rules-on-one-device); float64 needs no
mode of its own."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.compiled import (
    CompiledRule,
    StepFn,
    compiled_rule,
    host_scalars,
    trajectory,
)
from caffe2tf.rule.model import UpdateRule


class TfOps:
    """The array namespace the step functions use (:mod:`caffe2tf.rule.compiled`), as
    TensorFlow operations. ``where`` broadcasts its three arguments, as ``jnp.where`` does."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.sum = tf.reduce_sum
        self.sqrt = tf.sqrt
        self.where = tf.where
        self.sign = tf.sign
        self.minimum = tf.minimum
        self.zeros = tf.zeros
        self.zeros_like = tf.zeros_like
        self.asarray = tf.constant

    @staticmethod
    def ndim(x: Any) -> int:
        return len(x.shape)


@functools.cache
def tf_ops() -> TfOps:
    return TfOps()


def tf_rule(
    rule: UpdateRule,
    keys: Sequence[str],
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
) -> CompiledRule:
    """:func:`caffe2tf.rule.compiled.compiled_rule` over TensorFlow (:class:`TfOps`)."""
    return compiled_rule(rule, keys, tf_ops(), precision=precision, registry=registry)


#: the alignment TensorFlow's CPU kernels assume of a tensor's buffer (Eigen's largest)
ALIGNMENT = 64


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-order array whose buffer starts on an :data:`ALIGNMENT` boundary
    (NumPy's own start 16 bytes past a page for big arrays), so that TensorFlow can share it
    (:func:`shared_tensor`)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * dt.itemsize + ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + n * dt.itemsize].view(dt).reshape(tuple(shape))


def shared_tensor(value: Any, dtype: Any) -> Any:
    """``value`` as a TensorFlow tensor of ``dtype``: a NumPy or JAX array of that dtype and C
    order on the CPU, starting on an :data:`ALIGNMENT` boundary, is shared through DLPack, not
    copied (VGG16's gradient: 552 MB an update); anything else is copied by TensorFlow."""
    import tensorflow as tf

    if isinstance(value, tf.Tensor | tf.Variable):
        return tf.convert_to_tensor(value, dtype=dtype)
    view = np.asarray(value)  # no copy: a NumPy array, or a JAX array on the CPU
    if view.size == 0:
        return tf.convert_to_tensor(view, dtype=dtype)
    # TensorFlow's own kernels require aligned buffers (a CHECK aborts the process otherwise)
    shareable = view.flags.c_contiguous and view.ctypes.data % ALIGNMENT == 0
    if view.dtype == np.dtype(dtype) and shareable and hasattr(value, "__dlpack__"):
        try:
            return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
        except Exception:  # not shareable (read-only, another device): copied below
            pass
    # TensorFlow's own copy (its allocator reuses freed buffers: a fresh aligned NumPy buffer
    # per update costs the kernel's page faults, 4 s of system time over LeNet's 1,360 updates)
    return tf.convert_to_tensor(view, dtype=dtype)


#: weights (all blobs) from which :meth:`TfExecutor.reset` and :func:`in_place_loader` are
#: compiled with XLA, which sets the variables in place; below, assigning them one by one
#: costs less than compiling
XLA_RESET_MIN_ELEMENTS = 2**24


def in_place_loader(
    variables: Sequence[Any], perms: Sequence[tuple[int, ...] | None]
) -> Callable[[list[Any]], None]:
    """``load(values)``: variable ``i`` set to ``transpose(values[i], perms[i])`` (``None``: as
    it is), cast to the variable's dtype, by one ``tf.function(jit_compile=True)``. XLA writes
    into the variables' own buffers. An eager ``assign`` of a :func:`shared_tensor` instead
    makes the variable adopt the host array's buffer, and the first compiled update after it
    then writes every variable it updates into a new buffer (on VGG16 the first update of each
    run rose 0.5 GB above the others, bench/RESULTS.md "Session 9"). ``values``: tensors,
    e.g. :func:`shared_tensor` views of host arrays in Caffe's layout, so the host makes no
    transposed copy either."""
    import tensorflow as tf

    pairs = list(zip(variables, perms, strict=True))

    def load(values: list[Any]) -> None:
        for (var, perm), value in zip(pairs, values, strict=True):
            value = tf.transpose(value, perm) if perm is not None else value
            var.assign(tf.cast(value, var.dtype))

    return tf.function(load, jit_compile=True, autograph=False)


class TfExecutor:
    """Caffe's rule compiled with TensorFlow, stepped one update at a time from update
    ``start`` of a run of ``updates`` (with fresh state, as
    :func:`caffe2tf.rule.reference.fast_forward` enters it). The weights and the state are
    TensorFlow variables in Caffe's layout, updated in place by one
    ``tf.function(jit_compile=True)`` that holds them (XLA writes the new values over the old,
    so an update holds no second copy); :meth:`reset` starts another run of the same blobs on
    them (TensorFlow keeps the memory of variables it has freed for its own later use, so a
    verify makes one executor per precision and set of shapes, not one per run). ``device``: a
    TensorFlow device name (None: TensorFlow's choice)."""

    def __init__(
        self,
        rule: UpdateRule,
        init: Mapping[str, np.ndarray],
        *,
        precision: str = "float32",
        start: int = 0,
        updates: int,
        device: str | None = None,
        registry: Mapping[type, StepFn] | None = None,
    ) -> None:
        import tensorflow as tf

        self._tf = tf
        self.cr = tf_rule(rule, list(init), precision=precision, registry=registry)
        dt = self.cr.np_dtype
        self.device = device
        self.rest = {k: np.asarray(init[k], dt) for k in init if k not in self.cr.keys}
        with self._placed():
            self.weights = {
                k: tf.Variable(np.asarray(init[k], dt), trainable=False) for k in self.cr.keys
            }
            self.state = {
                k: {s: tf.Variable(v, trainable=False) for s, v in d.items()}
                for k, d in self.cr.init_state(self.weights).items()
            }
        # the variables are captured, not passed: a call then costs a fraction (LeNet: ~0.9
        # against 1.3-2 ms an update)
        self.fn = tf.function(self.apply, jit_compile=True, autograph=False)
        size = sum(int(np.prod(v.shape)) for v in self.weights.values())
        self._reset = tf.function(
            self._assign_init, jit_compile=size >= XLA_RESET_MIN_ELEMENTS, autograph=False
        )
        self._schedule(start, updates)

    def apply(self, grads: list[Any], rate: Any, corr: Any) -> None:
        """One Caffe update of the variables (:meth:`CompiledRule.update`) with Caffe's diff
        ``grads`` (in :attr:`cr`'s key order), to be traced: :meth:`step` calls it compiled,
        and the fused TensorFlow engine inside its loop (:mod:`caffe2tf.verify.tf_device`)."""
        cr = self.cr
        w = {k: v.read_value() for k, v in self.weights.items()}
        st = {k: {s: v.read_value() for s, v in d.items()} for k, d in self.state.items()}
        new_w, new_st = cr.update(w, st, dict(zip(cr.keys, grads, strict=True)), rate, corr)
        for k in cr.keys:
            self.weights[k].assign(new_w[k])
            for s in cr.slots:
                self.state[k][s].assign(new_st[k][s])

    def _assign_init(self, init: list[Any]) -> None:
        """The weights set to ``init`` and the state to zeros, traced."""
        tf = self._tf
        for k, value in zip(self.cr.keys, init, strict=True):
            self.weights[k].assign(value)
            for v in self.state[k].values():
                v.assign(tf.zeros_like(v))

    def _schedule(self, start: int, updates: int) -> None:
        """The host scalars of updates ``start .. start + updates - 1``, from the first."""
        rates, corr = host_scalars(self.cr.rule, start, updates, self.cr.precision)
        self.rates, self.corr = rates.astype(self.cr.np_dtype), corr.astype(self.cr.np_dtype)
        self.k = 0

    def reset(self, init: Mapping[str, np.ndarray], *, start: int = 0, updates: int) -> None:
        """Start a run from ``init`` (the same blobs and shapes) at update ``start`` with
        fresh state, on the same variables."""
        dt = self.cr.np_dtype
        self.rest = {k: np.asarray(init[k], dt) for k in init if k not in self.cr.keys}
        with self._placed():
            self._reset([shared_tensor(init[k], dt) for k in self.cr.keys])
        self._schedule(start, updates)

    def host_weights(self) -> dict[str, np.ndarray]:
        """The weights as read-only NumPy views of the variables' buffers (DLPack, no copy:
        a host comparison that copied them took a fresh buffer, and its page faults, per blob
        and update), valid until the next :meth:`step`."""
        out: dict[str, np.ndarray] = dict(self.rest)
        for k, v in self.weights.items():
            value = v.read_value()
            try:
                out[k] = np.from_dlpack(value)
            except (BufferError, RuntimeError, TypeError):  # not on the host: copy it
                out[k] = value.numpy()
        return out

    def _placed(self) -> Any:
        import contextlib

        return self._tf.device(self.device) if self.device else contextlib.nullcontext()

    def step(self, grads: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Apply update ``k`` with Caffe's diff ``grads`` (NumPy arrays or tensors); the
        weights after it: the variables and, for the blobs the rule does not own, the initial
        values."""
        tf = self._tf
        dt = self.rates.dtype
        with self._placed():
            g = [shared_tensor(grads[k], dt) for k in self.cr.keys]
            self.fn(g, tf.constant(self.rates[self.k]), tf.constant(self.corr[self.k]))
        self.k += 1
        return {**self.weights, **self.rest}


def run_tf(
    rule: UpdateRule,
    init: Mapping[str, np.ndarray],
    grads: Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
    start: int = 0,
) -> list[dict[str, np.ndarray]]:
    """:func:`caffe2tf.rule.reference.run_reference` on TensorFlow: the weights after each
    update (tests and the matrix). Keys are owner keys; a missing gradient is zero."""
    dt = np.float32 if precision == "float32" else np.float64
    ex = TfExecutor(
        rule, init, precision=precision, start=start, updates=len(grads), registry=registry
    )
    out: dict[str, list[np.ndarray]] = {k: [] for k in ex.cr.keys}
    for g in grads:
        diff = {k: np.asarray(g.get(k, np.zeros_like(init[k])), dt) for k in ex.cr.keys}
        weights = ex.step(diff)
        for k in ex.cr.keys:
            out[k].append(weights[k].numpy())  # a copy: the variable is updated in place
    stacked = {k: np.stack(v) if v else np.zeros((0,), dt) for k, v in out.items()}
    return trajectory(ex.cr.keys, init, stacked, len(grads), dt)


__all__ = [
    "TfExecutor",
    "TfOps",
    "aligned_empty",
    "run_tf",
    "shared_tensor",
    "tf_ops",
    "tf_rule",
]
