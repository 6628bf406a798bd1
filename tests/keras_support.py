"""Helpers for the Keras-target tests: a small Keras model mirroring a Caffe net of
InnerProduct layers (and BatchNorm+Scale pairs), the contract-following training loop, and the
deviation measure against :func:`caffe2tf.rule.reference.run_reference`.

Every Caffe update k with raw diff G_k (the sum over iter_size passes) is fed as iter_size
different seeded parts that sum to G_k; micro-batch j differentiates
``sum(stop_gradient(g_kj) * v) + sum(model.losses)`` and calls ``apply_gradients`` once.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

CASES = Path(__file__).parent / "cases"
_counter = itertools.count()


def load_module(path: str | os.PathLike[str]) -> Any:
    name = f"_caffe2tf_emitted_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rule_of(solver: str | os.PathLike[str], net: str | os.PathLike[str] | None = None) -> Any:
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule.lower import lower

    return lower(load_recipe(solver, net_path=net))


def shapes_of(rule: Any) -> dict[str, tuple[int, ...]]:
    return {g.key: tuple(g.shape) for g in rule.params}


def make_model(rule: Any, layer_map: dict[str, str] | None = None) -> Any:
    """A built Keras model whose layers carry the Caffe names (InnerProduct -> Dense,
    Scale after BatchNorm -> the BatchNormalization named like the BatchNorm)."""
    import keras

    layer_map = layer_map or {}
    shapes = shapes_of(rule)
    layers = []
    done = set()
    for g in rule.params:
        layer, _, _ = g.key.rpartition("/")
        if layer in done:
            continue
        done.add(layer)
        name = layer_map.get(layer, layer)
        if g.layer_type == "InnerProduct":
            out_dim, in_dim = shapes[f"{layer}/0"]
            dense = keras.layers.Dense(out_dim, use_bias=f"{layer}/1" in shapes, name=name)
            dense.build((None, in_dim))
            layers.append(dense)
        elif g.layer_type == "Scale":
            (channels,) = shapes[f"{layer}/0"]
            bn = keras.layers.BatchNormalization(name=name)
            bn.build((None, channels))
            layers.append(bn)

    class Mirror(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="mirror")
            self.blocks = layers

        def call(self, x: Any) -> Any:
            return x

    return Mirror()


def keras_key(variable: Any, names: dict[str, str]) -> str | None:
    """Caffe key ``layer/blob`` of a Keras variable (names: keras layer -> caffe layer for the
    blobs; for a BN, gamma/beta hold the Scale layer's blobs)."""
    from caffe2tf.targets.keras.runtime import caffe_blob_key

    key = caffe_blob_key(variable.path)
    if key is None:
        return None
    layer, _, blob = key.rpartition("/")
    return f"{names[layer]}/{blob}" if layer in names else None


def to_keras(value: np.ndarray) -> np.ndarray:
    return value.T if value.ndim == 2 else value


def set_weights(model: Any, init: dict[str, np.ndarray], names: dict[str, str]) -> None:
    for v in model.variables:
        k = keras_key(v, names)
        if k in init:
            v.assign(to_keras(init[k]).astype(np.float32))


def get_weights(model: Any, names: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for v in model.variables:
        k = keras_key(v, names)
        if k is not None:
            out[k] = to_keras(np.asarray(v.numpy() if hasattr(v, "numpy") else v))
    return out


def streams(rule: Any, steps: int, seed: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    shapes = shapes_of(rule)
    init = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
    grads = []
    for t in range(steps):
        scale = 0.05 if t % 7 == 3 else 1.0
        grads.append({k: (rng.normal(0, 1.0, s) * scale).astype(np.float32)
                      for k, s in shapes.items()})
    return init, grads


def split(total: dict[str, np.ndarray], parts: int, rng: Any) -> list[dict[str, np.ndarray]]:
    if parts == 1:
        return [total]
    out = [{k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in total.items()}
           for _ in range(parts - 1)]
    last = {k: (v - sum(p[k] for p in out)).astype(np.float32) for k, v in total.items()}
    return out + [last]


def run_keras(build_optimizer: Any, prepare_model: Any, rule: Any, init: dict, grads: list,
              *, names: dict[str, str], layer_map: dict[str, str] | None = None,
              seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Train per the contract on the active backend; weights after each Caffe update."""
    import keras

    model = make_model(rule, layer_map)
    prepare_model(model)
    set_weights(model, init, names)
    optimizer = build_optimizer()
    rng = np.random.default_rng(seed)
    backend = keras.backend.backend()
    traj = []
    for total in grads:
        for part in split(total, rule.iter_size, rng):
            tv = model.trainable_variables
            gk = [keras.ops.convert_to_tensor(to_keras(part[keras_key(v, names)])) for v in tv]
            if backend == "tensorflow":
                import tensorflow as tf

                with tf.GradientTape() as tape:
                    loss = sum(tf.reduce_sum(g * v) for g, v in zip(gk, tv, strict=True))
                    loss = loss + sum(model.losses)
                gs = tape.gradient(loss, tv)
            else:
                import jax

                def f(values: list, gk: list = gk, tv: list = tv) -> Any:
                    with keras.StatelessScope(state_mapping=list(zip(tv, values, strict=True))):
                        reg = sum(model.losses)
                    return sum((g * x).sum() for g, x in zip(gk, values, strict=True)) + reg

                gs = jax.grad(f)([v.value for v in tv])
            optimizer.apply_gradients(zip(gs, tv, strict=True))
        traj.append(get_weights(model, names))
    return traj


def deviation(init: dict, reference: list, candidate: list) -> float:
    from caffe2tf.verify.compare import compare_trajectories

    keys = [k for k in init if k in candidate[0]]
    return compare_trajectories(init, reference, candidate, keys=keys).deviation


def names_of(plan: Any) -> dict[str, str]:
    """keras layer -> Caffe layer owning the blobs (BN name -> its Scale layer)."""
    return {b.keras_layer: b.caffe_layer for b in plan.blobs}
