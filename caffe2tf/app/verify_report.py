"""What ``verify`` and its other targets (:mod:`caffe2tf.app.verify_target`) share: the
report (:class:`VerifyReport`, one :class:`RunResult` per run) and the real Caffe 1.0's side of
``--against caffe`` (:func:`caffe_trajectory`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffe2tf.app.pipeline import Pipeline
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation, escape_controls
from caffe2tf.verify import components
from caffe2tf.verify.compare import Comparison
from caffe2tf.verify.schedule_check import ScheduleCheck


@dataclass(frozen=True)
class VerifyReport:
    """One verify: what ran where, the stream's :class:`Comparison`, every run's, and the
    schedule check; :meth:`render` writes it, :attr:`exit_code` is the command's."""

    solver: str
    module: str
    against: str
    steps: int
    seed: int
    iter_size: int
    backend: str
    device: str
    comparison: Comparison
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    plot_path: str | None = None
    notes: tuple[str, ...] = ()
    runs: tuple[RunResult, ...] = ()
    schedule: ScheduleCheck | None = None

    def component_verdicts(self) -> list[dict[str, Any]]:
        """One verdict per component: its worst run (deviation, where) and whether it passed."""
        out = []
        for name in components.COMPONENTS:
            if name == "schedule" and self.schedule is not None:
                worst = self.schedule.worst
                out.append(
                    {
                        "component": "schedule",
                        # an unread schedule is said in the report; the windows still judge
                        "passed": self.schedule.passed,
                        "runs": len([r for r in self.runs if r.component == name]),
                        "schedule_iterations": self.schedule.iterations,
                        "schedule_worst": worst.worst if worst else 0.0,
                        "first_bad_iteration": min(
                            (b.first_bad for b in self.schedule.blobs if b.first_bad is not None),
                            default=None,
                        ),
                    }
                )
            mine = [r for r in self.runs if r.component == name]
            if not mine:
                continue
            worst_run = max(mine, key=lambda r: r.comparison.deviation)
            entry = {
                "component": name,
                "passed": all(r.comparison.passed for r in mine),
                "runs": len(mine),
                "deviation": worst_run.comparison.deviation,
                "where": f"{worst_run.label}: {worst_run.comparison.worst_key} after update "
                f"{worst_run.start + worst_run.comparison.worst_step}",
            }
            if name == "schedule" and out and out[-1]["component"] == "schedule":
                out[-1].update(
                    passed=out[-1]["passed"] and entry["passed"],
                    deviation=entry["deviation"],
                    where=entry["where"],
                )
            else:
                out.append(entry)
        return out

    @property
    def passed(self) -> bool:
        if not self.runs:
            return self.comparison.passed
        return all(v["passed"] for v in self.component_verdicts())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "solver": self.solver,
            "module": self.module,
            "against": self.against,
            "steps": self.steps,
            "seed": self.seed,
            "iter_size": self.iter_size,
            "backend": self.backend,
            "device": self.device,
            "passed": self.passed,
            "components": [
                {
                    k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                    for k, v in c.items()
                }
                for c in self.component_verdicts()
            ],
            "runs": [
                {
                    "component": r.component,
                    "label": r.label,
                    "start": r.start,
                    "precision": r.dtype,
                    "comparison": r.comparison.to_dict(),
                }
                for r in self.runs
            ],
            "schedule": self.schedule.to_dict() if self.schedule else None,
            "comparison": self.comparison.to_dict(),
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "plot": self.plot_path,
            "notes": list(self.notes),
        }

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        c = self.comparison
        ref = {
            "reference": "NumPy reference executor (float32, Caffe's operation order)",
            "caffe": "the real Caffe 1.0 binary",
        }.get(self.against, self.against)
        lines = [
            f"verify {self.solver}",
            f"  candidate : {self.module}",
            f"  against   : {ref}",
            f"  backend   : {self.backend}",
            f"  device    : {self.device}",
            f"  run       : {self.steps} updates, iter_size {self.iter_size}, seed {self.seed}, "
            f"tolerance {c.tolerance:g}",
            f"  measure   : max|Δw| / max(travelled {c.travelled:.4g}, 1% max|w0| "
            f"{c.floor:.4g}) = max|Δw| / {c.scale:.4g}",
            "",
        ]
        # blob names come from the prototxt: their control characters are shown as escapes
        # (caffe2tf/errors.py), also when the columns are lined up
        width = max([len("blob")] + [len(escape_controls(k)) for k in c.keys])
        lines.append(f"  {'blob':<{width}}  {'shape':<12}  {'deviation':>10}  verdict")
        for key in c.keys:
            dev = c.per_blob.get(key, 0.0)
            shape = "x".join(str(d) for d in self.shapes.get(key, ())) or "-"
            ok = "ok" if dev <= c.tolerance else "MISMATCH"
            lines.append(f"  {escape_controls(key):<{width}}  {shape:<12}  {_fmt(dev):>10}  {ok}")
        lines.append("")
        for note in self.notes:
            lines.append(f"  note      : {note}")
        lines.append(
            f"  max deviation {_fmt(c.deviation)} at {c.worst_key or '-'} after update "
            f"{c.worst_step} (max|Δw| {_fmt(c.max_abs_diff)})"
        )
        if self.timings:
            lines.append(
                "  time      : " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
            )
        if self.plot_path:
            lines.append(f"  plot      : {self.plot_path}")
        verdicts = self.component_verdicts() if self.runs else []
        if verdicts:
            lines += ["", "  components (each judged against its own motion; see docs/verify.md):"]
            for v in verdicts:
                dev = _fmt(v["deviation"]) if "deviation" in v else "-"
                ok = "ok" if v["passed"] else "MISMATCH"
                lines.append(
                    f"    {v['component']:<13} {v['runs']:>2} run(s)  {dev:>10}  {ok:<8}  "
                    f"{v.get('where', '')}"
                )
        sched = self.schedule
        if sched is not None:
            if sched.unreadable:
                lines.append(f"  schedule  : not read: {sched.unreadable}")
            else:
                bad = [b for b in sched.blobs if b.first_bad is not None]
                head = f"  schedule  : {sched.iterations} iterations x {len(sched.blobs)} blobs"
                if bad:
                    b = min(bad, key=lambda x: x.first_bad or 0)
                    lines.append(
                        f"{head}: {b.key} first differs at iteration {b.first_bad} "
                        f"(Caffe {b.caffe_at_first_bad:.6g}, candidate "
                        f"{b.candidate_at_first_bad:.6g})"
                    )
                else:
                    worst = sched.worst
                    lines.append(
                        f"{head}: equal within {sched.tolerance:g} (worst relative "
                        f"difference {_fmt(worst.worst if worst else 0.0)})"
                    )
        if c.nonfinite:  # a failure whatever the deviation says
            lines.append(f"FAIL: not finite: {c.nonfinite}")
            return "\n".join(escape_controls(line) for line in lines)
        failed = [v["component"] for v in verdicts if not v["passed"]]
        if failed or not self.passed:
            lines.append(
                "FAIL: "
                + (", ".join(failed) if failed else f"deviation {_fmt(c.deviation)}")
                + f" (tolerance {c.tolerance:g})"
            )
        else:
            lines.append(
                f"PASS: every component within {c.tolerance:g} (stream deviation "
                f"{_fmt(c.deviation)})"
            )
        return "\n".join(escape_controls(line) for line in lines)


