"""Bad input to any command: exit code 2, ONE line ``file[:line[:col]]: error: message`` on
stderr, no traceback, and nothing written (no partial output, no stray temporary folders).

Each test is a regression for a hole an audit found (a traceback, an OOM, click's three-line
usage block, or a misleading message)."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2tf.cli import cli

NET = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 } }
"""
SOLVER = (
    'net: "net.prototxt"\ntype: "SGD"\nbase_lr: 0.1\nmomentum: 0.9\n'
    'lr_policy: "fixed"\nweight_decay: 0.1\n'
)
ERROR_LINE = re.compile(r"^\S.*: error: \S.*$")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with solver.prototxt + net.prototxt + init.npz + grads.npz; cwd is it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    rng = np.random.default_rng(0)
    init = {
        "fc/0": rng.normal(size=(3, 4)).astype(np.float32),
        "fc/1": rng.normal(size=3).astype(np.float32),
    }
    np.savez(tmp_path / "init.npz", **init)
    np.savez(tmp_path / "grads.npz", **{f"{t}/{k}": v for t in range(3) for k, v in init.items()})
    (tmp_path / "adir").mkdir()
    return tmp_path


def listing(root: Path) -> set[str]:
    return {os.fspath(p.relative_to(root)) for p in root.rglob("*")}


def fails_cleanly(args: list[str], where: str | None = None) -> str:
    """Run the CLI; assert exit 2 and exactly one error line on stderr (and nothing on stdout),
    no traceback. ``where`` is the expected start of the line (its location). Returns it."""
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert "Usage:" not in lines[0]
    if where is not None:
        assert lines[0].startswith(f"{where}: error: "), lines[0]
    return lines[0]


def replay_args(
    *, init: str = "init.npz", grads: str = "grads.npz", out: str = "out.npz"
) -> list[str]:
    return ["replay", "solver.prototxt", "--init", init, "--grads", grads, "-o", out]


# -- 1. replay: a huge step number must not materialise range(step) ----------------------------


def test_replay_huge_step_reports_gap_without_allocating(work: Path) -> None:
    init = dict(np.load(work / "init.npz"))
    grads = {
        "0/fc/0": init["fc/0"],
        "99999999999999999999/fc/0": init["fc/0"],
        "3/fc/1": init["fc/1"],
    }
    np.savez(work / "grads.npz", **grads)
    before = listing(work)
    line = fails_cleanly(replay_args(), "grads.npz")
    assert "1, 2" in line and "missing" in line  # the first missing steps are named
    assert listing(work) == before


def test_replay_step_beyond_int64_and_very_long_digits(work: Path) -> None:
    init = dict(np.load(work / "init.npz"))
    np.savez(work / "grads.npz", **{"0/fc/0": init["fc/0"], "9" * 5000 + "/fc/0": init["fc/0"]})
    line = fails_cleanly(replay_args(), "grads.npz")
    assert len(line) < 400
    assert not (work / "out.npz").exists()


# -- 2. replay: .npy instead of .npz, and pickles ----------------------------------------------


@pytest.mark.parametrize("which", ["init", "grads"])
def test_replay_npy_instead_of_npz(work: Path, which: str) -> None:
    np.save(work / "x.npy", np.zeros(3, np.float32))
    line = fails_cleanly(replay_args(**{which: "x.npy"}), "x.npy")
    assert ".npz" in line
    assert not (work / "out.npz").exists()


def test_replay_pickle_in_npz_is_never_unpickled(work: Path) -> None:
    marker = work / "pwned"
    np.savez(work / "evil.npz", **{"fc/0": np.array([_Boom(str(marker))], dtype=object)})
    fails_cleanly(replay_args(init="evil.npz"), "evil.npz")
    assert not marker.exists()
    assert not (work / "out.npz").exists()


