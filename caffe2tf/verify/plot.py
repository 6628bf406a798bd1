"""PNG of the deviation per step and blob (``caffe2tf verify --plot``), with the weight-norm
trajectories of Caffe's rule and the candidate. Needs matplotlib
(``pip install 'caffe2tf[plot]'``); imported lazily with the Agg backend (no display)."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.verify.compare import Comparison


def pyplot(needed_by: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display); an InputError naming
    ``needed_by`` (``--plot``, ``norms``) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"{needed_by} needs matplotlib: pip install 'caffe2tf[plot]'") from None
    return plt


def save_png(fig: Any, path: Path, failure: str) -> None:
    """``fig`` written to ``path`` as a PNG through a temporary name beside it, renamed over
    ``path`` once whole (a failed write leaves neither a half PNG nor the temporary file); an
    InputError at ``path``, ``failure`` and the reason, where it cannot be written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"{failure}: {err.strerror or err}", SourceLocation(str(path))) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_deviation(
    comparison: Comparison, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Write a log-scale plot of ``dev[t][b]`` (one line per blob), the max over blobs and the
    tolerance, to ``path`` (written to a temporary name, then renamed)."""
    plt = pyplot("--plot")
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
        save_png(fig, path, "cannot write the plot")
    finally:
        plt.close(fig)
    return path


#: at most this many layers get a weight-norm panel (those whose norms differ most)
NORM_PANELS = 8


@dataclass(frozen=True)
class NormSeries:
    """One blob's L2 norm after each update of a run: ``reference[t]`` = ||w_t|| under
    Caffe's rule (or the real Caffe), ``candidate[t]`` under the candidate, at Caffe
    iteration ``iterations[t]``."""

    key: str
    iterations: tuple[int, ...]
    reference: tuple[float, ...]
    candidate: tuple[float, ...]

    @property
    def gap(self) -> float:
        """max_t |cand_t - ref_t| / ref_t (0 where both are 0, inf where not finite)."""
        worst = 0.0
        for r, c in zip(self.reference, self.candidate, strict=True):
            if not (math.isfinite(r) and math.isfinite(c)):
                return math.inf
            if r > 0:
                worst = max(worst, abs(c - r) / r)
            elif c != 0:
                return math.inf
        return worst


def norm_panels(
    run: Any, limit: int = NORM_PANELS
) -> tuple[list[tuple[str, list[NormSeries]]], int]:
    """The weight-norm panels of ``run`` (a run result with ``comparison`` and ``start``):
    ``[(caffe layer, [NormSeries per blob])]`` in the net's order, at most ``limit`` layers,
    those whose norms differ most when there are more; and the number of layers in all."""
    c = run.comparison
    by_layer: dict[str, list[NormSeries]] = {}
    for key in c.keys:
        ref, cand = c.reference_norms.get(key, ()), c.candidate_norms.get(key, ())
        if not ref or len(ref) != len(cand):
            continue
        xs = tuple(run.start + t for t in range(1, len(ref) + 1))
        by_layer.setdefault(key.rpartition("/")[0], []).append(NormSeries(key, xs, ref, cand))
    layers = list(by_layer)
    if len(layers) > limit:
        worst = sorted(layers, key=lambda n: max(b.gap for b in by_layer[n]), reverse=True)
        keep = set(worst[:limit])
        layers = [n for n in layers if n in keep]
    return [(n, by_layer[n]) for n in layers], len(by_layer)


def _draw_norms(
    ax: Any, layer: str, series: list[NormSeries], reference_label: str, candidate_label: str
) -> None:
    """One layer's panel: each blob's norm, Caffe's rule solid, the candidate dashed over it in
    the same colour; log-y when the blobs' norms lie far apart."""
    tiny = 1e-30
    values = []
    for i, b in enumerate(series):
        colour = f"C{i % 10}"
        ref = [v if math.isfinite(v) else math.nan for v in b.reference]
        cand = [v if math.isfinite(v) else math.nan for v in b.candidate]
        name = _blob_name(b.key)
        ax.plot(b.iterations, ref, color=colour, linewidth=2.2, alpha=0.55,
                label=f"{name}, {reference_label}")  # fmt: skip
        ax.plot(b.iterations, cand, color=colour, linewidth=1.1, linestyle="--",
                label=f"{name}, {candidate_label}")  # fmt: skip
        values += [v for v in ref + cand if math.isfinite(v) and v > tiny]
    if values and max(values) / min(values) > 20:
        from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

        ax.set_yscale("log")  # ticks at 1, 2, 5 x 10^n, written plainly
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    worst = max(series, key=lambda b: b.gap)
    gap = worst.gap
    shown = "not finite" if not math.isfinite(gap) else f"{100 * gap:.2g}%"
    ax.set_title(
        f"{layer}: weight norms, largest gap {shown} ({_blob_name(worst.key)})",
        fontsize="medium",
    )
    ax.set_xlabel("Caffe iteration")
    ax.set_ylabel("||w||  (L2 norm)")
    ax.legend(fontsize="x-small")


def _blob_name(key: str) -> str:
    """``"conv1/0"`` -> ``"weights"``, ``"conv1/1"`` -> ``"bias"``, else ``"blob i"``."""
    index = key.rpartition("/")[2]
    return {"0": "weights", "1": "bias"}.get(index, f"blob {index}")


def plot_components(
    runs: Sequence[Any],
    schedule: Any,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    reference_label: str = "Caffe's rule",
    candidate_label: str = "candidate",
) -> Path:
    """One panel per component of ``verify``: the deviation per update of each of its runs
    (x = Caffe iteration, so a window sits where it ran) and, for the schedule, the relative
    difference of the rates at every iteration; the tolerance dashed in red. Then one panel
    per Caffe layer (:func:`norm_panels`): the L2 norm of each of its blobs over the updates
    of the ``stream`` run, ``reference_label`` solid and ``candidate_label`` dashed."""
    plt = pyplot("--plot")
    path = Path(path)
    tiny = 1e-12
    names = list(dict.fromkeys(r.component for r in runs))
    sched_panel = schedule is not None and not schedule.unreadable and schedule.blobs
    stream = next((r for r in runs if r.component == "stream"), None)
    norms, layer_count = norm_panels(stream) if stream is not None else ([], 0)
    first_norm = len(names) + (1 if sched_panel else 0)
    panels = first_norm + len(norms)
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
                # a long label (a window's milestone) wrapped, not cut mid-word
                label = "\n".join(textwrap.wrap(r.label, 44, max_lines=2, placeholder="..."))
                ax.plot(xs, ys, linewidth=1.2, label=label)
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
            # one bar per blob (the 12 that differ most): its worst relative rate difference
            # over every iteration, and where it was
            shown = sorted(schedule.blobs, key=lambda b: -b.worst)[:12][::-1]
            widths = [max(b.worst, tiny) if math.isfinite(b.worst) else 1e6 for b in shown]
            ax.barh(range(len(shown)), widths, color="tab:blue", height=0.6)
            for i, (b, w) in enumerate(zip(shown, widths, strict=True)):
                label = "0" if b.worst == 0 else f"{b.worst:.1e}"
                ax.annotate(
                    f" {label} at k={b.worst_iteration}", (w, i), va="center", fontsize="x-small"
                )
            ax.axvline(schedule.tolerance, color="red", linestyle="--", linewidth=1)
            ax.set_yticks(range(len(shown)), [b.key for b in shown], fontsize="x-small")
            ax.set_xscale("log")
            ax.set_xlim(tiny / 2, max(schedule.tolerance * 100, max(widths) * 100))
            ax.set_xlabel("worst |rate - Caffe's| / rate over the iterations (log)")
        for ax, (layer, series) in zip(flat[first_norm:], norms, strict=False):
            _draw_norms(ax, layer, series, reference_label, candidate_label)
        for ax in flat[panels:]:
            ax.axis("off")
        if norms:
            which = (
                "each layer's"
                if len(norms) == layer_count
                else (f"the {len(norms)} of {layer_count} layers that differ most:")
            )
            title = (title + ": " if title else "") + (
                f"deviation per component, then {which} weight norms over the stream run"
            )
        if title:
            fig.suptitle(title)
        # leave the suptitle its own band above the panels' titles
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()) if title else None)
        save_png(fig, path, "cannot write the plot")
    finally:
        plt.close(fig)
    return path
