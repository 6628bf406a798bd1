"""Both rules on one device: on Keras' JAX backend verify runs the candidate, the compiled
Caffe rule and the comparison as one JAX program (caffe2tf/verify/device.py) and says so; a
wrong port still fails there; on TensorFlow's, Caffe's rule runs compiled by TensorFlow
(tests/test_verify_host_tf.py). ``--device`` chooses the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")
jax = require("jax")

from caffe2tf.cli import cli  # noqa: E402

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[1]

WRONG = textwrap.dedent('''
    """A hand port that forgets Caffe's weight decay and its schedule."""
    import keras


    def build_optimizer():
        return keras.optimizers.SGD(0.01, momentum=0.9)


    def prepare_model(model):
        return {}
''')

SCRIPT = textwrap.dedent("""
    import json, sys
    from caffe2tf._quiet import import_keras_quietly
    import_keras_quietly()
    from caffe2tf.app.verify import verify_solver
    from caffe2tf.errors import InputError
    out = {}
    right = verify_solver("fixtures/zoo/resnet/solver.prototxt", steps=3, norms=True)
    names = [c["component"] for c in right.component_verdicts()]
    out["right"] = [right.passed, right.device, names]
    stream = next(r for r in right.runs if r.component == "stream").comparison
    ref, cand = stream.reference_norms, stream.candidate_norms
    gaps = [abs(c - r) / r for k in ref for r, c in zip(ref[k], cand[k]) if r > 0]
    lengths = sorted({len(v) for v in ref.values()})
    out["norms"] = [sorted(ref) == sorted(right.shapes), lengths, max(gaps)]
    plain = verify_solver("fixtures/zoo/resnet/solver.prototxt", steps=3)
    out["plain_norms"] = [bool(r.comparison.reference_norms) for r in plain.runs]
    wrong = verify_solver("fixtures/lenet/solver.prototxt", steps=5, module_path=sys.argv[1])
    out["wrong"] = [wrong.passed, wrong.comparison.deviation]
    from caffe2tf.verify import device
    device.HOIST_MAX_ELEMENTS = 0  # as above VGG16's size: the per-blob tables remade per update
    remade = verify_solver("fixtures/lenet/solver.prototxt", steps=5, module_path=sys.argv[1])
    out["remade"] = [remade.passed, remade.comparison.deviation]
    try:
        verify_solver("fixtures/lenet/solver.prototxt", steps=2, device="gpu")
        out["gpu"] = "ran"
    except InputError as err:
        out["gpu"] = str(err)
    print("RESULT" + json.dumps(out))
""")


def on_jax(script: str, *args: str) -> dict:
    """What ``script`` printed after ``RESULT`` (JSON), run in a child process on Keras' JAX
    backend from the repository's root."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None and proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(line[len("RESULT") :])


def test_on_the_jax_backend_both_rules_run_as_one_program(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    out = on_jax(SCRIPT, str(wrong))
    passed, device, components = out["right"]
    assert passed and "one JAX program" in device, out
    assert {"stream", "schedule", "decay", "state"} <= set(components)
    # the fused program also returns each blob's weight norm per update, on both sides
    every_blob, lengths, gap = out["norms"]
    assert every_blob and lengths == [3] and gap < 1e-5, out["norms"]
    assert not any(out["plain_norms"])  # not asked for (no plot): none kept
    assert out["wrong"][0] is False and out["wrong"][1] > 1e-3
    # the gradients' per-blob tables kept across updates or made in each: the same run
    assert out["remade"][0] is False
    assert out["remade"][1] == pytest.approx(out["wrong"][1], rel=1e-5)
    if not _any_gpu():
        assert "--device gpu" in out["gpu"] and "no such device" in out["gpu"]


def _any_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def test_on_tensorflow_both_rules_run_there_and_the_report_names_it(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(
        cli,
        ["verify", "fixtures/lenet/solver.prototxt", "--steps", "3", "--device", "cpu"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "TensorFlow CPU (both rules, Caffe's compiled with XLA" in result.output
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        result = CliRunner().invoke(
            cli,
            ["verify", "fixtures/lenet/solver.prototxt", "--steps", "3", "--device", "gpu"],
            catch_exceptions=False,
        )
        assert result.exit_code == 2 and "--device gpu" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


AHEAD = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    from caffe2tf._quiet import import_keras_quietly
    import_keras_quietly()
    import jax
    from caffe2tf.app.convert import convert_solver
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.verify import components, mirror
    from caffe2tf.verify.candidate import load_module
    from caffe2tf.verify.device import DeviceEngine
    from caffe2tf.verify.inputs import initial_weights

    recipe = "tests/cases/clip_decay_sgd/solver.prototxt"
    rule = load_pipeline(recipe).rule
    shapes = {g.key: tuple(g.shape) for g in rule.params}
    runs = components.plan_runs(rule, shapes, initial_weights(shapes, 0), steps=60, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        convert_solver(recipe, out_dir=Path(tmp) / "o")
        module = load_module(Path(tmp) / "o" / "optimizer.py")
    layers = mirror.mirror_layers_for(rule)
    keys = list(shapes)
    ahead = DeviceEngine(rule, module, layers, jax.devices()[0])
    ahead.build(runs)
    first = ahead.run(runs[0], tolerance=1e-3, keys=keys, ahead=runs[1:])
    ready = sorted({(k[0], k[1], k[3]) for k in ahead.executables})
    got = [first] + [ahead.run(r, tolerance=1e-3, keys=keys) for r in runs[1:]]
    plain = DeviceEngine(rule, module, layers, jax.devices()[0])
    want = [plain.run(r, tolerance=1e-3, keys=keys) for r in runs]
    same = [(g.deviation, g.per_step) == (w.deviation, w.per_step) for g, w in zip(got, want)]
    print("RESULT" + json.dumps({"ready": ready, "same": same,
                                  "components": [r.component for r in runs]}))
""")


def test_programs_compiled_ahead_give_the_same_runs():
    """While the stream's updates run, the programs of the runs to come are compiled from
    their arrays' shapes (``DeviceEngine.run(ahead=...)``): they are ready before those runs
    start, and every run's figures equal those of an engine that compiles as it goes."""
    out = on_jax(AHEAD)
    # the stream (chunks of 50 and 10), and the float64 probes' program (30 updates), made
    # before any probe ran
    assert ["stream", "float32", 50] in out["ready"] and ["stream", "float32", 10] in out["ready"]
    assert ["probe", "float64", 30] in out["ready"], out
    assert "clipping" in out["components"] and all(out["same"]), out


def test_one_nan_weight_fails_the_jax_program(tmp_path):
    """XLA:CPU's reductions of big arrays take a maximum over a NaN as the maximum of the
    rest: one NaN weight in LeNet's 400,000-weight blob must still fail the fused JAX run."""
    from keras_support import ONE_NAN

    out = tmp_path / "lenet"
    res = CliRunner().invoke(cli, ["convert", "fixtures/lenet/solver.prototxt", "-o", str(out)])
    assert res.exit_code == 0, res.output
    (out / "one_nan.py").write_text(ONE_NAN)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([str(out), env.get("PYTHONPATH", "")])
    args = ["verify", "fixtures/lenet/solver.prototxt", "--steps", "3"]
    proc = subprocess.run(
        [sys.executable, "-m", "caffe2tf", *args, "--module", str(out / "one_nan.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert "one JAX program" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 1, proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "FAIL: not finite: the candidate has NaN in ip1/0 after update 2", last


RELEASE = textwrap.dedent("""
    import json
    from caffe2tf._quiet import import_keras_quietly
    import_keras_quietly()
    import caffe2tf.app.verify as app_verify
    from caffe2tf.verify import device
    from caffe2tf.verify.inputs import SeededWeights, initial_weights
    made, held = [], []

    def seeded(shapes, seed):
        made.append(SeededWeights(shapes, seed))
        return made[-1]

    plain = device.DeviceEngine._executable

    def watched(self, *args):
        program = plain(self, *args)

        def call(*a):
            held.append(any(s.drawn for s in made))
            return program(*a)

        return call

    app_verify.SeededWeights = seeded
    device.DeviceEngine._executable = watched
    out = {}
    released = app_verify.verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    out["released"] = [released.passed, released.device, held[:]]
    held.clear()
    device.release_host_copy = lambda weights: None  # planted: the host's copy kept
    app_verify.verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    out["kept"] = held[:]
    app_verify.SeededWeights = initial_weights  # a plain dict, held throughout
    whole = app_verify.verify_solver("fixtures/lenet/solver.prototxt", steps=60)
    out["same"] = [
        (a.component, a.comparison.per_step, a.comparison.travelled, a.comparison.floor)
        == (b.component, b.comparison.per_step, b.comparison.travelled, b.comparison.floor)
        for a, b in zip(whole.runs, released.runs)
    ]
    print("RESULT" + json.dumps(out))
""")


def test_the_jax_program_runs_with_the_hosts_seeded_weights_let_go():
    """As on TensorFlow (tests/test_tf_device.py): every chunk of the fused JAX program runs
    with the host's seeded initial weights released, to the figures of weights held
    throughout; an engine that keeps them is seen doing so."""
    out = on_jax(RELEASE)
    passed, where, held = out["released"]
    assert passed and "one JAX program" in where, out
    assert held and not any(held), out
    assert out["kept"] and all(out["kept"]), out
    assert out["same"] and all(out["same"]), out
