#!/usr/bin/env python3
"""Regenerate the golden traces in fixtures/golden/ with the REAL Caffe 1.0 (bullseye root).

    sudo python scripts/regen_goldens.py            # needs the root (scripts/build_caffe_root.sh)
    python scripts/regen_goldens.py --check         # rerun Caffe and compare, write nothing

Picks a few cases of the update-rule matrix (:func:`caffe2tf.verify.matrix.matrix_cases`) that
together cover every value of every factor and all six solvers, runs them through the real
solver in one chroot process, and writes for each case:

* ``<case>.solver.prototxt`` / ``<case>.net.prototxt`` — exactly what Caffe was given (the
  solver is pointed at the net by the harness; it has no ``net`` field of its own);
* ``<case>.npz`` (float32, compressed) — ``init/<layer>/<blob>`` (initial weights, Caffe
  layout), ``grads/<layer>/<blob>`` (steps, *shape): Caffe's diff at each update (only when
  iter_size == 1), ``micro/<layer>/<blob>`` (steps*iter_size, *shape): the per-pass gradients
  (only when iter_size > 1; Caffe's diff is their float32 running sum over each group of
  iter_size passes, ``caffe2tf.verify.streams.accumulate``), ``weights/<layer>/<blob>``
  (steps, *shape): row k-1 = the weights after k updates, as the real Caffe computed them;
* ``MANIFEST.json`` — how they were produced (Caffe package version from the root's dpkg
  status, date, method, the factor values of each case).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from caffe2tf.verify import matrix, oracle  # noqa: E402

GOLDEN_DIR = REPO / "fixtures" / "golden"
STEPS = 100
COUNT = 8


def pick_cases(cases: list[matrix.MatrixCase], count: int = COUNT) -> list[matrix.MatrixCase]:
    """Greedy: first cover every solver, then every value of every factor, then fill up to
    ``count``; ties go to the earlier case in matrix order."""
    chosen: list[matrix.MatrixCase] = []
    for solver in matrix.SOLVERS:
        chosen.append(next(c for c in cases if c.factors["solver"] == solver and c not in chosen))
    wanted = {(f, v) for f, vals in matrix.FACTORS.items() for v in vals}

    def covered() -> set:
        return {(f, c.factors[f]) for c in chosen for f in matrix.FACTORS}

    while len(chosen) < count:
        missing = wanted - covered()
        rest = [c for c in cases if c not in chosen]
        if not rest:
            break
        best = max(rest, key=lambda c: len({(f, c.factors[f]) for f in matrix.FACTORS} & missing))
        chosen.append(best)
    return chosen


def npz_payload(case: matrix.MatrixCase, traj: list[dict[str, np.ndarray]]) -> dict:
    data = {}
    for key in case.init:
        data[f"init/{key}"] = np.asarray(case.init[key], np.float32)
        if case.iter_size > 1:  # grads = float32 running sums of these (streams.accumulate)
            data[f"micro/{key}"] = np.stack([g[key] for g in case.micro_grads]).astype(np.float32)
        else:
            data[f"grads/{key}"] = np.stack([g[key] for g in case.grads]).astype(np.float32)
        data[f"weights/{key}"] = np.stack([w[key] for w in traj]).astype(np.float32)
    return data


def check_goldens(directory: Path, *, root: Path | None = None, rtol: float = 1e-6) -> list[str]:
    """Rerun the real Caffe on the committed inputs; one line per case that differs."""
    goldens = matrix.golden_cases(directory)
    fresh = oracle.run_cases([g.case.oracle_case() for g in goldens], root=root)
    problems = []
    for g in goldens:
        for k, (want, got) in enumerate(zip(g.weights, fresh[g.case.name], strict=True)):
            for key in want:
                scale = max(1.0, float(np.abs(want[key]).max()))
                err = float(np.abs(want[key] - got[key]).max())
                if err > rtol * scale:
                    problems.append(f"{g.case.name}: update {k + 1} {key}: max |diff| {err:.3g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="rerun Caffe on the committed goldens and compare; write nothing",
    )
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args(argv)
    root = oracle.ensure_caffe_root()
    if args.check:
        problems = check_goldens(args.out, root=root)
        for p in problems:
            print(p)
        print("goldens match the real Caffe" if not problems else f"{len(problems)} mismatches")
        return 1 if problems else 0

    cases = pick_cases(matrix.matrix_cases(STEPS))
    results = oracle.run_cases([c.oracle_case() for c in cases], root=root)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*"):
        if old.suffix in (".npz", ".prototxt") or old.name == "MANIFEST.json":
            old.unlink()
    entries = []
    for case in cases:
        (args.out / f"{case.name}.solver.prototxt").write_text(case.solver_text)
        (args.out / f"{case.name}.net.prototxt").write_text(case.net_text)
        np.savez_compressed(args.out / f"{case.name}.npz", **npz_payload(case, results[case.name]))
        entries.append(
            {
                "name": case.name,
                "steps": case.steps,
                "iter_size": case.iter_size,
                "factors": {k: v for k, v in case.factors.items()},
                "clip_threshold": case.clip_threshold,
                "seed": case.seed,
                "blobs": list(case.init),
            }
        )
    manifest = {
        "produced_by": "scripts/regen_goldens.py (caffe2tf.verify.oracle.run_cases, "
        "method apply_update)",
        "caffe": oracle.caffe_package_version(root),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": f"{platform.machine()} {platform.system()}",
        "format": {
            "init/<layer>/<blob>": "initial weights (Caffe layout)",
            "grads/<layer>/<blob>": "(steps, *shape) Caffe's diff when update k starts; only "
            "when iter_size == 1",
            "micro/<layer>/<blob>": "(steps*iter_size, *shape) per-pass gradients; only when "
            "iter_size > 1; Caffe's diff at update k = float32 running "
            "sum of rows k*S..k*S+S-1 (streams.accumulate)",
            "weights/<layer>/<blob>": "(steps, *shape) row k-1 = weights after k updates",
        },
        "cases": entries,
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(cases)} golden cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
