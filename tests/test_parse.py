"""The text-format reader: what it accepts/rejects (as protobuf 3.12's C++ TextFormat in Caffe
1.0 does), the values it produces, the position map, lenient skipping, and bad input."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

from caffe2tf.caffe._proto import caffe_pb2 as pb
from caffe2tf.caffe.parse import MAX_DEPTH, parse_file, parse_text
from caffe2tf.errors import InputError

# (kind, text, accepted?) -- each verdict observed with Caffe's upgrade_*_proto_text, and
# re-checked against the binary by test_cases_agree_with_caffe (oracle).
CASES: list[tuple[str, str, bool]] = [
    ("solver", 'stepvalue: [1, 2]\nlr_policy: "x"', True),
    ("solver", 'net_param: { name: "a" }', True),
    ("solver", 'net_param < name: "a" >', True),
    ("solver", 'lr_policy: "fi" "xed"', True),
    ("solver", "lr_policy: 'fixed'", True),
    ("solver", "base_lr: 1e-4\ngamma: .5\npower: inf\nmomentum: -inf", True),
    ("solver", "delta: 0x10", False),
    ("solver", "base_lr: 1.0f", True),
    ("solver", "base_lr: 1f", True),
    ("solver", "max_iter: 1f", False),
    ("solver", "max_iter: 0x10\nstepsize: 010\ndisplay: -0", True),
    ("solver", "max_iter: 2147483648", False),
    ("solver", "max_iter: -2147483649", False),
    ("solver", "max_iter: -2147483648", True),
    ("solver", "max_iter: 1.0", False),
    ("solver", "max_iter: 1e3", False),
    ("solver", "max_iter: 08", False),
    (
        "solver",
        "snapshot_diff: t\ndebug_info: True\ntest_compute_loss: 1\nsnapshot_after_train: f",
        True,
    ),
    ("solver", "snapshot_diff: 2", False),
    ("solver", "snapshot_diff: TRUE", False),
    ("solver", 'snapshot_diff: "true"', False),
    ("solver", "debug_info: 0x1", True),
    ("solver", "debug_info: -1", False),
    ("solver", "solver_mode: 0", True),
    ("solver", "solver_mode: 5", False),
    ("solver", "solver_mode: GPUX", False),
    ("solver", "solver_mode: cpu", False),
    ("solver", "base_lr: 0.1; gamma: 0.2, power: 1", True),
    ("solver", "stepvalue: 1;;", False),
    ("solver", "lr_policy: fixed", False),
    ("solver", "type: 5", False),
    ("solver", "base_lr: - 0.01", True),
    ("solver", "base_lr: +1", False),
    ("solver", "base_lr: 0.01abc", False),
    ("solver", "base_lr: 1e", False),
    ("solver", "base_lr: 01.5", False),
    ("solver", "base_lr: 00", False),
    ("solver", "base_lr: Inf\ngamma: NaN\npower: INFINITY", True),
    ("solver", "base_lr: nanx", False),
    ("solver", "Base_lr: 1", False),
    ("solver", "4: 0.1", False),
    ("solver", 'lr_policy: "a\\x41\\101\\n\\u0041"', True),
    ("solver", 'lr_policy: "a\\qb"', False),
    ("solver", 'lr_policy: "\\xzz"', False),
    ("solver", 'lr_policy: "abc', False),
    ("solver", 'lr_policy: "ab\nc"', False),
    ("solver", "base_lr: 0.1 base_lr: 0.1", False),
    ("solver", 'net_param { name: "a" } net_param { name: "b" }', False),
    ("solver", 'net_param: "x"', False),
    ("solver", "base_lr 0.1", False),
    ("solver", "stepvalue: []", True),
    ("solver", "stepvalue: [2,3,]", False),
    ("solver", "stepvalue: [1 2]", False),
    ("solver", "stepvalue: 1 stepvalue: [2,3] stepvalue: 4", True),
    ("solver", 'test_net_param: [ {name: "a"}, <name: "b"> ]', True),
    ("solver", 'net_param: [ {name: "a"} ]', False),
    ("solver", "net_param {", False),
    ("solver", 'net_param { name: "a" }}', False),
    ("solver", "base_lr: 1 # comment\n# another\ngamma: 2#x", True),
    ("solver", "base_lr: 1 /* c */", False),
    ("solver", "random_seed: 9223372036854775808", False),
    ("solver", "random_seed: -9223372036854775808", True),
    ("solver", "", True),
    ("net", 'layer { name: "a" convolution_param { num_output: -1 } }', False),
    ("net", 'layer { name: "a" convolution_param { num_output: 4294967296 } }', False),
    ("net", 'layer { name: "a" convolution_param { engine: 1 } }', True),
    (
        "net",
        "layer { param { lr_mult: 1 } param: { decay_mult: 0 } "
        'param [ { name: "x" }, { share_mode: PERMISSIVE } ] }',
        True,
    ),
    ("net", "layers { type: CONVOLUTION blobs_lr: 1 }", True),
    ("net", "layers { type: convolution }", False),
    ("net", 'layer { name: "a" } ; layer { name: "b" },', True),
]


def _message(kind: str):
    return pb.SolverParameter() if kind == "solver" else pb.NetParameter()


@pytest.mark.parametrize("kind,text,accepted", CASES)
def test_accepts_what_caffe_accepts(kind: str, text: str, accepted: bool) -> None:
    if accepted:
        parse_text(text, _message(kind), path="t.prototxt")
    else:
        with pytest.raises(InputError) as info:
            parse_text(text, _message(kind), path="t.prototxt")
        loc = info.value.location
        assert loc is not None and loc.path == "t.prototxt" and loc.line is not None


def _cpp_verdicts(root: Path, cases: list[tuple[str, str, bool]]) -> list[bool]:
    """Run Caffe's upgrade_{solver,net}_proto_text (C++ TextFormat) on every case, in one
    chroot call; True where it accepted the text."""
    import shutil
    import tempfile

    from caffe2tf.verify import oracle

    (root / "tmp").mkdir(exist_ok=True)
    host = Path(tempfile.mkdtemp(prefix="caffe2tf-parse-", dir=root / "tmp"))
    inside = "/" + str(host.relative_to(root))
    try:
        lines = ["#!/bin/sh"]
        for i, (kind, text, _) in enumerate(cases):
            (host / f"{i}.prototxt").write_bytes(text.encode())
            lines.append(
                f"upgrade_{kind}_proto_text {inside}/{i}.prototxt {inside}/{i}.out "
                f">/dev/null 2>&1; echo $? > {inside}/{i}.rc"
            )
        (host / "run.sh").write_text("\n".join(lines) + "\n")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GLOG_minloglevel": "3"}
        subprocess.run(
            oracle.privileged(["chroot", str(root), "/bin/sh", f"{inside}/run.sh"], env),
            check=True,
            capture_output=True,
            timeout=300,
        )
        return [(host / f"{i}.rc").read_text().strip() == "0" for i in range(len(cases))]
    finally:
        shutil.rmtree(host, ignore_errors=True)


@pytest.mark.oracle
def test_cases_agree_with_caffe(caffe_root: Path) -> None:
    verdicts = _cpp_verdicts(caffe_root, CASES)
    disagreements = [case for case, cpp in zip(CASES, verdicts, strict=True) if cpp != case[2]]
    assert disagreements == []


def test_values() -> None:
    msg = pb.SolverParameter()
    parse_text(
        "base_lr: .5 momentum: 0.9 max_iter: 0x10 stepsize: 010 lr_policy: \"a\" 'b'\n"
        "gamma: 1e40 power: -inf stepvalue: [1, 2] stepvalue: 3 debug_info: t\n"
        "solver_mode: 0 random_seed: -0x10",
        msg,
    )
    assert msg.base_lr == 0.5
    assert msg.momentum == pytest.approx(0.9, abs=1e-7) and msg.momentum != 0.9  # float32
    assert (msg.max_iter, msg.stepsize) == (16, 8)
    assert msg.lr_policy == "ab"
    assert math.isinf(msg.gamma) and msg.gamma > 0  # float overflow -> inf as in C++
    assert math.isinf(msg.power) and msg.power < 0
    assert list(msg.stepvalue) == [1, 2, 3]
    assert msg.debug_info is True
    assert msg.solver_mode == pb.SolverParameter.CPU
    assert msg.random_seed == -16


def test_escapes() -> None:
    msg = pb.SolverParameter()
    parse_text(r'lr_policy: "\a\b\f\n\r\t\v\\\?\'\"\101\x41\u00e9"', msg)
    assert msg.lr_policy == "\a\b\f\n\r\t\v\\?'\"AAé"


def test_position_map() -> None:
    text = (
        'net_param {\n  layer {\n    name: "a"\n    param { lr_mult: 2 }\n  }\n'
        "  layer { param [ { decay_mult: 0 }, { lr_mult: 3 } ] }\n}\n"
        "stepvalue: [10,\n  20]\n  base_lr: 1\n"
    )
    parsed = parse_text(text, pb.SolverParameter(), path="s.prototxt")
    loc = parsed.locations
    assert (loc["net_param"].line, loc["net_param"].col) == (1, 1)
    assert (loc["net_param.layer[0]"].line, loc["net_param.layer[0]"].col) == (2, 3)
    assert (
        loc["net_param.layer[0].param[0].lr_mult"].line,
        loc["net_param.layer[0].param[0].lr_mult"].col,
    ) == (4, 13)
    assert loc["net_param.layer[1].param[1].lr_mult"].line == 6
    assert (loc["stepvalue[1]"].line, loc["stepvalue[1]"].col) == (9, 3)
    assert (loc["base_lr"].line, loc["base_lr"].col, loc["base_lr"].path) == (10, 3, "s.prototxt")
    # a field that was not written falls back to its closest written parent
    assert (
        parsed.location("net_param.layer[0].param[0].decay_mult")
        == loc["net_param.layer[0].param[0]"]
    )


def test_error_positions() -> None:
    with pytest.raises(InputError) as info:
        parse_text('lr_policy: "fixed"\n\n   bogus: 3\n', pb.SolverParameter(), path="x")
    assert (info.value.location.line, info.value.location.col) == (3, 4)
    assert "bogus" in info.value.message and "--lenient" in info.value.message
    with pytest.raises(InputError) as info:
        parse_text("base_lr: 1\nbase_lr: 2\n", pb.SolverParameter(), path="x")
    assert info.value.location.line == 2 and "multiple times" in info.value.message


def test_lenient_skips_and_reports() -> None:
    text = (
        "base_lr: 0.1\nlarc: true\nrampup_lr { a: 1 b { c: [1, 2] } }\n"
        'display_extra: "x"\nlr_policy: "step"\n'
        "net_param { layer { param { lr_mult: 1 lr_boost: 2 }\n"
        "  roi_pooling_param { pooled_w: 7 } data_fancy_param { x: 1 }\n"
        "  pooling_param { ceil_mode: true pool: AVE } } }\n"
        "solver_mode: TPU\n"
    )
    parsed = parse_text(text, pb.SolverParameter(), path="s", lenient=True)
    msg = parsed.message
    assert msg.base_lr == pytest.approx(0.1) and msg.lr_policy == "step"
    assert msg.net_param.layer[0].param[0].lr_mult == 1
    assert msg.net_param.layer[0].pooling_param.pool == pb.PoolingParameter.AVE
    assert not msg.HasField("solver_mode")
    by_path = {}
    for note in parsed.notes:
        assert note.location is not None and note.location.line is not None
        for key in (
            "larc",
            "rampup_lr",
            "display_extra",
            "lr_boost",
            "roi_pooling_param",
            "data_fancy_param",
            "ceil_mode",
            "solver_mode",
        ):
            if key in note.message:
                by_path[key] = note
    assert set(by_path) == {
        "larc",
        "rampup_lr",
        "display_extra",
        "lr_boost",
        "roi_pooling_param",
        "data_fancy_param",
        "ceil_mode",
        "solver_mode",
    }
    assert by_path["larc"].affects_training and by_path["rampup_lr"].affects_training
    assert by_path["lr_boost"].affects_training  # inside param {}
    assert by_path["roi_pooling_param"].affects_training
    assert by_path["ceil_mode"].affects_training
    assert not by_path["display_extra"].affects_training
    assert not by_path["data_fancy_param"].affects_training
    assert not by_path["solver_mode"].affects_training
    assert by_path["larc"].location.line == 2
    assert "net_param.layer[0].param[0].lr_boost" in by_path["lr_boost"].message


def test_lenient_list_for_singular_field() -> None:
    parsed = parse_text("device_id: [0, 1]\nbase_lr: 1", pb.SolverParameter(), lenient=True)
    assert parsed.message.base_lr == 1 and not parsed.message.HasField("device_id")
    assert len(parsed.notes) == 1 and not parsed.notes[0].affects_training
    with pytest.raises(InputError):
        parse_text("device_id: [0, 1]", pb.SolverParameter())


def test_lenient_still_rejects_syntax_errors() -> None:
    for text in ("foo { a: 1", "foo: ", "base_lr: x", "foo { a: 1 >"):
        with pytest.raises(InputError):
            parse_text(text, pb.SolverParameter(), lenient=True)


@pytest.mark.parametrize("lenient", [False, True])
def test_deep_nesting_is_a_clear_error(lenient: bool) -> None:
    deep = "foo { " * 5000 + "}" * 5000
    with pytest.raises(InputError) as info:
        parse_text(deep, pb.SolverParameter(), lenient=lenient)
    assert "nest" in info.value.message or "no field" in info.value.message
    ok = "foo { " * (MAX_DEPTH - 1) + "}" * (MAX_DEPTH - 1)
    parse_text(ok, pb.SolverParameter(), lenient=True)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        parse_file(tmp_path / "missing.prototxt", pb.SolverParameter())
    with pytest.raises(InputError, match="directory"):
        parse_file(tmp_path, pb.SolverParameter())
    fifo = tmp_path / "pipe.prototxt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        parse_file(fifo, pb.SolverParameter())  # must not block reading the pipe
    binary = tmp_path / "garbage.prototxt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError) as info:
        parse_file(binary, pb.SolverParameter())
    assert info.value.location.line == 1
    nul = tmp_path / "nul.prototxt"
    nul.write_bytes(b"base_lr: 1\x00\n")
    with pytest.raises(InputError, match="control character"):
        parse_file(nul, pb.SolverParameter())
    latin = tmp_path / "latin1.prototxt"
    latin.write_bytes(b"# caf\xe9 in a comment is fine\nbase_lr: 1\n")
    assert parse_file(latin, pb.SolverParameter()).message.base_lr == 1
    latin.write_bytes(b"base_lr: 1\ngamma: \xe9\n")
    with pytest.raises(InputError, match="not UTF-8") as info:
        parse_file(latin, pb.SolverParameter())
    assert (info.value.location.line, info.value.location.col) == (2, 8)
    latin.write_bytes(b'lr_policy: "caf\xe9"\n')
    with pytest.raises(InputError, match="not valid UTF-8"):
        parse_file(latin, pb.SolverParameter())


def test_huge_file_is_linear(tmp_path: Path) -> None:
    # 20000 layers (~1.4 MB): must parse without blowing up (no quadratic paths).
    layer = 'layer { name: "l" type: "ReLU" bottom: "x" top: "x" }\n'
    big = tmp_path / "big.prototxt"
    big.write_text(layer * 20000)
    parsed = parse_file(big, pb.NetParameter())
    assert len(parsed.message.layer) == 20000
    assert parsed.locations["layer[19999]"].line == 20000


def test_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import caffe2tf.caffe.parse as parse_mod

    monkeypatch.setattr(parse_mod, "MAX_FILE_BYTES", 100)
    big = tmp_path / "big.prototxt"
    big.write_text("base_lr: 1\n" * 20)
    with pytest.raises(InputError, match="refusing to read"):
        parse_file(big, pb.SolverParameter())


def test_first_error_wins_and_blocks_join(tmp_path: Path) -> None:
    # the parser reports the first problem in reading order, even when a later line cannot
    # even be tokenized (as the C++ tokenizer+parser pair does)
    with pytest.raises(InputError) as info:
        parse_text("bogus: 1\nbase_lr: \x00\n", pb.SolverParameter())
    assert info.value.location.line == 1 and "bogus" in info.value.message
    # a text longer than one tokenizer block: values, strings and comments on every line
    lines = [
        f'layer {{ name: "l{i}" type: "ReLU" bottom: "x" top: "x" }}  # c {i}' for i in range(4000)
    ]
    text = "\n".join(lines) + "\nlayer { name: 'bad\n"
    with pytest.raises(InputError) as info:
        parse_text(text, pb.NetParameter())
    assert info.value.location.line == 4001
    parsed = parse_text("\n".join(lines), pb.NetParameter())
    assert [layer.name for layer in parsed.message.layer[::1000]] == [
        "l0",
        "l1000",
        "l2000",
        "l3000",
    ]
    assert parsed.locations["layer[3999].name"].line == 4000


PATHOLOGICAL = [
    "1." + "e" * 100000,
    "0x" + "g" * 100000,
    "x" * 100000,
    "max_iter: " + "9" * 100000,
    " " * 100000 + "\x00",
    'lr_policy: "' + "\\\\" * 50000 + '"\nbogus: 1',
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=[str(i) for i in range(len(PATHOLOGICAL))])
def test_pathological_tokens_are_fast_and_short(text: str) -> None:
    # no regex backtracking blow-up, and the message quotes at most a short piece of the token
    with pytest.raises(InputError) as info:
        parse_text(text, pb.SolverParameter())
    assert len(info.value.message) < 300
