"""Run an emitted ``optimizer_optax.py`` per its contract and record the weight trajectory.

The contract (docs/optax-target.md#contract): ``build_optimizer()`` returns an
``optax.GradientTransformation`` for a params tree ``{caffe_layer: [blob0, blob1, ...]}`` in
Caffe's blob layout; per Caffe forward/backward pass the user computes the gradients of the
loss and applies ``update`` + ``optax.apply_updates`` once. Here each pass's gradient tree is
``jax.grad`` of ``sum(g * p)`` (exactly ``g``) and the whole step is ``jax.jit``-compiled, as a
user's train step would be.

JAX and optax are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]


def layer_lists(keys: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """``{layer: [(blob index, key), ...]}`` in index order for ``"{layer}/{index}"`` keys."""
    out: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        layer, _, index = key.rpartition("/")
        out.setdefault(layer, []).append((int(index), key))
    for rows in out.values():
        rows.sort()
        if [i for i, _ in rows] != list(range(len(rows))):
            raise ValueError(f"blobs of a layer must be 0..n-1, got {[k for _, k in rows]}")
    return out


def params_tree(values: Mapping[str, Any], layout: Mapping[str, list[tuple[int, str]]]) -> Any:
    """``{layer: [values[key] for each blob]}``."""
    return {layer: [values[key] for _, key in rows] for layer, rows in layout.items()}


def run_optax(
    build_optimizer: Callable[[], Any],
    init: Mapping[str, np.ndarray],
    micro: Sequence[Mapping[str, np.ndarray]],
    *,
    iter_size: int = 1,
    jit: bool = True,
) -> list[Weights]:
    """Train ``{layer: [blobs]}`` params from ``init`` on the per-pass gradients ``micro``
    (``iter_size`` passes per Caffe update); the weights after each Caffe update, keyed like
    ``init`` (float32). A blob missing from a pass has a zero gradient."""
    import jax
    import jax.numpy as jnp
    import optax

    layout = layer_lists(list(init))
    params = params_tree(
        {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in init.items()}, layout
    )
    optimizer = build_optimizer()
    state = optimizer.init(params)

    def step(params: Any, state: Any, g: Any) -> Any:
        def loss(p: Any) -> Any:
            terms = jax.tree.map(lambda a, b: jnp.sum(a * b), g, p)
            return sum(jax.tree.leaves(terms))

        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    run = jax.jit(step) if jit else step
    out: list[Weights] = []
    for j, part in enumerate(micro):
        g = {k: np.asarray(part.get(k, np.zeros_like(init[k])), np.float32) for k in init}
        params, state = run(params, state, params_tree(g, layout))
        if (j + 1) % max(1, iter_size) == 0:
            flat = {
                key: np.asarray(params[layer][i])
                for layer, rows in layout.items()
                for i, key in rows
            }
            out.append({k: flat[k].copy() for k in init})
    return out
