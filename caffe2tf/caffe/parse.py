"""A protobuf *text format* reader that remembers where every field was written.

Caffe reads prototxt with ``google::protobuf::TextFormat::Parse`` (``src/caffe/util/io.cpp:34-42``,
``ReadProtoFromTextFile``). Python's ``google.protobuf.text_format`` differs from that C++ parser
in details (it has no position map, and accepts/rejects slightly different input), so this module
reimplements the grammar over the message descriptors and records, for every field it sets, the
``SourceLocation`` of the field's name. Later passes cite ``file:line:col`` from that map.

What is accepted was checked against the C++ parser of protobuf 3.12 as linked into Debian
bullseye's Caffe 1.0 (``upgrade_solver_proto_text`` / ``upgrade_net_proto_text``):

* ``#`` comments; whitespace `` \\t\\n\\r\\v\\f``; other control characters and non-ASCII bytes
  outside strings and comments are errors.
* ``field: value`` for scalars (the colon is required), ``field { ... }``, ``field: { ... }``,
  ``field < ... >`` for messages; an optional ``;`` or ``,`` after any field.
* list syntax for repeated fields: ``stepvalue: [1, 2]`` (no trailing comma), ``[]`` allowed;
  ``layer [ {...}, <...> ]`` for repeated messages.
* strings in ``"`` or ``'``, adjacent literals concatenate, C escapes (``\\a \\b \\f \\n
  \\r \\t \\v \\\\ \\? \\' \\"``, octal ``\\NNN``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``); a
  literal may not cross a line.
* integers in decimal, hex ``0x..`` and octal ``0..`` (``08`` is an error), optional ``-`` for
  signed types, range-checked ("Integer out of range"); floats ``1e-4``, ``.5``, ``5.``, ``1.0f``,
  ``inf``/``infinity``/``nan`` in any case; an integer token is accepted for a float field only in
  decimal; ``1e40`` in a ``float`` field becomes ``inf`` as in C++.
* bools: ``true``/``True``/``t``/``false``/``False``/``f`` or an integer 0/1.
* enums by name or number; unknown values are errors.
* a non-repeated field given twice is an error ("Non-repeated field ... is specified multiple
  times"), as is a field name that is not in the message.
* nesting deeper than 100 messages is an error (protobuf's default recursion limit).

``lenient=True`` skips unknown fields (with their whole value or sub-message) and unknown enum
values, and reports each as a :class:`~caffe2tf.notes.Note` with its location, its field path and
whether it can change training.

Deliberate deviation: a string literal whose bytes are not UTF-8 is rejected (Caffe would keep the
raw bytes; Python's protobuf cannot hold them).
"""

from __future__ import annotations

import bisect
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "Parsed",
    "parse_file",
    "parse_text",
    "read_source",
]

#: protobuf's default ``TextFormat::Parser`` recursion limit (``text_format.cc``, 3.x).
MAX_DEPTH = 100
#: Far above any real prototxt (the largest public nets are a few hundred KiB).
MAX_FILE_BYTES = 64 * 1024 * 1024

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)

# Field kinds (descriptor types collapsed to what the parser needs).
_K_MSG, _K_INT, _K_FLOAT, _K_BOOL, _K_STR, _K_BYTES, _K_ENUM = range(7)


@dataclass(frozen=True)
class Parsed:
    """A parsed message with the location of every field set in it.

    ``locations`` maps a field path to the place its name (or, inside ``[...]`` lists, its value)
    was written. Paths look like ``base_lr``, ``stepvalue[1]``, ``layer[3].param[0].lr_mult``;
    the first occurrence of a repeated field is also recorded under its bare path (``layer[3]``
    and ``layer`` both exist).
    """

    message: Any
    path: str
    locations: Mapping[str, SourceLocation] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()

    def location(self, field_path: str) -> SourceLocation | None:
        """The location of ``field_path``, else of its closest recorded parent, else None."""
        probe = field_path
        while probe:
            loc = self.locations.get(probe)
            if loc is not None:
                return loc
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                break
            probe = probe[:cut]
        return None

    def file_location(self) -> SourceLocation:
        return SourceLocation(self.path)


