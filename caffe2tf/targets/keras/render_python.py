"""KerasPlan -> a standalone, formatted ``optimizer.py`` (keras, numpy and stdlib only).

The emitted module defines ``build_optimizer()`` and ``prepare_model(model)``. Any custom piece
(CaffeSchedule, CaffeOptimizer, the blob binder) is copied from the marked blocks of
``runtime.py``, read as TEXT (no Keras import on the convert path), so the library and the
emitted file share one source.

Safety: names from the prototxt (layer names, paths) only appear as string literals produced by
:func:`literal` (JSON-style escaping of an ASCII-only, double-quoted string); comments and the
docstring never contain them. Every number is followed by a comment naming its prototxt field.
The output is ``ruff format`` clean at line length 88 and 100 (rows are exploded when long).
"""

from __future__ import annotations

import math
import re
from importlib import resources
from typing import Any

from caffe2tf.targets.keras.model import Arg, CallSpec, KerasPlan

LINE = 88
_SAFE = re.compile(r"[A-Za-z0-9_.:+/ -]*\Z")  # \Z: "$" also matches before a final "\n"
_DOC_SAFE = re.compile(r"[^A-Za-z0-9 .,:;()=*/+\-_'^<>%\[\]]")


def literal(text: str) -> str:
    """An ASCII-only Python string literal for ``text``: escapes, never raw code.

    Backslashes, control and non-ASCII characters become escapes; the quote is chosen as
    ``ruff format`` would (double unless the text holds more double than single quotes).
    """
    if _SAFE.match(text):
        return f'"{text}"'
    quote = "'" if text.count('"') > text.count("'") else '"'
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x80:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return quote + "".join(out) + quote


