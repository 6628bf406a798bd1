"""The catalogue of wrong ports ``verify`` must reject, each run as a user would: ``caffe2tf
convert`` writes the right port, a hand edit (the mistake people make) turns it into a wrong one,
and ``caffe2tf verify SOLVER --module port.py`` with DEFAULT settings must exit 1 for the wrong
port and 0 for the right one. The README lists the catalogue as what ``verify`` catches.

Each mistake is a single term of the rule, so whether it shows must not depend on the
recipe's magnitudes (``weight_decay: 1e-5`` as well as 5e-4) or on where in the run it acts
(a multistep boundary at 5000, the end of ``poly`` at ``max_iter``)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf.cli import cli  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.slow]

NET = """
name: "small"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 4 dim: 6 }} }} }}
layer {{
  name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 decay_mult: {bias_decay} }}
  inner_product_param {{ num_output: 5 }}
}}
layer {{
  name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param {{ lr_mult: {ip2_lr} }} param {{ lr_mult: {ip2_lr} }}
  inner_product_param {{ num_output: 3 }}
}}
"""

SOLVERS = {
    "multistep": 'base_lr: 0.05 momentum: 0.9 weight_decay: {wd} lr_policy: "multistep" '
    "gamma: 0.1 stepvalue: 5000 stepvalue: 7000 max_iter: 10000",
    "step": 'base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" gamma: 0.1 '
    "stepsize: 2000 max_iter: 6000",
    "poly": 'base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "poly" power: 1 '
    "max_iter: 5000",
    "rmsprop": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.98 delta: 1e-6 weight_decay: 0.0005 '
    'lr_policy: "fixed" max_iter: 1000',
    "adagrad": 'type: "AdaGrad" base_lr: 0.1 delta: 1e-6 lr_policy: "fixed" max_iter: 1000',
    "adam": 'type: "Adam" base_lr: 0.01 momentum2: 0.999 weight_decay: 0.0005 '
    'lr_policy: "fixed" max_iter: 1000',
    "clip": "base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 clip_gradients: 2 "
    'lr_policy: "fixed" max_iter: 1000',
    "itersize": 'base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 iter_size: 3 lr_policy: "step" '
    "gamma: 0.5 stepsize: 300 max_iter: 1000",
}

TF1_MOMENTUM = '''


class TF1Momentum(keras.optimizers.Optimizer):
    """tf.compat.v1.train.MomentumOptimizer: v = mu*v + g; w -= lr*v (lr outside)."""

    def __init__(self, learning_rate, momentum=0.9, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.v = self.add_optimizer_variables(variables, "v")

    def update_step(self, gradient, variable, learning_rate):
        v = self.v[self._get_variable_index(variable)]
        self.assign(v, self.momentum * v + gradient)
        self.assign_sub(variable, keras.ops.cast(learning_rate, variable.dtype) * v)
'''


def _double_l2(text: str) -> tuple[str, int]:
    return re.subn(r'\("L2", ([0-9.e-]+)\)', lambda m: f'("L2", {2 * float(m.group(1))!r})', text)


def _kernels_only(text: str) -> tuple[str, int]:
    return re.subn(r'(\("\w+", 1, [^,]+, [^,]+, \w+, )\("L2", [^)]*\)', r"\1None", text)


def _decoupled(text: str) -> tuple[str, int]:
    text, n = re.subn(r'\("L2", [^)]*\)', "None", text)
    text, m = re.subn(r"momentum=0\.9,", "momentum=0.9, weight_decay=0.0005,", text)
    return text, min(n, m)


def _tf1(text: str) -> tuple[str, int]:
    text, n = re.subn(r"keras\.optimizers\.SGD\(", "TF1Momentum(", text)
    return text + TF1_MOMENTUM, n


def _keras_rmsprop(text: str) -> tuple[str, int]:
    text, n = re.subn(r"keras\.optimizers\.Adam\(", "keras.optimizers.RMSprop(", text)
    text, m = re.subn(r"\n\s*beta_1=0\.0,[^\n]*", "", text)
    text = text.replace("beta_2=", "rho=")
    text, k = re.subn(r"\n\s*rms_decay=[^\n]*", "", text)  # no correcting schedule either
    return text, min(n, m, k)


def _override(body: str) -> Callable[[str], tuple[str, int]]:
    def edit(text: str) -> tuple[str, int]:
        return text + "\n\n" + textwrap.dedent(body), 1

    return edit


CATALOGUE: dict[str, tuple[str, dict, Callable[[str], tuple[str, int]]]] = {
    "decay not halved (wd 5e-4)": ("multistep", {"wd": "0.0005"}, _double_l2),
    "decay not halved (wd 1e-5)": ("multistep", {"wd": "0.00001"}, _double_l2),
    "decay on kernels only": ("multistep", {"wd": "0.0005", "bias_decay": 1}, _kernels_only),
    "Keras weight_decay= (decoupled)": ("multistep", {"wd": "0.0005"}, _decoupled),
    "lr outside momentum (step)": ("step", {}, _tf1),
    "lr outside momentum (multistep)": ("multistep", {"wd": "0.0005"}, _tf1),
    "lr outside momentum (poly)": ("poly", {}, _tf1),
    "multistep boundaries not shifted": (
        "multistep",
        {"wd": "0.0005"},
        lambda t: re.subn(r"boundaries=\[4999, 6999\]", "boundaries=[5000, 7000]", t),
    ),
    "poly end_learning_rate left at Keras' default": (
        "poly",
        {},
        lambda t: re.subn(r"\n\s*end_learning_rate=0\.0,[^\n]*", "", t),
    ),
    "staircase=False for step": (
        "step",
        {},
        lambda t: re.subn(r"staircase=True", "staircase=False", t),
    ),
    "epsilon inside the root (RMSProp)": ("rmsprop", {}, _keras_rmsprop),
    "epsilon inside the root (AdaGrad)": (
        "adagrad",
        {},
        lambda t: _override(
            """
            def build_optimizer() -> keras.optimizers.Optimizer:
                return keras.optimizers.Adagrad(
                    build_schedule(), initial_accumulator_value=0.0, epsilon=1e-6
                )
            """
        )(t),
    ),
    "AdaGrad initial accumulator 0.1": (
        "adagrad",
        {},
        _override(
            """
            def build_optimizer() -> keras.optimizers.Optimizer:
                return keras.optimizers.Adagrad(build_schedule(), epsilon=1e-6)
            """
        ),
    ),
    "Adam beta1 0.9 where momentum is unset": (
        "adam",
        {},
        lambda t: re.subn(r"beta_1=0\.0,", "beta_1=0.9,", t),
    ),
    "clip after decay": (
        "clip",
        {},
        _override(
            """
            def build_optimizer() -> keras.optimizers.Optimizer:
                return keras.optimizers.SGD(build_schedule(), momentum=0.9, global_clipnorm=2.0)


            def prepare_model(model: keras.Model) -> dict[str, str]:
                blobs = [
                    (layer, blob, trainable, ("L2", 0.0005 * dm / 2) if dm else None)
                    for layer, blob, _, dm, trainable, _, _ in CAFFE_BLOBS
                ]
                names = {row[0]: row[6] for row in CAFFE_BLOBS}
                return bind_caffe_blobs(model, blobs, (True, None), names)
            """
        ),
    ),
    "schedule advancing per micro-batch (iter_size)": (
        "itersize",
        {},
        lambda t: re.subn(r"(CaffeSchedule\([^)]*?)\n\s*iter_size=3,[^\n]*", r"\1", t, flags=re.S),
    ),
    "bias lr_mult ignored": (
        "multistep",
        {"wd": "0.0005"},
        lambda t: re.subn(r"(\n    default = by_lr_mult\[1\.0\]\n)", r"\1    return default\n", t),
    ),
    "lr_mult 0 blobs trained": (
        "multistep",
        {"wd": "0.0005", "ip2_lr": 0},
        lambda t: re.subn(
            r'\("ip2", (\d), 0\.0, ([^,]+), False,', r'("ip2", \1, 1.0, \2, True,', t
        ),
    ),
}


def _recipe(tmp: Path, solver: str, params: dict) -> Path:
    fields = {"wd": "0.0005", "bias_decay": 0, "ip2_lr": 1, **params}
    (tmp / "net.prototxt").write_text(NET.format(**fields))
    text = SOLVERS[solver].format(**fields)
    (tmp / "solver.prototxt").write_text(f'net: "{tmp / "net.prototxt"}"\n' + text + "\n")
    return tmp / "solver.prototxt"


def _verify(solver: Path, module: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["verify", str(solver), "--module", str(module)], catch_exceptions=False
    )
    return result.exit_code, result.output


def _right_port(tmp: Path, solver: Path) -> Path:
    result = CliRunner().invoke(cli, ["convert", str(solver), "-o", str(tmp / "out")])
    assert result.exit_code == 0, result.output
    return tmp / "out" / "optimizer.py"


@pytest.mark.parametrize("mistake", sorted(CATALOGUE))
def test_wrong_port_fails_and_right_port_passes(mistake: str, tmp_path: Path) -> None:
    solver_kind, params, edit = CATALOGUE[mistake]
    solver = _recipe(tmp_path, solver_kind, params)
    right = _right_port(tmp_path, solver)
    code, out = _verify(solver, right)
    assert code == 0, f"the right port must pass:\n{out}"
    wrong_text, edits = edit(right.read_text())
    assert edits >= 1, "the edit did not apply: the emitted module changed shape"
    wrong = tmp_path / "port.py"
    wrong.write_text(wrong_text)
    code, out = _verify(solver, wrong)
    assert code == 1, f"{mistake} passed verify:\n{out}"
    verdict = out.splitlines()[-1]
    assert verdict.startswith("FAIL: "), out
    print(f"{mistake}: {verdict}")  # which components caught it (pytest -s shows it)


JAX_SCRIPT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_verify_catalogue as cat
for mistake in {mistakes!r}:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kind, params, edit = cat.CATALOGUE[mistake]
        solver = cat._recipe(tmp, kind, params)
        right = cat._right_port(tmp, solver)
        right_code, _ = cat._verify(solver, right)
        text, _ = edit(right.read_text())
        (tmp / "port.py").write_text(text)
        wrong_code, out = cat._verify(solver, tmp / "port.py")
        rates = [ln for ln in out.splitlines() if ln.startswith("  schedule  :")]
        print("RESULT", mistake, "|", right_code, wrong_code, out.splitlines()[-1], *rates)
"""


