"""One exception family. The CLI maps :class:`Caffe2TfError` to exit code 2 and prints
``file:line:col: message`` with no traceback; nothing is written when one is raised."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """A place in an input file. ``line``/``col`` are 1-based; either may be unknown."""

    path: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [self.path]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class Caffe2TfError(Exception):
    """Base class: a problem the user can fix (bad input, untranslatable recipe, ...)."""

    def __init__(self, message: str, location: SourceLocation | None = None) -> None:
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
