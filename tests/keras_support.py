"""Helpers for the Keras-target tests: a small Keras model mirroring a Caffe net of
InnerProduct layers (and BatchNorm+Scale pairs), the contract-following training loop, and the
deviation measure against :func:`caffe2tf.rule.reference.run_reference`.

Every Caffe update k with raw diff G_k (the sum over iter_size passes) is fed as iter_size
different seeded parts that sum to G_k; micro-batch j differentiates
``sum(stop_gradient(g_kj) * v) + sum(model.losses)`` and calls ``apply_gradients`` once.

This is deliberately an independent re-implementation of what
:mod:`caffe2tf.verify.keras_harness` does (a second, simpler mirror and loop written from the
contract alone): the tests that use it check the emitted modules without trusting the harness
that ``caffe2tf verify`` ships, so a bug in that harness cannot hide a wrong optimizer.
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


def plan_of(case: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(rule, plan) for a case directory, through the same path as ``caffe2tf convert``."""
    from caffe2tf.app.pipeline import keras_plan, load_pipeline

    case = Path(case)
    layer_map = {}
    if (case / "layer_map.yaml").exists():
        from caffe2tf.app.convert import load_layer_map

        layer_map = load_layer_map(case / "layer_map.yaml")
    pipeline = load_pipeline(case / "solver.prototxt")
    p, _ = keras_plan(pipeline, layer_map)
    return pipeline.rule, p


def rule_of(solver: str | os.PathLike[str], net: str | os.PathLike[str] | None = None) -> Any:
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule.lower import lower

    return lower(load_recipe(solver, net_path=net))


def shapes_of(rule: Any) -> dict[str, tuple[int, ...]]:
    return {g.key: tuple(g.shape) for g in rule.params}


def make_model(rule: Any, plan: Any) -> Any:
    """A built Keras model with one layer per Keras name of the plan (InnerProduct -> Dense,
    a Scale paired with a BatchNorm -> BatchNormalization named like the BatchNorm)."""
    import keras

    shapes = shapes_of(rule)
    layers = []
    done = set()
    for b in plan.blobs:
        if b.keras_layer in done:
            continue
        done.add(b.keras_layer)
        if b.layer_type == "InnerProduct":
            out_dim, in_dim = shapes[f"{b.caffe_layer}/0"]
            dense = keras.layers.Dense(
                out_dim, use_bias=f"{b.caffe_layer}/1" in shapes, name=b.keras_layer
            )
            dense.build((None, in_dim))
            layers.append(dense)
        elif b.layer_type == "Scale":
            (channels,) = shapes[f"{b.caffe_layer}/0"]
            bn = keras.layers.BatchNormalization(name=b.keras_layer)
            bn.build((None, channels))
            layers.append(bn)
        else:
            raise AssertionError(b.layer_type)

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
    frozen = {g.key: 0.0 for g in rule.params if not g.trainable}
    grads = []
    for t in range(steps):
        scale = 0.05 if t % 7 == 3 else 1.0
        # lr_mult 0 blobs get no gradient in Caffe (net.cpp:149-152): their diff stays 0
        grads.append(
            {
                k: (rng.normal(0, 1.0, s) * scale * frozen.get(k, 1.0)).astype(np.float32)
                for k, s in shapes.items()
            }
        )
    return init, grads


def split(total: dict[str, np.ndarray], parts: int, rng: Any) -> list[dict[str, np.ndarray]]:
    if parts == 1:
        return [total]
    out = [
        {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in total.items()}
        for _ in range(parts - 1)
    ]
    last = {k: (v - sum(p[k] for p in out)).astype(np.float32) for k, v in total.items()}
    return out + [last]


