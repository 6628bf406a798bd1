"""``caffe2tf check`` for a whole migration: many SOLVER/OUT pairs or a manifest, in parallel,
with a summary table, JUnit XML and GitHub workflow annotations.

The manifest (``caffe2tf-check.yaml``) is a mapping with ``entries``, a list of mappings::

    entries:
      - solver: models/lenet/solver.prototxt   # required, relative to the manifest's folder
        out: keras/lenet                       # required: the folder convert wrote
        net: models/lenet/train.prototxt       # optional, like --net
        layer_map: models/lenet/layers.yaml    # optional, like --layer-map
        target: keras                          # optional (keras | torch | optax)
        steps: 100                             # optional, like --steps
        tolerance: 0.001                       # optional, like --tolerance
        seed: 0                                # optional, like --seed

Each entry is one :func:`caffe2tf.app.check.check_migration`. With ``jobs`` > 1 the entries run
in that many worker processes (each imports the backend once). The exit code is 2 when an entry
is invalid input, else 1 when any entry drifted or no longer trains like Caffe, else 0.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from caffe2tf import user_yaml
from caffe2tf.app.report import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation, escape_controls

ENTRY_KEYS = {
    "solver": str,
    "out": str,
    "net": str,
    "layer_map": str,
    "target": str,
    "steps": int,
    "tolerance": float,
    "seed": int,
}
TARGETS = ("keras", "torch", "optax")


@dataclass(frozen=True)
class Entry:
    """One SOLVER/OUT pair and its options (paths as given, resolved by the reader)."""

    solver: str
    out: str
    net: str | None = None
    layer_map: str | None = None
    target: str = "keras"
    steps: int = 100
    tolerance: float = 1e-3
    seed: int = 0
    where: str = ""  # manifest file:line, for messages

    @property
    def name(self) -> str:
        return self.out


@dataclass(frozen=True)
class EntryResult:
    """What one entry gave: its exit code, the components that failed, and the report text
    (or the one-line error for invalid input)."""

    entry: Entry
    exit_code: int
    failed: tuple[str, ...] = ()
    text: str = ""
    seconds: float = 0.0
    verdicts: tuple[tuple[str, bool, str], ...] = field(default=())  # (name, passed, detail)


def load_manifest(path: str | os.PathLike[str]) -> list[Entry]:
    """The entries of a manifest, paths made relative to the manifest's folder; every problem
    is one InputError at its line."""
    p = os.fspath(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the manifest: {err}", SourceLocation(p)) from None
    node = user_yaml.compose(text, p, "manifest", aliases=False)
    data = user_yaml.load(text, p, "manifest")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise InputError("a manifest is a mapping with a list 'entries'", SourceLocation(p, 1))
    base = Path(p).parent
    nodes = _entry_nodes(node, p)
    entries = []
    for i, raw in enumerate(data["entries"]):
        at = nodes[i] if i < len(nodes) else SourceLocation(p)
        if not isinstance(raw, dict):
            raise InputError("each entry is a mapping with solver and out", at)
        unknown = sorted(set(map(str, raw)) - set(ENTRY_KEYS))
        if unknown:
            raise InputError(f"unknown entry key(s): {', '.join(unknown)}", at)
        for key in ("solver", "out"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise InputError(f"entry needs '{key}' (a path)", at)
        values: dict[str, Any] = {}
        for key, kind in ENTRY_KEYS.items():
            if key not in raw or raw[key] is None:
                continue
            value = raw[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise InputError(f"entry key '{key}' must be a {kind.__name__}", at)
            if kind is str and key != "target":
                value = str(base / value)
            values[key] = value
        if values.get("target", "keras") not in TARGETS:
            raise InputError(f"entry target must be one of {', '.join(TARGETS)}", at)
        entries.append(Entry(**values, where=str(at)))
    if not entries:
        raise InputError("the manifest lists no entries", SourceLocation(p, 1))
    return entries


def _entry_nodes(node: Any, path: str) -> list[SourceLocation]:
    """The location of each item of the top-level ``entries`` sequence."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if getattr(key, "value", None) == "entries" and isinstance(value, yaml.SequenceNode):
            return [user_yaml.location(path, item.start_mark) for item in value.value]
    return []


def run_entry(entry: Entry) -> EntryResult:
    """Check one entry in this process (invalid input is a result, not an exception)."""
    from caffe2tf.app.check import check_migration

    saved = os.environ.get("CAFFE2TF_NO_PROGRESS")
    os.environ["CAFFE2TF_NO_PROGRESS"] = "1"  # several entries: no interleaved progress lines
    t = time.perf_counter()
    try:
        report = check_migration(
            Path(entry.solver),
            Path(entry.out),
            net_path=Path(entry.net) if entry.net else None,
            layer_map=Path(entry.layer_map) if entry.layer_map else None,
            steps=entry.steps,
            seed=entry.seed,
            tolerance=entry.tolerance,
            target=entry.target,
        )
    except Caffe2TfError as err:
        line = f"{err.location}: error: {err.message}" if err.location else err.message
        return EntryResult(entry, EXIT_INVALID, ("input",), line, time.perf_counter() - t)
    finally:
        if saved is None:
            os.environ.pop("CAFFE2TF_NO_PROGRESS", None)
        else:
            os.environ["CAFFE2TF_NO_PROGRESS"] = saved
    verdicts = [
        (
            "config",
            not report.differences,
            "; ".join(str(d) for d in report.differences[:5]) or "same as convert writes today",
        )
    ]
    for v in report.verify.component_verdicts():
        detail = v.get("where", "") or ""
        if v.get("first_bad_iteration") is not None:
            detail = f"rate first differs at iteration {v['first_bad_iteration']}; {detail}"
        verdicts.append((v["component"], bool(v["passed"]), detail))
    failed = tuple(name for name, ok, _ in verdicts if not ok)
    return EntryResult(
        entry,
        report.exit_code,
        failed,
        report.render("table"),
        time.perf_counter() - t,
        tuple(verdicts),
    )