class _Locations(Mapping[str, SourceLocation]):
    """Field path -> SourceLocation, converted from character offsets on access."""

    __slots__ = ("_offsets", "_lexer", "_cache")

    def __init__(self, offsets: dict[str, int], lexer: _Lexer) -> None:
        self._offsets = offsets
        self._lexer = lexer
        self._cache: dict[str, SourceLocation] = {}

    def __getitem__(self, key: str) -> SourceLocation:
        loc = self._cache.get(key)
        if loc is None:
            loc = self._cache[key] = self._lexer.loc(self._offsets[key])
        return loc

    def __iter__(self) -> Iterator[str]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets


# --------------------------------------------------------------------------------------------
# Reading the file


def read_source(path: str | os.PathLike[str]) -> str:
    """Read a prototxt as text. Every failure is an :class:`InputError` naming the file.

    The text is decoded as UTF-8 with ``surrogateescape`` so that stray bytes inside comments
    are tolerated (as the C++ tokenizer does) and reported with a position elsewhere.
    """
    p = os.fspath(path)
    where = SourceLocation(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError("no such file", where) from None
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror or err}", where) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, not a prototxt file", where)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            "not a regular file (a device, pipe or socket cannot be a prototxt)", where
        )
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(
            f"file is {st.st_size} bytes; refusing to read prototxt larger than "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MiB",
            where,
        )
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror or err}", where) from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(
            f"refusing to read prototxt larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB", where
        )
    return data.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Tokenizer

