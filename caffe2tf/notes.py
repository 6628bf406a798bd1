"""Notes: everything the tool wants to tell the user, collected instead of raised mid-pass.

A pass (parse, lower, plan) returns its result together with a tuple of :class:`Note`; the
report that the CLI prints owns the exit code (see ``cli.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from caffe2tf.errors import SourceLocation, escape_controls


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Exactness(str, Enum):
    """How a translation choice relates to Caffe's rule."""

    EXACT = "exact"
    APPROX = "approx"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Note:
    """One thing worth telling the user.

    ``code`` is a stable machine-readable id (e.g. ``"lenient.skipped_field"``);
    ``affects_training`` marks items that may change what training does (a skipped ``larc``
    field does, a skipped ``display`` field does not). Control characters in ``message`` (from
    the names it quotes) are stored as escapes: every report prints a note on one line.
    """

    code: str
    message: str
    severity: Severity = Severity.INFO
    location: SourceLocation | None = None
    affects_training: bool = False
    exactness: Exactness | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", escape_controls(self.message))

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        tag = f"[{self.exactness.value}] " if self.exactness else ""
        return f"{where}{self.severity.value}: {tag}{self.message}"

    @property
    def inexact(self) -> bool:
        """True when this note says the translation differs from Caffe: an approximate or
        unsupported choice, or an item a fork dialect's reader skipped although it can change
        training (``--lenient``). ``convert`` refuses such notes unless ``--allow-approx``, and
        then records each one in its outputs."""
        if self.exactness in (Exactness.APPROX, Exactness.UNSUPPORTED):
            return True
        return self.exactness is None and self.affects_training and self.code.startswith("lenient")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["exactness"] = self.exactness.value if self.exactness else None
        data["location"] = str(self.location) if self.location else None
        return data
