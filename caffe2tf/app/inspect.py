"""``caffe2tf inspect``: what Caffe will use from a solver (defaults filled in) and its train net.

The report shows three things:

1. the solver's effective fields: every ``SolverParameter`` field with the value Caffe uses
   (float32 for ``float`` fields), marked ``(default)`` when the file did not set it;
2. the param table: every learnable blob *owner* of the TRAIN-phase net in Caffe's
   ``learnable_params_`` order with its shape, ``lr_mult``, ``decay_mult``, sharing, and the
   effective rate and decay of the first update:
   ``lr = fl32(rate(0) * lr_mult)`` and ``decay = fl32(weight_decay * decay_mult)``
   (``sgd_solver.cpp:162,228``: ``local_rate``/``local_decay`` are computed in ``Dtype``);
3. the notes (upgrades, skipped fork fields, missing net, unknown shapes...).

Importing this module must not import TensorFlow or Keras (checked by the tests).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from caffe2tf.caffe.model import NetSpec, SolverSpec
from caffe2tf.errors import escape_controls
from caffe2tf.notes import Note
from caffe2tf.rule.lower import schedule_of
from caffe2tf.rule.schedules import POLICIES, lr_at

__all__ = ["InspectReport", "first_rate", "inspect_file"]


def _f32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _short(x: float) -> str:
    """Shortest decimal that reads back to the same float32 (what the user most likely wrote)."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    for digits in range(1, 10):
        value = float(f"{x:.{digits}g}")
        if _f32(value) == x:
            text = repr(value)  # plain notation where Python uses it: 10.0, 0.0005, 1e-08
            return text[:-2] if text.endswith(".0") else text
    return repr(x)


def first_rate(solver: SolverSpec) -> float:
    """The global rate of the first update, ``GetLearningRate()`` at ``iter_ = 0``, from the
    rule's policy table (:data:`caffe2tf.rule.schedules.POLICIES`), rounded to float32 as
    Caffe stores ``rate``. NaN for a policy Caffe does not know (read with ``--lenient``)."""
    if solver.lr_policy not in POLICIES:
        return math.nan
    try:
        return lr_at(schedule_of(solver), 0)[0]
    except (ValueError, ArithmeticError):
        return math.nan