# One match per token: (whitespace and comments before it, then exactly one of) identifier,
# symbol, string, number, unterminated quote, end of text, any other character. Tokens never
# span a line, so the text is tokenized a block of whole lines at a time with ``findall``.
# Every part splits its input one way only (a comment runs to the end of its line: the
# lookahead), so a failed attempt cannot backtrack through the many ways of cutting a line of
# ``#`` into comments; and one of the alternatives always matches anyway.
_TOKEN_RE = re.compile(
    r"""
    ([ \t\n\r\v\f]*(?:\#[^\n]*(?![^\n])[ \t\n\r\v\f]*)*)
    (?:
      ([A-Za-z_][A-Za-z0-9_]*)
    | ([{}<>\[\]:;,\-])
    | ("[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"|'[^'\\\n]*(?:\\[^\n][^'\\\n]*)*')
    | ((?:[0-9][0-9A-Za-z_]*(?:\.[0-9A-Za-z_]*)?|\.[0-9][0-9A-Za-z_]*)
       (?:(?<=[eE])[-+][0-9A-Za-z_]*(?:\.[0-9A-Za-z_]*)?)?)
    | (["'])
    | \Z
    | (.)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_BLOCK = 1 << 16  # characters tokenized per findall call (then cut at the next newline)

_DEC_RE = re.compile(r"[0-9]+\Z")
_OCT_RE = re.compile(r"0[0-7]*\Z")
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]+\Z")
_FLOAT_RE = re.compile(
    r"(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
    r"|[0-9]+[eE][-+]?[0-9]+|[0-9]+(?=[fF]))[fF]?\Z"
)

# a number whose exponent has no digits ("1e", "2.5E+"); one way to split the digits only
# (``[0-9]+\.?[0-9]*`` was quadratic on a long run of digits followed by a letter)
_BARE_EXP_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?\Z")

# token kinds
_T_IDENT, _T_INT, _T_FLOAT, _T_STR, _T_SYM, _T_EOF = range(6)
_T_ERR = -1  # a tokenizer error, raised when the parser reaches it (first error wins)
_KIND_NAMES = {
    _T_IDENT: "identifier",
    _T_INT: "integer",
    _T_FLOAT: "float",
    _T_STR: "string",
    _T_SYM: "symbol",
    _T_EOF: "end of file",
}


class _Tok:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: int, text: str, pos: int) -> None:
        self.kind = kind
        self.text = text
        self.pos = pos


class _Lexer:
    """Streams tokens (no token list: memory stays linear in the file, time linear too)."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self._line_starts: list[int] | None = None
        self._buf: list[_Tok] = []
        self._i = 0
        self._block_start = 0
        self.tok = self._advance()

    # positions -------------------------------------------------------------------------
    def loc(self, pos: int) -> SourceLocation:
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        i = bisect.bisect_right(self._line_starts, pos) - 1
        return SourceLocation(self.path, i + 1, pos - self._line_starts[i] + 1)

    def error(self, message: str, pos: int | None = None) -> InputError:
        return InputError(message, self.loc(self.tok.pos if pos is None else pos))

    # tokens ----------------------------------------------------------------------------
    def _advance(self) -> _Tok:
        i = self._i
        buf = self._buf
        if i >= len(buf):
            buf = self._fill()
            i = 0
        tok = buf[i]
        self._i = i + 1
        if tok.kind == _T_ERR:
            self._i = i  # stay on the error
            raise InputError(tok.text, self.loc(tok.pos))
        return tok

    def _fill(self) -> list[_Tok]:
        """Tokenize the next block(s) of whole lines into ``self._buf``."""
        text = self.text
        n = len(text)
        out: list[_Tok] = []
        append = out.append
        while not out:
            start = self._block_start
            if start >= n:
                append(_Tok(_T_EOF, "", n))
                break
            end = start + _BLOCK
            if end >= n:
                end = n
            else:
                newline = text.find("\n", end)
                end = n if newline == -1 else newline + 1
            self._block_start = end
            pos = start
            for ws, ident, sym, string, num, quote, other in _TOKEN_RE.findall(text, start, end):
                pos += len(ws)
                if ident:
                    append(_Tok(_T_IDENT, ident, pos))
                    pos += len(ident)
                elif sym:
                    append(_Tok(_T_SYM, sym, pos))
                    pos += 1
                elif string:
                    append(_Tok(_T_STR, string, pos))
                    pos += len(string)
                elif num:
                    append(self._number(num, pos))
                    pos += len(num)
                elif quote:
                    append(
                        _Tok(
                            _T_ERR,
                            "unexpected end of file inside a string literal"
                            if text.find("\n", pos) == -1
                            else "unterminated string literal (string literals cannot cross "
                            "line boundaries)",
                            pos,
                        )
                    )
                    self._block_start = n
                    break
                elif other:
                    append(_Tok(_T_ERR, _bad_char(other), pos))
                    self._block_start = n
                    break
                # else: only trailing whitespace/comments at the end of the block
        self._buf = out
        self._i = 0
        return out

    def _number(self, text: str, pos: int) -> _Tok:
        if text[:2] in ("0x", "0X"):
            if _HEX_RE.match(text):
                return _Tok(_T_INT, text, pos)
            if len(text) == 2:
                return _Tok(_T_ERR, '"0x" must be followed by hex digits', pos)
            return _Tok(_T_ERR, f"malformed hex number {_clip(text)!r}", pos)
        if _DEC_RE.match(text):
            if len(text) > 1 and text[0] == "0" and not _OCT_RE.match(text):
                return _Tok(_T_ERR, "numbers starting with a leading zero must be in octal", pos)
            return _Tok(_T_INT, text, pos)
        if _FLOAT_RE.match(text):
            if len(text) > 1 and text[0] == "0" and text[1].isdigit():
                return _Tok(_T_ERR, "hex and octal numbers must be integers", pos)
            return _Tok(_T_FLOAT, text, pos)
        if _BARE_EXP_RE.match(text):
            return _Tok(_T_ERR, '"e" must be followed by an exponent', pos)
        exp = text.lower().find("e")
        if text.count(".") > 1 or (exp != -1 and "." in text[exp:]):
            return _Tok(
                _T_ERR, "already saw a decimal point or exponent; can't have another one", pos
            )
        return _Tok(_T_ERR, f"need space between number and identifier in {_clip(text)!r}", pos)

    def next(self) -> _Tok:
        tok = self.tok
        self.tok = self._advance()
        return tok

    def at(self, sym: str) -> bool:
        return self.tok.kind == _T_SYM and self.tok.text == sym

    def try_consume(self, sym: str) -> bool:
        if self.tok.kind == _T_SYM and self.tok.text == sym:
            self.tok = self._advance()
            return True
        return False

    def expect(self, sym: str) -> _Tok:
        if not self.at(sym):
            raise self.error(f'expected "{sym}", found {_describe(self.tok)}')
        return self.next()


def _clip(text: str, limit: int = 40) -> str:
    """Shorten user text quoted in a message (a token can be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return (
            f"invalid byte 0x{code - 0xDC00:02x}: the file is not UTF-8 text (is it a binary file?)"
        )
    if code < 0x20 or code == 0x7F:
        return f"invalid control character {code:#04x} in text (is it a binary file?)"
    if code > 0x7F:
        return f"unexpected non-ASCII character {ch!r} outside a string or comment"
    return f"unexpected character {ch!r}"


def _describe(tok: _Tok) -> str:
    if tok.kind == _T_EOF:
        return "end of file"
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return f'"{text}"' if tok.kind != _T_STR else text


# --------------------------------------------------------------------------------------------
# Strings

_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "?": b"?",
    "'": b"'",
    '"': b'"',
}
_ESC_RE = re.compile(
    r"\\(?:([abfnrtv\\?'\"])|([0-7]{1,3})|x([0-9a-fA-F]{1,2})|"
    r"u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(x)|(.))",
    re.DOTALL,
)


def _unescape(lex: _Lexer, tok: _Tok) -> bytes:
    body = tok.text[1:-1]
    if "\\" not in body:
        return body.encode("utf-8", "surrogateescape")
    out = bytearray()
    last = 0
    for m in _ESC_RE.finditer(body):
        out += body[last : m.start()].encode("utf-8", "surrogateescape")
        last = m.end()
        simple, octal, hx, u4, u8, badx, bad = m.groups()
        if simple is not None:
            out += _SIMPLE_ESCAPES[simple]
        elif octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hx is not None:
            out.append(int(hx, 16))
        elif u4 is not None or u8 is not None:
            code = int(u4 or u8, 16)
            try:
                out += chr(code).encode("utf-8")
            except (ValueError, UnicodeEncodeError):
                raise lex.error(
                    "invalid unicode escape in string literal", tok.pos + 1 + m.start()
                ) from None
        elif badx is not None:
            raise lex.error("expected hex digits for escape sequence", tok.pos + 1 + m.start())
        else:
            raise lex.error(
                f"invalid escape sequence \\{bad} in string literal", tok.pos + 1 + m.start()
            )
    out += body[last:].encode("utf-8", "surrogateescape")
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Descriptor tables (cached per message descriptor)

_FIELD_CACHE: dict[Any, dict[str, tuple[Any, int, bool, tuple[int, int] | None]]] = {}


def _fields(desc: Any) -> dict[str, tuple[Any, int, bool, tuple[int, int] | None]]:
    table = _FIELD_CACHE.get(desc)
    if table is not None:
        return table
    from google.protobuf.descriptor import FieldDescriptor as FD

    table = {}
    for f in desc.fields:
        t = f.type
        rng = None
        if t in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            kind = _K_MSG
        elif t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            kind = _K_FLOAT
        elif t == FD.TYPE_BOOL:
            kind = _K_BOOL
        elif t == FD.TYPE_STRING:
            kind = _K_STR
        elif t == FD.TYPE_BYTES:
            kind = _K_BYTES
        elif t == FD.TYPE_ENUM:
            kind = _K_ENUM
        else:
            kind = _K_INT
            if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
                rng = _INT32
            elif t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
                rng = _INT64
            elif t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
                rng = _UINT32
            else:
                rng = _UINT64
        repeated = f.is_repeated
        table[f.name] = (f, kind, repeated, rng)
        if t == FD.TYPE_GROUP:  # group fields are written with the type's name
            table[f.message_type.name] = table[f.name]
    _FIELD_CACHE[desc] = table
    return table


# --------------------------------------------------------------------------------------------
# Relevance of skipped items (lenient mode)

_DATA_MESSAGES = frozenset(
    {
        "caffe.DataParameter",
        "caffe.ImageDataParameter",
        "caffe.WindowDataParameter",
        "caffe.HDF5DataParameter",
        "caffe.HDF5OutputParameter",
        "caffe.MemoryDataParameter",
        "caffe.TransformationParameter",
        "caffe.DummyDataParameter",
        "caffe.InputParameter",
        "caffe.AccuracyParameter",
        "caffe.PythonParameter",
    }
)
_DISPLAYISH = re.compile(
    r"^(display|test_|snapshot|debug|log|eval|show_|ap_version|device|"
    r"solver_mode|print|verbose|plot|visual|save|output)",
    re.IGNORECASE,
)


def _schema(full_name: str) -> tuple[str, str]:
    """``("BVLC" | "NVIDIA's" | ..., "caffe.<Message>")`` for a message of any compiled schema
    (each fork's is compiled under its own package, caffe2tf/caffe/dialect.py)."""
    package, _, name = full_name.partition(".")
    return _SCHEMA_OWNERS.get(package, "BVLC"), f"caffe.{name}"


#: the package each fork's caffe.proto is compiled under -> whose schema it is
_SCHEMA_OWNERS = {"nvcaffe": "NVIDIA's", "yolocaffe": "the yolo fork's", "tsncaffe": "TSN's fork's"}


def _affects_training(parent: str, name: str, path: str) -> tuple[bool, str]:
    """Whether skipping field ``name`` of message ``parent`` may change training."""
    parent = _schema(parent)[1]
    if parent == "caffe.ParamSpec":
        return True, "it sits in a param {} block (per-blob learning settings)"
    if parent == "caffe.SolverParameter":
        if _DISPLAYISH.match(name):
            return False, "a solver field for display, testing or snapshots"
        return True, "an unknown solver field can change the update rule or schedule"
    if parent in ("caffe.LayerParameter", "caffe.V1LayerParameter"):
        low = name.lower()
        if "data" in low or "transform" in low or _DISPLAYISH.match(name):
            return False, "a data-loading/display field of a layer"
        return True, "an unknown layer field can change what the layer computes or learns"
    if parent in _DATA_MESSAGES:
        return False, "a data-loading field"
    if parent in ("caffe.NetParameter", "caffe.NetState", "caffe.NetStateRule"):
        return False, "a net-level field"
    if ".layer[" in path or ".layers[" in path or path.startswith(("layer[", "layers[")):
        return True, "an unknown field in a layer parameter can change what the layer computes"
    return False, "not read by the update rule"


# --------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str, path: str, lenient: bool) -> None:
        self.lex = _Lexer(text, path)
        self.path = path
        self.lenient = lenient
        self.locations: dict[str, int] = {}  # field path -> character offset
        self.notes: list[Note] = []

    # message body ------------------------------------------------------------------------
    def parse_body(self, msg: Any, prefix: str, close: str | None, depth: int) -> None:
        lex = self.lex
        desc = msg.DESCRIPTOR
        table = _fields(desc)
        seen: set[str] = set()
        counts: dict[str, int] = {}
        while True:
            tok = lex.tok
            if close is not None and tok.kind == _T_SYM and tok.text == close:
                lex.next()
                return
            if tok.kind == _T_EOF:
                if close is None:
                    return
                raise lex.error(
                    f'unexpected end of file: expected "{close}" or a field name '
                    f"(unclosed {prefix or 'message'})"
                )
            if tok.kind != _T_IDENT:
                if tok.kind == _T_SYM and tok.text == "[":
                    raise lex.error(
                        f"extension and Any fields ([...]) are not part of Caffe's {desc.full_name}"
                    )
                raise lex.error(f"expected a field name, found {_describe(tok)}")
            name = tok.text
            entry = table.get(name)
            if entry is None:
                self._unknown_field(desc, name, prefix, depth)
                t = lex.tok
                if t.kind == _T_SYM and (t.text == ";" or t.text == ","):
                    lex.tok = lex._advance()
                continue
            lex.next()
            fd, kind, repeated, rng = entry
            fname = fd.name
            if repeated:
                idx = counts.get(fname, 0)
            else:
                if fname in seen:
                    raise InputError(
                        f'non-repeated field "{fname}" is specified multiple times',
                        lex.loc(tok.pos),
                    )
                seen.add(fname)
                idx = -1
            base = f"{prefix}.{fname}" if prefix else fname
            name_loc = tok.pos
            if kind == _K_MSG:
                had_colon = lex.try_consume(":")
                if repeated and lex.at("["):
                    idx = self._message_list(msg, fd, base, idx, depth, name_loc)
                else:
                    if not (lex.at("{") or lex.at("<")):
                        what = f'expected "{{" after "{fname}{":" if had_colon else ""}", found'
                        raise lex.error(f"{what} {_describe(lex.tok)}")
                    if repeated:
                        sub = getattr(msg, fname).add()
                        key = f"{base}[{idx}]"
                        self.locations.setdefault(base, name_loc)
                        self.locations[key] = name_loc
                        idx += 1
                    else:
                        sub = getattr(msg, fname)
                        sub.SetInParent()
                        key = base
                        self.locations[key] = name_loc
                    self._sub_message(sub, key, depth)
            else:
                if not lex.try_consume(":"):
                    raise lex.error(
                        f'expected ":" after field name "{fname}", found {_describe(lex.tok)}'
                    )
                if not repeated and lex.at("[") and self.lenient:
                    # A fork that declares this field repeated (TSN's ``device_id: [0, 1]``).
                    self._skip_block(depth)
                    seen.discard(fname)
                    affects, why = _affects_training(desc.full_name, fname, base)
                    self.notes.append(
                        Note(
                            code="lenient.skipped_field",
                            message=f"skipped {base}: a list of values for a field that BVLC Caffe "
                            f"declares non-repeated (a fork's dialect); {why}",
                            severity=Severity.WARNING,
                            location=lex.loc(name_loc),
                            affects_training=affects,
                        )
                    )
                elif repeated and lex.at("["):
                    lex.next()
                    target = getattr(msg, fname)
                    if not lex.try_consume("]"):
                        while True:
                            vpos = lex.tok.pos
                            ok, value = self._value(fd, kind, rng, base)
                            if ok:
                                target.append(value)
                                self.locations.setdefault(base, vpos)
                                self.locations[f"{base}[{idx}]"] = vpos
                                idx += 1
                            if lex.try_consume("]"):
                                break
                            lex.expect(",")
                else:
                    ok, value = self._value(fd, kind, rng, base)
                    if ok:
                        if repeated:
                            getattr(msg, fname).append(value)
                            self.locations.setdefault(base, name_loc)
                            self.locations[f"{base}[{idx}]"] = name_loc
                            idx += 1
                        else:
                            try:
                                setattr(msg, fname, value)
                            except (ValueError, TypeError) as err:  # pragma: no cover - guard
                                raise InputError(
                                    f'invalid value for field "{fname}": {err}', lex.loc(name_loc)
                                ) from None
                            self.locations[base] = name_loc
                    elif not repeated:
                        seen.discard(fname)
            if repeated:
                counts[fname] = idx
            t = lex.tok
            if t.kind == _T_SYM and (t.text == ";" or t.text == ","):
                lex.tok = lex._advance()

    def _sub_message(self, sub: Any, key: str, depth: int) -> None:
        lex = self.lex
        if depth + 1 > MAX_DEPTH:
            raise lex.error(f"message is nested too deeply (more than {MAX_DEPTH} levels)")
        close = "}" if lex.next().text == "{" else ">"
        self.parse_body(sub, key, close, depth + 1)

    def _message_list(
        self, msg: Any, fd: Any, base: str, idx: int, depth: int, name_loc: int
    ) -> int:
        lex = self.lex
        lex.next()  # [
        if lex.try_consume("]"):
            return idx
        target = getattr(msg, fd.name)
        while True:
            if not (lex.at("{") or lex.at("<")):
                raise lex.error(
                    f'expected "{{" in the list of "{fd.name}", found {_describe(lex.tok)}'
                )
            sub = target.add()
            key = f"{base}[{idx}]"
            self.locations.setdefault(base, name_loc)
            self.locations[key] = lex.tok.pos
            idx += 1
            self._sub_message(sub, key, depth)
            if lex.try_consume("]"):
                return idx
            lex.expect(",")

    # scalar values -----------------------------------------------------------------------
    def _value(
        self, fd: Any, kind: int, rng: tuple[int, int] | None, path: str
    ) -> tuple[bool, Any]:
        lex = self.lex
        tok = lex.tok
        if kind == _K_INT:
            neg = False
            if lex.at("-"):
                if rng is not None and rng[0] == 0:
                    raise lex.error(f'expected a non-negative integer for "{fd.name}", found "-"')
                lex.next()
                neg = True
                tok = lex.tok
            if tok.kind != _T_INT:
                raise lex.error(f'expected an integer for "{fd.name}", found {_describe(tok)}')
            value = _int_value(tok.text)
            if neg:
                value = -value
            assert rng is not None
            if not rng[0] <= value <= rng[1]:
                raise lex.error(
                    f'integer out of range for "{fd.name}" ({"-" if neg else ""}{_clip(tok.text)})',
                    tok.pos,
                )
            lex.next()
            return True, value
        if kind == _K_FLOAT:
            neg = False
            if lex.at("-"):
                lex.next()
                neg = True
                tok = lex.tok
            if tok.kind == _T_FLOAT:
                text = tok.text.rstrip("fF")
                value = float(text)
            elif tok.kind == _T_INT:
                if len(tok.text) > 1 and tok.text[0] == "0":
                    raise lex.error(
                        f'expected a decimal number for "{fd.name}", found {_describe(tok)}'
                    )
                value = float(tok.text)
            elif tok.kind == _T_IDENT and tok.text.lower() in ("inf", "infinity", "nan"):
                value = float("nan") if tok.text.lower() == "nan" else float("inf")
            else:
                raise lex.error(f'expected a number for "{fd.name}", found {_describe(tok)}')
            lex.next()
            if fd.type == fd.TYPE_FLOAT:
                value = _to_float32(value)
            return True, (-value if neg else value)
        if kind == _K_BOOL:
            if tok.kind == _T_INT:
                value = _int_value(tok.text)
                if value not in (0, 1):
                    raise lex.error(
                        f'integer out of range for boolean field "{fd.name}" ({_clip(tok.text)})'
                    )
                lex.next()
                return True, bool(value)
            if tok.kind == _T_IDENT:
                if tok.text in ("true", "True", "t"):
                    lex.next()
                    return True, True
                if tok.text in ("false", "False", "f"):
                    lex.next()
                    return True, False
                raise lex.error(
                    f'invalid value for boolean field "{fd.name}": "{_clip(tok.text)}" '
                    "(use true or false)"
                )
            raise lex.error(f'expected true or false for "{fd.name}", found {_describe(tok)}')
        if kind == _K_STR or kind == _K_BYTES:
            if tok.kind != _T_STR:
                raise lex.error(f'expected a quoted string for "{fd.name}", found {_describe(tok)}')
            parts = []
            while lex.tok.kind == _T_STR:
                parts.append(_unescape(lex, lex.tok))
                lex.next()
            raw = b"".join(parts)
            if kind == _K_BYTES:
                return True, raw
            try:
                return True, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f'string value of "{fd.name}" is not valid UTF-8 (caffe2tf '
                    "cannot represent it)",
                    lex.loc(tok.pos),
                ) from None
        # enum
        enum = fd.enum_type
        value_desc = None
        shown = tok.text
        if tok.kind == _T_IDENT:
            value_desc = enum.values_by_name.get(tok.text)
            lex.next()
        elif tok.kind == _T_INT or lex.at("-"):
            neg = lex.try_consume("-")
            tok2 = lex.tok
            if tok2.kind != _T_INT:
                raise lex.error(f'expected an enum value for "{fd.name}", found {_describe(tok2)}')
            number = _int_value(tok2.text) * (-1 if neg else 1)
            shown = f"{'-' if neg else ''}{tok2.text}"
            value_desc = enum.values_by_number.get(number)
            lex.next()
        else:
            raise lex.error(f'expected an enum value for "{fd.name}", found {_describe(tok)}')
        if value_desc is None:
            allowed = ", ".join(v.name for v in enum.values)
            message = (
                f'unknown enumeration value "{_clip(shown)}" for field "{fd.name}" '
                f"(allowed: {allowed})"
            )
            if not self.lenient:
                raise InputError(message, lex.loc(tok.pos))
            parent = fd.containing_type.full_name
            affects, why = _affects_training(parent, fd.name, path)
            self.notes.append(
                Note(
                    code="lenient.skipped_enum_value",
                    message=f"skipped {path}: {message}; {why}",
                    severity=Severity.WARNING,
                    location=lex.loc(tok.pos),
                    affects_training=affects,
                )
            )
            return False, None
        return True, value_desc.number

    # lenient skipping --------------------------------------------------------------------
    def _unknown_field(self, desc: Any, name: str, prefix: str, depth: int) -> None:
        lex = self.lex
        tok = lex.tok
        loc = lex.loc(tok.pos)
        path = f"{prefix}.{_clip(name)}" if prefix else _clip(name)
        if not self.lenient:
            raise InputError(
                f'message type "{_schema(desc.full_name)[1]}" has no field named "{_clip(name)}"'
                " (use --lenient to skip fields of Caffe forks)",
                loc,
            )
        lex.next()
        had_colon = lex.try_consume(":")
        if lex.at("{") or lex.at("<"):
            what = "message"
            self._skip_block(depth)
        elif lex.at("["):
            what = "list"
            self._skip_block(depth)
        elif had_colon:
            what = "field"
            self._skip_scalar()
        else:
            raise lex.error(
                f'expected ":" or "{{" after unknown field "{_clip(name)}", found '
                f"{_describe(lex.tok)}"
            )
        affects, why = _affects_training(desc.full_name, name, path)
        schema = " ".join(_schema(desc.full_name))
        self.notes.append(
            Note(
                code="lenient.skipped_field",
                message=f"skipped unknown {what} {path} (not in {schema}); {why}",
                severity=Severity.WARNING,
                location=loc,
                affects_training=affects,
            )
        )

    def _skip_scalar(self) -> None:
        lex = self.lex
        if lex.at("-"):
            lex.next()
        tok = lex.tok
        if tok.kind == _T_STR:
            while lex.tok.kind == _T_STR:
                _unescape(lex, lex.tok)
                lex.next()
            return
        if tok.kind in (_T_IDENT, _T_INT, _T_FLOAT):
            lex.next()
            return
        raise lex.error(f"expected a value, found {_describe(tok)}")

    def _skip_block(self, depth: int) -> None:
        """Skip a balanced ``{...}``, ``<...>`` or ``[...]`` without recursion."""
        lex = self.lex
        pairs = {"{": "}", "<": ">", "[": "]"}
        stack = [pairs[lex.next().text]]
        if depth + len(stack) > MAX_DEPTH:
            raise lex.error(f"message is nested too deeply (more than {MAX_DEPTH} levels)")
        while stack:
            tok = lex.tok
            if tok.kind == _T_EOF:
                raise lex.error(f'unexpected end of file: expected "{stack[-1]}"')
            if tok.kind == _T_STR:
                _unescape(lex, tok)
            elif tok.kind == _T_SYM:
                if tok.text in pairs:
                    stack.append(pairs[tok.text])
                    if depth + len(stack) > MAX_DEPTH:
                        raise lex.error(
                            f"message is nested too deeply (more than {MAX_DEPTH} levels)"
                        )
                elif tok.text in ("}", ">", "]"):
                    if tok.text != stack[-1]:
                        raise lex.error(f'expected "{stack[-1]}", found "{tok.text}"')
                    stack.pop()
            lex.next()


def _int_value(text: str) -> int:
    """The value of an integer token; anything longer than 64 bits maps to 2**80 (out of every
    range), so Python's limit on int() of very long digit strings is never reached."""
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:].lstrip("0"), 16
    elif len(text) > 1 and text[0] == "0":
        digits, base = text[1:].lstrip("0"), 8
    else:
        digits, base = text.lstrip("0"), 10
    if len(digits) > 24:
        return 1 << 80
    return int(digits, base) if digits else 0


