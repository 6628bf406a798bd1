"""What verify feeds both rules and says about the run: seeded initial weights, the gradients
Caffe never writes (frozen blobs, BatchNorm statistics), how mirrored blobs are compared, and
the backend and device. The ``verify`` command itself is :mod:`caffe2tf.app.verify`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

PROGRESS_MIN_STEPS = 200  # runs at least this long report progress on stderr


def initial_weights(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded N(0, 0.5²) float32 initial weights, one array per owner blob (Caffe layout),
    drawn in float32 (no float64 copy of a large blob on the way), each on a 64-byte boundary
    so that TensorFlow shares it instead of copying it (w0 of the comparison:
    :func:`caffe2tf.rule.tf_executor.shared_tensor`)."""
    from caffe2tf.rule.tf_executor import aligned_empty

    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1A17])
    out = {}
    for k in sorted(shapes):
        w = aligned_empty(tuple(shapes[k]), np.float32)
        rng.standard_normal(dtype=np.float32, out=w)
        w *= np.float32(0.5)
        out[k] = w
    return out


class SeededWeights(Mapping[str, np.ndarray]):
    """:func:`initial_weights` of ``shapes`` and ``seed`` as a mapping that draws them when a
    value is first asked for and lets go of them on :meth:`release`; the next value asked for
    draws them again, bit for bit the same (one seeded generator, the blobs in sorted order).
    Keys, order and :attr:`shapes` never draw.

    verify's fused engines release them once the candidate's model and the device hold the
    weights (docs/verify.md#the-hosts-copy-of-the-initial-weights): on VGG16 the host's copy
    is 552 MB that no update reads."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], seed: int) -> None:
        self.shapes = {k: tuple(int(d) for d in shapes[k]) for k in sorted(shapes)}
        self.seed = int(seed)
        self._arrays: dict[str, np.ndarray] | None = None

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.shapes:
            raise KeyError(key)
        if self._arrays is None:
            self._arrays = initial_weights(self.shapes, self.seed)
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def drawn(self) -> bool:
        """Whether the arrays are held now."""
        return self._arrays is not None

    def release(self) -> None:
        """Let go of the arrays (each still referenced elsewhere lives on there)."""
        self._arrays = None


def shapes_of(weights: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each blob's shape, without drawing :class:`SeededWeights`."""
    if isinstance(weights, SeededWeights):
        return dict(weights.shapes)
    return {k: tuple(np.shape(v)) for k, v in weights.items()}


def release_host_copy(weights: Mapping[str, Any]) -> None:
    """:meth:`SeededWeights.release` for seeded weights; nothing for any other mapping."""
    if isinstance(weights, SeededWeights):
        weights.release()


def frozen_blobs_get_no_gradient(
    micro: Sequence[Mapping[str, np.ndarray]], frozen: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """Zero the gradients of ``lr_mult: 0`` blobs, as Caffe computes them: ``Net::Init`` sets
    ``param_propagate_down(i, false)`` for them (``net.cpp:146-153``), so the layer never writes
    their diff and it stays 0 from ``ClearParamDiffs`` (``net.cpp:927-945``; ``force_backward``
    turns it back on, ``net.cpp:235-238``). A Keras user freezes such a variable, so it has no
    gradient either; a non-zero stream would put a gradient into Caffe's clip norm that no Keras
    model produces."""
    frozen = set(frozen)
    if not frozen:
        return [dict(g) for g in micro]
    return [{k: (np.zeros_like(v) if k in frozen else v) for k, v in g.items()} for g in micro]


def never_written_blobs(params: Sequence[Any], force_backward: bool) -> list[str]:
    """Keys of the blobs whose diff Caffe leaves at 0 in this net: ``lr_mult: 0`` blobs (unless
    ``force_backward``, see :func:`frozen_blobs_get_no_gradient`) and, always, the BatchNorm
    statistics: ``BatchNormLayer::Backward_cpu`` computes only the bottom diff and never
    touches its blobs' diffs (``batch_norm_layer.cpp``), and Caffe forces their ``lr_mult`` to 0
    (``LayerSetUp``), so its update never moves them either."""
    return [
        p.key
        for p in params
        if p.layer_type == "BatchNorm" or (p.lr_mult == 0 and not force_backward)
    ]


def mirror_notes(layers: Sequence[Any]) -> tuple[str, ...]:
    """What the report says about mirrored blobs that are not plain weight/bias variables."""
    notes = []
    for spec in layers:
        stats = [b for b in spec.blobs if b.layer_type == "BatchNorm"]
        scale = [b for b in spec.blobs if b.layer_type == "Scale" and b.layer != spec.name]
        if scale:
            notes.append(
                f"{', '.join(b.key for b in scale)}: the gamma/beta of the Keras "
                f"BatchNormalization {spec.name!r} (Caffe BatchNorm+Scale pair), "
                f"trained and decayed like any Caffe blob"
            )
        if stats:
            notes.append(
                f"{', '.join(b.key for b in stats)}: Caffe BatchNorm statistics "
                f"(lr_mult 0, no gradient; Caffe's update never moves them). Keras "
                f"holds mean/variance divided by the factor {spec.name}/2 in the "
                f"non-trainable moving_mean/moving_variance of {spec.name!r}, outside "
                f"the optimizer; Keras keeps no factor, so {spec.name}/2 is shown as "
                f"loaded. Compared as unchanged."
            )
    return tuple(notes)


def backend_and_device() -> tuple[str, str]:
    """(``"keras X / <backend> Y"``, the device the backend computes on: GPU name or CPU)."""
    import keras

    backend = keras.backend.backend()
    device = "CPU"
    version = ""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            version = tf.__version__
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                device = f"GPU: {details.get('device_name', gpus[0].name)}"
        elif backend == "jax":
            import jax

            version = jax.__version__
            dev = jax.devices()[0]
            device = (
                "CPU"
                if dev.platform == "cpu"
                else f"{dev.platform.upper()}: {getattr(dev, 'device_kind', dev)}"
            )
        elif backend == "torch":
            import torch

            version = torch.__version__
            if torch.cuda.is_available():
                device = f"GPU: {torch.cuda.get_device_name(0)}"
    except Exception as err:  # a device query must not fail the verification
        device = f"unknown ({err})"
    return f"keras {keras.__version__} / {backend} {version}".strip(), device


# ---- the update-rule matrix through the Keras target (tests, bench, GPU runs) -----------------
