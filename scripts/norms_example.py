#!/usr/bin/env python3
"""Weight norms of the bundled LeNet trained with Caffe's weight_decay and with ten times it,
through the emitted optimizer.py and its WeightNormTracker; writes docs/norms-lenet.png::

    python scripts/norms_example.py [--updates 300]

Synthetic, learnable data (labels = argmax of a fixed random projection of the image), so the
run needs no dataset; what it shows is how the decay holds the norms down.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def lenet(keras: object) -> object:
    k = keras
    x = k.Input((28, 28, 1))
    y = k.layers.Conv2D(20, 5, name="conv1")(x)
    y = k.layers.MaxPooling2D(2)(y)
    y = k.layers.Conv2D(50, 5, name="conv2")(y)
    y = k.layers.MaxPooling2D(2)(y)
    y = k.layers.Flatten()(y)
    y = k.layers.Dense(500, activation="relu", name="ip1")(y)
    return k.Model(x, k.layers.Dense(10, name="ip2")(y))


def run(weight_decay: str, updates: int, work: Path) -> Path:
    import keras

    solver = (REPO / "fixtures" / "lenet" / "solver.prototxt").read_text()
    solver = re.sub(r"weight_decay: [0-9.e-]+", f"weight_decay: {weight_decay}", solver)
    solver = solver.replace(
        '"fixtures/lenet/train.prototxt"', f'"{REPO}/fixtures/lenet/train.prototxt"'
    )
    path = work / f"solver_{weight_decay}.prototxt"
    path.write_text(solver)
    out = work / f"out_{weight_decay}"
    subprocess.run(
        [sys.executable, "-m", "caffe2tf", "convert", str(path), "-o", str(out)], check=True
    )
    spec = importlib.util.spec_from_file_location(f"opt_{weight_decay}", out / "optimizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64 * updates, 28, 28, 1)).astype("float32")
    labels = np.argmax(images.reshape(len(images), -1) @ rng.normal(size=(784, 10)), axis=1)
    keras.utils.set_random_seed(0)
    model = lenet(keras)
    module.prepare_model(model)
    model.compile(
        optimizer=module.build_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    log = work / f"wd {weight_decay}.npz"
    tracker = module.WeightNormTracker(str(log), every=10)
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0, callbacks=[tracker])
    return log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("-o", "--output", default=str(REPO / "docs" / "norms-lenet.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logs = [run(wd, args.updates, work) for wd in ("0.0005", "0.005")]
        subprocess.run(
            [sys.executable, "-m", "caffe2tf", "norms", *map(str, logs), "-o", args.output],
            check=True,
        )


if __name__ == "__main__":
    main()