def _json_number(v: Any) -> Any:
    """inf/NaN as text (JSON has no such numbers)."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


@dataclass(frozen=True)
class RunResult:
    """One run of :func:`caffe2tf.verify.components.plan_runs` and its comparison."""

    component: str
    label: str
    start: int
    dtype: str
    comparison: Comparison


_SNAPSHOT_LINE = re.compile(r"^\s*(snapshot|snapshot_prefix)\s*:.*$", re.M)


def _without_snapshots(text: str) -> str:
    """The solver text without ``snapshot``/``snapshot_prefix``: they do not change the update,
    but Caffe's constructor aborts when the prefix's folder is not writable
    (``solver.cpp`` ``CheckSnapshotWritePermissions``, run when ``snapshot`` > 0)."""
    return _SNAPSHOT_LINE.sub("", text)


def caffe_trajectory(
    solver: Path,
    net_file: Path,
    init: Mapping[str, np.ndarray],
    grads: Iterable[Mapping[str, np.ndarray]],
    steps: int,
    pipeline: Pipeline | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The real Caffe's weights after each of ``steps`` updates, streamed
    (:func:`caffe2tf.verify.oracle.run_streamed`: flat in memory whatever ``steps``; ``grads``
    is read one update at a time). A net fed by data layers (Caffe opens their databases when
    it builds them) runs as its TRAIN-phase layers with each data layer an Input layer of the
    shapes verify used (:func:`caffe2tf.verify.oracle.caffe_ready_net`), from a solver text
    written from the parsed solver without its net, test-net and snapshot fields."""
    from caffe2tf.verify import oracle

    if oracle.caffe_root() is None:
        raise Caffe2TfError(
            f"--against caffe needs the Caffe 1.0 root (build it with "
            f"scripts/build_caffe_root.sh, or set {oracle.ROOT_ENV})"
        )
    net = pipeline.recipe.net if pipeline is not None else None
    if net is not None and pipeline is not None and oracle.needs_input_layers(net):
        message = pipeline.recipe.solver.message
        solver_text = oracle.caffe_ready_solver(message)
        try:
            net_text = oracle.caffe_ready_net(net, message)
        except oracle.OracleError as err:
            raise InputError(str(err), SourceLocation(net.path)) from None
    else:
        solver_text = _without_snapshots(Path(solver).read_text())
        net_text = Path(net_file).read_text()
    case = oracle.OracleCase(
        name="verify", solver_text=solver_text, net_text=net_text, init=dict(init)
    )
    try:
        return oracle.run_streamed(case, grads, steps)
    except oracle.OracleError as err:
        raise Caffe2TfError(str(err)) from err
