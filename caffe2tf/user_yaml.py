"""YAML that a user wrote or may have edited (``--layer-map``, ``OUT/train_config.yaml``), read
so that no input costs more than its size and every problem is one short, positioned error.

* Anchors and aliases: YAML lets ``*a`` stand for a whole earlier value, so a few hundred bytes
  can describe a document of billions of nodes ("billion laughs"). Where a format has no use
  for them (the layer map) they are refused at their position; elsewhere the document they
  describe may hold at most :data:`MAX_NODES` nodes once expanded, and may not contain itself.
* Messages quote at most :data:`QUOTE_CHARS` characters of any value (:func:`quote`).
* A parse error is reported at its line and column with the parser's short description of the
  problem, never the offending text itself; nesting deep enough to exhaust Python's recursion
  is an error at the file.
* Flow collections (``[`` ``{``) nested more than :data:`MAX_FLOW_DEPTH` deep are refused
  before parsing: PyYAML's scanner (and libyaml's) takes time quadratic in that depth (20,000
  brackets: about a minute).

Only PyYAML's safe loader is used (no Python objects are ever built from tags).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from caffe2tf.errors import InputError, SourceLocation

__all__ = ["MAX_FLOW_DEPTH", "MAX_NODES", "QUOTE_CHARS", "compose", "load", "location", "quote"]

#: the most nodes a document may expand to through its aliases (a train_config has ~200)
MAX_NODES = 100_000
#: the most characters of a value a message quotes
QUOTE_CHARS = 60
#: the deepest nesting of ``[``/``{`` accepted (counted without regard to quotes)
MAX_FLOW_DEPTH = 100
_FLOW_RE = re.compile(r"[\[\]{}]")


def _check_flow_depth(text: str, path: str, what: str) -> None:
    depth = 0
    for match in _FLOW_RE.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                pos = match.start()
                raise InputError(
                    f"{what} is nested too deeply (more than {MAX_FLOW_DEPTH} levels of [ ] "
                    "or { })",
                    SourceLocation(
                        path, text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
                    ),
                )
        elif depth:
            depth -= 1


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (a string is cut before it is quoted, so a
    long one costs nothing); containers are described, not printed."""
    if isinstance(value, str):
        text = repr(value[:limit])
        return text if len(value) <= limit else text[:-1] + "..." + text[-1]
    if isinstance(value, dict):
        return f"a mapping of {len(value)} entries"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def location(path: str, mark: Any) -> SourceLocation:
    """The 1-based place of a PyYAML mark (or the file when there is none)."""
    if mark is None:
        return SourceLocation(path)
    return SourceLocation(path, mark.line + 1, mark.column + 1)


def _parse_error(err: yaml.YAMLError, path: str, what: str) -> InputError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or "unreadable"
    problem = str(problem)
    if len(problem) > 2 * QUOTE_CHARS:
        problem = problem[: 2 * QUOTE_CHARS] + "..."
    return InputError(f"{what} is not valid YAML: {problem}", location(path, mark))


def compose(text: str, path: str, what: str, *, aliases: bool) -> yaml.Node | None:
    """The node tree of the single document in ``text`` (None when it is empty).

    ``aliases=False``: an anchor or alias anywhere is an :class:`InputError` at its position.
    ``aliases=True``: allowed while the expanded document stays within :data:`MAX_NODES`
    nodes and contains no cycle."""
    _check_flow_depth(text, path, what)
    try:
        if not aliases:
            for event in yaml.parse(text, Loader=yaml.SafeLoader):
                anchor = getattr(event, "anchor", None)
                if anchor is not None:
                    kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
                    raise InputError(
                        f"{what}: YAML anchors and aliases are not accepted here (found "
                        f"{kind} {quote(anchor, 20)}); write each value out",
                        location(path, event.start_mark),
                    )
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _parse_error(err, path, what) from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply to read", SourceLocation(path)) from None
    if root is not None and aliases:
        _check_expanded_size(root, path, what)
    return root


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded_size(root: yaml.Node, path: str, what: str) -> None:
    """Size of the tree the node graph stands for (each alias counted at full size), computed
    once per node without recursion; a node that contains itself is refused."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_NODES:
                raise InputError(
                    f"{what}: its YAML aliases expand to more than {MAX_NODES} nodes",
                    location(path, node.start_mark),
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise InputError(
                f"{what}: a YAML alias makes a value contain itself",
                location(path, node.start_mark),
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def load(text: str, path: str, what: str) -> Any:
    """The Python value of ``text`` (safe loader), aliases bounded as in :func:`compose`."""
    if compose(text, path, what, aliases=True) is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:  # a tag the safe loader cannot build
        raise _parse_error(err, path, what) from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply to read", SourceLocation(path)) from None
