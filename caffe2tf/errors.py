"""One exception family. The CLI maps :class:`Caffe2TfError` to exit code 2 and prints
``file:line:col: message`` with no traceback; nothing is written when one is raised.

Messages and locations quote user text (layer names, paths). :func:`escape_controls` shows its
control characters as escapes, so that one error stays one line and a name cannot send
escape sequences to the terminal; errors and notes apply it to what they render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# C0 and C1 controls, DEL, Unicode line/paragraph separators, and the lone surrogates that
# stand for undecodable bytes (read with "surrogateescape"); one character class, linear time.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u2028``); other text, backslashes included, unchanged."""
    return _CONTROL_RE.sub(_escape, text)


@dataclass(frozen=True)
class SourceLocation:
    """A place in an input file. ``line``/``col`` are 1-based; either may be unknown."""

    path: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [escape_controls(self.path)]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class Caffe2TfError(Exception):
    """Base class: a problem the user can fix (bad input, untranslatable recipe, ...)."""

    def __init__(self, message: str, location: SourceLocation | None = None) -> None:
        message = escape_controls(message)  # one line, whatever names it quotes
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location is None:
            return self.message
        return f"{self.location}: {self.message}"


class InputError(Caffe2TfError):
    """The input is not something BVLC Caffe would accept (syntax, schema, Caffe's own checks)."""


class NotExactError(Caffe2TfError):
    """The recipe cannot be translated exactly and approximations were not allowed."""


class VerificationError(Caffe2TfError):
    """A candidate did not reproduce the reference within tolerance."""
