"""Caffe's rule compiled with JAX (:mod:`caffe2tf.rule.compiled` over ``jax.numpy``): the
executor on Keras' JAX backend (docs/verify.md#both-rules-on-one-device). Float64 runs need
``jax.enable_x64(True)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.rule.compiled import (
    CompiledRule,
    StepFn,
    compiled_rule,
    host_scalars,
    stacked_gradients,
    trajectory,
)
from caffe2tf.rule.model import UpdateRule


def jax_rule(
    rule: UpdateRule,
    keys: Sequence[str],
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
) -> CompiledRule:
    """:func:`caffe2tf.rule.compiled.compiled_rule` over ``jax.numpy``."""
    import jax.numpy as jnp

    return compiled_rule(rule, keys, jnp, precision=precision, registry=registry)


def run_jax(
    rule: UpdateRule,
    init: Mapping[str, np.ndarray],
    grads: Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str = "float32",
    registry: Mapping[type, StepFn] | None = None,
    start: int = 0,
) -> list[dict[str, np.ndarray]]:
    """:func:`caffe2tf.rule.reference.run_reference` on JAX: the weights after each update, one
    compiled ``lax.scan`` over the run (tests and the matrix; verify streams instead). Keys
    are owner keys; a missing gradient is zero. Float64 needs ``jax.enable_x64(True)``."""
    import jax
    import jax.numpy as jnp

    dt = np.float32 if precision == "float32" else np.float64
    jr = jax_rule(rule, list(init), precision=precision, registry=registry)
    weights = {k: jnp.asarray(np.asarray(init[k], dt)) for k in jr.keys}
    stacked = {k: jnp.asarray(v) for k, v in stacked_gradients(jr.keys, init, grads, dt).items()}
    rates, corr = host_scalars(rule, start, len(grads), precision)

    def body(carry: Any, xs: Any) -> Any:
        w, st = carry
        g, r, c = xs
        w, st = jr.update(w, st, g, r, c)
        return (w, st), w

    @jax.jit
    def scan(w: Any, st: Any, g: Any, r: Any, c: Any) -> Any:
        return jax.lax.scan(body, (w, st), (g, r, c))[1]

    out = scan(weights, jr.init_state(weights), stacked, jnp.asarray(rates), jnp.asarray(corr))
    out = {k: np.asarray(v) for k, v in out.items()}
    return trajectory(jr.keys, init, out, len(grads), dt)


__all__ = ["jax_rule", "run_jax"]
