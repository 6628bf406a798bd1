"""The custom loop on the JAX backend: ``jax.grad`` of a stateless loss, then
``apply_gradients`` (eager) or ``optimizer.stateless_apply`` under ``jax.jit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caffe2tf.verify.mirror import keras_grads, trained_pairs


def run(
    model: Any,
    optimizer: Any,
    parts_iter: Any,
    on_update: Callable[[], None],
    iter_size: int,
    jit: bool = True,
    cache: dict[str, Any] | None = None,
) -> None:
    import jax
    import jax.numpy as jnp
    import keras

    pairs = trained_pairs(model)
    tvars = [v for _, v in pairs]
    keys = [k for k, _ in pairs]

    def total_loss(values: list[Any], gs: list[Any]) -> Any:
        lin = sum((jnp.sum(g * w) for g, w in zip(gs, values, strict=True)), jnp.float32(0))
        with keras.StatelessScope(state_mapping=list(zip(tvars, values, strict=True))):
            reg = model.losses
            reg_total = sum((jnp.sum(r).astype(jnp.float32) for r in reg), jnp.float32(0))
        return lin + reg_total

    grad_fn = jax.jit(jax.grad(total_loss))
    if not jit:
        for j, part in parts_iter:
            kg = keras_grads(model, part)
            values = [v.value for v in tvars]
            grads = grad_fn(values, [jnp.asarray(kg[k]) for k in keys])
            optimizer.apply_gradients(zip(grads, tvars, strict=True))
            if (j + 1) % iter_size == 0:
                on_update()
        return

    # jit route: the same gradient, and ``optimizer.stateless_apply`` (the functional form of
    # ``apply_gradients`` that Keras' own JAX trainer calls, ``backend/jax/trainer.py``), one
    # call per micro-batch; the values are written back into the variables after each update.
    optimizer.build(tvars)
    opt_vars = list(optimizer.variables)

    def step(values: list[Any], opt_values: list[Any], gs: list[Any]) -> Any:
        grads = jax.grad(total_loss)(values, gs)
        return optimizer.stateless_apply(opt_values, grads, values)

    step_fn = jax.jit(step)
    values = [v.value for v in tvars]
    opt_values = [v.value for v in opt_vars]
    for j, part in parts_iter:
        kg = keras_grads(model, part)
        values, opt_values = step_fn(values, opt_values, [jnp.asarray(kg[k]) for k in keys])
        values, opt_values = list(values), list(opt_values)
        if (j + 1) % iter_size == 0:
            for v, x in zip(tvars, values, strict=True):
                v.assign(x)
            on_update()
    for v, x in zip(opt_vars, opt_values, strict=True):
        v.assign(x)