class _Boom:
    """Unpickling it creates a file: proof that the pickle was (not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path(self.path),))


def test_replay_zip_with_garbage_member(work: Path) -> None:
    with zipfile.ZipFile(work / "bad.npz", "w") as zf:
        zf.writestr("fc/0.npy", b"\x93NUMPY garbage")
    fails_cleanly(replay_args(grads="bad.npz"), "bad.npz")


# -- 3. replay: unwritable output ----------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_replay_output_in_unwritable_place(work: Path) -> None:
    fails_cleanly(replay_args(out="/proc/x.npz"), "/proc/x.npz")


def test_replay_output_is_a_directory(work: Path) -> None:
    before = listing(work)
    fails_cleanly(replay_args(out="adir"), "adir")
    assert listing(work) == before


# -- 4. convert: unwritable OUT, OUT = cwd or an ancestor, failed swap ---------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_convert_into_unwritable_place(work: Path) -> None:
    before = listing(work)
    fails_cleanly(["convert", "solver.prototxt", "-o", "/proc/foo"], "/proc/foo")
    assert listing(work) == before


@pytest.mark.parametrize("out,where", [(".", "."), ("..", ".."), ("./", "."), ("adir/..", None)])
def test_convert_force_refuses_cwd_and_its_parents(work: Path, out: str, where: str | None) -> None:
    before = listing(work)
    parent_before = set(os.listdir(work.parent))
    fails_cleanly(["convert", "solver.prototxt", "-o", out, "--force"], where)
    assert listing(work) == before
    assert set(os.listdir(work.parent)) == parent_before  # no ..old-XXXX / .tmp- folders


def test_convert_force_refuses_folder_holding_the_solver(work: Path, monkeypatch) -> None:
    inner = work / "recipe"
    inner.mkdir()
    (inner / "solver.prototxt").write_text(SOLVER.replace("net.prototxt", "../net.prototxt"))
    monkeypatch.chdir(work / "adir")
    fails_cleanly(
        [
            "convert",
            str(inner / "solver.prototxt"),
            "--net",
            str(work / "net.prototxt"),
            "-o",
            str(inner),
            "--force",
        ],
        str(inner),
    )
    assert (inner / "solver.prototxt").is_file()


def test_convert_failed_swap_restores_old_output_and_cleans_up(work: Path, monkeypatch) -> None:
    out = work / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):  # the second rename (new folder into place) fails
        if os.path.abspath(dst) == str(out) and Path(src).name.startswith(".out.tmp-"):
            raise OSError(16, "Device or resource busy")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    # the two-rename swap (used where the atomic exchange of two folders is not available)
    monkeypatch.setattr("caffe2tf.app.output.exchange", lambda a, b: False)
    before = listing(work)
    fails_cleanly(["convert", "solver.prototxt", "-o", "out", "--force"], "out")
    assert (out / "keep.txt").read_text() == "old"
    assert listing(work) == before  # no .out.tmp-*/.out.old-* left


# -- 5. convert --layer-map ------------------------------------------------------------------


def test_layer_map_not_utf8(work: Path) -> None:
    (work / "map.yaml").write_bytes(b"fc: dense\nx: \xff\xfe\n")
    line = fails_cleanly(
        ["convert", "solver.prototxt", "-o", "out", "--layer-map", "map.yaml"], "map.yaml:2:4"
    )
    assert "UTF-8" in line
    assert not (work / "out").exists()


@pytest.mark.parametrize(
    "text,where",
    [
        ("- fc\n- dense\n", "map.yaml:1:1"),  # a list
        ("fc: [dense]\n", "map.yaml:1:5"),  # value not a string
        ("fc: dense\n3: dense2\n", "map.yaml:2:1"),  # key not a string
        ("fc: a/b\n", "map.yaml:1:5"),  # '/' in a Keras name
        ("fc: dense\n  bad: [\n", "map.yaml:"),  # YAML syntax error
    ],
)
def test_layer_map_not_a_str_to_str_mapping(work: Path, text: str, where: str) -> None:
    (work / "map.yaml").write_text(text)
    line = fails_cleanly(["convert", "solver.prototxt", "-o", "out", "--layer-map", "map.yaml"])
    assert line.startswith(where), line
    assert not (work / "out").exists()


def test_layer_map_is_a_directory(work: Path) -> None:
    fails_cleanly(["convert", "solver.prototxt", "-o", "out", "--layer-map", "adir"], "adir")


# -- 6. verify --module / check with a broken module ---------------------------------------


def test_verify_module_with_syntax_error(work: Path) -> None:
    (work / "broken.py").write_text("def build_optimizer():\n    return (1,\n\nx = )\n")
    line = fails_cleanly(["verify", "solver.prototxt", "--module", "broken.py", "--steps", "1"])
    assert re.match(r"^broken\.py:\d+:\d+: error: SyntaxError", line), line


def test_verify_module_raising_at_import(work: Path) -> None:
    (work / "broken.py").write_text("import os\n\nraise RuntimeError('no GPU\\nhere')\n")
    line = fails_cleanly(
        ["verify", "solver.prototxt", "--module", "broken.py", "--steps", "1"], "broken.py:3"
    )
    assert "RuntimeError" in line and "no GPU here" in line


def test_verify_module_calling_sys_exit_at_import(work: Path) -> None:
    (work / "broken.py").write_text("import sys\nsys.exit(0)\n")
    line = fails_cleanly(
        ["verify", "solver.prototxt", "--module", "broken.py", "--steps", "1"], "broken.py:2"
    )
    assert "SystemExit" in line


def test_check_with_broken_module(work: Path) -> None:
    res = CliRunner().invoke(cli, ["convert", "solver.prototxt", "-o", "out"])
    assert res.exit_code == 0, res.output
    (work / "out" / "optimizer.py").write_text("def build_optimizer(:\n")
    line = fails_cleanly(["check", "solver.prototxt", "out", "--steps", "1"])
    assert re.match(r"^out/optimizer\.py:1:\d+: error: SyntaxError", line), line


def test_guarded_build_optimizer_names_module_and_line(tmp_path: Path) -> None:
    from caffe2tf.errors import InputError
    from caffe2tf.verify.candidate import candidate_from_module, load_module

    path = tmp_path / "mod.py"
    path.write_text(
        "def prepare_model(model):\n    return {}\n\n\n"
        "def build_optimizer():\n    raise KeyError('lr')\n"
    )
    cand = candidate_from_module(load_module(path))
    with pytest.raises(InputError) as err:
        cand.build_optimizer()
    assert str(err.value.location) == f"{path}:6"
    assert "build_optimizer()" in err.value.message and "KeyError" in err.value.message


@pytest.mark.keras
def test_verify_module_whose_build_optimizer_raises(work: Path) -> None:
    pytest.importorskip("keras")
    (work / "broken.py").write_text(
        "def prepare_model(model):\n    return {}\n\n\n"
        "def build_optimizer():\n    raise ValueError('boom')\n"
    )
    line = fails_cleanly(
        ["verify", "solver.prototxt", "--module", "broken.py", "--steps", "1"], "broken.py:6"
    )
    assert "build_optimizer()" in line and "ValueError: boom" in line


@pytest.mark.keras
def test_verify_module_whose_optimizer_fails_while_training(work: Path) -> None:
    """The optimizer's own step is user code too: a Python branch on a traced value (which
    neither TensorFlow's nor JAX's tracing allows) is reported at its line, not as a
    traceback."""
    pytest.importorskip("keras")
    (work / "broken.py").write_text(
        "import keras\n\n\n"
        "class Branchy(keras.optimizers.SGD):\n"
        "    def update_step(self, gradient, variable, learning_rate):\n"
        "        if keras.ops.any(keras.ops.isnan(gradient)):\n"
        "            gradient = keras.ops.zeros_like(gradient)\n"
        "        return super().update_step(gradient, variable, learning_rate)\n\n\n"
        "def build_optimizer():\n    return Branchy(0.1, momentum=0.9)\n\n\n"
        "def prepare_model(model):\n    return {}\n"
    )
    line = fails_cleanly(
        ["verify", "solver.prototxt", "--module", "broken.py", "--steps", "2"], "broken.py:6"
    )
    assert "the optimizer failed while verify trained with it" in line, line


def test_only_what_came_through_the_module_is_blamed_on_it(tmp_path: Path) -> None:
    """:func:`caffe2tf.verify.candidate.blame_module`: an exception raised through the module
    becomes an InputError at its deepest line there; one that never entered it (caffe2tf's own
    failure), or any when no module was given, stays as it was, traceback and all."""
    from caffe2tf.errors import InputError
    from caffe2tf.verify.candidate import blame_module, load_module

    path = tmp_path / "mod.py"
    path.write_text(
        "def prepare_model(model):\n    return {}\n\n\n"
        "def build_optimizer():\n    return None\n\n\n"
        "def step(x):\n    return helper(x)\n\n\n"
        "def helper(x):\n    return x['lr']\n"
    )
    module = load_module(path)
    with pytest.raises(InputError) as err, blame_module(str(path)):
        module.step({})
    assert str(err.value.location) == f"{path}:14"
    assert "KeyError: 'lr'" in err.value.message
    with pytest.raises(KeyError), blame_module(str(path)):
        {}["lr"]  # noqa: B018 (raised here, outside the module)
    with pytest.raises(KeyError), blame_module(None):
        module.step({})


# -- 7. a directory where a file is expected ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "adir"],
        ["explain", "adir"],
        ["convert", "adir", "-o", "x"],
        ["verify", "adir"],
        ["check", "adir", "x"],
        ["explain", "solver.prototxt", "--net", "adir"],
        ["replay", "adir", "--init", "init.npz", "--grads", "grads.npz", "-o", "y.npz"],
        ["replay", "solver.prototxt", "--init", "adir", "--grads", "grads.npz", "-o", "y.npz"],
    ],
)
def test_directory_instead_of_file(work: Path, args: list[str]) -> None:
    before = listing(work)
    line = fails_cleanly(args, "adir")
    assert "directory" in line
    assert listing(work) == before


def test_check_out_is_a_file(work: Path) -> None:
    line = fails_cleanly(["check", "solver.prototxt", "net.prototxt"], "net.prototxt")
    assert "directory" in line


def test_verify_plot_is_a_directory(work: Path) -> None:
    fails_cleanly(["verify", "solver.prototxt", "--plot", "adir"], "adir")


# -- 8. a net given as the solver; garbage reported the same way everywhere -------------------


@pytest.mark.parametrize(
    "cmd",
    [
        ["explain", "net.prototxt"],
        ["convert", "net.prototxt", "-o", "out"],
        ["replay", "net.prototxt", "--init", "init.npz", "--grads", "grads.npz", "-o", "o.npz"],
        ["verify", "net.prototxt"],
        ["check", "net.prototxt", "adir"],
        ["explain", "net.prototxt", "--lenient"],
    ],
)
def test_net_given_as_solver(work: Path, cmd: list[str]) -> None:
    if cmd[0] == "check":
        (work / "adir" / "train_config.yaml").write_text("{}\n")
        (work / "adir" / "optimizer.py").write_text("")
    before = listing(work)
    line = fails_cleanly(cmd, "net.prototxt")
    assert "is a net prototxt" in line and "--net net.prototxt" in line
    assert "has no field" not in line
    assert listing(work) == before


def test_solver_given_as_net(work: Path) -> None:
    line = fails_cleanly(
        ["explain", "solver.prototxt", "--net", "solver.prototxt"], "solver.prototxt"
    )
    assert "solver prototxt" in line


def test_binary_garbage_same_error_in_inspect_and_explain(work: Path) -> None:
    (work / "garbage.bin").write_bytes(bytes(range(1, 40)) * 5)
    a = fails_cleanly(["inspect", "garbage.bin"])
    b = fails_cleanly(["explain", "garbage.bin"])
    assert a == b
    assert re.match(r"^garbage\.bin:\d+:\d+: error: ", a), a


# -- 12. verify and check read their inputs before they import Keras ---------------------------

BAD_RUNS = [
    (["verify", "nonet.prototxt"], "nonet.prototxt: error: verify needs the train net"),
    (["verify", "solver.prototxt", "--steps", "0"], "caffe2tf: error: --steps must be at least 1"),
    (["verify", "solver.prototxt", "--module", "gone.py"], "gone.py: error: module gone.py"),
    (["verify", "solver.prototxt", "--module", "adir"], "adir: error: is a directory"),
    (["verify", "solver.prototxt", "--input-shape", "data=2,x"], "error: --input-shape"),
    (["check", "solver.prototxt", "gone"], "gone"),
]


def test_bad_input_is_reported_before_keras_is_imported(work: Path) -> None:
    """Importing Keras and TensorFlow takes seconds: a typo must not wait for it. One child
    process runs every bad command in turn and lists the heavy modules loaded after each."""
    import json
    import subprocess
    import sys
    import textwrap

    (work / "nonet.prototxt").write_text(SOLVER.replace("net.prototxt", "missing.prototxt"))
    code = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        from caffe2tf.cli import cli
        out = []
        for args in {json.dumps([a for a, _ in BAD_RUNS])}:
            res = CliRunner().invoke(cli, args)
            loaded = {{m.split(".")[0] for m in sys.modules}}
            heavy = sorted(loaded & {{"tensorflow", "keras", "jax"}})
            out.append((res.exit_code, res.stderr.strip(), heavy))
        print(json.dumps(out))
    """)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=work
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.splitlines()[-1])
    for (args, expected), (exit_code, stderr, heavy) in zip(BAD_RUNS, results, strict=True):
        assert exit_code == 2, (args, stderr)
        assert expected in stderr, (args, stderr)
        assert heavy == [], (args, heavy)
