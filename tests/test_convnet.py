"""cuda-convnet input (docs/cuda-convnet.md): the front end (good and bad files, errors at
file:line:col), the lowering against a float64 restatement of cuda-convnet's update written
from its source (tests/convnet_restatement.py), the JAX executor, and the emitted Keras
optimizer.py on TensorFlow and JAX -- each comparison shown to catch a planted mistake."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import convnet_restatement as restated
import keras_support as ks
import pytest
from click.testing import CliRunner
from conftest import need, require

from caffe2tf.app.pipeline import keras_plan, load_pipeline
from caffe2tf.cli import cli
from caffe2tf.convnet.cfg import parse_cfg
from caffe2tf.convnet.spec import read_convnet
from caffe2tf.errors import InputError
from caffe2tf.rule.model import Momentum
from caffe2tf.rule.reference import run_reference
from caffe2tf.rule.steps import STEP_FUNCTIONS, UpdateEnv

HERE = Path(__file__).parent
FIX = HERE.parent / "fixtures" / "convnet"
NETS = {
    "uniform": ("layers-cifar.cfg", "layer-params-cifar.cfg"),
    "mixed": ("layers-cifar.cfg", "layer-params-cifar-mixed.cfg"),
    "two_inputs": ("layers-two-inputs.cfg", "layer-params-two-inputs.cfg"),
}
STEPS = 150


def files(name: str) -> tuple[Path, Path]:
    layers, params = NETS[name]
    return FIX / layers, FIX / params


def shaped_rule(name: str):
    """The lowered rule with a shape on every blob (a Dense layer's (out, in) kernel and bias:
    the update is elementwise, so any shape serves) and Dense as every Keras layer."""
    rule = load_pipeline(files(name)[0], params_path=files(name)[1]).rule
    params = tuple(
        replace(g, shape=(3, 4) if g.index == 0 else (3,), layer_type="InnerProduct")
        for g in rule.params
    )
    return replace(rule, params=params)


def stream(name: str, steps: int = STEPS, seed: int = 5):
    rule = shaped_rule(name)
    init, grads = ks.streams(rule, steps, seed)
    return rule, init, grads


def restatement(name: str, init, grads, planted: str = ""):
    return restated.run(restated.blobs(*files(name)), init, grads, planted)


# ---- the front end ---------------------------------------------------------------------------


def test_reads_per_input_lists_and_both_separators() -> None:
    spec = read_convnet(*files("two_inputs"))
    joint = {w.name: w for w in spec.weight_layers}["joint"]
    assert joint.inputs == ("hidden", "side")
    assert [s.base for s in joint.eps_w] == [0.001, 0.004]
    assert joint.mom_w == (0.9, 0.5) and joint.wc == (0.004, 0.02) and joint.mom_b == 0.7
    hidden = {w.name: w for w in spec.weight_layers}["hidden"]
    assert hidden.wball == (0.0,) and hidden.mom_w == (0.9,)
    mixed = {w.name: w for w in read_convnet(*files("mixed")).weight_layers}
    assert mixed["conv2"].mom_w == (0.95,)  # 'key: value'
    assert mixed["local3"].eps_w[0].base == 0.0005  # inline comment dropped
    assert read_convnet(*files("mixed")).costs == (("logprob", 1.0),)


def test_configparser_dialect() -> None:
    text = (
        "# comment\n; another\n[a]\nType = fc\nrem a remark\ninputs=x,\n  y\n"
        "[b]\ntype=data\n[a]\nepsW=1 ;inline\n"
    )
    cfg = parse_cfg(text, "t.cfg")
    assert [s.name for s in cfg.sections] == ["a", "b"]  # a repeated section continues
    a = cfg.section("a")
    assert a is not None and a.get("TYPE").text == "fc"  # keys are case-insensitive
    assert a.get("inputs").text == "x,\ny"  # a continuation line
    assert a.get("epsW").text == "1"
    assert str(a.get("epsW").location) == "t.cfg:11:6"


BAD = [
    ("layers", "type=fc\n", "t:1:1", "before the first [section]"),
    ("layers", "[a]\ntype fc\n", "t:2:1", "expected 'key = value'"),
    ("layers", "[a]\ninputs=x\n", "t:1:1", "no type given"),
    ("layers", "[x]\ntype=data\n[a]\ntype=fcc\n", "t:4:6", "unknown layer type"),
    ("params", "[a]\nepsW=0.1\nepsB=0.1\nmomB=0.9\n", "p:1:1", "'momW' missing"),
    ("params", "[a]\nepsW=0.1,0.2,0.3\nepsB=0.1\nmomW=0.9\nmomB=0.9\n", "p:2:6", "3 values"),
    ("params", "[a]\nepsW=0.1\nepsB=0.1\nmomW=0.9\nmomB=fast\n", "p:5:6", "momB must be"),
    (
        "params",
        "[a]\nepsW=dexp[base=1;numSteps=2]\nepsB=0.1\nmomW=0.9\nmomB=0.9\n",
        "p:2:6",
        "takes base=...;tgtFactor=...;numSteps=...",
    ),
    (
        "params",
        "[a]\nepsW=cosine[base=1]\nepsB=0.1\nmomW=0.9\nmomB=0.9\n",
        "p:2:6",
        "cannot read learning-rate schedule",
    ),
    ("params", "[b]\nepsW=0.1\n", "t:3:1", "no [a] section"),
]


@pytest.mark.parametrize(("which", "text", "where", "message"), BAD)
def test_bad_files_are_one_line_errors_at_their_place(
    which: str, text: str, where: str, message: str, tmp_path: Path
) -> None:
    layers = "[x]\ntype=data\n[a]\ntype=fc\ninputs=x,x\noutputs=2\n"
    params = "[a]\nepsW=0.1\nepsB=0.1\nmomW=0.9\nmomB=0.9\n"
    (tmp_path / "t").write_text(text if which == "layers" else layers)
    (tmp_path / "p").write_text(text if which == "params" else params)
    with pytest.raises(InputError) as err:
        read_convnet(tmp_path / "t", tmp_path / "p")
    loc = err.value.location
    assert f"{Path(loc.path).name}:{loc.line}:{loc.col}" == where
    assert message in err.value.message
    # the CLI: exit 2, `file:line:col: message` on one line, no traceback
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(cli, ["convert", "t", "--params", "p", "-o", "out"])
    finally:
        os.chdir(old)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert f"{where}: " in res.output and message in res.output


def test_a_layers_file_without_params_is_a_usage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["convert", str(files("uniform")[0]), "-o", str(tmp_path / "out")]
    )
    assert res.exit_code == 2 and "--params layer-params.cfg" in res.output


def test_schedules_and_wball_are_refused_at_their_place(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli,
        [
            "convert",
            str(FIX / "layers-two-inputs.cfg"),
            "--params",
            str(FIX / "layer-params-schedule.cfg"),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 2 and not (tmp_path / "out").exists()
    assert "layer-params-schedule.cfg:3:6: layer 'hidden': epsW[0] dexp" in res.output
    assert "layer-params-schedule.cfg:8:7: layer 'hidden': wball 2.5" in res.output


# ---- the rule against the restatement --------------------------------------------------------


@pytest.mark.parametrize("name", list(NETS))
def test_lowered_rule_is_cuda_convnets_update(name: str) -> None:
    rule, init, grads = stream(name)
    expected = restatement(name, init, grads)
    got = run_reference(rule, init, grads, precision="float64")
    assert ks.deviation(init, expected, got) <= 1e-12
    # float32 (Caffe's roundings) stays within float32 noise of it
    assert ks.deviation(init, expected, run_reference(rule, init, grads)) <= 1e-5


def test_per_blob_momentum_matters_and_is_caught() -> None:
    for name in ("mixed", "two_inputs"):
        rule, init, grads = stream(name)
        expected = restatement(name, init, grads)
        # a rule executor that ignores each blob's own momentum (one momentum for all)
        registry = dict(STEP_FUNCTIONS)

        def shared(step: Momentum, env: UpdateEnv) -> None:
            groups = env.groups
            env.groups = {k: replace(g, momentum=None) for k, g in groups.items()}
            STEP_FUNCTIONS[Momentum](step, env)
            env.groups = groups

        registry[Momentum] = shared
        wrong = run_reference(rule, init, grads, precision="float64", registry=registry)
        assert ks.deviation(init, expected, wrong) > 1e-2, name
        # and the restatement's own planted mistakes are far from the rule
        right = run_reference(rule, init, grads, precision="float64")
        assert ks.deviation(init, restatement(name, init, grads, "shared_momentum"), right) > 1e-2


def test_decay_not_scaled_by_eps_is_caught() -> None:
    rule, init, grads = stream("uniform")
    right = run_reference(rule, init, grads, precision="float64")
    wrong = restatement("uniform", init, grads, "decay_unscaled")
    assert ks.deviation(init, wrong, right) > 1e-2


def test_jax_executor_follows_each_blobs_momentum() -> None:
    jax = require("jax")
    from caffe2tf.rule.jax_executor import run_jax

    rule, init, grads = stream("mixed", steps=60)
    expected = restatement("mixed", init, grads)
    with jax.enable_x64(True):
        got = run_jax(rule, init, grads, precision="float64")
    assert ks.deviation(init, expected, got) <= 1e-12
    wrong = restatement("mixed", init, grads, "shared_momentum")
    assert ks.deviation(init, wrong, got) > 1e-2


# ---- the emitted Keras module ----------------------------------------------------------------


def convert(name: str, out: Path, target: str = "keras") -> subprocess.CompletedProcess | object:
    layers, params = files(name)
    return CliRunner().invoke(
        cli,
        ["convert", str(layers), "--params", str(params), "-o", str(out), "--target", target],
    )


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name in NETS:
        d = tmp_path_factory.mktemp(name) / "out"
        res = convert(name, d)
        assert res.exit_code == 0, res.output
        out[name] = d
    return out


def test_train_config_records_each_blobs_momentum(emitted: dict[str, Path]) -> None:
    import yaml

    config = yaml.safe_load((emitted["two_inputs"] / "train_config.yaml").read_text())
    assert config["route"] == "multi" and config["exact"] is True
    momenta = {f"{v['keras_layer']}/{v['blob']}": v.get("momentum") for v in config["variables"]}
    assert momenta == {
        "hidden/0": 0.9,
        "hidden/1": 0.9,
        "joint/0": 0.9,
        "joint.in1/0": 0.5,
        "joint/1": 0.7,
    }
    text = (emitted["two_inputs"] / "optimizer.py").read_text()
    assert text.startswith('"""Keras 3 optimizer that trains exactly like a cuda-convnet net')
    assert "use a mean-reduced Keras loss" in " ".join(text.split())  # the loss convention
    assert config["source"] == {
        "layers": str(files("two_inputs")[0]),
        "params": str(files("two_inputs")[1]),
    }


