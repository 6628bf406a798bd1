"""Refusals that help (issue 11 item 3): a refused ``convert`` names its blocking notes one per
line; ``--allow-approx`` outputs say ``exact: false`` and list what is not exact (YAML and the
module's docstring); a solver with no train-net field plus ``--net NET`` and a solver with an
inline ``net_param`` work for every command, ``verify --against caffe`` included."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import require

from caffe2tf.cli import cli

NET = textwrap.dedent("""\
    name: "t"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      inner_product_param { num_output: 2 } }
    """)
# a DIGITS-style solver: no net field, test settings for a net given elsewhere
NO_NET = textwrap.dedent("""\
    base_lr: 0.1
    momentum: 0.9
    weight_decay: 0.001
    lr_policy: "step"
    gamma: 0.5
    stepsize: 2
    max_iter: 6
    test_iter: 3
    test_interval: 100
    """)


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "no_net.prototxt").write_text(NO_NET)
    indented = textwrap.indent(NET, "  ")
    (tmp_path / "inline.prototxt").write_text(
        NO_NET.replace("test_iter: 3\ntest_interval: 100\n", "") + f"net_param {{\n{indented}}}\n"
    )
    return tmp_path


def test_a_refusal_names_each_blocking_note_on_its_own_line(files: Path) -> None:
    solver = files / "lenient.prototxt"
    solver.write_text(
        'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n' + "foo: 1\nbar: 2\n"
    )
    code, text = invoke("convert", str(solver), "--lenient", "-o", str(files / "out"))
    assert code == 2 and not (files / "out").exists()
    tail = text[text.index("Blocked by:") :].splitlines()[1:]
    assert len(tail) == 2, text
    assert tail[0].startswith(f"  - {solver}:4:1: skipped unknown field foo")
    assert tail[1].startswith(f"  - {solver}:5:1: skipped unknown field bar")
    code, text = invoke(
        "convert", str(solver), "--lenient", "-o", str(files / "out"), "--format", "json"
    )
    data = json.loads(text)
    assert [n["location"] for n in data["blocking"]] == [f"{solver}:4:1", f"{solver}:5:1"]


def test_allow_approx_records_every_inexact_item(files: Path) -> None:
    solver = files / "lenient.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nfoo: 1\n')
    out = files / "out"
    code, text = invoke("convert", str(solver), "--lenient", "--allow-approx", "-o", str(out))
    assert code == 0, text
    config = yaml.safe_load((out / "train_config.yaml").read_text())
    assert config["exact"] is False
    assert [(i["code"], i["location"]) for i in config["inexact"]] == [
        ("lenient.skipped_field", f"{solver}:4:1")
    ]
    doc = (out / "optimizer.py").read_text().split('"""')[1]
    assert "NOT exact" in doc.splitlines()[0] and "trains exactly" not in doc
    assert f"{solver}:4:1: skipped unknown field foo" in " ".join(doc.split())
    # the JSON report agrees (it called this exact before)
    code, text = invoke(
        "convert", str(solver), "--lenient", "--allow-approx", "-o", str(out), "--force",
        "--format", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(text)["exact"] is False
    # an exact conversion says so, and lists nothing
    code, _ = invoke("convert", str(files / "inline.prototxt"), "-o", str(files / "exact"))
    config = yaml.safe_load((files / "exact" / "train_config.yaml").read_text())
    assert code == 0 and config["exact"] is True and config["inexact"] == []
    assert "trains exactly like" in (files / "exact" / "optimizer.py").read_text()


def test_no_net_field_needs_net_and_then_works_everywhere(files: Path) -> None:
    solver, net = str(files / "no_net.prototxt"), str(files / "net.prototxt")
    code, text = invoke("convert", solver, "-o", str(files / "x"))
    assert code == 2 and "--net NET" in text and len(text.strip().splitlines()) == 1
    out = str(files / "out")
    for args in (
        ("inspect", solver, "--net", net),
        ("explain", solver, "--net", net),
        ("convert", solver, "--net", net, "-o", out),
    ):
        code, text = invoke(*args)
        assert code == 0, (args, text)
    assert "used as if the solver said net: NET" in text
    _replay_works(files, solver, "--net", net)
    require("tensorflow")
    code, text = invoke("check", solver, out, "--net", net, "--steps", "3")
    assert code == 0 and "check PASSED" in text, text


def test_inline_net_works_everywhere(files: Path) -> None:
    solver = str(files / "inline.prototxt")
    out = str(files / "out")
    for args in (("inspect", solver), ("explain", solver), ("convert", solver, "-o", out)):
        code, text = invoke(*args)
        assert code == 0, (args, text)
    _replay_works(files, solver)
    require("tensorflow")
    code, text = invoke("check", solver, out, "--steps", "3")
    assert code == 0 and "check PASSED" in text, text


def _replay_works(files: Path, solver: str, *extra: str) -> None:
    np.savez(files / "init.npz", **{"ip/0": np.ones((2, 3), np.float32)})
    np.savez(files / "grads.npz", **{"0/ip/0": np.ones((2, 3), np.float32)})
    result = files / "replayed.npz"
    code, text = invoke(
        "replay", solver, *extra, "--init", str(files / "init.npz"),
        "--grads", str(files / "grads.npz"), "-o", str(result), "--force",
    )  # fmt: skip
    assert code == 0, text
    with np.load(result) as data:  # one SGD step: w - lr * (g + wd * w)
        assert np.allclose(data["1/ip/0"], 1 - 0.1 * (1 + 0.001), atol=1e-7)


@pytest.mark.oracle
def test_verify_against_caffe_with_no_net_field_and_with_an_inline_net(
    files: Path, caffe_root: Path
) -> None:
    require("tensorflow")
    net = str(files / "net.prototxt")
    for args in (
        (str(files / "no_net.prototxt"), "--net", net),
        (str(files / "inline.prototxt"),),
    ):
        code, text = invoke("verify", *args, "--against", "caffe", "--steps", "6")
        assert code == 0 and "PASS" in text, (args, text)


def test_a_fork_policy_kept_by_lenient_is_refused_in_one_line(files: Path) -> None:
    """--lenient keeps lr_policy "triangular" as written; building the rule then refuses it at
    the field (exit 2, one line) instead of a KeyError traceback."""
    solver = files / "clr.prototxt"
    solver.write_text(
        f'net: "{files / "net.prototxt"}"\nbase_lr: 0.1\nlr_policy: "triangular"\n'
        "max_lr: 3\nstepsize: 10\n"
    )
    for args in (("explain", str(solver)), ("convert", str(solver), "-o", str(files / "o"))):
        code, text = invoke(*args, "--lenient")
        assert code == 2 and len(text.strip().splitlines()) == 1, text
        assert text.startswith(f"{solver}:3:1: error: lr_policy 'triangular'"), text


def test_fork_layers_without_learnable_blobs_never_block(files: Path) -> None:
    """A fork's loss with its own parameters (py-faster-rcnn's SmoothL1Loss) shapes the model,
    not the update: skipped by --lenient, it does not block; a skipped field in a learnable
    layer still does."""
    net = NET + textwrap.dedent("""\
        layer { name: "loss" type: "SmoothL1Loss" bottom: "ip" bottom: "ip" top: "loss"
          smooth_l1_loss_param { sigma: 3 } }
        """)
    (files / "net.prototxt").write_text(net)
    (files / "solver.prototxt").write_text(f'net: "{files / "net.prototxt"}"\n' + NO_NET)
    args = ("convert", str(files / "solver.prototxt"), "--lenient", "-o", str(files / "out"))
    code, text = invoke(*args)
    assert code == 0, text
    assert "owns no learnable blob of the train net" in text
    learnable = net.replace("num_output: 2 }", "num_output: 2 fancy_init: 1 }")
    (files / "net.prototxt").write_text(learnable)
    code, text = invoke(*args, "--force")
    assert code == 2 and "fancy_init" in text[text.index("Blocked by:") :], text
