"""The PNGs ``verify --plot`` and ``caffe2tf norms`` write go through one writer
(``caffe2tf.verify.plot.save_png``): a whole PNG at the path once written, no temporary file
left, and a user's error (exit 2, the path named) where the path cannot be written; both
commands ask for matplotlib through ``pyplot``, which names the command that needs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import require

from caffe2tf.errors import InputError
from caffe2tf.verify import plot

require("matplotlib")


def _figure():  # noqa: ANN202
    plt = plot.pyplot("--plot")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return plt, fig


def test_a_png_is_written_whole_and_nothing_else_is_left(tmp_path: Path) -> None:
    plt, fig = _figure()
    out = tmp_path / "p.png"
    out.write_bytes(b"an older file")
    try:
        plot.save_png(fig, out, "cannot write the plot")
    finally:
        plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_an_unwritable_path_is_the_users_error_and_leaves_nothing(tmp_path: Path) -> None:
    plt, fig = _figure()
    out = tmp_path / "missing" / "p.png"
    try:
        with pytest.raises(InputError) as err:
            plot.save_png(fig, out, "cannot write the plot")
    finally:
        plt.close(fig)
    assert str(out) in str(err.value) and "cannot write the plot: " in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_keeps_the_older_png_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plt, fig = _figure()
    out = tmp_path / "p.png"
    out.write_bytes(b"the older plot")

    def refused(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plot.os, "replace", refused)
    try:
        with pytest.raises(InputError, match="cannot write: Permission denied"):
            plot.save_png(fig, out, "cannot write")
    finally:
        plt.close(fig)
    assert out.read_bytes() == b"the older plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_without_matplotlib_the_command_that_needs_it_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    for command in ("--plot", "norms"):
        with pytest.raises(InputError) as err:
            plot.pyplot(command)
        assert str(err.value) == f"{command} needs matplotlib: pip install 'caffe2tf[plot]'"
