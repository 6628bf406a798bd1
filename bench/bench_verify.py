"""Time ``caffe2tf verify`` for N updates on each Keras backend (CPU here, a GPU where present).

    python bench/bench_verify.py [--recipe fixtures/lenet/solver.prototxt] [--steps 100 1000]
                                 [--backends tensorflow jax] [--against reference]

    python bench/bench_verify.py --matrix [--backends tensorflow jax] [--against caffe]

Each run is a fresh ``caffe2tf verify RECIPE --steps N --format json`` process with
``KERAS_BACKEND`` set; the table shows wall time (imports and convert included), the phases the
report times (load, convert, reference/caffe, keras), the device the backend used and the
deviation. ``--matrix``: every case of the update-rule matrix (100 updates) converted and run
per the contract on each backend (``scripts/keras_matrix.py`` in a subprocess) against the
real Caffe trajectories (one batched oracle run; ``--against reference`` uses the NumPy
reference instead): max/median deviation, failures, time. Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(recipe: str, steps: int, backend: str, against: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [
        sys.executable,
        "-m",
        "caffe2tf",
        "verify",
        recipe,
        "--steps",
        str(steps),
        "--format",
        "json",
        "--against",
        against,
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    out = proc.stdout
    if proc.returncode not in (0, 1) or "{" not in out:
        return {"error": (proc.stderr or out)[-500:], "wall": wall}
    data = json.loads(out[out.index("{") :])
    data["wall"] = wall
    return data


def matrix_bench(backends: list[str], against: str) -> None:
    import statistics
    import tempfile

    from caffe2tf.app.matrix import keras_case_data, save_trajectories
    from caffe2tf.verify import matrix

    cases = matrix.matrix_cases(100)
    data = {c.name: keras_case_data(c) for c in cases}
    t = time.perf_counter()
    if against == "caffe":
        from caffe2tf.verify import oracle

        trajectories = oracle.run_cases(
            [
                oracle.OracleCase(
                    c.name, c.solver_text, c.net_text, data[c.name].init, data[c.name].grads
                )
                for c in cases
            ]
        )
    else:
        from caffe2tf.app.matrix import write_case_files
        from caffe2tf.caffe.load import load_recipe
        from caffe2tf.rule.lower import lower
        from caffe2tf.rule.reference import run_reference

        trajectories = {}
        with tempfile.TemporaryDirectory() as tmp:
            for c in cases:
                solver, net = write_case_files(c, Path(tmp) / c.name)
                rule = lower(load_recipe(solver, net_path=net))
                trajectories[c.name] = run_reference(rule, data[c.name].init, data[c.name].grads)
    print(
        f"{len(cases)} cases x 100 updates; {against} trajectories in "
        f"{time.perf_counter() - t:.1f} s\n"
    )
    print(
        "| backend | device | cases | max deviation | median | worst case | failed/errors "
        "| wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref.npz"
        save_trajectories(ref, trajectories)
        for backend in backends:
            out = Path(tmp) / f"{backend}.json"
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            t = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "scripts" / "keras_matrix.py"),
                    "--reference",
                    str(ref),
                    "--out",
                    str(out),
                ],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"| {backend} | error | {proc.stderr[-200:]!r} ||||||")
                continue
            res = json.loads(out.read_text())
            devs = {k: v["deviation"] for k, v in res["cases"].items() if "deviation" in v}
            bad = [k for k, v in res["cases"].items() if "error" in v or v["deviation"] > 1e-3]
            worst = max(devs, key=devs.get) if devs else "-"
            print(
                f"| {res['backend']} | {res['device']} | {len(res['cases'])} | "
                f"{max(devs.values()):.2e} | {statistics.median(devs.values()):.2e} | "
                f"{worst} | {len(bad)} {bad[:3]} | {wall:.1f} |",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="fixtures/lenet/solver.prototxt")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--against", default="reference", choices=["reference", "caffe"])
    parser.add_argument("--matrix", action="store_true")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load avg {os.getloadavg()[0]:.1f}"
    )
    if args.matrix:
        matrix_bench(args.backends, args.against)
        return 0
    print(f"recipe: {args.recipe}, against {args.against}\n")
    print(
        "| backend | device | steps | wall (s) | load | convert | reference | keras "
        "| keras per update (ms) | deviation | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        for steps in args.steps:
            r = run_once(args.recipe, steps, backend, args.against)
            if "error" in r:
                print(
                    f"| {backend} | - | {steps} | {r['wall']:.1f} | error: "
                    f"{r['error'].splitlines()[-1][:80]} |||||||"
                )
                continue
            t = r["timings_s"]
            ref = t.get(args.against, 0.0)
            dev = r["comparison"]["deviation"]
            print(
                f"| {r['backend']} | {r['device']} | {steps} | {r['wall']:.1f} | "
                f"{t['load']:.2f} | {t['convert']:.2f} | {ref:.2f} | {t['keras']:.2f} | "
                f"{1000 * t['keras'] / steps:.2f} | {dev:.2e} | "
                f"{'PASS' if r['passed'] else 'FAIL'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
