"""Time ``caffe2tf verify`` for N updates on each Keras backend (CPU here, a GPU where present).

    python bench/bench_verify.py [--recipe fixtures/lenet/solver.prototxt] [--steps 100 1000]
                                 [--backends tensorflow jax] [--against reference]

    python bench/bench_verify.py --matrix [--backends tensorflow jax] [--against caffe]

    python bench/bench_verify.py --memory [--steps 10 1000] [--backends tensorflow jax]
                                 [--against reference|caffe]

    KERAS_BACKEND=jax python bench/bench_verify.py --ratio [--steps 1000] [--device cpu|gpu]

    python bench/bench_verify.py --startup [--steps 1000] [--backends jax] [--repeats 5]

Each run is a fresh ``caffe2tf verify RECIPE --steps N --format json`` process with
``KERAS_BACKEND`` set; the table shows wall time (imports and convert included), the phases the
report times (load, convert, reference/caffe, keras), the device the backend used and the
deviation. ``--matrix``: every case of the update-rule matrix (100 updates) converted and run
per the contract on each backend (``scripts/keras_matrix.py`` in a subprocess) against the
real Caffe trajectories (one batched oracle run; ``--against reference`` uses the NumPy
reference instead): max/median deviation, failures, time. ``--memory``: the same runs under
``/usr/bin/time -v``, peak resident memory and wall time per ``--steps`` (the memory target:
flat in ``--steps``). ``--ratio``: in one process, the stream run of ``verify`` (both rules
and the comparison, compiled) against the emitted optimizer's own compiled apply loop on the
same mirror model, both timed after compilation; the target is at most 3x. With
``KERAS_BACKEND=jax`` the fused JAX engine against ``jax.grad`` + ``stateless_apply`` per
update in a ``lax.scan``; on TensorFlow (the default) the fused TensorFlow engine against
``apply_gradients`` on the tape gradient in a ``tf.while_loop``, both compiled by XLA.
``--startup``: fresh processes that each import what a verify imports (Python, Keras on the
backend, caffe2tf's modules, protobuf, rich: the start-up, timed) and then run ``caffe2tf
verify RECIPE --steps N`` in the same process (timed: the time beyond start-up); the first
process fills the compile caches (JAX's, TensorFlow's) and is not counted. Prints Markdown
for bench/RESULTS.md.
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

import numpy as np

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


#: what a verify process imports before it builds anything (JAX too: verify looks for it on
#: every backend), and one array made on the backend: the baseline of the memory bound
BASELINE = (
    "import keras, jax, jax.numpy as jnp\n"
    "import caffe2tf.app.verify, caffe2tf.verify.engine, caffe2tf.verify.device\n"
    "keras.ops.zeros(1)\njnp.zeros(1).block_until_ready()\n"
)


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, str]:
    """``cmd`` under ``/usr/bin/time -v``: the process, its peak RSS in MiB, its wall time."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=REPO
    )
    rss, wall = float("nan"), "?"
    for line in proc.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split()[-1]) / 1024
        if "Elapsed (wall clock)" in line:
            m, _, sec = line.split()[-1].rpartition(":")
            wall = f"{(int(m.split(':')[-1]) if m else 0) * 60 + float(sec):.1f}"
    return proc, rss, wall


def memory_allowance(recipe: str) -> float:
    """The issue's bound above the baseline, in MiB: 1.5 x (both rules' weights and optimizer
    state, and one gradient), in float32; each side keeps Caffe's state arrays per blob
    (:data:`caffe2tf.rule.compiled.SLOTS`; the emitted optimizer keeps as many)."""
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.rule.compiled import SCALAR_SLOTS, SLOTS

    rule = load_pipeline(recipe).rule
    n = sum(int(np.prod(g.shape)) for g in rule.params)
    arrays = [s for s in SLOTS[type(rule.solver_step)] if s not in SCALAR_SLOTS]
    copies = 2 * (1 + len(arrays)) + 1
    return 1.5 * copies * n * 4 / 2**20


