"""Seeded fuzzing of the front end and the commands that must not import TensorFlow.

The bundled prototxt (``fixtures/``) are mutated -- bytes flipped, lines duplicated, deleted or
swapped, numbers made huge or non-finite, ``#`` banners and control characters inserted, pieces
of other fixtures pasted in -- and each mutant goes through ``inspect --lenient``, ``inspect``,
``explain`` and ``convert``, in process (click's runner). For every run:

* the exit code is 0 or 2, and no exception but ``SystemExit`` escapes (no traceback);
* exit 2 is ONE ``file[:line[:col]]: error: ...`` line on stderr, or (convert refusing an
  inexact translation) the notes on stdout ending in one ``error: ...`` line;
* no control character but the newline reaches the output;
* a written ``optimizer.py`` parses and names no bare ``nan``/``inf``;
* each command takes less than 5 s.

``CAFFE2TF_FUZZ_INPUTS`` changes the number of mutants (default 220: about 25 s here, bounded
by a 60 s budget); ``CAFFE2TF_FUZZ_SEED`` the seed. A failure prints the seed, the mutant's
index and its text's start, so it can be replayed.
"""

from __future__ import annotations

import ast
import os
import random
import re
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe2tf.cli import cli

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
SEED = int(os.environ.get("CAFFE2TF_FUZZ_SEED", "20240613"))
INPUTS = int(os.environ.get("CAFFE2TF_FUZZ_INPUTS", "1500"))
BUDGET_S = 60.0  # stop early (after at least a quarter of the inputs) beyond this
PER_COMMAND_S = 5.0

ERROR_LINE = re.compile(r"^\S.*: error: \S.*$")
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])")
NET_LINE = re.compile(r"^\s*(net|train_net)\s*:.*$", re.M)


def _recipes() -> list[tuple[str, str]]:
    """(solver text, net text) pairs from the fixtures, the solver pointing at net.prototxt."""
    pairs = []
    lenet = (FIXTURES / "lenet" / "solver.prototxt").read_text()
    lenet_net = (FIXTURES / "lenet" / "train.prototxt").read_text()
    pairs.append((NET_LINE.sub('net: "net.prototxt"', lenet), lenet_net))
    for solver in sorted((FIXTURES / "golden").glob("*.solver.prototxt")):
        net = solver.with_name(solver.name.replace(".solver.", ".net."))
        text = 'net: "net.prototxt"\n' + NET_LINE.sub("", solver.read_text())
        pairs.append((text, net.read_text()))
    for legacy in sorted((FIXTURES / "legacy").glob("*.prototxt")):
        pairs.append((pairs[0][0], legacy.read_text()))
    return pairs


def _pieces() -> list[str]:
    return [p.read_text() for p in sorted(FIXTURES.rglob("*.prototxt"))]


STRING = re.compile(r'"[^"\\\n]*"')
#: mutation kinds and their weights: the ones that keep a file readable are favoured, so that
#: most mutants get past the parser into the checks, the lowering and the renderers
KINDS = [0] * 2 + [1] * 2 + [2] * 2 + [3] + [4] * 6 + [6] * 3 + [7] * 2 + [8] * 2 + [9] + [10] * 4


