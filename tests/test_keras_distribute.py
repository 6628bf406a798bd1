"""tf.distribute: the emitted optimizer trained under ``MirroredStrategy`` over 2 logical CPU
devices (``compile`` + ``fit``, global batch 8) ends where the same training on one device
ends, within float32 rounding, on every route: builtin, multi (MultiOptimizer) and the inlined
custom optimizers (AdaGrad, iter_size, L1); and in a custom loop with ``strategy.run``. A custom
optimizer that skips summing the replicas' gradients must not pass (the test has teeth). Each
case runs in its own process, since the logical devices must be set before TensorFlow starts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

from caffe2tf.cli import cli

pytestmark = [pytest.mark.keras, pytest.mark.slow]
CASES = Path(__file__).resolve().parent / "cases"

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np, keras

    spec = importlib.util.spec_from_file_location("opt", sys.argv[1])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    if sys.argv[2] == "per-replica":  # a planted mistake: no sum over the replicas
        m.CaffeOptimizer.aggregate = lambda self, grads: grads

    def model():
        keras.utils.set_random_seed(3)
        x = keras.Input((5,))
        h = keras.layers.Dense(4, name="ip1")(x)
        return keras.Model(x, keras.layers.Dense(3, name="ip2")(h))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")

    def run(strategy):
        with strategy.scope():
            net = model()
            m.prepare_model(net)
            net.compile(optimizer=m.build_optimizer(), loss="mse")
        net.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return [np.asarray(v.numpy()) for v in net.trainable_variables]

    def loop(strategy):  # a custom loop: strategy.run, loss scaled by the global batch
        with strategy.scope():
            net = model()
            m.prepare_model(net)
            opt = m.build_optimizer()
            opt.build(net.trainable_variables)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

        def step(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(net(xb, training=True) - yb), axis=1)
                loss = tf.reduce_sum(per_example) / 8.0 + sum(net.losses) / tf.cast(
                    strategy.num_replicas_in_sync, tf.float32
                )
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))

        @tf.function
        def train(xb, yb):
            strategy.run(step, args=(xb, yb))

        for xb, yb in strategy.experimental_distribute_dataset(data):
            train(xb, yb)
        return [np.asarray(v.numpy()) for v in net.trainable_variables]

    start = [np.asarray(v.numpy()) for v in model().trainable_variables]
    train = loop if sys.argv[3] == "loop" else run
    single = train(tf.distribute.get_strategy())
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    travel = max(float(np.max(np.abs(a - b))) for a, b in zip(single, start))
    dev = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored)) / travel
    print("RESULT", json.dumps({"deviation": dev}))
    """
)

ROUTES = {
    "adam_no_momentum": "builtin",
    "lenet_sgd_multistep": "multi",
    "adagrad_poly": "custom",
    "itersize3_inv": "custom",
    "l1_nesterov_exp": "custom",
}


def _deviation(module: Path, mode: str, how: str = "fit") -> float:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(module), mode, how],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return float(json.loads(line.split(" ", 1)[1])["deviation"])


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_mirrored_strategy_matches_one_device(case: str, tmp_path: Path) -> None:
    require("tensorflow")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["convert", str(CASES / case / "solver.prototxt"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert _deviation(out / "optimizer.py", "exact") < 1e-5
    if case == "adagrad_poly":
        assert _deviation(out / "optimizer.py", "per-replica") > 1e-2
        assert _deviation(out / "optimizer.py", "exact", "loop") < 1e-5
