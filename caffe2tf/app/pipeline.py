"""The pipeline every command drives once: read -> lower -> plan.

:func:`load_pipeline` reads the solver (and its train net) with the Caffe front end, where
Caffe's own checks run, and lowers it to the :class:`~caffe2tf.rule.model.UpdateRule`;
:func:`keras_plan` plans the Keras target from that rule. Commands pass the resulting
:class:`Pipeline` down; nothing below this layer parses a prototxt again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from caffe2tf.caffe.load import load_recipe
from caffe2tf.caffe.model import Recipe
from caffe2tf.convnet.spec import looks_like_convnet, read_convnet
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note
from caffe2tf.rule.lower import lower
from caffe2tf.rule.lower_convnet import lower_convnet
from caffe2tf.rule.model import UpdateRule
from caffe2tf.targets.keras.model import KerasPlan
from caffe2tf.targets.keras.plan import plan


@dataclass(frozen=True)
class Pipeline:
    """A recipe as read (``recipe``) and as lowered (``rule``), with the solver path given.

    ``recipe`` is None for a cuda-convnet net (docs/cuda-convnet.md), read by its own front
    end: then ``front_notes`` are that front end's notes and ``sources`` the files read."""

    solver_path: str
    recipe: Recipe | None
    rule: UpdateRule
    front_notes: tuple[Note, ...] = ()
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def notes(self) -> tuple[Note, ...]:
        """The front end's and the lowering's notes, each once, in pipeline order."""
        if self.recipe is None:
            return _unique(self.front_notes, self.rule.notes)
        net = self.recipe.net
        return _unique(
            (*self.recipe.solver.notes, *(net.notes if net else ()), *self.recipe.notes),
            self.rule.notes,
        )


def _unique(*groups: tuple[Note, ...]) -> tuple[Note, ...]:
    seen: set[Note] = set()
    out: list[Note] = []
    for group in groups:
        for n in group:
            if n not in seen:
                seen.add(n)
                out.append(n)
    return tuple(out)


def load_pipeline(
    solver: str | os.PathLike[str],
    *,
    net_path: str | os.PathLike[str] | None = None,
    lenient: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | Sequence[str] | None = None,
    params_path: str | os.PathLike[str] | None = None,
) -> Pipeline:
    """Read ``solver`` (and its train net, or ``net_path``) and lower it, once.
    ``input_shapes``: ``{top: shape}``, or the ``TOP=N,C,H,W`` texts of ``--input-shape``.

    A cuda-convnet layer definition file (``layers.cfg``: its first line is a ``[section]``),
    or any file given with ``params_path`` (``--params layer-params.cfg``), is read by the
    cuda-convnet front end instead (:func:`load_convnet_pipeline`)."""
    if params_path is not None or looks_like_convnet(solver):
        if net_path is not None:
            raise InputError(
                "--net names a Caffe train net; a cuda-convnet net is its layers.cfg and "
                "--params layer-params.cfg",
                SourceLocation(os.fspath(net_path)),
            )
        return load_convnet_pipeline(solver, params_path)
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        input_shapes = parse_input_shapes(input_shapes)
    recipe = load_recipe(solver, net_path=net_path, lenient=lenient, input_shapes=input_shapes)
    return Pipeline(solver_path=os.fspath(solver), recipe=recipe, rule=lower(recipe))


def load_convnet_pipeline(
    layers: str | os.PathLike[str], params: str | os.PathLike[str] | None
) -> Pipeline:
    """Read a cuda-convnet ``layers.cfg`` and its ``layer-params.cfg`` and lower them
    (:func:`caffe2tf.rule.lower_convnet.lower_convnet`)."""
    if params is None:
        raise InputError(
            "this is a cuda-convnet layer definition file: convert and explain read it with "
            "its layer parameter file, --params layer-params.cfg (docs/cuda-convnet.md)",
            SourceLocation(os.fspath(layers)),
        )
    spec = read_convnet(layers, params)
    return Pipeline(
        solver_path=os.fspath(layers),
        recipe=None,
        rule=lower_convnet(spec),
        front_notes=spec.notes,
        sources=(("layers", spec.layers_path), ("params", spec.params_path)),
    )


def parse_input_shapes(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``--input-shape TOP=N,C,H,W`` (repeatable; any rank, positive integers) -> ``{top:
    shape}``. A malformed value, or a top given twice, is an InputError."""
    out: dict[str, tuple[int, ...]] = {}
    for text in values:
        top, sep, dims = str(text).partition("=")
        top = top.strip()
        try:
            shape = tuple(int(d) for d in dims.split(",")) if sep and dims.strip() else ()
        except ValueError:
            shape = ()
        if not top or not shape or any(d < 1 for d in shape):
            raise InputError(
                f"--input-shape {str(text)[:80]!r}: expected TOP=N,C,H,W (a top of the train "
                "net, then its dimensions as positive integers, e.g. data=64,3,224,224)"
            )
        if top in out:
            raise InputError(f"--input-shape names top {top!r} twice")
        out[top] = shape
    return out


def checked_layer_map(pipeline: Pipeline, layer_map: Mapping[str, str] | None) -> dict[str, str]:
    """``layer_map`` as a dict; one naming a layer the train net does not have is an
    InputError (at the entry, when the map was read from a file). Every target checks it."""
    written = getattr(layer_map, "locations", {})  # where a map read from a file named each
    layer_map = dict(layer_map or {})
    if layer_map and pipeline.rule.net_known:
        known = set(pipeline.rule.layers)
        unknown = [name for name in layer_map if name not in known]
        if unknown:
            raise InputError(
                "layer map names layers the train net does not have: "
                + ", ".join(repr(u[:60]) for u in unknown[:5])
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                written.get(unknown[0])
                or (
                    SourceLocation(pipeline.recipe.net.path)
                    if pipeline.recipe is not None and pipeline.recipe.net
                    else SourceLocation(pipeline.solver_path)
                ),
            )
    return layer_map


def plan_source(pipeline: Pipeline) -> dict[str, str]:
    """The input paths a plan records (``solver``, and ``net`` when the solver names one; for
    cuda-convnet ``layers`` and ``params``)."""
    if pipeline.recipe is None:
        return dict(pipeline.sources)
    source = {"solver": pipeline.solver_path}
    if pipeline.recipe.solver.net_path:
        source["net"] = pipeline.recipe.solver.net_path
    return source


def keras_plan(
    pipeline: Pipeline, layer_map: Mapping[str, str] | None = None
) -> tuple[KerasPlan, tuple[Note, ...]]:
    """The Keras plan of the pipeline's rule and every note so far (front end, rule, plan).

    A ``layer_map`` naming a layer the train net does not have is an InputError."""
    rule = pipeline.rule
    layer_map = checked_layer_map(pipeline, layer_map)
    p = plan(rule, layer_map=layer_map, source=plan_source(pipeline))
    if pipeline.recipe is None:  # cuda-convnet: how its rule became Caffe's (the mean loss...)
        # belongs in what optimizer.py says was translated; inexact notes are recorded anyway
        p = replace(p, notes=(*(n for n in rule.notes if not n.inexact), *p.notes))
    notes = _unique(pipeline.notes, p.notes)
    # the outputs record what is not exact, wherever it was found (issue 11 item 3)
    return replace(p, inexact=tuple(n for n in notes if n.inexact)), notes
