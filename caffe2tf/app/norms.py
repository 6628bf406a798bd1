"""``caffe2tf norms LOG.npz [LOG2.npz ...] -o norms.png``: weight norms over training, one panel
per weight, several runs overlaid (the files ``WeightNormTracker`` writes; e.g. the same model
trained with ``weight_decay`` 2e-4 and 2e-3). Each run draws its weight's L2 norm and, shaded,
the 10-90% range of its per-channel norms."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe2tf.app.report import EXIT_OK
from caffe2tf.errors import InputError, SourceLocation, escape_controls


@dataclass(frozen=True)
class NormLog:
    """One tracker file: ``steps`` and, per variable path, its norms and channel norms."""

    label: str
    steps: np.ndarray
    norms: dict[str, np.ndarray]
    channels: dict[str, np.ndarray]


def load_log(path: str | os.PathLike[str], label: str | None = None) -> NormLog:
    """Read a tracker ``.npz``; a file that is not one is an InputError naming it."""
    p = os.fspath(path)
    where = SourceLocation(p)
    if not os.path.isfile(p):
        raise InputError("no such file", where)
    if not zipfile.is_zipfile(p):
        raise InputError("not a .npz file written by WeightNormTracker", where)
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read: {err}", where) from None
    if "steps" not in arrays:
        raise InputError("no 'steps' array: not written by WeightNormTracker", where)
    steps = arrays.pop("steps")
    norms = {k[: -len("/norm")]: v for k, v in arrays.items() if k.endswith("/norm")}
    channels = {k[: -len("/channels")]: v for k, v in arrays.items() if k.endswith("/channels")}
    for key, values in norms.items():
        if values.shape != steps.shape:
            raise InputError(
                f"{key}/norm has {values.shape[0]} records, steps has {len(steps)}", where
            )
    return NormLog(label or Path(p).stem, steps, norms, channels)


@dataclass(frozen=True)
class NormsReport:
    path: str
    panels: int
    runs: int

    exit_code: int = EXIT_OK

    def render(self, fmt: str = "table") -> str:
        return f"wrote {escape_controls(self.path)}: {self.panels} weight(s), {self.runs} run(s)"


def plot_norms(logs: list[NormLog], out: str | os.PathLike[str], *, title: str = "") -> NormsReport:
    """One panel per weight path found in any log; runs overlaid with their labels."""
    from caffe2tf.verify.plot import pyplot, save_png

    plt = pyplot("norms")
    out = Path(out)
    if out.is_dir():
        raise InputError("is a directory; -o names the PNG file", SourceLocation(str(out)))
    keys = sorted({k for log in logs for k in log.norms})
    if not keys:
        raise InputError("the logs hold no weight norms")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    try:
        flat = [ax for row in axes for ax in row]
        for ax, key in zip(flat, keys, strict=False):
            for i, log in enumerate(logs):
                if key not in log.norms:
                    continue
                color = colors[i % len(colors)]
                ax.plot(log.steps, log.norms[key], color=color, linewidth=1.8, label=log.label)
                ch = log.channels.get(key)
                if ch is not None and ch.ndim == 2 and ch.shape[1] > 1:
                    lo, hi = np.percentile(ch, 10, axis=1), np.percentile(ch, 90, axis=1)
                    ax.fill_between(log.steps, lo, hi, color=color, alpha=0.18, linewidth=0)
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel("update")
            ax.set_ylabel("L2 norm (band: channels 10-90%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        for ax in flat[len(keys) :]:
            ax.axis("off")
        fig.suptitle(title or "weight norms over training")
        fig.tight_layout()
        save_png(fig, out, "cannot write")
    finally:
        plt.close(fig)
    return NormsReport(str(out), len(keys), len(logs))


def norms_command(
    paths: list[str], out: str | os.PathLike[str], labels: list[str] | None = None
) -> NormsReport:
    """``caffe2tf norms``: read every log (labels default to the file names) and plot."""
    if labels and len(labels) != len(paths):
        raise InputError(f"--labels gives {len(labels)} names for {len(paths)} logs")
    logs = [load_log(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    return plot_norms(logs, out)
