"""Regenerate the golden files of tests/cases/<name>/expected/ (train_config.yaml, optimizer.py).

Usage: ``python scripts/regen_cases.py [NAME ...]`` (all cases by default), or run the golden
test with ``CAFFE2TF_REGEN=1 pytest tests/test_keras_cases.py``. A case directory holds
``solver.prototxt``, ``net.prototxt`` and optionally ``layer_map.yaml``; a case whose
translation is knowingly approximate (e.g. ``no_net_sgd``: no net) also holds an ``allow_approx``
file saying why (``convert`` writes it only with --allow-approx; tests/test_keras_cases.py).
The solver path is recorded relative to the repository root so the goldens do not depend on
the checkout place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"


def render_case(case: Path) -> dict[str, str]:
    """``{file name: text}`` of the expected outputs of one case directory."""
    from caffe2tf.app.convert import load_layer_map
    from caffe2tf.app.pipeline import keras_plan, load_pipeline
    from caffe2tf.targets.keras.render_python import render_python
    from caffe2tf.targets.keras.render_yaml import render_yaml

    layer_map = (
        load_layer_map(case / "layer_map.yaml") if (case / "layer_map.yaml").exists() else {}
    )
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rel = case.resolve().relative_to(ROOT)
        net = rel / "net.prototxt" if (ROOT / rel / "net.prototxt").exists() else None
        p, _ = keras_plan(load_pipeline(rel / "solver.prototxt", net_path=net), layer_map)
    finally:
        os.chdir(cwd)
    return {"train_config.yaml": render_yaml(p), "optimizer.py": render_python(p)}


def regen(names: list[str]) -> None:
    cases = (
        [CASES / n for n in names]
        if names
        else sorted(p for p in CASES.iterdir() if (p / "solver.prototxt").exists())
    )
    for case in cases:
        out = case / "expected"
        out.mkdir(exist_ok=True)
        for name, text in render_case(case).items():
            (out / name).write_text(text, encoding="utf-8")
        print(f"regenerated {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    regen(sys.argv[1:])
