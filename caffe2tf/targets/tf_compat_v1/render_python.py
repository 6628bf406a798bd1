"""TfV1Plan -> a standalone, formatted ``train_op_v1.py`` (TensorFlow and stdlib only).

The module defines ``build_train_op(loss, var_list=None) -> (train_op, global_step)`` for a
``tf.compat.v1`` graph; the runtime pieces it needs are copied from the marked blocks of
:mod:`caffe2tf.targets.tf_compat_v1.runtime`, read as text, so rendering never imports
TensorFlow. Names from the prototxt reach the code only as escaped string literals; every
number carries a comment with the prototxt field it came from.
"""

from __future__ import annotations

from caffe2tf.targets.common import (
    Arg,
    Items,
    call_lines,
    docstring_lines,
    literal,
    row_lines,
    runtime_blocks,
    value_text,
)
from caffe2tf.targets.tf_compat_v1.model import TfV1Plan

FILENAME = "train_op_v1.py"

USAGE = """
Build the train op once, then run it once per Caffe forward/backward pass (one micro-batch
when iter_size > 1), in graph mode::

    import tensorflow as tf

    import train_op_v1 as caffe_solver

    tf.compat.v1.disable_eager_execution()
    logits = model(images)  # variables named <caffe layer>/weights|kernel, /biases|bias
    loss = tf.reduce_mean(tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits))
    train_op, global_step = caffe_solver.build_train_op(loss)  # the data loss only
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for batch in batches:
            session.run(train_op, feed_dict=batch)
"""


def _arg(a: Arg) -> tuple[str, str | Items, str]:
    if isinstance(a.value, tuple | list):
        return a.name, [value_text(x) for x in a.value], a.source
    return a.name, value_text(a.value), a.source


def _schedule_lines(p: TfV1Plan) -> list[str]:
    s = p.schedule
    lines = [
        "def learning_rate(global_step: Any) -> Any:",
        '    """Caffe\'s lr_policy at global_step = the Caffe updates applied (iter_)."""',
    ]
    if s.cls == "constant":
        a = s.args[0]
        return lines + [f"    return {value_text(a.value)}  # {a.source}"]
    if s.cls.startswith("caffe_"):
        lines += call_lines(f"rate = {s.cls}", [_arg(a) for a in s.args], "    ")
        return lines + ["    return rate(global_step)"]
    args = [_arg(a) for a in s.args]
    if s.cls.endswith("piecewise_constant"):
        args = [("x", "global_step", "")] + args
    else:
        args = args[:1] + [("global_step", "global_step", "")] + args[1:]
    return lines + call_lines(f"return {s.cls}", args, "    ")


def render_python(p: TfV1Plan) -> str:
    """The text of ``train_op_v1.py`` for ``p``."""
    title = "TF1 (tf.compat.v1) train op that trains exactly like a Caffe solver (by caffe2tf)."
    out = docstring_lines(title, f"Caffe solver type {p.solver_type}.\n" + USAGE, p.notes)
    out += ["", "from __future__ import annotations", ""]
    if "custom_adam" in p.blocks:
        out.append("import math")
    out += [
        "import warnings",
        "from collections.abc import Callable, Sequence",
        "from typing import Any",
        "",
        "import tensorflow as tf",
        "",
        runtime_blocks("caffe2tf.targets.tf_compat_v1", p.blocks),
        "",
        "",
        "# One row per learnable Caffe blob of the train net, in Caffe's order: Caffe layer (the",
        "# scope of its variables; a Scale after a BatchNorm: the BatchNorm's), blob index",
        "# (0: weights/kernel, 1: biases/bias), lr_mult and decay_mult (param { } of the net",
        "# prototxt).",
        "CAFFE_BLOBS: list[BlobRow] = [" + ("]" if not p.blobs else ""),
    ]
    for b in p.blobs:
        items = [literal(b.layer), str(b.blob), value_text(b.lr_mult), value_text(b.decay_mult)]
        out += row_lines(items, "    ")
    if p.blobs:
        out.append("]")
    out += [
        "# Variables of no listed blob (every variable when the net is unknown): lr_mult,",
        "# decay_mult.",
        f"DEFAULT_BLOB: tuple[float, float] = ({value_text(p.default_mults[0])}, "
        f"{value_text(p.default_mults[1])})",
        "",
        "",
    ]
    out += _schedule_lines(p) + ["", ""]
    if p.builtin:
        out += [
            "def make_optimizer(rate: Any) -> Any:",
            '    """The tf.compat.v1.train optimizer of Caffe\'s solver step at this rate."""',
        ]
        out += call_lines(
            f"return {p.solver.cls}",
            [("learning_rate", "rate", "")] + [_arg(a) for a in p.solver.args],
            "    ",
        )
        out += ["", ""]
        solver = "builtin_step(make_optimizer)"
    out += [
        "def build_train_op(loss: Any, var_list: Sequence[Any] | None = None) -> tuple[Any, Any]:",
        '    """(train_op, global_step): run train_op once per Caffe forward/backward pass."""',
    ]
    if not p.builtin:
        out += call_lines(f"solver = {p.solver.cls}", [_arg(a) for a in p.solver.args], "    ")
        solver = "solver"
    args: list[tuple[str, str | Items, str]] = [
        ("learning_rate", "learning_rate", ""),
        ("solver", solver, ""),
    ]
    if p.weight_decay:
        args += [
            ("weight_decay", value_text(p.weight_decay), "weight_decay"),
            ("regularization_type", literal(p.decay_kind), "regularization_type"),
            ("decay_in_loss", value_text(p.decay_in_loss), ""),
        ]
    if p.clip_gradients >= 0:
        args.append(("clip_gradients", value_text(p.clip_gradients), "clip_gradients"))
    if p.iter_size > 1:
        args.append(("iter_size", value_text(p.iter_size), "iter_size"))
    out += call_lines(
        "return caffe_train_op",
        args,
        "    ",
        positional=["loss", "var_list", "CAFFE_BLOBS", "DEFAULT_BLOB"],
    )
    return "\n".join(out) + "\n"


__all__ = ["FILENAME", "render_python"]