def run_keras(
    build_optimizer: Any,
    prepare_model: Any,
    rule: Any,
    init: dict,
    grads: list,
    *,
    plan: Any,
    seed: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Train per the contract on the active backend; weights after each Caffe update."""
    import keras

    names = names_of(plan)
    model = make_model(rule, plan)
    prepare_model(model)
    set_weights(model, init, names)
    optimizer = build_optimizer()
    rng = np.random.default_rng(seed)
    backend = keras.backend.backend()
    traj = []
    tv = model.trainable_variables
    optimizer.build(tv)
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(gk: list) -> None:
            with tf.GradientTape() as tape:
                loss = sum(tf.reduce_sum(g * v) for g, v in zip(gk, tv, strict=True))
                loss = loss + sum(model.losses)
            gs = tape.gradient(loss, tv)
            optimizer.apply_gradients(zip(gs, tv, strict=True))
    else:
        import jax

        def step(gk: list) -> None:
            def f(values: list) -> Any:
                with keras.StatelessScope(state_mapping=list(zip(tv, values, strict=True))):
                    reg = sum(model.losses)
                return sum((g * x).sum() for g, x in zip(gk, values, strict=True)) + reg

            gs = jax.grad(f)([v.value for v in tv])
            optimizer.apply_gradients(zip(gs, tv, strict=True))

    for total in grads:
        for part in split(total, rule.iter_size, rng):
            gk = [keras.ops.convert_to_tensor(to_keras(part[keras_key(v, names)])) for v in tv]
            step(gk)
        traj.append(get_weights(model, names))
    return traj


def deviation(init: dict, reference: list, candidate: list) -> float:
    from caffe2tf.verify.compare import compare_trajectories

    keys = [k for k in init if k in candidate[0]]
    return compare_trajectories(init, reference, candidate, keys=keys).deviation


def names_of(plan: Any) -> dict[str, str]:
    """keras layer -> Caffe layer owning the blobs (BN name -> its Scale layer)."""
    return {b.keras_layer: b.caffe_layer for b in plan.blobs}


def run_fit(
    build_optimizer: Any,
    prepare_model: Any,
    rule: Any,
    init: dict,
    grads: list,
    *,
    plan: Any,
    seed: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The ``compile`` + ``fit`` side of the contract: each batch (size 1) carries one
    micro-batch gradient, flattened; the model outputs ``sum(x_v * v)`` and the loss is that
    output, so ``fit`` differentiates it plus ``sum(model.losses)`` itself."""
    import keras

    names = names_of(plan)
    model = make_model(rule, plan)
    prepare_model(model)
    set_weights(model, init, names)
    tv = list(model.trainable_variables)
    sizes = [int(np.prod(v.shape)) for v in tv]

    class Probe(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="probe")
            self.inner = model

        def call(self, x: Any) -> Any:
            total = 0.0
            start = 0
            for v, n in zip(tv, sizes, strict=True):
                part = keras.ops.reshape(x[:, start : start + n], (-1, *v.shape))
                total = total + keras.ops.sum(keras.ops.stop_gradient(part) * v)
                start += n
            return keras.ops.reshape(total, (1, 1))

    probe = Probe()
    probe.built = True
    probe.compile(optimizer=build_optimizer(), loss=lambda y_true, y_pred: keras.ops.sum(y_pred))
    rng = np.random.default_rng(seed)
    traj = []
    for total in grads:
        parts = split(total, rule.iter_size, rng)
        x = np.stack(
            [np.concatenate([to_keras(p[keras_key(v, names)]).ravel() for v in tv]) for p in parts]
        ).astype(np.float32)
        probe.fit(
            x,
            np.zeros((len(parts), 1), np.float32),
            batch_size=1,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        traj.append(get_weights(model, names))
    return traj


#: LeNet's emitted optimizer (``optimizer.py`` beside it) with one weight of each matrix turned
#: NaN from the second update on, in ``keras.ops`` (any backend): verify must fail it as "not
#: finite" on every engine
ONE_NAN = '''"""LeNet's emitted optimizer; one weight of each matrix NaN from update 2."""
import keras
from keras import ops

import optimizer as emitted


class OneNaN(keras.optimizers.SGD):
    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)
        if len(variable.shape) == 2:
            size = int(variable.shape[0]) * int(variable.shape[1])
            hole = ops.concatenate([ops.array([float("nan")]), ops.zeros(size - 1)], 0)
            hole = ops.reshape(ops.cast(hole, variable.dtype), variable.shape)
            later = self.iterations >= 1
            variable.assign(variable + ops.where(later, hole, ops.zeros_like(hole)))


def build_optimizer():
    plain = keras.optimizers.SGD
    keras.optimizers.SGD = OneNaN  # the emitted sub-optimizers (LeNet's are SGD)
    try:
        return emitted.build_optimizer()
    finally:
        keras.optimizers.SGD = plain


prepare_model = emitted.prepare_model
'''