def _doc(text: str) -> str:
    """Plain words for the docstring: anything outside a safe character set becomes ``?``."""
    return _DOC_SAFE.sub("?", text)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):  # bare inf/nan are undefined names in Python source
            return f'float("{v!r}")'
        return repr(v).replace("e+", "e")  # ruff writes 1e+20 as 1e20
    if isinstance(v, str):
        return literal(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if v is None:
        return "None"
    raise TypeError(type(v))


def _runtime_blocks(*names: str) -> str:
    """The named ``# -- inline begin NAME`` blocks of runtime.py and tracker.py, in order."""
    package = resources.files("caffe2tf.targets.keras")
    text = "\n".join(package.joinpath(f).read_text("utf-8") for f in ("runtime.py", "tracker.py"))
    out = []
    pattern = re.compile(r"# -- inline begin (\w+)\n(.*?)\n# -- inline end \1\n", re.S)
    for m in pattern.finditer(text):
        if m.group(1) in names:
            out.append(m.group(2).strip("\n"))
    return "\n\n\n".join(out)


def _wrap_words(text: str, width: int, indent: str = "") -> list[str]:
    lines: list[str] = []
    cur = ""
    for word in text.split():
        if cur and len(indent) + len(cur) + 1 + len(word) > width:
            lines.append(indent + cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(indent + cur)
    return lines


#: a list value: its items as source text (kept on one line when it fits, else one per line)
Items = list[str]


def _call_lines(
    head: str, args: list[tuple[str, str | Items, str]], indent: str, tail: str = ")"
) -> list[str]:
    """``head(`` then one ``name=value,  # source`` line per argument, then ``tail``.

    A list value that would not fit in :data:`LINE` columns is written one item per line with
    a trailing comma, the layout ``ruff format`` itself gives it (and keeps)."""
    lines = [f"{indent}{head}("]
    for name, value, source in args:
        comment = f"  # {source}" if source else ""
        if isinstance(value, list):
            one = f"{indent}    {name}=[{', '.join(value)}],{comment}"
            if len(one) <= LINE:
                lines.append(one)
                continue
            lines.append(f"{indent}    {name}=[{comment}")
            lines += [f"{indent}        {item}," for item in value]
            lines.append(f"{indent}    ],")
            continue
        lines.append(f"{indent}    {name}={value},{comment}")
    lines.append(f"{indent}{tail}")
    return lines


def _arg_value(a: Arg, scale: str = "") -> str | Items:
    """The source text of an argument's value; lists as :data:`Items` (``scale`` appended to
    each item, e.g. ``" * lr_mult"``)."""
    if isinstance(a.value, tuple | list):
        return [_value(x) + scale for x in a.value]
    return _value(a.value) + scale


def _row(items: list[str], indent: str, comment: str = "") -> list[str]:
    one = f"{indent}({', '.join(items)}),"
    if len(one) + (len(comment) + 2 if comment else 0) <= LINE:
        return [one + (f"  # {comment}" if comment else "")]
    lines = [f"{indent}(" + (f"  # {comment}" if comment else "")]
    lines += [f"{indent}    {item}," for item in items]
    lines.append(f"{indent}),")
    return lines


def _multi_momentum_lines(p: KerasPlan, opt_args: list[tuple[str, str | Items, str]]) -> list[str]:
    """``build_optimizer``'s body when blobs have their own momentum: one sub-optimizer per
    ``(lr_mult, momentum)`` pair (docs/cuda-convnet.md#keras)."""
    shared = _value(p.optimizer.arg("momentum"))
    args = [a for a in opt_args if a[0] != "momentum"]
    out = [""]
    out.append(
        "    def sub_optimizer(lr_mult: float, momentum: float) -> keras.optimizers.Optimizer:"
    )
    out += _call_lines(
        f"return keras.optimizers.{p.optimizer.cls}",
        [("learning_rate", "build_schedule(lr_mult)", ""), *args]
        + [("momentum", "momentum", "momW / momB")],
        "        ",
    )
    out.append("")
    out.append(f"    by_pair = {{(1.0, {shared}): sub_optimizer(1.0, {shared})}}")
    out.append("    routes = {}")
    frozen = any(not b.trainable for b in p.blobs)
    if frozen:
        out.append("    # lr_mult 0: a zero rate and no state keeps a blob that load_model")
        out.append("    # made trainable again where Caffe left it")
        out.append("    frozen = keras.optimizers.SGD(learning_rate=0.0)")
    out.append("    for layer, blob, lr_mult, _, trainable, _, _ in CAFFE_BLOBS:")
    out.append(f'        pair = (lr_mult, CAFFE_MOMENTA.get(f"{{layer}}/{{blob}}", {shared}))')
    if frozen:
        out.append("        if not trainable:")
        out.append("            routes[path_pattern(layer, blob)] = frozen")
        out.append(f"        elif pair != (1.0, {shared}):")
    else:
        out.append(f"        if trainable and pair != (1.0, {shared}):")
    out.append("            if pair not in by_pair:")
    out.append("                by_pair[pair] = sub_optimizer(*pair)")
    out.append("            routes[path_pattern(layer, blob)] = by_pair[pair]")
    out.append(f"    default = by_pair[1.0, {shared}]")
    out.append("    return keras.optimizers.MultiOptimizer(")
    out.append(
        "        keras.optimizers.OptimizerMap(default_optimizer=default, optimizer_map=routes)"
    )
    out.append("    )")
    return out


def _schedule_lines(spec: CallSpec) -> list[str]:
    """Body of ``build_schedule(lr_mult)``."""
    ind = "    "

    def scaled(a: Arg) -> tuple[str, str | Items, str]:
        if a.name in ("learning_rate", "initial_learning_rate", "values"):
            return a.name, _arg_value(a, " * lr_mult"), a.source
        return a.name, _arg_value(a), a.source

    if spec.cls == "constant":
        a = spec.args[0]
        return [f"{ind}return {_value(a.value)} * lr_mult  # {a.source}"]
    if spec.cls == "CaffeSchedule":
        args: list[tuple[str, str | Items, str]] = [
            (a.name, _arg_value(a), a.source) for a in spec.args
        ]
        args.append(("lr_mult", "lr_mult", "param.lr_mult"))
        return _call_lines("return CaffeSchedule", args, ind)
    args = [scaled(a) for a in spec.args]
    return _call_lines(f"return keras.optimizers.schedules.{spec.cls}", args, ind)


USAGE = """
Use it with ``fit``::

    import optimizer as caffe_solver

    model = make_model()  # Keras layers named like the Caffe layers
    caffe_solver.prepare_model(model)
    model.compile(optimizer=caffe_solver.build_optimizer(), loss=...)
    model.fit(x, y, batch_size=...)  # one batch = one Caffe forward/backward pass

or in a custom loop (TensorFlow backend shown), calling ``apply_gradients`` exactly once
per Caffe forward/backward pass (one micro-batch when iter_size > 1)::

    optimizer = caffe_solver.build_optimizer()
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + sum(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

A custom loop must differentiate ``loss + sum(model.losses)``: ``model.losses`` holds the
regularizers that ``prepare_model`` attaches (Caffe's weight decay on the regularizer
route), and ``fit`` adds them by itself. Without them the decay is silently lost.
"""


def render_python(p: KerasPlan) -> str:
    """The text of ``optimizer.py`` for ``p``."""
    custom_sched = p.schedule.cls == "CaffeSchedule"
    custom_opt = p.route == "custom"
    blocks = ["binder", "tracker"]
    if custom_sched:  # the schedule class and the one policy this recipe uses
        blocks += ["schedule", f"policy_{p.schedule.arg('policy')}"]
    if custom_opt:  # Caffe's fixed order and the one solver step this recipe uses
        blocks += ["optimizer", f"solver_{p.optimizer.cls}"]
    if p.route == "multi":
        blocks.append("multi")
    out: list[str] = []
    what = "a cuda-convnet net" if "layers" in p.source else "a Caffe solver"  # convnet: sources
    if p.exact:
        doc = [f'"""Keras 3 optimizer that trains exactly like {what} (generated by caffe2tf).']
    else:
        doc = [f'"""Keras 3 optimizer for {what}, NOT exact (generated by caffe2tf).']
    doc += ["", f"Caffe solver type {p.solver}; Keras route: {p.route}."]
    if not p.exact:
        doc += [""]
        doc += _wrap_words(
            "Written with --allow-approx: training differs from Caffe's wherever one of "
            "these items says so:",
            LINE,
        )
        doc += [""]
        for n in p.inexact or tuple(n for n in p.notes if n.inexact):
            where = f"{n.location}: " if n.location else ""
            doc += _wrap_words(
                f"- [{n.exactness.value if n.exactness else 'skipped'}] {_doc(where + n.message)}",
                LINE,
            )
    doc += USAGE.rstrip("\n").split("\n")
    doc += ["", "What was translated, and how:", ""]
    for n in p.notes:
        tag = n.exactness.value if n.exactness else n.severity.value
        doc += _wrap_words(f"- [{tag}] {_doc(n.message)}", LINE)
    doc += ['"""']
    out += doc
    out += ["", "from __future__ import annotations", ""]
    std = []
    if "multi" in blocks:
        std.append("import re")
    std.append("import warnings")
    std.append("from typing import Any")
    out += std
    out += ["", "import keras"]
    out.append("import numpy as np")  # WeightNormTracker (and the custom optimizers)
    if custom_sched or custom_opt:
        out.append("from keras import ops")
    out += [""]
    out.append(_runtime_blocks(*blocks))
    out += ["", ""]

    # ---- the blob table
    out.append("# One row per learnable Caffe blob of the train net, in Caffe's order:")
    out.append("# Keras layer name; blob index (0: kernel/depthwise_kernel/embeddings/gamma/alpha,")
    out.append("# 1: bias/beta); lr_mult and decay_mult (param { } of the net prototxt);")
    out.append("# trainable (lr_mult != 0); the regularizer prepare_model attaches: L2 factor")
    out.append("# weight_decay * decay_mult / 2 (Keras' L2 has no 1/2), L1 factor")
    out.append("# weight_decay * decay_mult; the Caffe layer name (for messages).")
    out.append("CAFFE_BLOBS: list[tuple[str, int, float, float, bool, Any, str]] = [")
    if not p.blobs:
        out[-1] += "]"
    for b in p.blobs:
        reg = (
            "None"
            if b.regularizer is None
            else f"({literal(b.regularizer[0])}, {_value(b.regularizer[1])})"
        )
        items = [
            literal(b.keras_layer),
            str(b.blob),
            _value(b.lr_mult),
            _value(b.decay_mult),
            _value(b.trainable),
            reg,
            literal(b.caffe_layer),
        ]
        out += _row(items, "    ")
    if p.blobs:
        out.append("]")
    d = p.default_blob
    dreg = (
        "None"
        if d.regularizer is None
        else f"({literal(d.regularizer[0])}, {_value(d.regularizer[1])})"
    )
    out.append("# Variables of no listed blob (every variable when the net is unknown):")
    out.append("# lr_mult, decay_mult, trainable, regularizer.")
    out.append(
        f"DEFAULT_BLOB: tuple[float, float, bool, Any] = ({_value(d.lr_mult)}, "
        f"{_value(d.decay_mult)}, {_value(d.trainable)}, {dreg})"
    )
    if len(out[-1]) > LINE:
        last = out.pop()
        out.append("DEFAULT_BLOB: tuple[float, float, bool, Any] = (")
        for item in (_value(d.lr_mult), _value(d.decay_mult), _value(d.trainable), dreg):
            out.append(f"    {item},")
        out.append(")")
        del last
    if any(b.momentum is not None for b in p.blobs):
        out.append("# Each blob's own momentum (cuda-convnet's momW / momB), by layer/blob:")
        out.append("CAFFE_MOMENTA: dict[str, float] = {")
        for b in p.blobs:
            if b.momentum is not None:
                out.append(f"    {literal(f'{b.keras_layer}/{b.blob}')}: {_value(b.momentum)},")
        out.append("}")
    out += ["", ""]

    # ---- build_schedule
    out.append("def build_schedule(lr_mult: float = 1.0) -> Any:")
    out.append('    """The learning rate of Caffe\'s lr_policy, times ``lr_mult``."""')
    out += _schedule_lines(p.schedule)
    out += ["", ""]

    # ---- build_optimizer
    out.append("def build_optimizer() -> keras.optimizers.Optimizer:")
    out.append('    """A fresh optimizer; one apply_gradients per Caffe forward/backward."""')
    opt_args: list[tuple[str, str | Items, str]] = [
        (a.name, _arg_value(a), a.source) for a in p.optimizer.args
    ]
    if p.route == "builtin":
        out += _call_lines(
            f"return keras.optimizers.{p.optimizer.cls}",
            [("learning_rate", "build_schedule()", "")] + opt_args,
            "    ",
        )
    elif p.route == "multi" and any(b.momentum is not None for b in p.blobs):
        out += _multi_momentum_lines(p, opt_args)
    elif p.route == "multi":
        out.append("")
        out.append("    def sub_optimizer(lr_mult: float) -> keras.optimizers.Optimizer:")
        out += _call_lines(
            f"return keras.optimizers.{p.optimizer.cls}",
            [("learning_rate", "build_schedule(lr_mult)", "")] + opt_args,
            "        ",
        )
        out.append("")
        out.append("    by_lr_mult = {1.0: sub_optimizer(1.0)}")
        out.append("    routes = {}")
        frozen = any(not b.trainable for b in p.blobs)
        if frozen:
            out.append("    # lr_mult 0: a zero rate and no state keeps a blob that load_model")
            out.append("    # made trainable again where Caffe left it")
            out.append("    frozen = keras.optimizers.SGD(learning_rate=0.0)")
        out.append("    for layer, blob, lr_mult, _, trainable, _, _ in CAFFE_BLOBS:")
        if frozen:
            out.append("        if not trainable:")
            out.append("            routes[path_pattern(layer, blob)] = frozen")
            out.append("        elif lr_mult != 1.0:")
        else:
            out.append("        if trainable and lr_mult != 1.0:")
        out.append("            if lr_mult not in by_lr_mult:")
        out.append("                by_lr_mult[lr_mult] = sub_optimizer(lr_mult)")
        out.append("            routes[path_pattern(layer, blob)] = by_lr_mult[lr_mult]")
        out.append("    default = by_lr_mult[1.0]")
        out.append("    return keras.optimizers.MultiOptimizer(")
        out.append(
            "        keras.optimizers.OptimizerMap(default_optimizer=default, optimizer_map=routes)"
        )
        out.append("    )")
    else:
        out.append("    multipliers = {")
        out.append('        f"{layer}/{blob}": (lr_mult, decay_mult)')
        out.append("        for layer, blob, lr_mult, decay_mult, _, _, _ in CAFFE_BLOBS")
        out.append("    }")
        out += _call_lines(
            f"return {p.optimizer.cls}",
            [("learning_rate", "build_schedule()", "")]
            + opt_args
            + [("multipliers", "multipliers", ""), ("default_multipliers", "DEFAULT_BLOB[:2]", "")],
            "    ",
        )
    out += ["", ""]

    # ---- prepare_model
    out.append("def prepare_model(model: keras.Model) -> dict[str, str]:")
    out.append('    """Bind Caffe\'s per-blob settings to the variables of a built ``model``.')
    out.append("")
    out.append("    Sets ``variable.regularizer`` (Caffe's weight decay on the regularizer route,")
    out.append("    None otherwise) and ``variable.trainable = False`` for lr_mult 0. Raises")
    out.append("    ValueError listing Caffe blobs with no Keras variable; warns about Keras")
    out.append("    variables with no Caffe blob. Returns {variable.path: layer/blob}.")
    out.append('    """')
    out.append("    blobs = [")
    out.append("        (layer, blob, trainable, regularizer)")
    out.append("        for layer, blob, _, _, trainable, regularizer, _ in CAFFE_BLOBS")
    out.append("    ]")
    out.append("    names = {row[0]: row[6] for row in CAFFE_BLOBS}")
    out.append("    default = (DEFAULT_BLOB[2], DEFAULT_BLOB[3])")
    out.append("    return bind_caffe_blobs(model, blobs, default, names)")
    return "\n".join(out) + "\n"
