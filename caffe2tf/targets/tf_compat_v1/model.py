"""The TF1 target's data: a :class:`TfV1Plan` (pure data, no TensorFlow import).

:mod:`caffe2tf.targets.tf_compat_v1.plan` builds it from an ``UpdateRule``;
:mod:`caffe2tf.targets.tf_compat_v1.render_python` writes ``train_op_v1.py`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.targets.common import CallSpec, make_note


@dataclass(frozen=True)
class TfV1Blob:
    """One Caffe learnable blob: the variable ``<layer>/<weights|kernel|biases|bias>``."""

    caffe_key: str
    layer: str
    blob: int
    lr_mult: float
    decay_mult: float


@dataclass(frozen=True)
class TfV1Plan:
    """Everything the renderer needs.

    ``solver``: a ``tf.compat.v1.train`` optimizer call (``builtin``; applied per lr_mult by
    the runtime's ``builtin_step``) or one of the runtime's ``caffe_*`` steps. ``schedule``: a
    ``tf.compat.v1.train`` decay function of ``global_step``, a runtime ``caffe_*_rate``,
    ``constant`` or ``unsupported``. ``decay_in_loss``: the L2 decay as ``tf.nn.l2_loss`` terms
    of the loss (else added to the gradient after the clip)."""

    solver_type: str
    solver: CallSpec
    builtin: bool
    schedule: CallSpec
    blobs: tuple[TfV1Blob, ...]
    default_mults: tuple[float, float]
    weight_decay: float = 0.0
    decay_kind: str = "L2"
    decay_in_loss: bool = False
    clip_gradients: float = -1.0
    iter_size: int = 1
    blocks: tuple[str, ...] = ()
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
    """A note of the TF1 target (code ``tf-compat-v1.<code>``)."""
    return make_note("tf-compat-v1", code, message, exactness, severity)
