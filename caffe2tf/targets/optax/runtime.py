"""Exact Caffe pieces for optax, inlined into the emitted ``optimizer_optax.py``.

:mod:`caffe2tf.targets.optax.render_python` copies the text between the ``# -- inline begin``
and ``# -- inline end`` markers verbatim (only the blocks a recipe uses), so a block may use
only ``jax``, ``jax.numpy``, ``optax``, ``warnings``, ``collections.abc`` and ``typing`` and
must stay ``ruff format`` clean. The tests import this module (with optax installed) too.

Only what optax has no exact built-in for lives here (docs/optax-target.md): the labels that
route each Caffe blob of a ``{layer: [blob0, blob1, ...]}`` params tree to its
(lr_mult, decay_mult) group, Caffe's L1 decay (sign(0) = 0), AdaGrad and Adam with delta
outside the root of the *uncorrected* second moment, and the ``inv`` / ``sigmoid`` rates.
Everything is jit-compatible (no Python branch on traced values).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# -- inline begin labels
#: A Caffe learnable blob: (Caffe layer, blob index, lr_mult, decay_mult, gets a gradient).
BlobRow = tuple[str, int, float, float, bool]

FROZEN = "frozen"


def group_label(lr_mult: float, decay_mult: float) -> str:
    """The multi_transform label of the blobs with these multipliers."""
    return FROZEN if lr_mult == 0.0 else f"lr_mult {lr_mult} decay_mult {decay_mult}"


def caffe_groups(
    blobs: Sequence[BlobRow], default_blob: tuple[float, float]
) -> dict[str, tuple[float, float]]:
    """label -> (lr_mult, decay_mult) for every group the table (and the default) uses."""
    out = {group_label(lr, dm): (lr, dm) for _, _, lr, dm, _ in blobs}
    out.setdefault(group_label(*default_blob), default_blob)
    return out


def caffe_labels(
    blobs: Sequence[BlobRow], default_blob: tuple[float, float], what: str = "label"
) -> Callable[[Any], Any]:
    """``params -> labels`` for ``{caffe_layer: [blob0, blob1, ...]}`` params (lists or
    tuples; ``None`` where a layer shares a blob that another layer owns).

    ``what="label"`` gives each blob's group label; ``what="no_gradient"`` gives True for the
    blobs whose gradient Caffe never computes (lr_mult 0 without force_backward, BatchNorm
    statistics), for ``optax.masked``. Raises ValueError naming every Caffe blob missing from
    ``params``; warns about leaves that hold no Caffe blob (they get ``default_blob``).
    """
    table = {(row[0], row[1]): row for row in blobs}
    warned: list[bool] = []  # warn once, not at every update

    def labels(params: Any) -> Any:
        missing = []
        for layer, index in table:
            values = params.get(layer, ())
            if index >= len(values) or values[index] is None:
                missing.append(f"{layer!r} blob {index}")
        if missing:
            raise ValueError(
                "These Caffe blobs are not in the params tree {caffe_layer: [blob0, blob1, "
                "...]}: " + ", ".join(missing)
            )
        extra: list[str] = []
        out = {}
        for layer, values in params.items():
            row_labels = []
            for index, value in enumerate(values):
                row = table.get((layer, index))
                if value is None:
                    row_labels.append(None)
                    continue
                if row is None:
                    extra.append(f"{layer!r} blob {index}")
                    lr_mult, decay_mult, gets_gradient = *default_blob, True
                else:
                    _, _, lr_mult, decay_mult, gets_gradient = row
                if what == "label":
                    row_labels.append(group_label(lr_mult, decay_mult))
                else:
                    row_labels.append(not gets_gradient)
            out[layer] = type(values)(row_labels)
        if extra and table and what == "label" and not warned:
            warned.append(True)
            lr_mult, decay_mult = default_blob
            warnings.warn(
                f"params with no Caffe blob (trained with lr_mult {lr_mult} and "
                f"decay_mult {decay_mult}): {', '.join(extra)}",
                stacklevel=2,
            )
        return out

    return labels


# -- inline end labels


# -- inline begin l1_decay
def add_caffe_l1_decay(coefficient: float) -> optax.GradientTransformation:
    """Caffe's L1 decay: updates + coefficient * sign(params), sign(0) = 0
    (sgd_solver.cpp:189-196)."""

    def update(updates: Any, state: Any, params: Any = None) -> Any:
        if params is None:
            raise ValueError("add_caffe_l1_decay needs params")
        new = jax.tree.map(lambda g, p: g + coefficient * jnp.sign(p), updates, params)
        return new, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# -- inline end l1_decay


# -- inline begin solver_adagrad
class CaffeAdaGradState(NamedTuple):
    history: Any


def scale_by_caffe_adagrad(delta: float) -> optax.GradientTransformation:
    """Caffe AdaGrad before the rate: h += g^2; g / (sqrt(h) + delta), delta outside the
    root and h starting at 0 (adagrad_solver.cpp:13-49)."""

    def init(params: Any) -> CaffeAdaGradState:
        return CaffeAdaGradState(jax.tree.map(jnp.zeros_like, params))

    def update(updates: Any, state: CaffeAdaGradState, params: Any = None) -> Any:
        history = jax.tree.map(lambda h, g: h + g * g, state.history, updates)
        new = jax.tree.map(lambda g, h: g / (jnp.sqrt(h) + delta), updates, history)
        return new, CaffeAdaGradState(history)

    return optax.GradientTransformation(init, update)


# -- inline end solver_adagrad


# -- inline begin solver_adam
class CaffeAdamState(NamedTuple):
    count: Any
    m: Any
    v: Any


def scale_by_caffe_adam(
    beta1: float,
    beta2: float,
    delta: float,
) -> optax.GradientTransformation:
    """Caffe Adam before the rate, t = 1, 2, ...: m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g^2; sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)
    (adam_solver.cpp:25-74): delta is added to the uncorrected sqrt(v), where
    optax.scale_by_adam adds eps to the corrected one. 1 - b^t is formed as -expm1(t log b),
    which float32 keeps accurate for b near 1."""

    def init(params: Any) -> CaffeAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return CaffeAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(updates: Any, state: CaffeAdamState, params: Any = None) -> Any:
        t = (state.count + 1).astype(jnp.float32)
        m = jax.tree.map(lambda m, g: beta1 * m + (1.0 - beta1) * g, state.m, updates)
        squares = jax.tree.map(lambda g: g * g, updates)
        v = jax.tree.map(lambda v, s: beta2 * v + (1.0 - beta2) * s, state.v, squares)
        one_minus_b1t = -jnp.expm1(t * jnp.log(jnp.float32(beta1)))
        one_minus_b2t = -jnp.expm1(t * jnp.log(jnp.float32(beta2)))
        correction = jnp.sqrt(one_minus_b2t) / one_minus_b1t
        new = jax.tree.map(lambda m, v: correction * (m / (jnp.sqrt(v) + delta)), m, v)
        return new, CaffeAdamState(state.count + 1, m, v)

    return optax.GradientTransformation(init, update)


# -- inline end solver_adam


# -- inline begin policy_inv
def caffe_inv_schedule(init_value: float, gamma: float, power: float) -> optax.Schedule:
    """Caffe's lr_policy "inv": init_value * (1 + gamma * k) ^ (-power)
    (sgd_solver.cpp:41-45)."""

    def schedule(count: Any) -> Any:
        k = jnp.asarray(count, jnp.float32)
        return init_value * jnp.power(1.0 + gamma * k, -power)

    return schedule


# -- inline end policy_inv


# -- inline begin policy_sigmoid
def caffe_sigmoid_schedule(
    init_value: float,
    gamma: float,
    stepsize: int,
) -> optax.Schedule:
    """Caffe's lr_policy "sigmoid": init_value / (1 + exp(-gamma * (k - stepsize)))
    (sgd_solver.cpp:60-65)."""

    def schedule(count: Any) -> Any:
        k = jnp.asarray(count, jnp.float32)
        return init_value * (1.0 / (1.0 + jnp.exp(-gamma * (k - stepsize))))

    return schedule


# -- inline end policy_sigmoid

__all__ = [
    "FROZEN",
    "BlobRow",
    "CaffeAdaGradState",
    "CaffeAdamState",
    "add_caffe_l1_decay",
    "caffe_groups",
    "caffe_inv_schedule",
    "caffe_labels",
    "caffe_sigmoid_schedule",
    "group_label",
    "scale_by_caffe_adagrad",
    "scale_by_caffe_adam",
]
