"""What every command returns: a report that renders itself and owns its exit code."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

#: exit codes of every command (``caffe2tf.cli`` maps errors and reports to them)
EXIT_OK = 0
EXIT_FAILED = 1  # verify/check: the candidate does not train like Caffe
EXIT_INVALID = 2  # invalid input, or a translation that would not be exact


@runtime_checkable
class Report(Protocol):
    """A command's result: ``render(fmt)`` gives the text (``"table"`` or ``"json"``)."""

    @property
    def exit_code(self) -> int: ...

    def render(self, fmt: str = "table") -> str: ...


class TextReport:
    """A report that is already text (``explain``, ``replay``): ``render`` returns it as is,
    in whatever format the command produced it; the exit code is 0 (errors are raised)."""

    def __init__(self, text: str, exit_code: int = EXIT_OK) -> None:
        self.text = text
        self.exit_code = exit_code

    def render(self, fmt: str = "table") -> str:
        return self.text