def test_emitted_module_is_ruff_clean(emitted: dict[str, Path], tmp_path: Path) -> None:
    exe = shutil.which("ruff")
    need(exe is not None, "ruff is not on PATH (it is in the dev extras)")
    pyproject = HERE.parent / "pyproject.toml"
    for name, d in emitted.items():
        for extra in (["--isolated"], ["--config", str(pyproject)]):
            for cmd in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
                res = subprocess.run(
                    [exe, *cmd, *extra, str(d / "optimizer.py")],
                    capture_output=True,
                    text=True,
                    cwd=tmp_path,
                )
                assert res.returncode == 0, name + res.stdout + res.stderr


@pytest.mark.keras
@pytest.mark.parametrize("name", list(NETS))
def test_emitted_optimizer_matches_the_restatement_tf(name: str, emitted: dict[str, Path]) -> None:
    keras = require("keras")
    if keras.backend.backend() != "tensorflow":  # a deliberate KERAS_BACKEND choice
        pytest.skip(f"TF-backend test; KERAS_BACKEND selects {keras.backend.backend()!r}")
    rule, init, grads = stream(name)
    plan, _ = keras_plan_of(rule)
    module = ks.load_module(emitted[name] / "optimizer.py")
    got = ks.run_keras(module.build_optimizer, module.prepare_model, rule, init, grads, plan=plan)
    assert ks.deviation(init, restatement(name, init, grads), got) <= 1e-5
    if name != "uniform":  # teeth: one momentum for all is far from what Keras did
        wrong = restatement(name, init, grads, "shared_momentum")
        assert ks.deviation(init, wrong, got) > 1e-2
    wrong = restatement(name, init, grads, "decay_unscaled")
    assert ks.deviation(init, wrong, got) > 1e-2


