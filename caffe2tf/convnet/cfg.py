"""The INI dialect cuda-convnet reads its layer files with: Python 2's ``ConfigParser``.

cuda-convnet (``layer.py``, e.g. cuda-convnet2 ``layer.py:109-147``, ``:306-345``) reads both
files with ``SafeConfigParser(dict_type=OrderedDict)``. What that reader accepts, and so what
this one accepts (docs/cuda-convnet.md#file-format):

* ``[name]`` starts a section (the text up to the first ``]``); sections keep file order, and a
  section written twice continues the first one (Python 2 merges them);
* ``key = value`` or ``key: value`` inside a section; the key is matched case-insensitively
  (``optionxform`` lowercases it), surrounding spaces are dropped, a later line for the same
  key replaces the earlier value;
* a line that starts with whitespace continues the previous value (joined with a newline);
* blank lines and lines whose first character is ``#`` or ``;`` are comments, as is a line
  starting with ``rem``; the first ``;`` after a space in a value starts an inline comment;
* a ``[DEFAULT]`` section is refused (ConfigParser would copy it into every section).
* anything else (an option before the first section, a line with no ``=``/``:``) is an error.

Each value keeps where it was written, for ``file:line:col`` messages later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from caffe2tf.errors import InputError, SourceLocation

_SECTION = re.compile(r"\[(?P<name>[^]]+)\]")
_OPTION = re.compile(r"(?P<key>[^:=\s][^:=]*)\s*(?P<sep>[:=])\s*(?P<value>.*)$")


@dataclass(frozen=True)
class CfgValue:
    """One option's text as written (inline comment and outer spaces removed)."""

    text: str
    location: SourceLocation
    key_location: SourceLocation


@dataclass(frozen=True)
class CfgSection:
    """One ``[name]`` section; ``options`` keyed by the lowercased key, in file order."""

    name: str
    location: SourceLocation
    options: dict[str, CfgValue] = field(default_factory=dict)

    def get(self, key: str) -> CfgValue | None:
        return self.options.get(key.lower())


@dataclass(frozen=True)
class CfgFile:
    path: str
    sections: tuple[CfgSection, ...]

    def section(self, name: str) -> CfgSection | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None


def read_cfg(path: str | os.PathLike[str]) -> CfgFile:
    """Read one cuda-convnet ``.cfg`` file; every problem is an InputError at its place."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise InputError("is a directory, not a cuda-convnet .cfg file", SourceLocation(p))
    try:
        data = Path(p).read_bytes()
    except FileNotFoundError:
        raise InputError("no such file", SourceLocation(p)) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", SourceLocation(p)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"not UTF-8 text (byte 0x{data[err.start]:02x})", SourceLocation(p, line, col)
        ) from None
    return parse_cfg(text, p)


def parse_cfg(text: str, path: str = "<cfg>") -> CfgFile:
    """Parse the text of a cuda-convnet ``.cfg`` file (see the module docstring)."""
    sections: dict[str, CfgSection] = {}
    current: CfgSection | None = None
    last: tuple[str, CfgValue] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip() or line[0] in "#;" or line.split(None, 1)[0].lower() == "rem":
            continue
        if line[0].isspace() and current is not None and last is not None:
            key, value = last  # a continuation line (ConfigParser keeps the stripped text)
            joined = CfgValue(f"{value.text}\n{line.strip()}", value.location, value.key_location)
            current.options[key] = joined
            last = (key, joined)
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group("name")
            if name == "DEFAULT":
                raise InputError(
                    "a [DEFAULT] section (ConfigParser copies its options into every section) "
                    "is not supported here: write the options into each section",
                    SourceLocation(path, lineno, 1),
                )
            current = sections.get(name)
            if current is None:
                current = CfgSection(name, SourceLocation(path, lineno, 1))
                sections[name] = current
            last = None
            continue
        if current is None:
            raise InputError(
                "an option before the first [section] (cuda-convnet's ConfigParser refuses "
                "a file that does not start with a section header)",
                SourceLocation(path, lineno, 1),
            )
        m = _OPTION.match(line)
        if not m:
            col = len(line) - len(line.lstrip()) + 1
            raise InputError(
                f"expected 'key = value' or a [section], got {line.strip()[:60]!r}",
                SourceLocation(path, lineno, col),
            )
        value = m.group("value")
        cut = value.find(";")  # only the first ';', and only after a space (as Python 2)
        if cut > 0 and value[cut - 1].isspace():
            value = value[:cut]
        key = m.group("key").strip().lower()
        col = m.start("value") + 1
        cv = CfgValue(
            value.strip(),
            SourceLocation(path, lineno, col),
            SourceLocation(path, lineno, m.start("key") + 1),
        )
        current.options[key] = cv
        last = (key, cv)
    return CfgFile(path, tuple(sections.values()))


__all__ = ["CfgFile", "CfgSection", "CfgValue", "parse_cfg", "read_cfg"]
