"""PNG of the deviation per step and blob (``caffe2tf verify --plot``). Needs matplotlib
(``pip install 'caffe2tf[plot]'``); imported lazily with the Agg backend (no display)."""

from __future__ import annotations

import math
import os
from pathlib import Path

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
