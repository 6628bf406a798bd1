"""``WeightNormTracker``: how weight decay shows in training, as weight norms over time.

Imported by the library and inlined into every emitted ``optimizer.py`` (the text between the
``# -- inline begin tracker`` / ``# -- inline end tracker`` markers, like the blocks of
``runtime.py``), so it may use only ``keras``, ``numpy`` and the standard library and must stay
``ruff format`` clean at line length 88.

Weight decay pulls each decayed weight towards 0 by ``lr * wd * decay_mult`` of itself per
update (docs/caffe-semantics.md#regularization); its effect is easiest to see as the L2 norm
of each weight (and of each output channel) over the updates, compared across settings (e.g.
``weight_decay`` 2e-4 vs 2e-3). ``caffe2tf norms LOG.npz [LOG2.npz ...] -o norms.png`` plots the
files the tracker writes.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


# -- inline begin tracker
class WeightNormTracker(keras.callbacks.Callback):
    """Record the L2 norm of weights every ``every`` updates and save them to ``path`` (.npz).

    With ``fit``: ``model.fit(..., callbacks=[WeightNormTracker("norms.npz")])`` (saved at the
    end of training). In a custom loop: ``tracker = WeightNormTracker("norms.npz", model=model)``,
    then ``tracker.record(step)`` after an update and ``tracker.save()`` at the end.

    ``variables``: the variable paths to follow (default: every trainable variable whose name
    ends in ``kernel``, ``depthwise_kernel``, ``embeddings``, ``gamma``, ``alpha``, ``bias`` or
    ``beta``). For each, the file holds ``<path>/norm`` (one value per record) and
    ``<path>/channels`` (the norm of each slice along the last axis, the output channels of
    Dense/Conv kernels), plus ``steps``.
    """

    def __init__(
        self,
        path: str,
        every: int = 100,
        variables: list[str] | None = None,
        model: Any = None,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.every = max(int(every), 1)
        self.wanted = None if variables is None else list(variables)
        self.steps: list[int] = []
        self.norms: dict[str, list[float]] = {}
        self.channels: dict[str, list[np.ndarray]] = {}
        if model is not None:
            self.set_model(model)

    def _variables(self) -> list[Any]:
        names = (
            "kernel",
            "depthwise_kernel",
            "embeddings",
            "gamma",
            "alpha",
            "bias",
            "beta",
        )
        out = []
        for v in self.model.trainable_variables:
            if self.wanted is not None:
                if v.path in self.wanted:
                    out.append(v)
            elif v.path.rsplit("/", 1)[-1] in names:
                out.append(v)
        return out

    def record(self, step: int) -> None:
        """Add one record of every followed variable at update ``step``."""
        self.steps.append(int(step))
        for v in self._variables():
            w = np.asarray(keras.ops.convert_to_numpy(v.value), dtype=np.float64)
            self.norms.setdefault(v.path, []).append(float(np.sqrt(np.sum(w * w))))
            flat = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(-1, 1).T
            channel_norms = np.sqrt(np.sum(flat * flat, axis=0))
            self.channels.setdefault(v.path, []).append(channel_norms)

    def on_train_begin(self, logs: Any = None) -> None:
        if not self.steps:
            step = keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            self.record(int(step))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.every == 0 and (not self.steps or self.steps[-1] != step):
            self.record(step)

    def on_train_end(self, logs: Any = None) -> None:
        self.save()

    def save(self) -> str:
        """Write the records to ``path`` and return it."""
        arrays: dict[str, np.ndarray] = {"steps": np.asarray(self.steps, np.int64)}
        for key, values in self.norms.items():
            arrays[f"{key}/norm"] = np.asarray(values)
            arrays[f"{key}/channels"] = np.stack(self.channels[key])
        np.savez(self.path, **arrays)
        return self.path


# -- inline end tracker

__all__ = ["WeightNormTracker"]
