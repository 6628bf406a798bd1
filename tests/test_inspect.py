"""``caffe2tf inspect``: report content (table and JSON), the first-update rates, the CLI's exit
codes and messages on bad input, and that TensorFlow/Keras are never imported."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from caffe2tf.app.inspect import first_rate, inspect_file
from caffe2tf.caffe.load import load_solver, sniff_kind
from caffe2tf.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "fixtures" / "lenet"


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "caffe2tf", "inspect", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_table_for_the_lenet_example() -> None:
    report = inspect_file(LENET / "solver.prototxt")
    assert report.exit_code == 0 and report.kind == "solver"
    text = report.render("table")
    lines = text.splitlines()
    delta = next(line for line in lines if line.strip().startswith("delta "))
    assert "(default)" in delta
    momentum = next(line for line in lines if line.strip().startswith("momentum "))
    assert "(default)" not in momentum and "0.9" in momentum and "solver.prototxt:7:1" in momentum
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.startswith("  conv") or line.startswith("  ip")
    }
    assert set(rows) == {
        "conv1/0",
        "conv1/1",
        "conv2/0",
        "conv2/1",
        "ip1/0",
        "ip1/1",
        "ip2/0",
        "ip2/1",
    }
    assert rows["conv1/0"][2] == "20x1x5x5" and rows["ip1/0"][2] == "500x800"
    # key type shape lr_mult decay_mult shared lr@0 decay@0
    assert rows["conv1/1"][3:] == ["2", "0", "-", "0.02", "0"]
    assert rows["ip2/0"][3:] == ["1", "1", "-", "0.01", "0.0005"]


def test_json_for_the_lenet_example() -> None:
    data = json.loads(inspect_file(LENET / "solver.prototxt").render("json"))
    fields = {f["name"]: f for f in data["solver"]["fields"]}
    assert fields["momentum"]["value"] == f32(0.9) and not fields["momentum"]["default"]
    assert fields["delta"]["default"] and fields["delta"]["value"] == f32(1e-8)
    assert fields["stepvalue"]["value"] == [5000, 8000]
    params = {p["key"]: p for p in data["net"]["params"]}
    assert len(params) == 8
    assert params["conv1/1"]["lr0"] == f32(f32(0.01) * 2)
    assert params["conv1/0"]["decay0"] == f32(f32(5e-4) * 1)
    assert params["conv1/1"]["decay0"] == 0
    assert params["ip1/0"]["shape"] == [500, 800]
    assert data["exit_code"] == 0 and isinstance(data["notes"], list)


def test_net_file(tmp_path: Path) -> None:
    report = inspect_file(LENET / "train.prototxt")
    assert report.kind == "net" and report.solver is None
    text = report.render("table")
    assert "lr@0" not in text and "conv2/0" in text
    assert json.loads(report.render("json"))["solver"] is None


def test_non_finite_values_are_valid_json(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 } } }\n'
    )
    solver = tmp_path / "s.prototxt"
    # fields the rule does not read may be non-finite (a rule that reads one is refused, see
    # docs/nonfinite.md)
    solver.write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nlr_policy: "fixed"\ngamma: 1e40\ndelta: -inf\n'
    )
    data = json.loads(inspect_file(solver).render("json"))
    fields = {f["name"]: f for f in data["solver"]["fields"]}
    assert fields["gamma"]["value"] == "inf" and fields["delta"]["value"] == "-inf"


@pytest.mark.parametrize(
    "extra,expected",
    [
        ('lr_policy: "fixed"', 0.1),
        ('lr_policy: "step" gamma: 0.5 stepsize: 10', 0.1),
        ('lr_policy: "multistep" gamma: 0.5 stepvalue: 0 stepvalue: 0', 0.05),
        ('lr_policy: "multistep" gamma: 0.5 stepvalue: 1', 0.1),
        ('lr_policy: "inv" gamma: 0.5 power: 2', 0.1),
        ('lr_policy: "poly" power: 2 max_iter: 10', 0.1),
        ('lr_policy: "sigmoid" gamma: 0.5 stepsize: 4', 0.1 / (1 + 2.718281828459045**2)),
    ],
)
def test_first_rate(tmp_path: Path, extra: str, expected: float) -> None:
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "x"\nbase_lr: 0.1\n{extra}\n')
    spec = load_solver(solver)
    assert first_rate(spec) == pytest.approx(f32(expected), rel=1e-6)


def test_sniff_kind(tmp_path: Path) -> None:
    assert sniff_kind(LENET / "solver.prototxt") == "solver"
    assert sniff_kind(LENET / "train.prototxt") == "net"
    p = tmp_path / "x.prototxt"
    p.write_text('# net written after a name\nname: "n"\nlayer { name: "a" }\n')
    assert sniff_kind(p) == "net"
    p.write_text('layers { name: "a" type: RELU }\n')
    assert sniff_kind(p) == "net"
    p.write_text("debug_info: true\nbase_lr: 1\n")
    assert sniff_kind(p) == "solver"
    p.write_text("   \n# only a comment\n")
    with pytest.raises(InputError, match="empty"):
        sniff_kind(p)
    p.write_text(" " * 50000 + "\n# c\n" * 1000 + "x")  # not blank, found in linear time
    with pytest.raises(InputError, match="neither a solver nor a net"):
        sniff_kind(p)
    p.write_text("foo: 1\n")
    with pytest.raises(InputError, match="neither a solver nor a net"):
        sniff_kind(p)


def test_cli_ok_and_json() -> None:
    proc = run_cli("fixtures/lenet/solver.prototxt")
    assert proc.returncode == 0, proc.stderr
    assert "conv1/0" in proc.stdout and "Traceback" not in proc.stderr
    proc = run_cli("fixtures/lenet/solver.prototxt", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["kind"] == "solver"


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, needle: str) -> None:
        p = tmp_path / f"{name}.prototxt"
        p.write_bytes(data)
        cases[name] = (p, needle)

    put("syntax", b'base_lr: 0.1\nlr_policy: "fixed"\nnet: "x"\nmomentum 0.9\n', ":4:")
    put("unknown_field", b'lr_policy: "fixed"\nnet: "x"\ncyclic_momentum: true\n', ":3:1:")
    put("wrong_type", b'lr_policy: "fixed"\nnet: "x"\nmax_iter: 0.5\n', ":3:")
    put("empty", b"", "empty")
    put("comments_only", b"# nothing here\n\n", "empty")
    put("garbage", bytes(range(256)) * 64, "error")
    put("nul", b'lr_policy: "fixed"\x00\n', "control character")
    put("deep", b"net_param { " + b"layer { " * 20000 + b"}" * 20001, "error")
    put("bad_policy", b'net: "x"\nlr_policy: "Step"\n', ":2:1:")
    put("net_syntax", b'layer { name: "a" type: "ReLU" bottom: "x" top: "x"\n', "error")
    cases["missing"] = (tmp_path / "missing.prototxt", "no such file")
    cases["directory"] = (tmp_path, "directory")
    return cases


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    for name, (path, needle) in _bad_inputs(tmp_path).items():
        proc = run_cli(str(path))
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert needle in proc.stderr, (name, proc.stderr)
        assert proc.stdout == "", name  # nothing written
        # one message (click adds a usage hint to its own argument errors)
        assert sum("error:" in x.lower() for x in proc.stderr.splitlines()) == 1, name


def test_cli_lenient_lists_skipped_items(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 } } }\n'
    )
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}"\nlr_policy: "fixed"\ncyclic_lr: 0.5\n')
    assert run_cli(str(solver)).returncode == 2
    proc = run_cli(str(solver), "--lenient")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "cyclic_lr" in x)
    assert ":3:1:" in line and "affects training" in line


def test_never_imports_tensorflow() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from caffe2tf.cli import cli\n"
        "from caffe2tf.app.inspect import inspect_file\n"
        "r = inspect_file('fixtures/lenet/solver.prototxt')\n"
        "r.render('table'); r.render('json')\n"
        "res = CliRunner().invoke(cli, ['inspect', 'fixtures/lenet/solver.prototxt'])\n"
        "assert res.exit_code == 0, res.output\n"
        "res = CliRunner().invoke(cli, ['inspect', 'fixtures/lenet/train.prototxt',\n"
        "                              '--format', 'json'])\n"
        "assert res.exit_code == 0, res.output\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('tensorflow', 'keras', 'jax', 'torch'))\n"
        "print(heavy)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.oracle
def test_fixture_param_tables_agree_with_caffe(caffe_root: Path) -> None:
    """Shapes of the learnable blobs of our fixture nets, as the real Caffe builds them."""
    from caffe2tf.caffe.load import load_net
    from caffe2tf.verify import oracle

    for path in (
        LENET / "train.prototxt",
        ROOT / "fixtures" / "legacy" / "v0_net.prototxt",
        ROOT / "fixtures" / "legacy" / "batchnorm_input.prototxt",
    ):
        ours = load_net(path)
        theirs = {
            (layer, index): shape
            for layer, index, shape in oracle.caffe_net_blobs(path.read_text(), root=caffe_root)
        }
        assert len(theirs) == len(ours.params) + sum(len(b.sharers) for b in ours.params)
        for blob in ours.params:
            assert theirs[(blob.layer, blob.index)] == blob.shape, (path, blob.key)


def test_mutated_inputs_never_crash(tmp_path: Path) -> None:
    """Random edits of real prototxt (seeded): every outcome is a report or an InputError."""
    import random

    from caffe2tf.errors import Caffe2TfError

    sources = sorted(ROOT.glob("fixtures/*/*.prototxt"))
    corpus = ROOT.parent / "shared" / "corpus"
    if corpus.is_dir():
        sources += sorted(p for p in corpus.rglob("*.prototxt"))[:10]
    pieces = [
        "{",
        "}",
        "<",
        ">",
        "[",
        "]",
        ":",
        ",",
        ";",
        "-",
        '"',
        "'",
        "#",
        "\n",
        "0x",
        "1e",
        "layer",
        "param",
        "lr_mult: 0",
        "inf",
        "nan",
        "\\",
        "\x00",
        "é",
        'type: "BatchNorm"',
        "blobs_lr: 2",
        "layers {",
        "input_dim: 3",
        'bottom: "x"',
        'lr_policy: "poly"',
        "solver_type: ADAM",
        "9" * 30,
    ]
    rnd = random.Random(20261122)
    target = tmp_path / "mutant.prototxt"
    for _ in range(150):
        data = rnd.choice(sources).read_text(encoding="utf-8", errors="surrogateescape")
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.4:
                data = data[:i] + rnd.choice(pieces) + data[i:]
            elif op < 0.7:
                data = data[:i] + data[i + rnd.randint(1, 20) :]
            else:
                j = rnd.randrange(len(data) + 1)
                data = data[:i] + data[j : j + rnd.randint(1, 200)] + data[i:]
        target.write_text(data, encoding="utf-8", errors="surrogateescape")
        for lenient in (False, True):
            try:
                report = inspect_file(target, lenient=lenient)
            except Caffe2TfError as err:
                assert err.message
                continue
            assert report.exit_code == 0
            report.render("table")
            json.loads(report.render("json"))


def test_net_override_and_number_display() -> None:
    report = inspect_file(
        LENET / "solver.prototxt", net_path=ROOT / "fixtures" / "legacy" / "v1_net.prototxt"
    )
    rows = {
        line.split()[0]: line.split()
        for line in report.render("table").splitlines()
        if line.startswith("  fc_a/")
    }
    # key type shape lr_mult decay_mult shared... ; 10 and 20 are written plainly
    assert rows["fc_a/0"][3:5] == ["10", "0.5"] and rows["fc_a/1"][3] == "20"
    assert rows["fc_a/0"][5] == "fc_w"  # the share name, then the sharers
    assert "(+fc_b/0)" in " ".join(rows["fc_a/0"])
    # lr at iteration 0 is the float32 product Caffe computes: fl(fl(0.01) * 10)
    assert f32(float(rows["fc_a/0"][-2])) == f32(f32(0.01) * 10)
