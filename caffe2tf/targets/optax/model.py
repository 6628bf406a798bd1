"""The optax target's data: an :class:`OptaxPlan` (pure data, no JAX import).

:mod:`caffe2tf.targets.optax.plan` builds it from an ``UpdateRule``;
:mod:`caffe2tf.targets.optax.render_python` writes ``optimizer_optax.py`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.targets.common import CallSpec, make_note

#: the marker, in a group's chain, of ``optax.scale_by_learning_rate(learning_rate(lr_mult))``
LEARNING_RATE = "learning_rate"


@dataclass(frozen=True)
class OptaxBlob:
    """One Caffe learnable blob: ``params[layer][blob]`` of the params tree."""

    caffe_key: str
    layer: str
    blob: int
    lr_mult: float
    decay_mult: float
    gets_gradient: bool  # False: Caffe never computes its diff (zeroed before the clip)


@dataclass(frozen=True)
class OptaxPlan:
    """Everything the renderer needs.

    ``solver_chain``: the transformations after the decay in one (lr_mult, decay_mult) group's
    chain, in order; :data:`LEARNING_RATE` marks where the rate applies (before ``trace`` for
    SGD, so that the rate is inside the history as in Caffe; last for the adaptive solvers).
    ``schedule``: an ``optax`` schedule call (``init_value`` is scaled by lr_mult), a runtime
    ``caffe_*_schedule``, ``constant`` (a float) or ``unsupported``. ``blocks``: the runtime
    blocks the module inlines.
    """

    solver: str
    solver_chain: tuple[CallSpec, ...]
    schedule: CallSpec
    blobs: tuple[OptaxBlob, ...]
    default_mults: tuple[float, float]
    weight_decay: float = 0.0
    decay_kind: str = "L2"
    clip_gradients: float = -1.0
    iter_size: int = 1
    blocks: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()
    source: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def route(self) -> str:
        custom = [c.cls for c in self.solver_chain if not c.cls.startswith(("optax.", "learn"))]
        return "custom" if custom else "builtin"

    @property
    def exact(self) -> bool:
        return not any(n.exactness in (Exactness.APPROX, Exactness.UNSUPPORTED) for n in self.notes)

    @property
    def masks_gradients(self) -> bool:
        return any(not b.gets_gradient for b in self.blobs)


def note(
    code: str,
    message: str,
    exactness: Exactness | None = Exactness.EXACT,
    severity: Severity = Severity.INFO,
) -> Note:
    """A note of the optax target (code ``optax.<code>``)."""
    return make_note("optax", code, message, exactness, severity)
