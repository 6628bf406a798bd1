"""``model.compile`` + ``model.fit``: each batch (size 1) is one micro-batch's gradient,
flattened; the model outputs ``sum(stop_gradient(x) * v)`` and the loss is that output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from caffe2tf.verify.mirror import Weights, keras_grads


def run(
    model: Any,
    optimizer: Any,
    parts: list[Weights],
    on_update: Callable[[], None],
    iter_size: int,
    jit_compile: Any = "auto",
) -> None:
    import keras

    width = model.set_feed()
    order = model.feed_order()
    rows = []
    for part in parts:
        kg = keras_grads(model, part)
        rows.append(
            np.concatenate([kg[k].reshape(-1) for k in order])
            if order
            else np.zeros((0,), np.float32)
        )
    x = np.stack(rows).astype(np.float32).reshape(len(parts), width)
    y = np.zeros((len(parts), 1), np.float32)

    def linear_loss(y_true: Any, y_pred: Any) -> Any:
        return keras.ops.sum(y_pred, axis=-1)

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if (batch + 1) % iter_size == 0:
                _ = self.model  # on JAX this syncs the trained state back into the variables
                on_update()

    model.compile(optimizer=optimizer, loss=linear_loss, jit_compile=jit_compile)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
