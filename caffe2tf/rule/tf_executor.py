"""Caffe's rule compiled with TensorFlow: :mod:`caffe2tf.rule.compiled`'s step functions over
TensorFlow operations (:class:`TfOps`), one update a call of ``tf.function(jit_compile=True)``
(XLA). It is the executor of Caffe's rule next to a candidate on Keras' TensorFlow backend, on
the device TensorFlow computes on (docs/verify.md#both-rules-on-one-device); float64 needs no
mode of its own."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
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
        self._constant = tf.constant

    def asarray(self, x: Any) -> Any:
        return self._constant(x)

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


#: compiled update functions, by (rule, owner keys, precision, step functions): the runs of one
#: verify (the stream, the schedule windows, the probes) share one traced function per shape
_COMPILED: dict[tuple, tuple[Any, Any]] = {}


def _compiled_update(cr: CompiledRule) -> Any:
    import tensorflow as tf

    key = (id(cr.rule), cr.keys, cr.precision, tuple(sorted(map(id, cr.registry.values()))))
    if key not in _COMPILED:
        # the rule is kept with its function so that its id is not reused while cached
        _COMPILED[key] = (cr.rule, tf.function(cr.update, jit_compile=True))
    return _COMPILED[key][1]


class TfExecutor:
    """Caffe's rule compiled with TensorFlow, stepped one update at a time from update
    ``start`` of a run of ``updates`` (with fresh state, as
    :func:`caffe2tf.rule.reference.fast_forward` enters it): :meth:`step` applies Caffe's
    diff and returns the weights keyed like ``init`` (TensorFlow tensors for the blobs the rule
    owns). ``device``: a TensorFlow device name (None: TensorFlow's choice)."""

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
        dt = np.float32 if precision == "float32" else np.float64
        self.cr = tf_rule(rule, list(init), precision=precision, registry=registry)
        self.device = device
        self.rest = {k: np.asarray(init[k], dt) for k in init if k not in self.cr.keys}
        with self._placed():
            self.weights = {k: tf.constant(np.asarray(init[k], dt)) for k in self.cr.keys}
            self.state = self.cr.init_state(self.weights)
        rates, corr = host_scalars(rule, start, updates, precision)
        self.rates, self.corr = rates.astype(dt), corr.astype(dt)
        self.fn = _compiled_update(self.cr)
        self.k = 0

    def _placed(self) -> Any:
        import contextlib

        return self._tf.device(self.device) if self.device else contextlib.nullcontext()

    def step(self, grads: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Apply update ``k`` with Caffe's diff ``grads`` (NumPy arrays or tensors)."""
        tf = self._tf
        dt = self.rates.dtype
        with self._placed():
            g = {k: tf.convert_to_tensor(grads[k], dtype=dt) for k in self.cr.keys}
            self.weights, self.state = self.fn(
                self.weights,
                self.state,
                g,
                tf.constant(self.rates[self.k]),
                tf.constant(self.corr[self.k]),
            )
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
            out[k].append(weights[k].numpy())
    stacked = {k: np.stack(v) if v else np.zeros((0,), dt) for k, v in out.items()}
    return trajectory(ex.cr.keys, init, stacked, len(grads), dt)


__all__ = ["TfExecutor", "TfOps", "run_tf", "tf_ops", "tf_rule"]