def _jax_results(mistakes: list[str]) -> list[str]:
    """Each mistake's ``RESULT`` line from :data:`JAX_SCRIPT` on Keras' JAX backend."""
    import os
    import subprocess
    import sys

    require("jax")
    script = JAX_SCRIPT.format(tests=str(Path(__file__).parent), mistakes=mistakes)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == len(mistakes), proc.stdout
    return lines


def test_the_rate_check_reads_compiled_schedules_on_the_jax_backend() -> None:
    """On JAX the candidate's schedule is evaluated compiled (``jax.jit``, as its training
    step runs it): a schedule mistake is still named at the iteration where it starts, and
    the right ports' rates still equal Caffe's."""
    mistakes = ["multistep boundaries not shifted", "staircase=False for step"]
    for line in _jax_results(mistakes):
        codes = line.split("|", 1)[1].split()
        assert codes[:2] == ["0", "1"], line
        assert "first differs at iteration" in line, line


def test_the_float64_probes_work_on_the_jax_backend() -> None:
    """On JAX the probes run inside jax.enable_x64: a decay factor 2 at wd 1e-5 (visible only
    in float64) is still caught, and the right ports still pass."""
    mistakes = [
        "decay not halved (wd 1e-5)",
        "lr outside momentum (step)",
        "epsilon inside the root (RMSProp)",
    ]
    for line in _jax_results(mistakes):
        codes = line.split("|", 1)[1].split()
        assert codes[:2] == ["0", "1"], line
