"""Entry points of the Caffe front end: read a solver, a net, or a solver with its train net.

Read order mirrors Caffe: ``ReadSolverParamsFromTextFileOrDie`` (parse, then
``UpgradeSolverAsNeeded``; ``upgrade_proto.cpp:1119-1125``), the solver's own checks, then the
train net (``Solver::InitTrainNet``, ``solver.cpp:76-120``): a net file is read with
``ReadNetParamsFromTextFileOrDie`` (parse + upgrades), an inline ``net_param`` /
``train_net_param`` is used as written, and the net is built for state
``phase: TRAIN`` merged with the net's ``state`` and the solver's ``train_state``.

Caffe opens ``net``/``train_net`` relative to the process's working directory. We try that
first, then the solver's folder, and say which one was used. A missing net is a warning (the
per-blob multipliers are then unknown), never an error; ``net_path`` (``--net``) overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from caffe2tf.caffe.model import NetSpec, Recipe, SolverSpec
from caffe2tf.caffe.parse import Parsed, parse_text, read_source
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

__all__ = [
    "load_net",
    "load_recipe",
    "load_solver",
    "parse_net_file",
    "parse_solver_file",
    "sniff_kind",
]


def _pb() -> Any:
    from caffe2tf.caffe._proto import caffe_pb2

    return caffe_pb2


_BLANK_CHARS = " \t\r\v\f"  # the tokenizer's whitespace, less the newline


def _is_blank(text: str) -> bool:
    """True when the text holds nothing but whitespace and ``#`` comments.

    A plain scan, one line at a time, stopping at the first line with content: linear in the
    text whatever it holds (a regular expression with a repeated comment group backtracked
    exponentially on a line of many ``#``)."""
    pos, n = 0, len(text)
    while pos < n:
        end = text.find("\n", pos)
        if end == -1:
            end = n
        line = text[pos:end].lstrip(_BLANK_CHARS)
        if line and line[0] != "#":
            return False
        pos = end + 1
    return True


def _read(path: str | os.PathLike[str], kind: str, lenient: bool) -> tuple[Parsed, Any, tuple]:
    """Read a ``kind`` (``"solver"``/``"net"``) prototxt with the dialect its fields name
    (:func:`caffe2tf.caffe.dialect.read_dialect`): ``(parsed, dialect, notes)``. An empty file
    or a file of the other kind is an InputError."""
    from caffe2tf.caffe.dialect import read_dialect

    p = os.fspath(path)
    text = read_source(p)
    if _is_blank(text):
        raise InputError(
            "empty solver file: Caffe needs at least lr_policy and a train net "
            "(net, net_param, train_net or train_net_param)"
            if kind == "solver"
            else "empty net file: a net with no layers has nothing to train (Caffe "
            "would build an empty net)",
            SourceLocation(p),
        )
    other = "net" if kind == "solver" else "solver"
    if _sniff_text(text, p) == other:
        raise _wrong_kind(p, other)
    return read_dialect(text, p, kind, lenient=lenient)


def parse_solver_file(path: str | os.PathLike[str], *, lenient: bool = False) -> Parsed:
    """Parse a solver prototxt (no upgrade, no checks) with the schema of its dialect. An empty
    file is an InputError."""
    return _read(path, "solver", lenient)[0]


def parse_net_file(path: str | os.PathLike[str], *, lenient: bool = False) -> Parsed:
    """Parse a net prototxt (no upgrade) with the schema of its dialect. An empty file is an
    InputError: Caffe's parser accepts it, but the net has no layers and nothing to train."""
    return _read(path, "net", lenient)[0]


def load_solver(path: str | os.PathLike[str], *, lenient: bool = False) -> SolverSpec:
    """Parse, upgrade (``solver_type``) and check a solver; resolve its net file's path."""
    return _finish_solver(_read_solver(path, lenient), lenient=lenient)


@dataclasses.dataclass
class _SolverRead:
    """A solver parsed and upgraded, its net path resolved; Caffe's checks not run yet (they
    depend on the dialect, which the train net may decide)."""

    parsed: Parsed
    dialect: Any
    message: Any
    locations: dict[str, SourceLocation]
    notes: list[Note]
    net_path: str | None


def _read_solver(path: str | os.PathLike[str], lenient: bool, dialect: Any = None) -> _SolverRead:
    """``dialect``: read with that Caffe's schema (the one that runs the recipe), not the
    schema the file's own fields name."""
    from caffe2tf.caffe.upgrade import inline_net_notes, upgrade_solver

    if dialect is None:
        parsed, dialect, dialect_notes = _read(path, "solver", lenient)
    else:
        parsed = parse_text(
            read_source(os.fspath(path)),
            dialect.message("solver"),
            path=os.fspath(path),
            lenient=lenient,
        )
        dialect_notes = ()
    msg, locations, up_notes = upgrade_solver(parsed)
    notes = [*dialect_notes, *parsed.notes, *up_notes, *inline_net_notes(parsed)]
    net_path, path_notes = _resolve_net_path(msg, parsed)
    notes.extend(path_notes)
    return _SolverRead(parsed, dialect, msg, locations, notes, net_path)


def _finish_solver(
    read: _SolverRead,
    *,
    lenient: bool,
    defer_regularization: bool = False,
    net_given: bool = False,
    dialect: Any = None,
) -> SolverSpec:
    from caffe2tf.caffe.solver import build_solver_spec

    return build_solver_spec(
        read.message,
        read.parsed,
        read.locations,
        tuple(read.notes),
        lenient=lenient,
        net_path=read.net_path,
        defer_regularization=defer_regularization,
        net_given=net_given,
        dialect=(dialect or read.dialect).name,
    )


def _resolve_net_path(msg: Any, parsed: Parsed) -> tuple[str | None, list[Note]]:
    field = "net" if msg.HasField("net") else "train_net" if msg.HasField("train_net") else None
    if field is None:
        return None, []
    written = getattr(msg, field)
    where = parsed.location(field)
    if os.path.isfile(written):
        return written, [
            Note(
                "load.net_path",
                f"{field} {written!r} found relative to the working directory, "
                "where Caffe looks for it",
                Severity.INFO,
                where,
            )
        ]
    beside = os.path.join(os.path.dirname(os.path.abspath(parsed.path)), written)
    if not os.path.isabs(written) and os.path.isfile(beside):
        return beside, [
            Note(
                "load.net_path",
                f"{field} {written!r} is not in the working directory (where "
                f"Caffe looks); using the file next to the solver: {beside}",
                Severity.INFO,
                where,
            )
        ]
    tried = [os.path.abspath(written)]
    if not os.path.isabs(written) and os.path.abspath(beside) not in tried:
        tried.append(beside)
    return None, [
        Note(
            "load.net_missing",
            f"{field} {written!r} not found (tried {' and '.join(tried)}); the train "
            "net is unknown, so per-blob multipliers (lr_mult, decay_mult) and the "
            "param table are unknown. Pass --net to supply it.",
            Severity.WARNING,
            where,
            affects_training=True,
        )
    ]


def load_net(
    path: str | os.PathLike[str],
    *,
    lenient: bool = False,
    state: Any | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> NetSpec:
    """Parse a net file, upgrade it as Caffe does, and build its TRAIN-phase :class:`NetSpec`.

    ``state`` is the solver's ``train_state`` (merged over the net's own state by net.py);
    ``input_shapes``: ``--input-shape`` (see :func:`caffe2tf.caffe.net.build_net_spec`).
    """
    return _build_net(
        _read(path, "net", lenient), lenient=lenient, state=state, input_shapes=input_shapes
    )


def _build_net(
    read: tuple[Parsed, Any, tuple],
    *,
    lenient: bool,
    state: Any,
    dialect: Any = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> NetSpec:
    """``dialect``: the Caffe that runs the net (the recipe's), when not the file's own."""
    from caffe2tf.caffe.net import build_net_spec
    from caffe2tf.caffe.upgrade import upgrade_net

    parsed, own, dialect_notes = read
    dialect = dialect or own
    up = upgrade_net(parsed, dialect=dialect.name)
    return build_net_spec(
        up.message,
        path=parsed.path,
        layer_locations=up.layer_locations,
        notes=tuple(dialect_notes) + tuple(parsed.notes) + up.notes,
        legacy_format=up.legacy_format,
        state=state,
        lenient=lenient,
        dialect=dialect.name,
        input_shapes=input_shapes,
    )


def load_recipe(
    solver_path: str | os.PathLike[str],
    *,
    net_path: str | os.PathLike[str] | None = None,
    lenient: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Recipe:
    """A solver and its train net (or None with a warning note when the net file is missing).

    The train net is read before the solver's checks run: a recipe whose solver or net is
    NVIDIA Caffe's (:mod:`caffe2tf.caffe.dialect`) is checked and lowered as NVIDIA Caffe runs
    it, because NVIDIA's binary is the one that can read it."""
    from caffe2tf.caffe.dialect import BVLC, DIALECTS, NVIDIA

    read = _read_solver(solver_path, lenient)
    msg = read.message
    net_read = None
    if net_path is not None:
        net_read = _read(net_path, "net", lenient)
    elif _inline_field(msg) is None and read.net_path is not None:
        net_read = _read(read.net_path, "net", lenient)
    net_dialect = net_read[1] if net_read else BVLC
    forks = {d.name for d in (read.dialect, net_dialect)} - {BVLC.name}
    if len(forks) > 1:
        raise InputError(
            f"the solver is {read.dialect.title}'s and its train net {net_dialect.title}'s: "
            "no one Caffe reads both (docs/forks.md)",
            SourceLocation(read.parsed.path),
        )
    dialect = DIALECTS[forks.pop()] if forks else BVLC
    notes: list[Note] = []
    if dialect is not BVLC and read.dialect is BVLC:
        if dialect is not NVIDIA:  # the fork reads the solver with its own schema
            read = _read_solver(solver_path, lenient, dialect)
            msg = read.message
        notes.append(
            Note(
                f"dialect.{dialect.name}_net",
                f"the solver is read with BVLC's schema, but its train net is {dialect.title}'s: "
                f"the recipe is translated as {dialect.title} runs it"
                + (
                    ", with NVIDIA's defaults for the solver fields BVLC's schema lacks "
                    "(docs/nvidia-caffe.md)"
                    if dialect is NVIDIA
                    else ", the solver read with its schema (docs/forks.md)"
                ),
                Severity.INFO,
                SourceLocation(read.parsed.path),
            )
        )
    solver = _finish_solver(
        read,
        lenient=lenient,
        defer_regularization=True,
        net_given=net_path is not None,
        dialect=dialect,
    )
    from caffe2tf.caffe.net import build_net_spec

    parsed = read.parsed
    state = msg.train_state if msg.HasField("train_state") else None
    net: NetSpec | None = None
    if net_path is not None:
        assert net_read is not None
        np_ = os.fspath(net_path)
        net = _build_net(
            net_read, lenient=lenient, state=state, dialect=dialect, input_shapes=input_shapes
        )
        notes.append(
            Note(
                "load.net_override",
                f"train net taken from --net {np_} instead of the solver's "
                + (
                    "inline net"
                    if _inline_field(msg)
                    else (
                        f"{_file_field(msg)} {getattr(msg, _file_field(msg))!r}"
                        if _file_field(msg)
                        else "(absent) net"
                    )
                ),
                Severity.INFO,
                SourceLocation(np_),
            )
        )
        # the solver's own net reference no longer matters: drop what was said about it
        kept = tuple(n for n in solver.notes if n.code not in ("load.net_path", "load.net_missing"))
        solver = dataclasses.replace(solver, net_path=np_, notes=kept)
    elif _inline_field(msg):
        field = _inline_field(msg)
        assert field is not None
        inline = getattr(msg, field)
        # Caffe uses the inline net as written: no upgrade (solver.cpp:86-105).
        layer_locations = [parsed.location(f"{field}.layer[{i}]") for i in range(len(inline.layer))]
        net = build_net_spec(
            inline,
            path=solver.path,
            layer_locations=layer_locations,
            notes=(),
            legacy_format="V2",
            state=state,
            lenient=lenient,
            dialect=read.dialect.name,
            input_shapes=input_shapes,
        )
    elif net_read is not None:
        net = _build_net(
            net_read, lenient=lenient, state=state, dialect=dialect, input_shapes=input_shapes
        )
    notes.extend(_check_with_net(solver, net))
    return Recipe(solver=solver, net=net, notes=tuple(notes))


def _check_with_net(solver: SolverSpec, net: NetSpec | None) -> list[Note]:
    """The checks that need the solver and its train net together: Caffe's verdict on an
    unknown ``regularization_type`` (read only for a decayed blob), and non-finite multipliers
    (Caffe accepts ``lr_mult: nan`` and trains that blob with NaN; caffe2tf refuses it, as it
    refuses non-finite solver fields, see docs/nonfinite.md)."""
    import math

    from caffe2tf.caffe.solver import check_finite, check_regularization

    def loc(name: str) -> SourceLocation:
        return solver.locations.get(name) or SourceLocation(solver.path)

    decay_mults = [p.decay_mult for p in net.params] if net is not None else None
    note = None
    if solver.dialect != "nvidia":  # NVIDIA's GPU code never aborts on it (lower.py notes it)
        note = check_regularization(solver.message, decay_mults, loc("regularization_type"))
    check_finite(solver.message, loc, ("weight_decay",))  # deferred by _load_solver
    for blob in net.params if net is not None else ():
        for name in ("lr_mult", "decay_mult"):
            value = getattr(blob, name)
            if not math.isfinite(value):
                raise InputError(
                    f"param {blob.index} of layer {blob.layer!r} has {name} {value}: Caffe "
                    "would train this blob with NaN/inf numbers; caffe2tf refuses non-finite "
                    "multipliers (see docs/nonfinite.md)",
                    blob.location or SourceLocation(net.path),
                )
    return [note] if note is not None else []


def _inline_field(msg: Any) -> str | None:
    for f in ("train_net_param", "net_param"):
        if msg.HasField(f):
            return f
    return None


def _file_field(msg: Any) -> str | None:
    for f in ("train_net", "net"):
        if msg.HasField(f):
            return f
    return None


# ---------------------------------------------------------------------------------------------
# Which kind of file is it?

_SOLVER_ONLY: frozenset[str] | None = None
_NET_ONLY: frozenset[str] | None = None


def _sniff_text(text: str, path: str) -> str | None:
    """``"solver"``, ``"net"``, ``"unreadable"`` (the lexer rejected a token before any
    distinguishing top-level field) or None (no such field in the whole text)."""
    global _SOLVER_ONLY, _NET_ONLY
    from caffe2tf.caffe.parse import top_level_field_names

    if _SOLVER_ONLY is None or _NET_ONLY is None:
        pb = _pb()
        solver_names = {f.name for f in pb.SolverParameter.DESCRIPTOR.fields}
        net_names = {f.name for f in pb.NetParameter.DESCRIPTOR.fields}
        _SOLVER_ONLY = frozenset(solver_names - net_names)
        _NET_ONLY = frozenset(net_names - solver_names)
    try:
        for name in top_level_field_names(text, path):
            if name in _SOLVER_ONLY:
                return "solver"
            if name in _NET_ONLY:
                return "net"
    except InputError:
        return "unreadable"  # the real parse reports it with its position
    return None


def _wrong_kind(path: str, kind: str) -> InputError:
    if kind == "net":
        return InputError(
            f"this is a net prototxt, not a solver; give the solver (and --net {path})",
            SourceLocation(path),
        )
    return InputError(
        "this is a solver prototxt, not a net; give it as the solver", SourceLocation(path)
    )


def sniff_kind(path: str | os.PathLike[str]) -> str:
    """``"solver"`` or ``"net"``: the kind named by the first top-level field that only one of
    ``SolverParameter``/``NetParameter`` has (``lr_policy``, ``net``... vs ``layer``,
    ``input``...). Scanning stops there, so this is cheap on big nets. An empty file is an
    :class:`InputError`; so is one whose top level names no such field: the error the solver
    parser reports for it (with its position: the same one ``explain`` gives), else a
    "neither" error.
    """
    p = os.fspath(path)
    text = read_source(p)
    if _is_blank(text):
        raise InputError(
            "empty file: neither a solver (Caffe needs lr_policy and a train net) "
            "nor a net (no layers)",
            SourceLocation(p),
        )
    kind = _sniff_text(text, p)
    if kind in ("solver", "net"):
        return kind
    if kind == "unreadable":  # the parser's own error, as explain/convert would report it
        parse_text(text, _pb().SolverParameter(), path=p, lenient=False)
    raise InputError(
        "neither a solver nor a net: no top-level field of Caffe's "
        "SolverParameter or NetParameter was found",
        SourceLocation(p),
    )
