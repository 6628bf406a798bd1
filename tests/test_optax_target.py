"""The optax target without the Caffe root (the real-Caffe bar is tests/test_targets_oracle.py):

* its registries cover every solver step and lr policy of the rule, and every custom piece
  they name is a block of the runtime;
* the goldens (tests/cases/<case>/expected_optax/optimizer_optax.py) equal a fresh rendering;
  every emitted module (case directories and the whole matrix) is ruff-clean at line length 88
  and 100 and imports only optax, JAX and the standard library;
* the emitted module, used per its contract (jit-compiled train step), follows the real Caffe's
  committed traces (fixtures/golden) and the NumPy reference on every case directory;
* the contract's edges: a Caffe blob missing from the params tree is an error naming it, a leaf
  without a blob trains with lr_mult 1 and no decay after a warning, and the update is the
  same with and without ``jax.jit``;
* ``convert --target optax`` writes only optimizer_optax.py.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from conftest import require

sys.path.insert(0, str(Path(__file__).parent))

import target_support as ts  # noqa: E402

from caffe2tf.verify import matrix  # noqa: E402

TARGET = "optax"
MODULE = "optimizer_optax.py"
MATRIX = matrix.matrix_cases(ts.STEPS)
GOLDEN_TRACES = matrix.golden_cases()
WITH_NET = [c for c in ts.CASE_DIRS if (c / "net.prototxt").exists()]


@pytest.fixture(scope="module")
def optax():
    require("jax")
    return require("optax")


def test_registries_cover_the_rule() -> None:
    from caffe2tf.rule.model import SOLVERS, LrSchedule, SolverStep
    from caffe2tf.rule.schedules import POLICIES
    from caffe2tf.targets.common import runtime_blocks
    from caffe2tf.targets.optax.schedules import BUILTIN_SCHEDULES, CUSTOM_POLICIES
    from caffe2tf.targets.optax.solvers import SOLVER_MAPPINGS

    # every step of Caffe's own solver types has a mapping (a fork's steps may have none)
    bvlc = {type(e.build(**dict.fromkeys(e.reads, 0.5))) for e in SOLVERS.values()}
    assert bvlc <= set(SOLVER_MAPPINGS) <= set(typing.get_args(SolverStep))
    assert set(BUILTIN_SCHEDULES) == set(POLICIES)
    for policy in POLICIES:
        mapped = BUILTIN_SCHEDULES[policy](
            LrSchedule(policy, 0.1, 0.5, 0.75, 10, (5,), 100, stagelr=(0.1,), stageiter=(5,))
        )
        # a fork's policy may be left unmapped (docs/forks.md)
        fork = POLICIES[policy].dialect is not None
        assert not isinstance(mapped, str) or policy in CUSTOM_POLICIES or fork
    blocks = {"labels", "l1_decay"} | {f"policy_{p}" for p in CUSTOM_POLICIES}
    for mapping in SOLVER_MAPPINGS.values():
        from caffe2tf.rule.model import SOLVERS

        for entry in SOLVERS.values():
            step = entry.build(**dict.fromkeys(entry.reads, 0.5))
            if SOLVER_MAPPINGS[type(step)] is mapping:
                blocks |= set(mapping.chain(step)[2])
    assert runtime_blocks("caffe2tf.targets.optax", sorted(blocks))


@pytest.mark.parametrize("case", ts.CASE_DIRS, ids=[c.name for c in ts.CASE_DIRS])
def test_goldens(case: Path) -> None:
    ts.check_goldens(case, TARGET)


def test_emitted_modules_are_ruff_clean_and_import_only_optax(tmp_path: Path) -> None:
    from caffe2tf.targets.optax.plan import plan
    from caffe2tf.targets.optax.render_python import render_python

    folder = tmp_path / "modules"
    folder.mkdir()
    for case in ts.CASE_DIRS:
        (folder / f"case_{case.name}.py").write_text(ts.render_case(case, TARGET)[MODULE])
    for i, case in enumerate(MATRIX):
        rule = ts.case_rule(case, tmp_path / "rules" / case.name)
        (folder / f"matrix_{i}.py").write_text(render_python(plan(rule)))
    ts.ruff_clean(folder)
    allowed = {"__future__", "jax", "optax", "warnings", "collections", "typing"}
    for path in folder.glob("*.py"):
        roots = ts.import_roots(path.read_text())
        assert roots <= allowed, (path.name, roots)


def _run(module, data, **kw):
    from caffe2tf.verify.optax_harness import run_optax

    return run_optax(module.build_optimizer, data.init, data.micro, **kw)


@pytest.mark.parametrize("golden", GOLDEN_TRACES, ids=[g.case.name for g in GOLDEN_TRACES])
def test_emitted_module_follows_the_committed_caffe_trace(golden, optax, tmp_path) -> None:
    """fixtures/golden holds trajectories of the real Caffe 1.0 whose streams write diffs for
    lr_mult 0 blobs too (Caffe's clip norm counts them, as under force_backward): the recipe is
    converted with force_backward so that those gradients count here as well."""
    from caffe2tf.targets.optax.plan import plan
    from caffe2tf.targets.optax.render_python import render_python
    from caffe2tf.verify.compare import compare_trajectories

    case = golden.case
    rule = dataclasses.replace(ts.case_rule(case, tmp_path), force_backward=True)
    path = tmp_path / MODULE
    path.write_text(render_python(plan(rule)))
    data = ts.CaseData(case.name, dict(case.init), list(case.micro_grads), [], case.iter_size)
    traj = _run(ts.load_module(path), data, iter_size=case.iter_size)
    cmp = compare_trajectories(case.init, golden.weights, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", WITH_NET, ids=[c.name for c in WITH_NET])
def test_case_modules_follow_the_reference(case: Path, optax) -> None:
    """The golden module of each case directory (BatchNorm statistics in the params tree,
    hostile names with a layer map, ...) on seeded streams against the NumPy reference."""
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import streams
    from caffe2tf.verify.compare import compare_trajectories
    from caffe2tf.verify.inputs import (
        frozen_blobs_get_no_gradient,
        initial_weights,
        never_written_blobs,
    )

    rule, p = ts.case_plan(case, TARGET)
    module = ts.load_module(case / f"expected_{TARGET}" / MODULE)
    keys = {b.caffe_key: f"{b.layer}/{b.blob}" for b in p.blobs}  # layer-mapped names
    shapes = {g.key: tuple(g.shape or ()) for g in rule.params}
    init = initial_weights(shapes, 7)
    micro = streams.micro_batches(shapes, ts.STEPS, 7, iter_size=rule.iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(rule.params, rule.force_backward)
    )
    grads = streams.accumulate(micro, rule.iter_size)
    reference = run_reference(rule, init, grads)

    def rename(ws):
        return {keys[k]: v for k, v in ws.items()}

    data = ts.CaseData(case.name, rename(init), [rename(m) for m in micro], [], rule.iter_size)
    traj = _run(module, data, iter_size=rule.iter_size)
    cmp = compare_trajectories(
        rename(init), [rename(w) for w in reference], traj, tolerance=ts.TOLERANCE
    )
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


# ---- the contract's edges -------------------------------------------------------------------


def _module(name: str = "clip_decay_sgd"):
    return ts.load_module(ts.CASES / name / f"expected_{TARGET}" / MODULE)


def _params(jnp, shapes):
    return {layer: [jnp.ones(s, jnp.float32) for s in blobs] for layer, blobs in shapes.items()}


def _case_shapes(name: str) -> dict[str, list[tuple[int, ...]]]:
    rule, _ = ts.case_plan(ts.CASES / name, TARGET)
    out: dict[str, list[tuple[int, ...]]] = {}
    for g in rule.params:
        out.setdefault(g.layer, []).append(tuple(g.shape or ()))
    return out


def test_a_caffe_blob_missing_from_the_params_is_named(optax) -> None:
    import jax.numpy as jnp

    shapes = _case_shapes("clip_decay_sgd")
    params = _params(jnp, shapes)
    last = list(params)[-1]
    params[last] = params[last][:1]
    with pytest.raises(ValueError, match=f"'{last}' blob 1"):
        _module().build_optimizer().init(params)


def test_a_leaf_without_a_blob_trains_with_lr_mult_1_and_no_decay(optax) -> None:
    import jax.numpy as jnp

    params = _params(jnp, _case_shapes("clip_decay_sgd"))
    params["head"] = [jnp.ones((2,), jnp.float32)]
    opt = _module().build_optimizer()
    with pytest.warns(UserWarning, match="'head' blob 0"):
        state = opt.init(params)
    grads = {k: [jnp.zeros_like(v) for v in vs] for k, vs in params.items()}
    grads["head"] = [jnp.full((2,), 0.5, jnp.float32)]
    updates, _ = opt.update(grads, state, params)
    # no decay on the extra leaf: only the rate times its gradient (momentum starts at 0)
    rule, p = ts.case_plan(ts.CASES / "clip_decay_sgd", TARGET)
    rate = float(np.float32(rule.schedule.base_lr))
    np.testing.assert_allclose(np.asarray(updates["head"][0]), -rate * 0.5, rtol=1e-6)


def test_jit_and_eager_give_the_same_trajectory(optax) -> None:
    case = next(c for c in MATRIX if c.iter_size > 1 and c.factors["clip"] == "on")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = ts.convert_case(case, Path(tmp), TARGET)
        module = ts.load_module(path)
        data = ts.case_data(case)
        short = dataclasses.replace(data, micro=data.micro[: 5 * data.iter_size])
        jitted = _run(module, short, iter_size=data.iter_size, jit=True)
        eager = _run(module, short, iter_size=data.iter_size, jit=False)
    for a, b in zip(jitted, eager, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)


def test_convert_target_optax_writes_only_its_module(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ts.cli_convert(TARGET, out)
    assert sorted(p.name for p in out.iterdir()) == [MODULE]


def test_verify_and_check_target_optax(optax, tmp_path: Path) -> None:
    """``verify --target optax`` converts and passes; ``check`` fails a module whose trace
    comes before the rate (optax.sgd's order: the rate outside the history)."""
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    case = ts.CASES / "lenet_sgd_multistep"
    solver, files = str(case / "solver.prototxt"), ["--net", str(case / "net.prototxt")]
    runner = CliRunner()
    res = runner.invoke(cli, ["verify", solver, *files, "--target", TARGET])
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    out = tmp_path / "out"
    ts.cli_convert(TARGET, out)
    module = out / MODULE
    rate = "        optax.scale_by_learning_rate(learning_rate(lr_mult)),\n"
    text = module.read_text()
    assert rate in text
    trace_at = text.index("        optax.trace(", text.index(rate))
    end = text.index("        ),\n", trace_at) + len("        ),\n")
    swapped = text[: text.index(rate)] + text[trace_at:end] + rate + text[end:]
    module.write_text(swapped)
    res = runner.invoke(cli, ["check", solver, str(out), *files, "--target", TARGET])
    assert res.exit_code == 1 and "check FAILED" in res.output, res.output


def test_a_module_that_fails_while_verify_trains_with_it_is_one_error_line(
    optax, tmp_path: Path
) -> None:
    """The target's module is user code: an exception raised through it while verify trains
    with it is one line at the module's line, exit 2 (caffe2tf/verify/candidate.py
    ``blame_module``), not a traceback."""
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    out = tmp_path / "out"
    solver, files = ts.cli_convert(TARGET, out)
    module = out / MODULE
    text = module.read_text() + (
        "\n\n_emitted = build_optimizer\n\n\n"
        "def build_optimizer():\n"
        "    raise RuntimeError('no optimizer today')\n"
    )
    module.write_text(text)
    line = len(text.splitlines())
    args = ["verify", solver, *files, "--target", TARGET, "--module", str(module), "--steps", "2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert (
        f"{module}:{line}: error: the optimizer failed while verify trained with it: "
        "RuntimeError: no optimizer today" in res.output
    ), res.output


def test_a_step_without_a_mapping_is_refused_not_guessed(tmp_path: Path) -> None:
    """A rule step this target has no mapping for (a fork's solver or decay policy) makes the
    plan unsupported, so convert writes nothing."""
    import dataclasses as dc

    from caffe2tf.notes import Exactness

    @dc.dataclass(frozen=True)
    class ForkSolver:
        momentum: float = 0.9
        name: str = "fork"

    case = MATRIX[0]
    rule = ts.case_rule(case, tmp_path)
    forked = dc.replace(rule, steps=rule.steps[:-1] + (ForkSolver(),))
    from caffe2tf.targets.optax.plan import plan

    p = plan(forked)
    assert any(n.exactness is Exactness.UNSUPPORTED and "ForkSolver" in n.message for n in p.notes)
