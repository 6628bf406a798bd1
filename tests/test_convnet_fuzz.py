"""Seeded fuzzing of the cuda-convnet front end: the fixture layer files, mutated (lines
deleted, duplicated or swapped, bytes flipped, numbers made huge, negative or non-finite,
separators and brackets dropped, control characters inserted), go through ``convert`` and
``explain`` in process. Every run exits 0 or 2 with no traceback; exit 2 names a place in
the input or the blocking notes; a written ``optimizer.py`` parses and holds no bare
``nan``/``inf``. ``CAFFE2TF_FUZZ_INPUTS`` sets the number of mutants (default 120)."""

from __future__ import annotations

import ast
import os
import random
import re
from pathlib import Path

from click.testing import CliRunner

from caffe2tf.cli import cli

FIX = Path(__file__).parent.parent / "fixtures" / "convnet"
PAIRS = [
    ("layers-cifar.cfg", "layer-params-cifar-mixed.cfg"),
    ("layers-two-inputs.cfg", "layer-params-two-inputs.cfg"),
    ("layers-two-inputs.cfg", "layer-params-schedule.cfg"),
]
JUNK = ["nan", "inf", "-1", "1e308", "", ",", ";", "[", "]", "=", ":", "\x1b[2J", "\x00", "é"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = re.sub(r"\d+(\.\d+)?", lambda m: rng.choice(JUNK), lines[i], count=1)
        elif op == 4 and lines[i]:
            k = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:k] + rng.choice(JUNK) + lines[i][k + 1 :]
        else:
            lines[i] = "  " + lines[i]
    return "\n".join(lines)


def test_mutated_layer_files_never_crash(tmp_path: Path) -> None:
    n = int(os.environ.get("CAFFE2TF_FUZZ_INPUTS", "120"))
    seed = int(os.environ.get("CAFFE2TF_FUZZ_SEED", "11"))
    rng = random.Random(seed)
    runner = CliRunner()
    outcomes = {0: 0, 2: 0}
    for index in range(n):
        layers_name, params_name = PAIRS[index % len(PAIRS)]
        layers = (FIX / layers_name).read_text()
        params = (FIX / params_name).read_text()
        if rng.random() < 0.5:
            layers = mutate(layers, rng)
        else:
            params = mutate(params, rng)
        case = tmp_path / str(index)
        case.mkdir()
        (case / "layers.cfg").write_text(layers, encoding="utf-8", errors="surrogateescape")
        (case / "params.cfg").write_text(params, encoding="utf-8", errors="surrogateescape")
        where = f"seed {seed} mutant {index}"
        for args in (
            ["explain", str(case / "layers.cfg"), "--params", str(case / "params.cfg")],
            [
                "convert",
                str(case / "layers.cfg"),
                "--params",
                str(case / "params.cfg"),
                "-o",
                str(case / "out"),
                "--allow-approx",
            ],
        ):
            res = runner.invoke(cli, args)
            assert res.exception is None or isinstance(res.exception, SystemExit), (
                where,
                args[0],
                repr(res.exception),
            )
            assert res.exit_code in (0, 2), (where, args[0], res.output[-500:])
            assert "Traceback" not in res.output, where
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", res.output), (where, res.output)
            if res.exit_code == 2 and args[0] == "explain":
                assert re.search(r"\.cfg(:\d+(:\d+)?)?: ", res.output), (where, res.output)
            outcomes[res.exit_code] += 1
        module = case / "out" / "optimizer.py"
        if module.exists():
            text = module.read_text()
            ast.parse(text)
            assert not re.search(r"(?<![\w.'\"])(nan|inf)(?![\w'\"])", text), where
    assert outcomes[0] and outcomes[2]  # the mutants exercise both outcomes
