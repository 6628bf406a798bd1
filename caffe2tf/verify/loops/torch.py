"""The custom loop on the torch backend: ``loss.backward()``, then ``apply_gradients``."""

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
    jit: bool = False,
    cache: dict[str, Any] | None = None,
) -> None:
    import torch

    pairs = trained_pairs(model)
    tvars = [v for _, v in pairs]
    for j, part in parts_iter:
        kg = keras_grads(model, part)
        for v in tvars:
            v.value.grad = None
        loss = sum(
            torch.sum(torch.as_tensor(kg[k], device=v.value.device) * v.value) for k, v in pairs
        )
        for r in model.losses:
            loss = loss + torch.sum(r)
        loss.backward()
        grads = [
            v.value.grad.detach().clone() if v.value.grad is not None else torch.zeros_like(v.value)
            for v in tvars
        ]
        with torch.no_grad():
            optimizer.apply_gradients(zip(grads, tvars, strict=True))
        if (j + 1) % iter_size == 0:
            on_update()
