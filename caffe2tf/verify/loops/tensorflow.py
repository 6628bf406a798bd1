"""The custom loop on the TensorFlow backend: tape gradient, ``apply_gradients``."""

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
) -> None:
    """One ``apply_gradients`` per micro-batch on the tape gradient of ``L_j + sum(losses)``;
    with ``jit`` the step runs as a ``tf.function`` (the optimizer is built first, so no
    variable is created inside the traced function; Keras' own ``fit`` traces the same way)."""
    import tensorflow as tf

    pairs = trained_pairs(model)
    tvars = [v for _, v in pairs]
    keys = [k for k, _ in pairs]

    def step(gs: list[Any]) -> None:
        with tf.GradientTape() as tape:
            terms = [
                tf.reduce_sum(tf.stop_gradient(g) * v.value) for g, v in zip(gs, tvars, strict=True)
            ]
            loss = tf.add_n(terms) if terms else tf.constant(0.0)
            reg = model.losses
            if reg:
                loss = loss + tf.add_n([tf.cast(tf.reduce_sum(r), loss.dtype) for r in reg])
        grads = tape.gradient(loss, [v.value for v in tvars])
        grads = [
            tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, tvars, strict=True)
        ]
        optimizer.apply_gradients(zip(grads, tvars, strict=True))

    run = step
    if jit and tvars:
        optimizer.build(tvars)
        run = tf.function(step)
    for j, part in parts_iter:
        kg = keras_grads(model, part)
        # each host copy goes as soon as its tensor is made, and the tensors go after the
        # step (not when the next update's replace them: VGG16's weights are 552 MB)
        gs = [tf.constant(kg.pop(k)) for k in keys]
        del kg
        run(gs)
        del gs
        if (j + 1) % iter_size == 0:
            on_update()
