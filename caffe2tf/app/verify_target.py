"""``caffe2tf verify --target torch|optax|tf-compat-v1``: another target's module against Caffe.

The same seeded data as the Keras target's stream component (:mod:`caffe2tf.app.verify`):
initial weights N(0, 0.5²), ``iter_size`` per-pass gradients per Caffe update, none for the
blobs Caffe never writes. The candidate is the ``--module`` given or ``caffe2tf convert
--target`` into a temporary folder, run per its contract by
:mod:`caffe2tf.verify.torch_harness` / :mod:`caffe2tf.verify.optax_harness`; the reference is
the NumPy executor or, with ``--against caffe``, the real Caffe 1.0. The schedule windows, the
float64 probes and the schedule check of docs/verify.md run for the Keras target only (the
report says so).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from caffe2tf.app.pipeline import Pipeline
from caffe2tf.errors import Caffe2TfError, InputError, SourceLocation
from caffe2tf.verify.candidate import blame_module
from caffe2tf.verify.compare import compare_trajectories
from caffe2tf.verify.inputs import (
    frozen_blobs_get_no_gradient,
    initial_weights,
    never_written_blobs,
)

_COUNTER = itertools.count()
ONLY_THE_STREAM = (
    "stream component only: the schedule windows, float64 probes and schedule check of "
    "docs/verify.md run for --target keras"
)


def _candidate(
    solver: Path,
    target: str,
    net_path: Path | None,
    lenient: bool,
    module_path: Path | None,
    workdir: Path,
) -> tuple[Any, str]:
    from caffe2tf.app.convert import convert_solver
    from caffe2tf.app.targets import get_target

    if module_path is not None:
        if not Path(module_path).is_file():
            raise InputError(
                f"module {module_path} does not exist", SourceLocation(str(module_path))
            )
        return load_module(Path(module_path)), str(module_path)
    out = workdir / "converted"
    report = convert_solver(
        solver, net_path=net_path, lenient=lenient, out_dir=out, force=True, target=target
    )
    path = out / get_target(target).module
    if report.exit_code != 0 or not path.is_file():
        raise Caffe2TfError(f"caffe2tf convert did not produce {path.name}:\n{report.render()}")
    return load_module(path), f"caffe2tf convert --target {target} {solver} (temporary)"


def load_module(path: Path) -> Any:
    """Import a torch/optax module from ``path``; user input, so a syntax error is an
    InputError at its ``file:line:col`` and any other failure an InputError naming the file."""
    where = SourceLocation(str(path))
    spec = importlib.util.spec_from_file_location(f"caffe2tf_target_{next(_COUNTER)}", path)
    if spec is None or spec.loader is None:
        raise InputError("cannot import this file as a Python module", where)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its classes (NamedTuple states) refer to it
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise InputError(
            f"{type(err).__name__}: {err.msg}", SourceLocation(str(path), err.lineno, err.offset)
        ) from None
    except (Exception, SystemExit) as err:
        raise InputError(
            f"importing the module failed: {type(err).__name__}: {err}", where
        ) from None
    if not any(callable(getattr(module, f, None)) for f in ("build_optimizer", "build_train_op")):
        raise InputError("defines no build_optimizer() (nor build_train_op())", where)
    return module


def _backend(target: str) -> tuple[str, str]:
    try:
        if target == "torch":
            import torch

            device = "CPU"
            return f"torch {torch.__version__}", device
        if target == "tf-compat-v1":
            from caffe2tf._quiet import import_keras_quietly

            import_keras_quietly()
            import tensorflow as tf

            return f"tensorflow {tf.__version__} (tf.compat.v1 graph)", "CPU"
        import jax
        import optax

        return f"optax {optax.__version__} / jax {jax.__version__}", "CPU"
    except ImportError as err:
        raise Caffe2TfError(
            f"--target {target} needs {err.name}: pip install 'caffe2tf[dev]'"
        ) from None


def _run_candidate(
    target: str, module: Any, plan: Any, init: Any, micro: Any, iter_size: int
) -> list[dict[str, Any]]:
    """The module trained per its target's contract on the stream's micro-batches: the
    weights after each update."""
    if target == "torch":
        from caffe2tf.verify.torch_harness import run_torch

        return run_torch(module.build_optimizer, plan.blobs, init, micro, iter_size=iter_size)
    if target == "tf-compat-v1":
        from caffe2tf.verify.tf_v1_harness import run_tf_v1

        return run_tf_v1(module.build_train_op, plan.blobs, init, micro, iter_size=iter_size)
    from caffe2tf.verify.optax_harness import run_optax

    return run_optax(module.build_optimizer, init, micro, iter_size=iter_size)


def verify_target(
    solver: Path,
    *,
    target: str,
    pipeline: Pipeline,
    net_path: Path | None,
    lenient: bool,
    module_path: Path | None,
    steps: int,
    seed: int,
    tolerance: float,
    against: str,
    plot_path: Path | None,
) -> Any:
    """Run the ``target``'s module (see the module docstring); a ``VerifyReport``."""
    from caffe2tf.app.targets import get_target
    from caffe2tf.app.verify_report import VerifyReport, caffe_trajectory
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import streams

    get_target(target)
    backend, device = _backend(target)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rule, net = pipeline.rule, pipeline.recipe.net
    if net is None or not rule.params:
        raise InputError(
            "verify needs the train net to know the parameter shapes: give --net "
            "NET (or a solver whose net/train_net file exists)"
            if net is None
            else "the train net has no learnable parameters",
            SourceLocation(str(solver)),
        )
    plan, _ = get_target(target).plan(pipeline, None)
    shapes = {p.key: tuple(int(d) for d in p.shape or ()) for p in rule.params}
    iter_size = max(1, int(rule.iter_size))
    init = initial_weights(shapes, seed)
    micro = streams.micro_batches(shapes, steps, seed, iter_size=iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(rule.params, rule.force_backward)
    )
    grads = streams.accumulate(micro, iter_size)
    timings["load"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="caffe2tf-verify-") as tmp:
        t = time.perf_counter()
        module, label = _candidate(Path(solver), target, net_path, lenient, module_path, Path(tmp))
        timings["convert"] = time.perf_counter() - t
        t = time.perf_counter()
        if against == "caffe":
            net_file = Path(net_path) if net_path is not None else Path(net.path)
            reference = list(caffe_trajectory(Path(solver), net_file, init, grads, len(grads)))
        else:
            reference = run_reference(rule, init, grads, precision="float32")
        timings[against] = time.perf_counter() - t
        t = time.perf_counter()
        with blame_module(str(module_path) if module_path is not None else None):
            candidate = _run_candidate(target, module, plan, init, micro, iter_size)
        timings[target] = time.perf_counter() - t

    comparison = compare_trajectories(
        init, reference, candidate, tolerance=tolerance, keys=list(shapes)
    )
    written = None
    if plot_path is not None:
        from caffe2tf.verify.plot import plot_deviation

        written = str(
            plot_deviation(comparison, plot_path, title=f"{Path(solver).name} ({target})")
        )
    return VerifyReport(
        solver=str(solver),
        module=label,
        against=against,
        steps=steps,
        seed=seed,
        iter_size=iter_size,
        backend=backend,
        device=device,
        comparison=comparison,
        shapes=shapes,
        timings=timings,
        plot_path=written,
        notes=(ONLY_THE_STREAM,),
    )
