"""The PyTorch target's data: a :class:`TorchPlan` (pure data, no torch import).

:mod:`caffe2tf.targets.torch.plan` builds it from an ``UpdateRule``;
:mod:`caffe2tf.targets.torch.render_python` writes ``optimizer_torch.py`` from it and the
verify harness (:mod:`caffe2tf.verify.torch_harness`) mirrors the net from its bindings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.targets.common import CallSpec, make_note

#: Caffe blob index -> the torch parameter attribute that holds it (nn.Linear, nn.ConvNd,
#: nn.ConvTransposeNd, nn.Embedding, nn.BatchNormNd's affine pair, nn.PReLU: ``weight``,
#: ``bias``). Their layouts are Caffe's, and the update is elementwise anyway.
TORCH_ATTR_OF_BLOB: dict[int, str] = {0: "weight", 1: "bias"}


@dataclass(frozen=True)
class TorchBlob:
    """One Caffe learnable blob and the torch parameter ``<module>.<attr>`` that holds it."""

    caffe_key: str
    caffe_layer: str
    blob: int
    module: str
    attr: str
    layer_type: str
    lr_mult: float
    decay_mult: float

    @property
    def trainable(self) -> bool:
        return self.lr_mult != 0.0

    @property
    def parameter(self) -> str:
        return f"{self.module}.{self.attr}"


@dataclass(frozen=True)
class TorchPlan:
    """Everything the renderer and the harness need.

    ``optimizer``: the torch optimizer call (``cls`` is ``torch.optim.<X>`` for a built-in or
    a ``Caffe<X>`` class of the runtime); ``builtin`` says which. ``schedule``: ``constant``
    (no scheduler), a ``torch.optim.lr_scheduler`` class, or ``LambdaLR`` over an inlined
    Caffe rate (``args`` then name the policy's fields). ``decay_route``: ``optimizer`` (the
    optimizer's coupled ``weight_decay`` per group), ``wrapper`` (CaffeSolver adds it: L1) or
    ``none``. ``skipped``: Caffe blobs with no torch parameter (BatchNorm statistics: buffers).
    """

    solver: str
    optimizer: CallSpec
    builtin: bool
    schedule: CallSpec
    blobs: tuple[TorchBlob, ...]
    default_mults: tuple[float, float]
    base_lr: float
    weight_decay: float = 0.0
    decay_kind: str = "L2"
    decay_route: Literal["optimizer", "wrapper", "none"] = "none"
    clip_gradients: float = -1.0
    iter_size: int = 1
    force_backward: bool = False
    skipped: tuple[str, ...] = ()
    extra_blocks: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()
    source: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def route(self) -> str:
        return "builtin" if self.builtin else "custom"

    @property
    def exact(self) -> bool:
        return not any(n.exactness in (Exactness.APPROX, Exactness.UNSUPPORTED) for n in self.notes)


def note(
    code: str,
    message: str,
    exactness: Exactness | None = Exactness.EXACT,
    severity: Severity = Severity.INFO,
) -> Note:
    """A note of the torch target (code ``torch.<code>``)."""
    return make_note("torch", code, message, exactness, severity)