def _to_float32(value: float) -> float:
    """Round like ``static_cast<float>(double)``: overflow gives +-inf, as the C++ parser does."""
    import struct

    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def parse_text(text: str, message: Any, *, path: str = "<string>", lenient: bool = False) -> Parsed:
    """Parse ``text`` into ``message`` (a fresh protobuf message instance, filled in place).

    Raises :class:`InputError` with ``path:line:col`` on anything the C++ parser rejects (in
    strict mode) or that cannot be read at all.
    """
    parser = _Parser(text, path, lenient)
    parser.parse_body(message, "", None, 0)
    return Parsed(
        message=message,
        path=path,
        locations=_Locations(parser.locations, parser.lex),
        notes=tuple(parser.notes),
    )


def parse_file(path: str | os.PathLike[str], message: Any, *, lenient: bool = False) -> Parsed:
    """Read and parse a prototxt file into ``message``."""
    p = os.fspath(path)
    return parse_text(read_source(p), message, path=p, lenient=lenient)


def top_level_field_names(text: str, path: str) -> Iterator[str]:
    """The names of the top-level fields of a prototxt, in order, read by the lexer alone (no
    schema): cheap on big files when the caller stops early. Raises :class:`InputError` where
    the lexer rejects a token."""
    depth = 0
    lex = _Lexer(text, path)
    while lex.tok.kind != _T_EOF:
        tok = lex.next()
        if tok.kind == _T_SYM:
            if tok.text in "{<[":
                depth += 1
            elif tok.text in "}>]":
                depth -= 1
        elif (
            tok.kind == _T_IDENT and depth == 0 and lex.tok.kind == _T_SYM and lex.tok.text in ":{<"
        ):
            yield tok.text
