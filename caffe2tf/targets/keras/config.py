"""Read ``train_config.yaml`` back into live Keras objects (the round trip of ``convert``).

Public API (re-exported by :mod:`caffe2tf.targets.keras`)::

    optimizer = load_optimizer("OUT/train_config.yaml")
    prepare_model(model, "OUT/train_config.yaml")

Both behave exactly like ``build_optimizer()`` / ``prepare_model(model)`` of the emitted
``OUT/optimizer.py``. Keras is imported only when an optimizer is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caffe2tf import user_yaml
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.targets.keras.render_yaml import FORMAT

REQUIRED = ("format", "route", "optimizer", "schedule", "variables", "default_variable")


def load_train_config(path: str | Path) -> dict[str, Any]:
    """The mapping in ``path``, checked against the schema's required keys and version.

    The file may have been edited: YAML aliases are bounded and messages quote at most a short
    prefix of a value (:mod:`caffe2tf.user_yaml`)."""
    text = Path(path).read_text(encoding="utf-8")
    data = user_yaml.load(text, str(path), "train_config")
    if not isinstance(data, dict):
        raise InputError("a train_config must be a YAML mapping", SourceLocation(str(path)))
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"train_config lacks {', '.join(missing)}", SourceLocation(str(path)))
    if data["format"] != FORMAT:
        raise InputError(
            f"unknown train_config format {user_yaml.quote(data['format'])} (expected {FORMAT})",
            SourceLocation(str(path)),
        )
    if data["route"] not in ("builtin", "multi", "custom"):
        raise InputError(
            f"unknown route {user_yaml.quote(data['route'])}", SourceLocation(str(path))
        )
    return data


def load_optimizer(path: str | Path) -> Any:
    """A fresh live optimizer from ``train_config.yaml``."""
    from caffe2tf.targets.keras.build import build_from_config

    return build_from_config(load_train_config(path))


def prepare_model(model: Any, path: str | Path) -> dict[str, str]:
    """Attach ``train_config.yaml``'s regularizers and trainable flags to ``model``."""
    from caffe2tf.targets.keras.build import prepare_from_config

    return prepare_from_config(model, load_train_config(path))
