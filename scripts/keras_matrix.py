#!/usr/bin/env python3
"""Run the update-rule matrix through the emitted Keras modules on the active Keras backend
(``KERAS_BACKEND``) and write the deviations from given reference trajectories as JSON::

    KERAS_BACKEND=jax python scripts/keras_matrix.py --reference TRAJ.npz --out R.json

A tool for the JAX-backend oracle test and the benchmarks (``bench/bench_verify.py``), which run it
in a subprocess per backend; not part of the ``caffe2tf`` command line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from caffe2tf.app.matrix import load_trajectories, matrix_deviations
from caffe2tf.verify.inputs import backend_and_device


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`caffe2tf.app.matrix.matrix_deviations` on the active backend, as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python scripts/keras_matrix.py")
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--names", nargs="*", default=None)
    parser.add_argument("--route", default="loop", choices=["loop", "fit"])
    parser.add_argument("--no-jit", action="store_true")
    args = parser.parse_args(argv)
    reference = load_trajectories(args.reference)
    t = time.perf_counter()
    backend, device = backend_and_device()
    with tempfile.TemporaryDirectory(prefix="caffe2tf-matrix-") as tmp:
        results = matrix_deviations(
            reference, Path(tmp), names=args.names, route=args.route, jit=not args.no_jit
        )
    args.out.write_text(
        json.dumps(
            {
                "backend": backend,
                "device": device,
                "seconds": time.perf_counter() - t,
                "cases": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
