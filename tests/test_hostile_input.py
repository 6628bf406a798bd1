"""Hostile and unusual input (issue 13): no hang, no false pass, no broken output.

Each test is the regression of one defect found by fuzzing: it failed (or hung) before the fix.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe2tf.caffe import parse
from caffe2tf.caffe._proto import caffe_pb2
from caffe2tf.caffe.load import _is_blank, parse_solver_file, sniff_kind
from caffe2tf.cli import cli
from caffe2tf.errors import InputError

REPO = Path(__file__).resolve().parent.parent
LENET_NET = REPO / "fixtures" / "lenet" / "train.prototxt"
BANNER = "############### solver ###############\n"


def _lenet_solver(tmp_path: Path, head: str = "") -> Path:
    """The bundled LeNet solver with ``head`` above it and its net path made absolute."""
    text = (REPO / "fixtures" / "lenet" / "solver.prototxt").read_text()
    text = text.replace('"fixtures/lenet/train.prototxt"', f'"{LENET_NET}"')
    path = tmp_path / "solver.prototxt"
    path.write_text(head + text)
    return path


# -- 1. the reader is linear-time -------------------------------------------------------------


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


@pytest.mark.parametrize(
    "text",
    [
        "#" * 10_000 + "\n",  # all comment: blank
        "#" * 10_000 + "\nbase_lr: 0.1\n",  # the comment group must give up at the last line
        BANNER * 50 + "lr_policy: 'fixed'\n",
        ("# " + "#" * 40 + "\n") * 2_000 + "x",
        "#" * 10_000,  # no newline at all
    ],
)
def test_blank_check_is_linear(text: str) -> None:
    blank, seconds = _timed(_is_blank, text)
    assert blank == (text.rstrip("\n").split("\n")[-1].startswith("#"))
    assert seconds < 0.05


def test_banner_above_a_solver_reads_in_milliseconds(tmp_path: Path) -> None:
    path = _lenet_solver(tmp_path, BANNER + "#" * 10_000 + "\n" + BANNER)
    parsed, seconds = _timed(parse_solver_file, path)
    assert parsed.message.lr_policy == "multistep"
    assert seconds < 0.1
    kind, seconds = _timed(sniff_kind, path)
    assert kind == "solver" and seconds < 0.1
    for cmd in (["inspect"], ["inspect", "--lenient"], ["explain"]):
        res, seconds = _timed(CliRunner().invoke, cli, [*cmd, str(path)])
        assert res.exit_code == 0, res.output
        assert seconds < 2.0, (cmd, seconds)  # was 187 s for one banner line


@pytest.mark.parametrize(
    "text,needle",
    [
        # a long run of digits followed by a letter: the "bare exponent" pattern was quadratic
        ("base_lr: " + "1" * 200_000 + "z\n", "need space between number and identifier"),
        ("base_lr: " + "1" * 200_000 + "e\n", '"e" must be followed by an exponent'),
        ("base_lr: 1" + "#" * 100_000 + "\n", None),  # a comment glued to a number
        ("#" * 100_000 + "\n" + "#" * 100_000 + "\nbase_lr: 2\n", None),
        ('net: "' + "\\a" * 100_000 + "\n", "unterminated string literal"),
    ],
)
def test_lexer_is_linear_on_long_tokens(text: str, needle: str | None) -> None:
    t = time.perf_counter()
    if needle is None:
        parse.parse_text(text, caffe_pb2.SolverParameter())
    else:
        with pytest.raises(InputError, match=needle):
            parse.parse_text(text, caffe_pb2.SolverParameter())
    assert time.perf_counter() - t < 0.5


# -- 2. non-finite numbers: refused at the field, never written as bare ``nan`` ----------------


def _one_error_line(res) -> str:
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize(
    "line,needle",
    [
        ("base_lr: nan", "base_lr is nan"),
        ("weight_decay: inf", "weight_decay is inf"),
        ("momentum: nan", "momentum is nan"),
        ("clip_gradients: inf", "clip_gradients is inf"),
        ("base_lr: 1e40", "base_lr is inf"),  # beyond float32: inf, as in C++
        ("gamma: inf", "gamma is inf"),
    ],
)
def test_convert_refuses_nonfinite_fields(tmp_path: Path, line: str, needle: str) -> None:
    solver = tmp_path / "s.prototxt"
    field = line.split(":")[0]
    head = f'net: "{LENET_NET}"\nlr_policy: "step"\nstepsize: 10\ngamma: 0.1\nmomentum: 0.9\n'
    solver.write_text(head.replace(f"{field}:", "# ") + f"{line}\n")
    res = CliRunner().invoke(cli, ["convert", str(solver), "-o", str(tmp_path / "out")])
    err = _one_error_line(res)
    assert err.startswith(f"{solver}:6:1: error: {needle}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy", ["step", "exp", "inv", "multistep", "sigmoid"])
def test_gamma_nan_is_refused_with_caffes_reason(tmp_path: Path, policy: str) -> None:
    solver = tmp_path / "s.prototxt"
    solver.write_text(
        f'net: "{LENET_NET}"\nlr_policy: "{policy}"\nstepsize: 5\nstepvalue: 5\npower: 1\n'
        "gamma: nan\n"
    )
    res = CliRunner().invoke(cli, ["convert", str(solver), "-o", str(tmp_path / "out")])
    err = _one_error_line(res)
    assert err.startswith(f"{solver}:6:1: error: gamma must be >= 0"), err
    assert "got nan" in err and "CHECK_GE" in err
