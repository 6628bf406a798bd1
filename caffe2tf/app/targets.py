"""The targets ``convert --target`` knows: how each plans the pipeline's rule and what it writes.

One :class:`Target` per framework, in :data:`TARGETS` (the CLI's ``--target`` choices are
checked against it by the tests):

* ``keras`` (default): ``train_config.yaml`` + ``optimizer.py`` (docs/keras-target.md);
* ``torch``: ``optimizer_torch.py``, ``build_optimizer(model)`` (docs/torch-target.md);
* ``optax``: ``optimizer_optax.py``, ``build_optimizer()`` (docs/optax-target.md);
* ``tf-compat-v1``: ``train_op_v1.py``, ``build_train_op(loss, var_list=None)``
  (docs/tf-compat-v1-target.md).

Planning and rendering import no framework: a target's plan is data and its renderer writes
text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from caffe2tf.app.pipeline import Pipeline, checked_layer_map, keras_plan, plan_source
from caffe2tf.errors import InputError
from caffe2tf.notes import Exactness, Note, Severity


@dataclass(frozen=True)
class Target:
    """``plan(pipeline, layer_map) -> (plan, every note)``; ``render(plan) -> {file: text}``;
    ``module``: the file holding ``build_optimizer``."""

    name: str
    module: str
    plan: Callable[[Pipeline, Mapping[str, str] | None], tuple[Any, tuple[Note, ...]]]
    render: Callable[[Any], dict[str, str]]


def _all_notes(pipeline: Pipeline, plan_notes: tuple[Note, ...]) -> tuple[Note, ...]:
    """The notes of a non-Keras target: the pipeline's, the plan's, and a refusal where the
    rule gives blobs their own momentum (cuda-convnet), which only the Keras target maps."""
    seen = set(pipeline.notes)
    extra: tuple[Note, ...] = ()
    if pipeline.rule.per_blob_momentum:
        extra = (
            Note(
                "target.per_blob_momentum",
                "this rule gives blobs their own momentum (cuda-convnet's momW/momB); only "
                "--target keras maps that (docs/cuda-convnet.md#targets)",
                Severity.ERROR,
                affects_training=True,
                exactness=Exactness.UNSUPPORTED,
            ),
        )
    return pipeline.notes + tuple(n for n in plan_notes if n not in seen) + extra


def _with_inexact(p: Any, notes: tuple[Note, ...]) -> Any:
    """The plan whose notes also carry every inexact note of the front end and the rule (so
    the generated module's docstring records them, as the Keras target's does)."""
    extra = tuple(n for n in notes if n.inexact and n not in p.notes)
    return replace(p, notes=p.notes + extra)


def _keras_render(p: Any) -> dict[str, str]:
    from caffe2tf.targets.keras.render_python import render_python
    from caffe2tf.targets.keras.render_yaml import render_yaml

    return {"train_config.yaml": render_yaml(p), "optimizer.py": render_python(p)}


def _planned(
    plan: Callable[..., Any], pipeline: Pipeline, layer_map: Mapping[str, str] | None
) -> tuple[Any, tuple[Note, ...]]:
    """A non-Keras target's ``plan(rule, layer_map=..., source=...)`` applied to the pipeline:
    the plan, carrying every inexact note (:func:`_with_inexact`), and all the notes."""
    p = plan(
        pipeline.rule,
        layer_map=checked_layer_map(pipeline, layer_map),
        source=plan_source(pipeline),
    )
    notes = _all_notes(pipeline, p.notes)
    return _with_inexact(p, notes), notes


# each target's modules are imported when its --target is used, not with the CLI


def _torch_plan(
    pipeline: Pipeline, layer_map: Mapping[str, str] | None
) -> tuple[Any, tuple[Note, ...]]:
    from caffe2tf.targets.torch.plan import plan

    return _planned(plan, pipeline, layer_map)


def _torch_render(p: Any) -> dict[str, str]:
    from caffe2tf.targets.torch.render_python import FILENAME, render_python

    return {FILENAME: render_python(p)}


def _optax_plan(
    pipeline: Pipeline, layer_map: Mapping[str, str] | None
) -> tuple[Any, tuple[Note, ...]]:
    from caffe2tf.targets.optax.plan import plan

    return _planned(plan, pipeline, layer_map)


def _optax_render(p: Any) -> dict[str, str]:
    from caffe2tf.targets.optax.render_python import FILENAME, render_python

    return {FILENAME: render_python(p)}


def _tf_v1_plan(
    pipeline: Pipeline, layer_map: Mapping[str, str] | None
) -> tuple[Any, tuple[Note, ...]]:
    from caffe2tf.targets.tf_compat_v1.plan import plan

    return _planned(plan, pipeline, layer_map)


def _tf_v1_render(p: Any) -> dict[str, str]:
    from caffe2tf.targets.tf_compat_v1.render_python import FILENAME, render_python

    return {FILENAME: render_python(p)}


#: The registry: ``--target`` value -> its target.
TARGETS: dict[str, Target] = {
    "keras": Target("keras", "optimizer.py", keras_plan, _keras_render),
    "torch": Target("torch", "optimizer_torch.py", _torch_plan, _torch_render),
    "optax": Target("optax", "optimizer_optax.py", _optax_plan, _optax_render),
    "tf-compat-v1": Target("tf-compat-v1", "train_op_v1.py", _tf_v1_plan, _tf_v1_render),
}


def get_target(name: str) -> Target:
    """The target called ``name``; an InputError naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown --target {name!r} (known: {', '.join(TARGETS)})") from None


__all__ = ["TARGETS", "Target", "get_target"]
