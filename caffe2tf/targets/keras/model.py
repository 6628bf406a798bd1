"""The Keras target's data: a :class:`KerasPlan` of constructor calls and blob bindings.

Pure data, no Keras import. :mod:`caffe2tf.targets.keras.plan` builds it from an
``UpdateRule``; the YAML and Python renderers and :mod:`caffe2tf.targets.keras.build` read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from caffe2tf.notes import Exactness, Note, Severity

Route = Literal["builtin", "multi", "custom"]

F32_EXACT_STEPS = 2**24  # step counts above this are not exact float32 integers
KERAS_NAME = re.compile(r"[A-Za-z0-9_.>-]+\Z")  # TF scope names, without '/' (Keras)


def f32(x: float) -> float:
    """The float32 value of ``x`` as the shortest decimal that rounds back to it."""
    return float(str(np.float32(x)))


@dataclass(frozen=True)
class Arg:
    """One constructor argument: ``source`` names the prototxt field(s) it came from."""

    name: str
    value: Any
    source: str = ""


@dataclass(frozen=True)
class CallSpec:
    """A Keras constructor call: ``keras.optimizers.<cls>(**args)`` or a schedule class.

    ``cls`` "constant" (schedules only) means a plain float learning rate, ``args[0]``.
    """

    cls: str
    args: tuple[Arg, ...] = ()

    def arg(self, name: str) -> Any:
        for a in self.args:
            if a.name == name:
                return a.value
        raise KeyError(name)

    def kwargs(self) -> dict[str, Any]:
        return {a.name: a.value for a in self.args}


@dataclass(frozen=True)
class BlobBinding:
    """One Caffe learnable blob and the Keras variable that holds it.

    ``keras_layer`` is the Keras layer name (the Caffe name, the ``--layer-map`` entry, or for
    a BatchNorm+Scale pair the BatchNormalization's name); ``blob`` 0 is the main weight, 1 the
    bias. ``regularizer`` is ``("L2"|"L1", coefficient)`` on the regularizer route, else None.
    ``momentum``: the blob's own momentum where the rule gives it one (the ``multi`` route
    groups sub-optimizers by ``(lr_mult, momentum)``), else None.
    """

    caffe_key: str
    caffe_layer: str
    blob: int
    keras_layer: str
    layer_type: str
    lr_mult: float
    decay_mult: float
    trainable: bool
    regularizer: tuple[str, float] | None = None
    #: this variable's own momentum (cuda-convnet's momW/momB), None: the optimizer's
    momentum: float | None = None

    @property
    def key(self) -> str:
        return f"{self.keras_layer}/{self.blob}"


@dataclass(frozen=True)
class KerasPlan:
    """Everything the renderers and the builder need; see the module docstring for routes."""

    route: Route
    solver: str
    optimizer: CallSpec
    schedule: CallSpec
    blobs: tuple[BlobBinding, ...]
    default_blob: BlobBinding
    decay_kind: str = "L2"
    weight_decay: float = 0.0
    decay_route: Literal["regularizer", "optimizer", "none"] = "none"
    clip_gradients: float = -1.0
    iter_size: int = 1
    max_iter: int = 0
    lr_mults: tuple[float, ...] = (1.0,)
    notes: tuple[Note, ...] = ()
    source: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: every note of the whole conversion (front end, rule, this plan) that says the result
    #: differs from Caffe (:attr:`caffe2tf.notes.Note.inexact`); the renderers record them
    inexact: tuple[Note, ...] = ()

    @property
    def exact(self) -> bool:
        return not self.inexact and not any(n.inexact for n in self.notes)

    @property
    def unsupported(self) -> bool:
        return any(n.exactness is Exactness.UNSUPPORTED for n in self.notes)


def note(
    code: str,
    message: str,
    exactness: Exactness | None = Exactness.EXACT,
    severity: Severity = Severity.INFO,
) -> Note:
    """A note of the Keras target (code ``keras.<code>``)."""
    return Note(
        code=f"keras.{code}",
        message=message,
        severity=severity,
        affects_training=exactness not in (Exactness.EXACT, None),
        exactness=exactness,
    )


def fmt(x: float) -> str:
    """A hyper-parameter as the shortest text of its float32 value."""
    return repr(f32(x))