def memory_bench(
    recipe: str, steps_list: list[int], backends: list[str], device: str, against: str
) -> None:
    allowance = memory_allowance(recipe)
    print(f"against {against}; the bound's allowance above the baseline: {allowance:.0f} MiB\n")
    print(
        "| backend | steps | wall (s) | peak RSS (MiB) | baseline (MiB) | above it (MiB) "
        "| within 1.5x | device | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        _, base, _ = _timed([sys.executable, "-c", BASELINE], env)
        for steps in steps_list:
            cmd = [sys.executable, "-m", "caffe2tf", "verify", recipe]
            cmd += ["--steps", str(steps), "--format", "json", "--device", device]
            cmd += ["--against", against]
            proc, rss, wall = _timed(cmd, env)
            out = proc.stdout
            data = json.loads(out[out.index("{") :]) if "{" in out else {}
            verdict = "PASS" if data.get("passed") else f"exit {proc.returncode}"
            above = rss - base
            print(
                f"| {backend} | {steps} | {wall} | {rss:.0f} | {base:.0f} | {above:.0f} | "
                f"{'yes' if above <= allowance else 'no'} | {data.get('device', '?')} | "
                f"{verdict} |",
                flush=True,
            )


def _ratio_setup(recipe: str, steps: int) -> tuple:
    """What both ``--ratio`` benches start from: the recipe's rule, its blob shapes, verify's
    initial weights, the stream run of ``steps`` updates, the emitted module and the mirror's
    layers."""
    import tempfile

    from caffe2tf.app.convert import convert_solver
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.verify import components, mirror
    from caffe2tf.verify.candidate import load_module
    from caffe2tf.verify.inputs import initial_weights, never_written_blobs

    rule = load_pipeline(recipe).rule
    shapes = {g.key: tuple(g.shape) for g in rule.params}
    init = initial_weights(shapes, 0)
    frozen = tuple(never_written_blobs(rule.params, rule.force_backward))
    stream = components.plan_runs(rule, shapes, init, steps=steps, seed=0, frozen=frozen)[0]
    with tempfile.TemporaryDirectory() as tmp:
        convert_solver(recipe, out_dir=Path(tmp) / "o")
        module = load_module(Path(tmp) / "o" / "optimizer.py")
    return rule, shapes, init, stream, module, mirror.mirror_layers_from_rule(rule)


def ratio_bench(recipe: str, steps: int, device: str, repeats: int = 3) -> None:
    """The verify loop (stream run, fused) vs the emitted optimizer's compiled apply loop:
    each compiled on its first call, then ``repeats`` calls of each in turn, the fastest
    kept."""
    import jax
    import jax.numpy as jnp
    import keras

    from caffe2tf.verify import device as dev
    from caffe2tf.verify import keras_harness, mirror

    assert keras.backend.backend() == "jax", "run with KERAS_BACKEND=jax"
    rule, shapes, init, stream, module, layers = _ratio_setup(recipe, steps)
    jdev = dev.jax_device(device)
    with jax.default_device(jdev):
        engine = dev.DeviceEngine(rule, module, layers, jdev)
        # the emitted optimizer alone: one jitted scan of grad + stateless_apply per update
        model, optimizer = keras_harness.build_candidate(module, layers, init)
        pairs = mirror.trained_pairs(model)
        tvars = [v for _, v in pairs]
        optimizer.build(tvars)
        grads = [jnp.full(v.shape, 1e-3, v.dtype) for v in tvars]

        def loss(values: list, gs: list) -> jax.Array:
            lin = sum(jnp.sum(g * w) for g, w in zip(gs, values, strict=True))
            with keras.StatelessScope(state_mapping=list(zip(tvars, values, strict=True))):
                return lin + sum(jnp.sum(x) for x in model.losses)

        def apply_loop(values: list, opt_values: list, gs: list) -> tuple:
            def body(carry: tuple, _: None) -> tuple:
                values, opt_values = carry
                g = jax.grad(loss)(values, gs)
                values, opt_values = optimizer.stateless_apply(opt_values, g, values)
                return (list(values), list(opt_values)), None

            return jax.lax.scan(body, (values, opt_values), None, length=steps)[0]

        # the gradient as a constant of the program: XLA folds it into the update (the
        # optimised HLO reads no gradient at all), the cheapest loop there can be
        loop = jax.jit(lambda values, opt_values: apply_loop(values, opt_values, grads))
        # the gradient as an argument: read from memory in every update, as any training
        # step reads the gradient its backward pass wrote
        loop_read = jax.jit(apply_loop)

        values = [v.value for v in tvars]
        opt_values = [v.value for v in optimizer.variables]
        times, own, own_read = [], [], []
        # the first call of each compiles; then they alternate, and the fastest of each is
        # kept (on a shared machine the load comes and goes)
        for _ in range(1 + repeats):
            t = time.perf_counter()
            # as verify runs it without --plot: no weight norms
            comparison = engine.run(stream, tolerance=1e-3, keys=list(shapes), norms=False)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(loop(values, opt_values))
            own.append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(loop_read(values, opt_values, grads))
            own_read.append(time.perf_counter() - t)
    times[1], own[1], own_read[1] = min(times[1:]), min(own[1:]), min(own_read[1:])
    n = sum(int(np.prod(s)) for s in shapes.values())
    print(f"recipe: {recipe} ({n:,} parameters), {steps} updates, device {dev.describe(jdev)}")
    print(f"| | first call (s, compiles) | fastest of {repeats} more (s) | per update (ms) |")
    print("|---|---|---|---|")
    print(
        f"| verify stream run (both rules + comparison) | {times[0]:.2f} | {times[1]:.2f} | "
        f"{1000 * times[1] / steps:.2f} |"
    )
    print(
        f"| the emitted optimizer's own apply loop, gradient a constant (folded) | {own[0]:.2f} "
        f"| {own[1]:.2f} | {1000 * own[1] / steps:.2f} |"
    )
    print(
        f"| the same loop, gradient an argument (read each update) | {own_read[0]:.2f} "
        f"| {own_read[1]:.2f} | {1000 * own_read[1] / steps:.2f} |"
    )
    print(
        f"\nratio {times[1] / own[1]:.2f} against the folded loop, "
        f"{times[1] / own_read[1]:.2f} against the loop that reads its gradient (target <= 3); "
        f"stream deviation {comparison.deviation:.2e}"
    )


def ratio_bench_tf(recipe: str, steps: int, repeats: int = 3) -> None:
    """On Keras' TensorFlow backend: the fused TensorFlow engine's stream run against the
    emitted optimizer's own loop compiled the same way (``tf.function(jit_compile=True)``
    around a ``tf.while_loop`` of ``apply_gradients`` on the tape gradient); each compiled on
    its first call, then ``repeats`` calls of each in turn, the fastest kept."""
    import keras
    import tensorflow as tf

    from caffe2tf.verify import keras_harness, mirror
    from caffe2tf.verify.loops.tensorflow import tape_apply
    from caffe2tf.verify.tf_device import TfDeviceEngine

    assert keras.backend.backend() == "tensorflow", "run with KERAS_BACKEND=tensorflow"
    rule, shapes, init, stream, module, layers = _ratio_setup(recipe, steps)
    engine = TfDeviceEngine(rule, module, layers)
    model, optimizer = keras_harness.build_candidate(module, layers, init)
    tvars = [v for _, v in mirror.trained_pairs(model)]
    optimizer.build(tvars)
    apply = tape_apply(model, optimizer, tvars)
    consts = [tf.constant(np.full(v.shape, 1e-3, v.dtype)) for v in tvars]

    def loop(gs: list) -> None:
        tf.while_loop(lambda i: i < steps, lambda i: (apply(gs), i + 1)[1], [tf.constant(0)])

    # the gradient a constant of the program (XLA may fold it), and an argument read in
    # every update, as a training step reads what its backward pass wrote
    folded = tf.function(lambda: loop(consts), jit_compile=True, autograph=False)
    reading = tf.function(loop, jit_compile=True, autograph=False)
    times, own, own_read = [], [], []
    for _ in range(1 + repeats):
        t = time.perf_counter()
        comparison = engine.run(stream, tolerance=1e-3, keys=list(shapes), norms=False)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        folded()
        tvars[0].numpy()
        own.append(time.perf_counter() - t)
        t = time.perf_counter()
        reading(consts)
        tvars[0].numpy()
        own_read.append(time.perf_counter() - t)
    times[1], own[1], own_read[1] = min(times[1:]), min(own[1:]), min(own_read[1:])
    n = sum(int(np.prod(s)) for s in shapes.values())
    print(f"recipe: {recipe} ({n:,} parameters), {steps} updates, TensorFlow CPU")
    print(f"| | first call (s, compiles) | fastest of {repeats} more (s) | per update (ms) |")
    print("|---|---|---|---|")
    for label, xs in (
        ("verify stream run, fused TensorFlow engine (both rules + comparison)", times),
        ("the emitted optimizer's own apply loop, gradient a constant", own),
        ("the same loop, gradient an argument", own_read),
    ):
        print(f"| {label} | {xs[0]:.2f} | {xs[1]:.2f} | {1000 * xs[1] / steps:.2f} |")
    print(
        f"\nratio {times[1] / own[1]:.2f} against the constant-gradient loop, "
        f"{times[1] / own_read[1]:.2f} against the loop that reads its gradient (target <= 3); "
        f"stream deviation {comparison.deviation:.2e}"
    )


#: one process of --startup: the imports a verify makes, then the verify itself, each timed
STARTUP_CHILD = """
import sys, time
t0 = time.perf_counter()
from caffe2tf._quiet import use_compile_cache
use_compile_cache()
import keras
import google.protobuf.text_format, rich.live, rich.progress
import caffe2tf.cli, caffe2tf.app.convert, caffe2tf.app.output, caffe2tf.app.targets
import caffe2tf.app.verify, caffe2tf.caffe.net, caffe2tf.caffe.shapes, caffe2tf.caffe.solver
import caffe2tf.caffe.upgrade, caffe2tf.targets.keras.render_python
import caffe2tf.targets.keras.runtime, caffe2tf.verify.device, caffe2tf.verify.engine
import caffe2tf.verify.keras_harness, caffe2tf.verify.mirror, caffe2tf.verify.schedule_check
t1 = time.perf_counter()
sys.argv = ["caffe2tf", "verify", sys.argv[1], "--steps", sys.argv[2]]
try:
    caffe2tf.cli.main()
except SystemExit as e:
    code = e.code
t2 = time.perf_counter()
print("TIMES", t1 - t0, t2 - t1, code, file=sys.stderr)
"""


def startup_bench(recipe: str, steps: int, backend: str, repeats: int) -> None:
    """``verify``'s time beyond start-up, in fresh processes (see the module docstring)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    times = []
    for i in range(1 + repeats):
        proc = subprocess.run(
            [sys.executable, "-c", STARTUP_CHILD, recipe, str(steps)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith("TIMES ")]
        if not line:
            raise SystemExit(proc.stderr[-3000:])
        start, rest, code = line[0].split()[1:]
        if code != "0":
            raise SystemExit(f"verify exited {code}:\n{proc.stdout[-3000:]}")
        if i:  # the first one fills the compile cache
            times.append((float(start), float(rest)))
    start, rest = np.array(times).T
    print(f"recipe: {recipe}, --steps {steps}, backend {backend}, {repeats} processes\n")
    print("| | min (s) | median (s) | max (s) |")
    print("|---|---|---|---|")
    for label, xs in (("start-up (imports)", start), ("verify beyond start-up", rest)):
        print(f"| {label} | {xs.min():.2f} | {np.median(xs):.2f} | {xs.max():.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="fixtures/lenet/solver.prototxt")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--against", default="reference", choices=["reference", "caffe"])
    parser.add_argument("--matrix", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--ratio", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--startup", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load avg {os.getloadavg()[0]:.1f}"
    )
    if args.matrix:
        matrix_bench(args.backends, args.against)
        return 0
    if args.memory:
        memory_bench(args.recipe, args.steps, args.backends, args.device, args.against)
        return 0
    if args.ratio:
        if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
            ratio_bench_tf(args.recipe, args.steps[-1])
        else:
            ratio_bench(args.recipe, args.steps[-1], args.device)
        return 0
    if args.startup:
        for backend in args.backends:
            startup_bench(args.recipe, args.steps[-1], backend, args.repeats)
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
            cand = t.get("keras", t.get("device", 0.0))  # the fused engine times both as one
            print(
                f"| {r['backend']} | {r['device']} | {steps} | {r['wall']:.1f} | "
                f"{t.get('load', 0):.2f} | {t.get('convert', 0):.2f} | {ref:.2f} | {cand:.2f} | "
                f"{1000 * cand / steps:.2f} | {dev:.2e} | "
                f"{'PASS' if r['passed'] else 'FAIL'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
