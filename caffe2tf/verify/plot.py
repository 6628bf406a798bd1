"""PNG of the deviation per step and blob (``caffe2tf verify --plot``). Needs matplotlib
(``pip install 'caffe2tf[plot]'``); imported lazily with the Agg backend (no display)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify.compare import Comparison


def plot_deviation(
    comparison: Comparison, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Write a log-scale plot of ``dev[t][b]`` (one line per blob), the max over blobs and the
    tolerance, to ``path`` (written to a temporary name, then renamed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise Caffe2TfError("--plot needs matplotlib: pip install 'caffe2tf[plot]'") from err
    path = Path(path)
    steps = list(range(1, comparison.steps + 1))
    tiny = 1e-12

    def clean(values: tuple[float, ...]) -> list[float]:
        return [max(v, tiny) if math.isfinite(v) else 1e6 for v in values]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        for key, series in comparison.per_blob_step.items():
            ax.plot(steps, clean(series), linewidth=1, label=key)
        ax.plot(steps, clean(comparison.per_step), color="black", linewidth=2, label="max")
        ax.axhline(
            comparison.tolerance,
            color="red",
            linestyle="--",
            label=f"tolerance {comparison.tolerance:g}",
        )
        ax.set_yscale("log")
        ax.set_xlabel("Caffe update")
        ax.set_ylabel("max|Δw| / max(travelled, 1% max|w0|)")
        verdict = "PASS" if comparison.passed else "FAIL"
        ax.set_title(title or f"deviation per step ({verdict}, max {comparison.deviation:.2e})")
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        except OSError as err:
            raise InputError(
                f"cannot write the plot: {err.strerror or err}", SourceLocation(str(path))
            ) from None
        finally:
            if tmp.exists():
                tmp.unlink()
    finally:
        plt.close(fig)
    return path


def plot_components(
    runs: Sequence[Any],
    schedule: Any,
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """One panel per component of ``verify``: the deviation per update of each of its runs
    (x = Caffe iteration, so a window sits where it ran) and, for the schedule, the relative
    difference of the rates at every iteration; the tolerance dashed in red."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise Caffe2TfError("--plot needs matplotlib: pip install 'caffe2tf[plot]'") from err
    path = Path(path)
    tiny = 1e-12
    names = list(dict.fromkeys(r.component for r in runs))
    sched_panel = schedule is not None and not schedule.unreadable and schedule.blobs
    panels = len(names) + (1 if sched_panel else 0)
    cols = 2 if panels > 1 else 1
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), dpi=100, squeeze=False)
    try:
        flat = [ax for row in axes for ax in row]
        for ax, name in zip(flat, names, strict=False):
            mine = [r for r in runs if r.component == name]
            ok = all(r.comparison.passed for r in mine)
            for r in mine:
                c = r.comparison
                xs = [r.start + t for t in range(1, c.steps + 1)]
                ys = [max(v, tiny) if math.isfinite(v) else 1e6 for v in c.per_step]
                ax.plot(xs, ys, linewidth=1.2, label=r.label[:48])
            tol = mine[0].comparison.tolerance
            ax.axhline(tol, color="red", linestyle="--", linewidth=1, label=f"tolerance {tol:g}")
            ax.set_yscale("log")
            ax.set_title(f"{name}: {'ok' if ok else 'MISMATCH'}", fontsize="medium")
            ax.set_xlabel("Caffe iteration")
            ax.set_ylabel("max|Δw| / its own motion")
            ax.legend(fontsize="x-small")
        if sched_panel:
            ax = flat[len(names)]
            worst = max(schedule.blobs, key=lambda b: b.worst)
            ax.set_title(
                f"schedule, {schedule.iterations} iterations: "
                f"{'ok' if schedule.passed else 'first differs at ' + str(worst.first_bad)}",
                fontsize="medium",
            )
            xs = [b.worst_iteration for b in schedule.blobs]
            ys = [max(b.worst, tiny) if math.isfinite(b.worst) else 1e6 for b in schedule.blobs]
            ax.scatter(xs, ys, s=14)
            for b, x, y in zip(schedule.blobs, xs, ys, strict=True):
                ax.annotate(b.key, (x, y), fontsize="x-small")
            ax.axhline(schedule.tolerance, color="red", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set_xlabel("iteration of the worst relative difference")
            ax.set_ylabel("|rate - Caffe's| / rate")
        for ax in flat[panels:]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        except OSError as err:
            raise InputError(
                f"cannot write the plot: {err.strerror or err}", SourceLocation(str(path))
            ) from None
        finally:
            if tmp.exists():
                tmp.unlink()
    finally:
        plt.close(fig)
    return path