@dataclass(frozen=True)
class InspectReport:
    """The result of :func:`inspect_file`; ``render`` gives the text, ``exit_code`` is 0."""

    path: str
    kind: str  # "solver" or "net"
    solver: SolverSpec | None
    net: NetSpec | None
    notes: tuple[Note, ...] = ()
    exit_code: int = 0

    # ---- data ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind}
        if self.solver is not None:
            out["solver"] = {
                "path": self.solver.path,
                "net_path": self.solver.net_path,
                "fields": _solver_fields(self.solver),
            }
        else:
            out["solver"] = None
        if self.net is not None:
            out["net"] = {
                "path": self.net.path,
                "name": self.net.name,
                "legacy_format": self.net.legacy_format,
                "layers": len(self.net.layers),
                "params": _param_rows(self.net, self.solver),
            }
        else:
            out["net"] = None
        out["notes"] = [n.to_dict() for n in self.notes]
        out["exit_code"] = self.exit_code
        return out

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            import json

            return json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False)
        if fmt != "table":
            raise ValueError(f"unknown format {fmt!r}")
        return self._table()

    # ---- table -----------------------------------------------------------------------------
    def _table(self) -> str:
        lines: list[str] = []
        if self.solver is not None:
            s = self.solver
            lines.append(f"Solver {s.path}")
            rows = _solver_fields(s)
            width = max(len(r["name"]) for r in rows)
            for r in rows:
                mark = "  (default)" if r["default"] else ""
                where = f"  [{r['location']}]" if r["location"] and not r["default"] else ""
                lines.append(f"  {r['name']:<{width}}  {r['display']}{mark}{where}")
            lines.append("")
        if self.net is not None:
            n = self.net
            origin = f" (upgraded from {n.legacy_format})" if n.legacy_format != "V2" else ""
            lines.append(
                f"Train net {n.path}{origin}: {len(n.layers)} layers in the TRAIN "
                f"phase, {len(n.params)} learnable blobs"
            )
            rows = _param_rows(n, self.solver)
            header = ["key", "type", "shape", "lr_mult", "decay_mult", "shared"]
            if self.solver is not None:
                header += ["lr@0", "decay@0"]
            table = [header]
            for r in rows:
                shared = r["share_name"] or ""
                if r["sharers"]:
                    shared = f"{shared} (+{', '.join(r['sharers'])})"
                row = [
                    r["key"],
                    r["type"],
                    r["shape_text"],
                    _short(r["lr_mult"]),
                    _short(r["decay_mult"]),
                    shared or "-",
                ]
                if self.solver is not None:
                    row += [_short(r["lr0"]), _short(r["decay0"])]
                table.append([escape_controls(c) for c in row])  # names: aligned as printed
            widths = [max(len(row[i]) for row in table) for i in range(len(header))]
            for k, row in enumerate(table):
                lines.append(
                    "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                )
                if k == 0:
                    lines.append("  " + "  ".join("-" * w for w in widths))
            if not rows:
                lines.append("  (no learnable blobs)")
            lines.append("")
        elif self.solver is not None:
            lines.append("Train net: unknown (see notes); per-blob lr_mult/decay_mult unknown")
            lines.append("")
        if self.notes:
            warnings = sum(1 for x in self.notes if x.severity.value != "info")
            lines.append(f"Notes ({len(self.notes)}, {warnings} warnings):")
            for note in self.notes:
                flag = " [affects training]" if note.affects_training else ""
                lines.append(f"  {note}{flag}")
        else:
            lines.append("Notes: none")
        # names, paths and string fields may hold control characters (a newline, a terminal
        # escape sequence): each line is printed with them as escapes
        return "\n".join(escape_controls(line) for line in lines)


def _finite(data: Any) -> Any:
    """JSON has no NaN/Infinity: write non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data


def _display(fd: Any, value: Any) -> str:
    if fd.type == fd.TYPE_FLOAT:
        return _short(value)
    if fd.type == fd.TYPE_DOUBLE:
        return repr(value)
    if fd.type == fd.TYPE_STRING:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if fd.type == fd.TYPE_BOOL:
        return "true" if value else "false"
    if fd.type == fd.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name
    return str(value)


def _solver_fields(s: SolverSpec) -> list[dict[str, Any]]:
    msg = s.message
    rows: list[dict[str, Any]] = []
    for fd in msg.DESCRIPTOR.fields:
        name = fd.name
        if name == "solver_type":
            continue  # upgraded into ``type`` (upgrade_proto.cpp:1042-1078)
        loc = s.locations.get(name)
        default = name in s.defaulted
        if fd.type == fd.TYPE_MESSAGE:
            if fd.is_repeated:
                n = len(getattr(msg, name))
                if not n:
                    continue
                display, value = f"<{n} message(s)>", n
            else:
                if not msg.HasField(name):
                    continue
                display, value = "<inline message>", None
        elif fd.is_repeated:
            values = list(getattr(msg, name))
            if not values and name not in ("stepvalue", "test_iter"):
                continue
            display = "[" + ", ".join(_display(fd, v) for v in values) + "]"
            value = values
        else:
            if (
                default
                and not fd.has_default_value
                and name in ("net", "train_net", "snapshot_prefix")
            ):
                continue  # absent strings with no meaning as a default
            value = getattr(msg, name)
            display = _display(fd, value)
            if fd.type == fd.TYPE_ENUM:
                value = display
        rows.append(
            {
                "name": name,
                "value": value,
                "display": display,
                "default": default,
                "location": str(loc) if loc else None,
            }
        )
    return rows


def _param_rows(net: NetSpec, solver: SolverSpec | None) -> list[dict[str, Any]]:
    rate0 = first_rate(solver) if solver is not None else None
    rows = []
    for b in net.params:
        row: dict[str, Any] = {
            "key": b.key,
            "layer": b.layer,
            "type": b.layer_type,
            "index": b.index,
            "shape": list(b.shape) if b.shape is not None else None,
            "shape_text": "x".join(map(str, b.shape)) if b.shape is not None else "?",
            "lr_mult": b.lr_mult,
            "decay_mult": b.decay_mult,
            "lr_mult_explicit": b.lr_mult_explicit,
            "decay_mult_explicit": b.decay_mult_explicit,
            "share_name": b.share_name,
            "sharers": list(b.sharers),
            "location": str(b.location) if b.location else None,
        }
        if solver is not None and rate0 is not None:
            row["lr0"] = _f32(rate0 * b.lr_mult)
            row["decay0"] = _f32(solver.weight_decay * b.decay_mult)
        rows.append(row)
    return rows


def inspect_file(
    path: str | os.PathLike[str],
    *,
    net_path: str | os.PathLike[str] | None = None,
    lenient: bool = False,
) -> InspectReport:
    """Read a solver or a net (decided by content) and build the report.

    Raises :class:`~caffe2tf.errors.InputError` on invalid input (the CLI exits 2).
    """
    from caffe2tf.caffe.load import load_net, load_recipe, sniff_kind
    from caffe2tf.convnet.spec import looks_like_convnet
    from caffe2tf.errors import InputError, SourceLocation
    from caffe2tf.notes import Severity

    p = os.fspath(path)
    if looks_like_convnet(p):
        raise InputError(
            "a cuda-convnet layer file, which inspect does not read: use "
            "'caffe2tf explain LAYERS.cfg --params LAYER-PARAMS.cfg' (docs/cuda-convnet.md)",
            SourceLocation(p),
        )
    kind = sniff_kind(p)
    if kind == "net":
        notes: list[Note] = []
        if net_path is not None:
            notes.append(
                Note(
                    "inspect.net_ignored",
                    f"--net {os.fspath(net_path)} ignored: {p} is itself a net",
                    Severity.WARNING,
                )
            )
        net = load_net(p, lenient=lenient)
        return InspectReport(p, "net", None, net, tuple(notes) + net.notes)
    recipe = load_recipe(p, net_path=net_path, lenient=lenient)
    notes = list(recipe.solver.notes) + list(recipe.notes)
    if recipe.net is not None:
        notes += list(recipe.net.notes)
    return InspectReport(p, "solver", recipe.solver, recipe.net, tuple(notes))
