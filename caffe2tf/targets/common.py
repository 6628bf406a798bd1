"""What every target's planner and renderer share (no framework import).

Plan data: :class:`Arg` / :class:`CallSpec` (a constructor call whose every argument names the
prototxt field it came from), :func:`f32` / :func:`fmt` (hyper-parameters as Caffe holds them,
float32). Rendering: :func:`value_text` (a Python literal that ``ruff format`` keeps as is),
:func:`call_lines` (``head(`` + one ``name=value,  # field`` line per argument + ``)``),
:func:`runtime_blocks` (the marked ``# -- inline begin NAME`` blocks of a target's runtime
module, read as text so that rendering never imports the framework), :func:`docstring_lines`
and :func:`literal` (the only way a name from the prototxt reaches generated code: an escaped,
ASCII-only string literal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.targets.keras.model import Arg, CallSpec, f32, fmt
from caffe2tf.targets.keras.render_python import literal

__all__ = [
    "Arg",
    "CallSpec",
    "Items",
    "call_lines",
    "docstring_lines",
    "effective_stepvalues",
    "f32",
    "fmt",
    "literal",
    "make_note",
    "runtime_blocks",
    "untranslatable",
    "value_text",
]

#: ruff format's default line length (the generated modules are clean at 88 and at 100)
LINE = 88
_DOC_SAFE = re.compile(r"[^A-Za-z0-9 .,:;()=*/+\-_'^<>%\[\]]")


def make_note(
    target: str,
    code: str,
    message: str,
    exactness: Exactness | None = Exactness.EXACT,
    severity: Severity = Severity.INFO,
) -> Note:
    """A note of ``target`` (code ``<target>.<code>``), marked exact unless said otherwise."""
    return Note(
        code=f"{target}.{code}",
        message=message,
        severity=severity,
        affects_training=exactness not in (Exactness.EXACT, None),
        exactness=exactness,
    )


#: the rule steps every target's fixed order handles besides its solver steps
_ORDER_STEPS = ("ClipByGlobalNorm", "NormalizeBy", "AddDecay", "ScaleByLr")


def untranslatable(rule: Any, solver_steps: Iterable[type]) -> list[str]:
    """Why a target whose solver registry holds ``solver_steps`` cannot reproduce ``rule``
    exactly: a step it has no mapping for (a fork's solver or decay policy) or a schedule
    with fields beyond Caffe's seven policies (a warm-up, a floor). Empty when it can."""
    known = {t.__name__ for t in solver_steps} | set(_ORDER_STEPS)
    out = [
        f"the rule's step {type(s).__name__} has no mapping in this target"
        for s in rule.steps
        if type(s).__name__ not in known
    ]
    schedule = rule.schedule
    if getattr(schedule, "min_lr", None) is not None or getattr(schedule, "rampup_interval", 0):
        out.append("the learning rate has a warm-up or a floor (a fork's fields)")
    return out


def effective_stepvalues(schedule: Any) -> tuple[int, ...]:
    """Where Caffe's multistep counter really advances: at most once per update
    (``sgd_solver.cpp:46-52``), so a repeated stepvalue decays on the next update."""
    from caffe2tf.rule.schedules import boundaries

    if not schedule.stepvalue:
        return ()
    horizon = max(int(v) for v in schedule.stepvalue) + len(schedule.stepvalue) + 1
    return tuple(boundaries(schedule, horizon))


def value_text(v: Any) -> str:
    """``v`` as Python source that ``ruff format`` leaves alone (``1e20``, ``float("inf")``)."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return f'float("{v!r}")'
        return repr(v).replace("e+", "e")
    if isinstance(v, str):
        return literal(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    if v is None:
        return "None"
    raise TypeError(type(v))


#: a list value: its items as source text (one line when it fits, else one item per line)
Items = list[str]


def call_lines(
    head: str,
    args: Iterable[tuple[str, str | Items, str]],
    indent: str,
    tail: str = ")",
    positional: Iterable[str] = (),
) -> list[str]:
    """``head(`` then the ``positional`` sources, then one ``name=value,  # source`` line per
    argument, then ``tail``; a list too long for :data:`LINE` is written one item per line
    with a trailing comma, as ``ruff format`` lays it out."""
    lines = [f"{indent}{head}("]
    lines += [f"{indent}    {p}," for p in positional]
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


def arg_source(a: Arg) -> tuple[str, str | Items, str]:
    """An :class:`Arg` as a :func:`call_lines` row."""
    if isinstance(a.value, tuple | list):
        return a.name, [value_text(x) for x in a.value], a.source
    return a.name, value_text(a.value), a.source


def row_lines(items: list[str], indent: str) -> list[str]:
    """A table row ``(a, b, c),`` on one line, or exploded one item per line when long."""
    one = f"{indent}({', '.join(items)}),"
    if len(one) <= LINE:
        return [one]
    return [f"{indent}("] + [f"{indent}    {item}," for item in items] + [f"{indent}),"]


def runtime_blocks(package: str, names: Iterable[str], filename: str = "runtime.py") -> str:
    """The ``# -- inline begin NAME`` ... ``# -- inline end NAME`` blocks of ``package``'s
    runtime module whose NAME is in ``names``, in file order, read as text."""
    wanted = set(names)
    text = resources.files(package).joinpath(filename).read_text("utf-8")
    pattern = re.compile(r"# -- inline begin (\w+)\n(.*?)\n# -- inline end \1\n", re.S)
    found = [m for m in pattern.finditer(text) if m.group(1) in wanted]
    missing = wanted - {m.group(1) for m in found}
    if missing:
        raise KeyError(f"{package}/{filename} has no inline block {sorted(missing)}")
    return "\n\n\n".join(m.group(2).strip("\n") for m in found)


def _wrap_words(text: str, width: int) -> list[str]:
    lines: list[str] = []
    cur = ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(cur)
    return lines


def docstring_lines(title: str, usage: str, notes: Iterable[Note]) -> list[str]:
    """The generated module's docstring: title, usage text, then one bullet per note (names
    from the prototxt reduced to a safe character set: a docstring never carries them raw)."""
    doc = [f'"""{title}', ""]
    doc += usage.strip("\n").split("\n")
    doc += ["", "What was translated, and how:", ""]
    for n in notes:
        tag = n.exactness.value if n.exactness else n.severity.value
        doc += _wrap_words(f"- [{tag}] {_DOC_SAFE.sub('?', n.message)}", LINE)
    doc.append('"""')
    return doc