def _mutate(rng: random.Random, text: str, pieces: list[str]) -> str:
    kind = rng.choice(KINDS)
    lines = text.split("\n")
    if kind == 0 and text:  # flip bytes
        data = bytearray(text.encode("utf-8", "surrogateescape"))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return data.decode("utf-8", "surrogateescape")
    if kind == 1:  # duplicate a line
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == 2 and len(lines) > 1:  # delete a line
        del lines[rng.randrange(len(lines))]
    elif kind == 3 and len(lines) > 1:  # swap two lines
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 10:  # escapes in a string (a name): control characters, quotes, non-ASCII
        strings = list(STRING.finditer(text))
        if strings:
            m = rng.choice(strings)
            junk = rng.choice(["\\n", "\\033[2J", "\\r\\t", "\\000", "\\342\\200\\250", '\\"', "é"])
            return text[: m.end() - 1] + junk + text[m.end() - 1 :]
    elif kind == 4:  # a number becomes huge, tiny, negative or non-finite
        numbers = list(NUMBER.finditer(text))
        if numbers:
            m = rng.choice(numbers)
            new = rng.choice(
                [
                    "nan",
                    "inf",
                    "-inf",
                    "-0.0",
                    "1e40",
                    "-1e-45",
                    "9" * rng.randint(10, 400),
                    "-" + "9" * rng.randint(19, 30),
                    "0x" + "f" * rng.randint(8, 20),
                    "0" + "7" * rng.randint(1, 30),
                    "1e" + "9" * rng.randint(1, 6),
                    "Infinity",
                    "NaNf",
                ]
            )
            return text[: m.start()] + new + text[m.end() :]
    elif kind == 6:  # a '#' banner
        banner = rng.choice(
            [
                "#" * rng.randint(1, 10_000),
                "#" * 15 + " solver " + "#" * 15,
                "# " + "#=" * rng.randint(1, 500),
            ]
        )
        lines.insert(rng.randrange(len(lines) + 1), banner)
    elif kind == 7:  # control characters, raw, anywhere (also in comments)
        pos = rng.randrange(len(text) + 1)
        junk = rng.choice(["\x00", "\x1b[31m", "\r", "\x7f", "\x0b", "\u2028", "\x85", "\t\f"])
        return text[:pos] + junk + text[pos:]
    elif kind == 8:  # part of another fixture pasted in
        piece = rng.choice(pieces).split("\n")
        start = rng.randrange(len(piece))
        lines[rng.randrange(len(lines) + 1) : 0] = piece[start : start + rng.randint(1, 12)]
    else:  # truncated
        return text[: rng.randrange(len(text) + 1)]
    return "\n".join(lines)


def _check_output(text: str, optimizer: Path | None) -> None:
    assert not CONTROL.search(text), repr(CONTROL.search(text).group())  # type: ignore[union-attr]
    if optimizer is not None and optimizer.exists():
        tree = ast.parse(optimizer.read_text())
        bare = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & {"nan", "inf"}
        assert not bare, bare


def _run(runner: CliRunner, args: list[str], optimizer: Path | None = None) -> None:
    t = time.perf_counter()
    res = runner.invoke(cli, args)
    seconds = time.perf_counter() - t
    assert seconds < PER_COMMAND_S, seconds
    assert res.exit_code in (0, 2), (res.exit_code, res.output[-2000:])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    _check_output(res.stdout + res.stderr, optimizer)
    if res.exit_code == 0:
        assert res.stderr == "", res.stderr
        return
    err = res.stderr.splitlines()
    if err:
        assert len(err) == 1 and ERROR_LINE.match(err[0]), res.stderr[-2000:]
    else:  # convert: an inexact or unsupported translation, nothing written
        assert args[0] == "convert", res.stdout
        assert res.stdout.rstrip("\n").split("\n")[-1].startswith("error: "), res.stdout


def test_mutated_fixtures_never_hang_crash_or_split_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tf_before = "tensorflow" in sys.modules
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    recipes, pieces = _recipes(), _pieces()
    runner = CliRunner()
    started = time.perf_counter()
    done = 0
    for index in range(INPUTS):
        solver_text, net_text = rng.choice(recipes)
        target = rng.random()
        for _ in range(rng.choice((1, 1, 2, 3))):
            if target < 0.5:
                solver_text = _mutate(rng, solver_text, pieces)
            else:
                net_text = _mutate(rng, net_text, pieces)
        folder = tmp_path / str(index)
        folder.mkdir()
        solver, net = folder / "solver.prototxt", folder / "net.prototxt"
        solver.write_bytes(solver_text.encode("utf-8", "surrogateescape"))
        net.write_bytes(net_text.encode("utf-8", "surrogateescape"))
        where = f"seed {SEED}, input {index}: {(solver_text if target < 0.5 else net_text)[:200]!r}"
        try:
            for command in (["inspect", "--lenient"], ["inspect"], ["explain"]):
                _run(runner, [*command, str(solver), "--net", str(net)])
            _run(runner, ["inspect", str(net)])
            out = folder / "out"
            _run(
                runner,
                ["convert", str(solver), "--net", str(net), "-o", str(out)],
                out / "optimizer.py",
            )
        except AssertionError as err:
            raise AssertionError(f"{where}\n{err}") from None
        done += 1
        if time.perf_counter() - started > BUDGET_S and done >= INPUTS // 4:
            break
    assert done >= INPUTS // 4
    if not tf_before:
        assert "tensorflow" not in sys.modules, "a fuzzed command imported TensorFlow"