def run_entries(entries: Sequence[Entry], *, jobs: int = 1) -> list[EntryResult]:
    """Every entry, in order; ``jobs`` worker processes when > 1."""
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1 (got {jobs})")
    if jobs == 1 or len(entries) == 1:
        return [run_entry(e) for e in entries]
    import multiprocessing

    with ProcessPoolExecutor(
        max_workers=min(jobs, len(entries)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(run_entry, entries))


@dataclass(frozen=True)
class ManyCheckReport:
    """The results of several entries: a summary table, JUnit XML, GitHub annotations."""

    results: tuple[EntryResult, ...]

    @property
    def exit_code(self) -> int:
        codes = {r.exit_code for r in self.results}
        if EXIT_INVALID in codes:
            return EXIT_INVALID
        return EXIT_FAILED if EXIT_FAILED in codes else EXIT_OK

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(
                [
                    {
                        "solver": r.entry.solver,
                        "out": r.entry.out,
                        "target": r.entry.target,
                        "exit_code": r.exit_code,
                        "failed": list(r.failed),
                        "seconds": round(r.seconds, 2),
                        "verdicts": [
                            {"name": n, "passed": ok, "detail": d} for n, ok, d in r.verdicts
                        ],
                        "error": r.text if r.exit_code == EXIT_INVALID else None,
                    }
                    for r in self.results
                ],
                indent=2,
            )
        width = max(len(escape_controls(r.entry.out)) for r in self.results)
        lines = [f"caffe2tf check: {len(self.results)} entries", ""]
        lines.append(f"  {'out':<{width}}  {'target':<6}  verdict  {'time':>7}  failed")
        for r in self.results:
            verdict = {EXIT_OK: "ok", EXIT_FAILED: "DRIFTED", EXIT_INVALID: "INVALID"}[r.exit_code]
            lines.append(
                f"  {escape_controls(r.entry.out):<{width}}  {r.entry.target:<6}  {verdict:<7}  "
                f"{r.seconds:>6.1f}s  {', '.join(r.failed) or '-'}"
            )
        for r in self.results:
            if r.exit_code == EXIT_INVALID:
                lines.append(f"  {escape_controls(r.text)}")
        bad = [r for r in self.results if r.exit_code != EXIT_OK]
        n = len(self.results)
        lines.append("")
        lines.append(
            f"check FAILED: {len(bad)} of {n} entries" if bad else f"check PASSED: {n} entries"
        )
        return "\n".join(lines)

    def junit(self) -> str:
        """JUnit XML: one testsuite per entry, one testcase per verdict (config + each verify
        component), a failure element on each that failed."""
        out = ['<?xml version="1.0" encoding="UTF-8"?>']
        failures = sum(
            1 for r in self.results for _, ok, _ in (r.verdicts or [("input", False, "")]) if not ok
        )
        tests = sum(len(r.verdicts) or 1 for r in self.results)
        out.append(f'<testsuites name="caffe2tf-check" tests="{tests}" failures="{failures}">')
        for r in self.results:
            cases = r.verdicts or (("input", False, r.text),)
            n_fail = sum(1 for _, ok, _ in cases if not ok)
            out.append(
                f'  <testsuite name={quoteattr(r.entry.out)} tests="{len(cases)}" '
                f'failures="{n_fail}" time="{r.seconds:.2f}">'
            )
            for name, ok, detail in cases:
                classname = quoteattr(f"caffe2tf.check.{r.entry.target}")
                label = quoteattr(f"{r.entry.out} {name}")
                if ok:
                    out.append(f"    <testcase classname={classname} name={label}/>")
                else:
                    out.append(f"    <testcase classname={classname} name={label}>")
                    msg = quoteattr(f"{name} failed: {detail}"[:500])
                    out.append(f"      <failure message={msg}>{escape(detail)}</failure>")
                    out.append("    </testcase>")
            out.append("  </testsuite>")
        out.append("</testsuites>")
        return "\n".join(out) + "\n"

    def github_annotations(self) -> list[str]:
        """``::error`` workflow commands, one per entry that failed (on its solver file)."""
        lines = []
        for r in self.results:
            if r.exit_code == EXIT_OK:
                continue
            what = r.text if r.exit_code == EXIT_INVALID else f"failed: {', '.join(r.failed)}"
            message = f"{r.entry.out}: {what}".replace("%", "%25").replace("\n", "%0A")
            lines.append(f"::error file={r.entry.solver},title=caffe2tf check::{message}")
        return lines


def check_many(
    pairs: Sequence[tuple[str, str]] = (),
    *,
    manifest: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    junit: str | os.PathLike[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> ManyCheckReport:
    """Check ``pairs`` (SOLVER, OUT) and the entries of ``manifest``; write ``junit``."""
    defaults = dict(defaults or {})
    entries = [Entry(solver=s, out=o, **defaults) for s, o in pairs]
    if manifest is not None:
        entries += load_manifest(manifest)
    if not entries:
        raise InputError("give SOLVER OUT pairs or --manifest FILE")
    if junit is not None and Path(junit).is_dir():
        raise InputError("is a directory; --junit names the XML file", SourceLocation(str(junit)))
    report = ManyCheckReport(tuple(run_entries(entries, jobs=jobs)))
    if junit is not None:
        try:
            Path(junit).write_text(report.junit(), encoding="utf-8")
        except OSError as err:
            raise InputError(
                f"cannot write: {err.strerror or err}", SourceLocation(str(junit))
            ) from None
    return report