def keras_plan_of(rule):
    """The Keras plan of a shaped rule (its bindings name the Dense layers to build)."""
    from caffe2tf.targets.keras.plan import plan

    p = plan(rule)
    return p, p.notes


JAX_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
import keras_support as ks
import test_convnet as t
out = {}
for name, folder in json.loads(sys.argv[2]).items():
    rule, init, grads = t.stream(name)
    plan, _ = t.keras_plan_of(rule)
    module = ks.load_module(folder + "/optimizer.py")
    got = ks.run_keras(module.build_optimizer, module.prepare_model, rule, init, grads,
                       plan=plan)
    out[name] = [ks.deviation(init, t.restatement(name, init, grads), got),
                 ks.deviation(init, t.restatement(name, init, grads, "shared_momentum"), got)]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.keras
@pytest.mark.slow
def test_emitted_optimizer_matches_the_restatement_jax(
    emitted: dict[str, Path], tmp_path: Path
) -> None:
    require("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    folders = {k: str(v) for k, v in emitted.items() if k != "uniform"}
    res = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(HERE), json.dumps(folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    for name, (dev, planted) in json.loads(lines[-1][len("RESULT ") :]).items():
        assert dev <= 1e-5, (name, dev)
        assert planted > 1e-2, (name, planted)


def test_other_targets_refuse_per_blob_momentum(tmp_path: Path) -> None:
    res = convert("mixed", tmp_path / "out", target="torch")
    assert res.exit_code == 2 and "only --target keras maps that" in res.output
    # one momentum for every blob is plain Caffe SGD: every target takes it
    res = convert("uniform", tmp_path / "out2", target="torch")
    assert res.exit_code == 0, res.output


def test_uniform_momentum_lives_on_the_step() -> None:
    rule = load_pipeline(*files("uniform")[:1], params_path=files("uniform")[1]).rule
    assert not rule.per_blob_momentum and all(g.momentum is None for g in rule.params)
    assert rule.solver_step == Momentum(0.9)
    p, _ = keras_plan(load_pipeline(files("uniform")[0], params_path=files("uniform")[1]))
    assert p.route == "multi" and all(b.momentum is None for b in p.blobs)


def test_restatement_reads_the_files_like_the_front_end() -> None:
    # the two readers agree on which blobs exist and on their hyper-parameters
    for name in NETS:
        rule = load_pipeline(files(name)[0], params_path=files(name)[1]).rule
        step = rule.solver_step
        mine = {g.key: (g.lr_mult, g.momentum_or(step.momentum), g.decay_mult) for g in rule.params}
        theirs = restated.blobs(*files(name))
        assert mine.keys() == theirs.keys()
        for k, (eps, mom, wc) in theirs.items():
            assert mine[k] == (eps, mom, max(wc, 0.0)), k


def test_explain_shows_each_blobs_momentum() -> None:
    layers, params = files("two_inputs")
    res = CliRunner().invoke(cli, ["explain", str(layers), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "mu_p = each blob's own momentum" in res.output
    row = next(ln for ln in res.output.splitlines() if ln.strip().startswith("joint.in1/0"))
    assert row.split()[-1] == "0.5" and row.split()[3] == "0.004"
    res = CliRunner().invoke(
        cli, ["explain", str(layers), "--params", str(params), "--format", "json"]
    )
    blobs = {b["key"]: b for b in json.loads(res.output)["blobs"]}
    assert blobs["joint/1"]["momentum"] == 0.7 and blobs["joint/1"]["decay_mult"] == 0.0


def test_inspect_points_a_cfg_to_explain() -> None:
    res = CliRunner().invoke(cli, ["inspect", str(files("uniform")[0])])
    assert res.exit_code == 2 and "--params" in res.output and "Traceback" not in res.output


def test_a_schedule_is_its_base_rate_only_with_allow_approx(tmp_path: Path) -> None:
    text = (FIX / "layer-params-schedule.cfg").read_text().replace("wball=2.5", "wball=0")
    (tmp_path / "params.cfg").write_text(text)
    args = ["convert", str(FIX / "layers-two-inputs.cfg"), "--params", str(tmp_path / "params.cfg")]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "would not be exact" in res.output
    assert "params.cfg:3:6: layer 'hidden': epsW[0] dexp" in res.output
    assert "while the progress p <= 1/4" in res.output
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out"), "--allow-approx"])
    assert res.exit_code == 0, res.output
    import yaml

    config = yaml.safe_load((tmp_path / "out" / "train_config.yaml").read_text())
    assert config["exact"] is False
    assert [n["code"] for n in config["inexact"]] == ["convnet.schedule"]
    hidden = next(v for v in config["variables"] if v["keras_layer"] == "hidden" and v["blob"] == 0)
    assert hidden["lr_mult"] == 0.01  # dexp's base
    assert "training progress" in (tmp_path / "out" / "optimizer.py").read_text()


def test_blobs_whose_eps_is_not_positive_never_move(tmp_path: Path) -> None:
    text = (FIX / "layer-params-two-inputs.cfg").read_text()
    text = text.replace("epsW=0.001,0.004", "epsW=nan,-0.004").replace("epsB=0.02", "epsB=0")
    (tmp_path / "params.cfg").write_text(text)
    layers = FIX / "layers-two-inputs.cfg"
    rule = load_pipeline(layers, params_path=tmp_path / "params.cfg").rule
    frozen = {g.key for g in rule.params if not g.trainable}
    assert frozen == {"joint/0", "joint.in1/0", "hidden/1"}
    rule = replace(
        rule,
        params=tuple(replace(g, shape=(3, 4) if g.index == 0 else (3,)) for g in rule.params),
    )
    init, grads = ks.streams(rule, 30, 2)
    grads = [{k: v + 1.0 for k, v in g.items()} for g in grads]  # a gradient on every blob
    expected = restated.run(restated.blobs(layers, tmp_path / "params.cfg"), init, grads)
    got = run_reference(rule, init, grads, precision="float64")
    assert ks.deviation(init, expected, got) <= 1e-12
    for key in frozen:
        assert (got[-1][key] == init[key]).all() and (expected[-1][key] == init[key]).all()


def test_python_api_reads_layer_files(tmp_path: Path) -> None:
    import caffe2tf

    layers, params = files("mixed")
    conversion = caffe2tf.convert(layers, params=params)
    assert not conversion.blocking and conversion.plan.route == "multi"
    momenta = {b.key: b.momentum for b in conversion.plan.blobs}
    assert momenta["conv2/0"] == 0.95 and momenta["fc10/1"] == 0.99


def test_layer_map_renames_the_keras_layer_of_an_extra_input(tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text("joint.in1: joint_side\n")
    layers, params = files("two_inputs")
    args = ["convert", str(layers), "--params", str(params), "--layer-map"]
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "map.yaml"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "o" / "optimizer.py").read_text()
    assert '("joint_side", 0, 0.004, 0.02' in text and '"joint_side/0": 0.5' in text
    (tmp_path / "bad.yaml").write_text("nosuch: x\n")
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "p")])
    assert res.exit_code == 2 and "bad.yaml:1:1" in res.output
