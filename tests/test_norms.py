"""Weight-norm tracking: the tracker's norms are the norms of the weights it saw, per weight and
per output channel; ``caffe2tf norms`` plots several runs; bad logs are one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

from caffe2tf.cli import cli

pytestmark = pytest.mark.keras


def _model(keras):
    x = keras.Input((6,))
    y = keras.layers.Dense(4, name="ip1")(x)
    return keras.Model(x, keras.layers.Dense(3, name="ip2")(y))


def test_tracker_records_the_norms_of_the_weights_it_saw(tmp_path: Path) -> None:
    keras = require("keras")
    from caffe2tf.targets.keras.tracker import WeightNormTracker

    keras.utils.set_random_seed(1)
    model = _model(keras)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    seen: list[dict[str, np.ndarray]] = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) % 2 == 0:
                seen.append({v.path: np.array(v.numpy()) for v in self.model.trainable_variables})

    log = tmp_path / "run.npz"
    tracker = WeightNormTracker(str(log), every=2)
    x = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    model.fit(x, x[:, :3], batch_size=4, epochs=1, verbose=0, callbacks=[Snapshot(), tracker])
    with np.load(log) as data:
        steps = data["steps"]
        assert list(steps) == [0, 2, 4, 6, 8, 10]
        kernel = "functional/ip1/kernel" if "functional/ip1/kernel/norm" in data else None
        key = kernel or next(
            k[: -len("/norm")] for k in data.files if k.endswith("ip1/kernel/norm")
        )
        for i, snapshot in enumerate(seen, 1):
            w = snapshot[key].astype(np.float64)
            assert np.isclose(data[f"{key}/norm"][i], np.linalg.norm(w))
            assert np.allclose(data[f"{key}/channels"][i], np.linalg.norm(w, axis=0))


def test_norms_command_plots_runs_and_rejects_bad_logs(tmp_path: Path) -> None:
    require("matplotlib")
    for name, scale in (("wd small", 1.0), ("wd large", 0.5)):
        np.savez(
            tmp_path / f"{name}.npz",
            steps=np.arange(0, 50, 10),
            **{
                "m/ip1/kernel/norm": scale * np.linspace(3, 2, 5),
                "m/ip1/kernel/channels": scale * np.ones((5, 4)),
            },
        )
    out = tmp_path / "norms.png"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["norms", str(tmp_path / "wd small.npz"), str(tmp_path / "wd large.npz"), "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "1 weight(s), 2 run(s)" in result.output
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    result = runner.invoke(cli, ["norms", str(bad), "-o", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not a .npz file" in result.output
