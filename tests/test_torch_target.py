"""The PyTorch target without the Caffe root (the real-Caffe bar is tests/test_targets_oracle.py):

* its registries cover every solver step and lr policy of the rule, and every custom class or
  rate factor they name is a block of the runtime;
* the goldens (tests/cases/<case>/expected_torch/optimizer_torch.py) equal a fresh rendering;
  every emitted module (case directories and the whole matrix, built-in and custom routes) is
  ruff-clean at line length 88 and 100 and imports only torch and the standard library;
* the emitted module, used per its contract, follows the real Caffe's committed traces
  (fixtures/golden) and, on the custom route, the NumPy reference on every matrix case;
* the contract's edges: a Caffe blob without a parameter is an error naming it, a parameter
  without a blob trains with lr_mult 1 and no decay after a warning, dotted layer names are
  nested submodules, state_dict() resumes a run exactly, a compiled model trains the same;
* ``convert --target torch`` writes only optimizer_torch.py.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
import warnings
from pathlib import Path

import pytest
from conftest import require

sys.path.insert(0, str(Path(__file__).parent))

import target_support as ts  # noqa: E402

from caffe2tf.verify import matrix  # noqa: E402

TARGET = "torch"
MATRIX = matrix.matrix_cases(ts.STEPS)
GOLDEN_TRACES = matrix.golden_cases()
WITH_NET = [c for c in ts.CASE_DIRS if (c / "net.prototxt").exists()]


@pytest.fixture(scope="module")
def torch():
    return require("torch")


def test_registries_cover_the_rule() -> None:
    from caffe2tf.rule.model import SOLVERS, SolverStep
    from caffe2tf.rule.schedules import POLICIES
    from caffe2tf.targets.common import runtime_blocks
    from caffe2tf.targets.torch.schedules import BUILTIN_SCHEDULES, FACTOR_POLICIES
    from caffe2tf.targets.torch.solvers import SOLVER_MAPPINGS

    # every step of Caffe's own solver types has a mapping (a fork's steps may have none)
    bvlc = {type(e.build(**dict.fromkeys(e.reads, 0.5))) for e in SOLVERS.values()}
    assert bvlc <= set(SOLVER_MAPPINGS) <= set(typing.get_args(SolverStep))
    assert set(BUILTIN_SCHEDULES) == set(POLICIES)
    for policy in POLICIES:  # a built-in, or an inlined factor
        from caffe2tf.rule.model import LrSchedule

        mapped = BUILTIN_SCHEDULES[policy](
            LrSchedule(policy, 0.1, 0.5, 0.75, 10, (5,), 100, stagelr=(0.1,), stageiter=(5,))
        )
        # a fork's policy may be left unmapped (docs/forks.md)
        fork = POLICIES[policy].dialect is not None
        assert not isinstance(mapped, str) or policy in FACTOR_POLICIES or fork
    names = [f"policy_{p}" for p in FACTOR_POLICIES] + ["solver", "adam_epsilon"]
    assert runtime_blocks("caffe2tf.targets.torch", names)


def test_custom_classes_are_torch_optimizers_of_the_runtime(torch) -> None:
    from caffe2tf.rule.model import SOLVERS
    from caffe2tf.targets.common import runtime_blocks
    from caffe2tf.targets.torch import runtime
    from caffe2tf.targets.torch.solvers import SOLVER_MAPPINGS

    for entry in SOLVERS.values():
        step = entry.build(**dict.fromkeys(entry.reads, 0.5))
        cls = SOLVER_MAPPINGS[type(step)].custom(step).cls
        assert issubclass(getattr(runtime, cls), torch.optim.Optimizer)
        assert runtime_blocks("caffe2tf.targets.torch", [f"custom_{cls}"])


@pytest.mark.parametrize("case", ts.CASE_DIRS, ids=[c.name for c in ts.CASE_DIRS])
def test_goldens(case: Path) -> None:
    ts.check_goldens(case, TARGET)


def _all_modules(tmp_path: Path) -> Path:
    from caffe2tf.targets.torch.plan import plan
    from caffe2tf.targets.torch.render_python import render_python

    folder = tmp_path / "modules"
    folder.mkdir()
    for case in ts.CASE_DIRS:
        (folder / f"case_{case.name}.py").write_text(ts.render_case(case, TARGET)[ts_module()])
    for i, case in enumerate(MATRIX):
        rule = ts.case_rule(case, tmp_path / "rules" / case.name)
        for builtins in (True, False):
            text = render_python(plan(rule, builtins=builtins))
            (folder / f"matrix_{i}_{int(builtins)}.py").write_text(text)
    return folder


def ts_module() -> str:
    from caffe2tf.app.targets import get_target

    return get_target(TARGET).module


def test_emitted_modules_are_ruff_clean_and_import_only_torch(tmp_path: Path) -> None:
    folder = _all_modules(tmp_path)
    ts.ruff_clean(folder)
    for path in folder.glob("*.py"):
        roots = ts.import_roots(path.read_text())
        assert roots <= {"__future__", "torch", "math", "warnings", "collections", "typing"}, (
            path.name,
            roots,
        )


def _run(module, plan, data, **kw):
    from caffe2tf.verify.torch_harness import run_torch

    return run_torch(module.build_optimizer, plan.blobs, data.init, data.micro, **kw)


@pytest.mark.parametrize("golden", GOLDEN_TRACES, ids=[g.case.name for g in GOLDEN_TRACES])
def test_emitted_module_follows_the_committed_caffe_trace(golden, torch, tmp_path) -> None:
    """fixtures/golden holds trajectories of the real Caffe 1.0 whose streams write diffs for
    lr_mult 0 blobs too (Caffe's clip norm counts them, as under force_backward): the recipe is
    converted with force_backward so that those gradients count here as well."""
    from caffe2tf.targets.torch.plan import plan
    from caffe2tf.targets.torch.render_python import render_python
    from caffe2tf.verify.compare import compare_trajectories

    case = golden.case
    rule = dataclasses.replace(ts.case_rule(case, tmp_path), force_backward=True)
    p = plan(rule)
    path = tmp_path / "optimizer_torch.py"
    path.write_text(render_python(p))
    module = ts.load_module(path)
    data = ts.CaseData(case.name, dict(case.init), list(case.micro_grads), [], case.iter_size)
    traj = _run(module, p, data, iter_size=case.iter_size)
    cmp = compare_trajectories(case.init, golden.weights, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_custom_route_follows_the_reference(case, torch, tmp_path) -> None:
    """Every Caffe<X> class (the route taken where no torch.optim built-in is exact) against
    the NumPy reference; the default route is held to the real Caffe in the oracle tests."""
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.targets.torch.plan import plan
    from caffe2tf.targets.torch.render_python import render_python
    from caffe2tf.verify.compare import compare_trajectories

    rule = ts.case_rule(case, tmp_path)
    p = plan(rule, builtins=False)
    assert not p.builtin
    path = tmp_path / "optimizer_torch.py"
    path.write_text(render_python(p))
    data = ts.case_data(case)
    traj = _run(ts.load_module(path), p, data, iter_size=data.iter_size)
    reference = run_reference(rule, data.init, data.grads)
    cmp = compare_trajectories(data.init, reference, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


@pytest.mark.parametrize("case", WITH_NET, ids=[c.name for c in WITH_NET])
def test_case_modules_follow_the_reference(case: Path, torch) -> None:
    """The golden module of each case directory (BatchNorm+Scale, hostile names with a layer
    map, ...) on seeded streams against the NumPy reference."""
    from caffe2tf.rule.reference import run_reference
    from caffe2tf.verify import streams
    from caffe2tf.verify.compare import compare_trajectories
    from caffe2tf.verify.inputs import (
        frozen_blobs_get_no_gradient,
        initial_weights,
        never_written_blobs,
    )

    rule, p = ts.case_plan(case, TARGET)
    module = ts.load_module(case / f"expected_{TARGET}" / ts_module())
    shapes = {g.key: tuple(g.shape or ()) for g in rule.params}
    init = initial_weights(shapes, 7)
    micro = streams.micro_batches(shapes, ts.STEPS, 7, iter_size=rule.iter_size)
    micro = frozen_blobs_get_no_gradient(
        micro, never_written_blobs(rule.params, rule.force_backward)
    )
    data = ts.CaseData(case.name, init, micro, streams.accumulate(micro, rule.iter_size), 1)
    traj = _run(module, p, data, iter_size=rule.iter_size)
    reference = run_reference(rule, init, data.grads)
    cmp = compare_trajectories(init, reference, traj, tolerance=ts.TOLERANCE)
    assert cmp.passed, f"{case.name}: {cmp.summary()}"


# ---- the contract's edges -------------------------------------------------------------------


_LENET: dict[str, object] = {}


def _lenet_module():
    """The torch module of the bundled LeNet recipe (fixtures/lenet: conv1, conv2, ip1, ip2)."""
    if "module" not in _LENET:
        import tempfile

        from caffe2tf.app.convert import convert_solver

        out = Path(tempfile.mkdtemp(prefix="caffe2tf-lenet-")) / "out"
        lenet = ts.ROOT / "fixtures" / "lenet"
        report = convert_solver(
            lenet / "solver.prototxt",
            net_path=lenet / "train.prototxt",
            out_dir=out,
            target=TARGET,
        )
        assert report.exit_code == 0, report.render()
        _LENET["module"] = ts.load_module(out / ts_module())
    return _LENET["module"]


def test_a_caffe_blob_without_a_parameter_is_named(torch) -> None:
    module = _lenet_module()
    model = torch.nn.Module()
    model.conv1 = torch.nn.Conv2d(1, 20, 5)
    with pytest.raises(ValueError, match=r"'conv2' \(conv2.weight\).*'ip2' \(ip2.bias\)"):
        module.build_optimizer(model)


def _lenet_model(torch, extra: bool = False):
    model = torch.nn.Module()
    model.conv1 = torch.nn.Conv2d(1, 20, 5)
    model.conv2 = torch.nn.Conv2d(20, 50, 5)
    model.ip1 = torch.nn.Linear(800, 500)
    model.ip2 = torch.nn.Linear(500, 10)
    if extra:
        model.head = torch.nn.Linear(10, 2)
    return model


def test_a_parameter_without_a_blob_trains_with_lr_mult_1_and_no_decay(torch) -> None:
    module = _lenet_module()
    model = _lenet_model(torch, extra=True)
    with pytest.warns(UserWarning, match="head.weight, head.bias"):
        opt = module.build_optimizer(model)
    (group,) = [g for g in opt.param_groups if any(q is model.head.weight for q in g["params"])]
    assert group["lr"] == pytest.approx(0.01) and group["weight_decay"] == 0.0
    assert [len(g["params"]) for g in opt.param_groups] == [4, 4, 2]


def test_dotted_layer_names_are_nested_submodules(torch, tmp_path) -> None:
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.targets.torch.plan import plan
    from caffe2tf.targets.torch.render_python import render_python

    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }\n'
        'layer { name: "block1.fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        "  inner_product_param { num_output: 3 } }\n"
    )
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\n')
    p = plan(load_pipeline(solver).rule)
    (tmp_path / "opt.py").write_text(render_python(p))
    module = ts.load_module(tmp_path / "opt.py")
    model = torch.nn.Module()
    model.block1 = torch.nn.Module()
    model.block1.fc = torch.nn.Linear(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every parameter is bound: no warning
        opt = module.build_optimizer(model)
    assert {id(q) for g in opt.param_groups for q in g["params"]} == {
        id(model.block1.fc.weight),
        id(model.block1.fc.bias),
    }


def _train(torch, module, model, steps: int, seed: int, opt=None):
    gen = torch.Generator().manual_seed(seed)
    opt = opt or module.build_optimizer(model)
    for _ in range(steps):
        x = torch.randn(4, 1, 28, 28, generator=gen)
        h = model.conv2(torch.relu(model.conv1(x)))
        loss = model.ip2(torch.relu(model.ip1(h.mean(dim=(2, 3)).repeat(1, 16)))).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_state_dict_resumes_a_run_exactly(torch) -> None:
    module = _lenet_module()
    torch.manual_seed(0)
    a = _lenet_model(torch)
    b = _lenet_model(torch)
    b.load_state_dict(a.state_dict())
    _train(torch, module, a, 6, 1)
    opt = _train(torch, module, b, 3, 1)
    saved = opt.state_dict()
    resumed = module.build_optimizer(b)
    resumed.load_state_dict(saved)
    gen_state = 3  # replay the same batches 4..6
    gen = torch.Generator().manual_seed(1)
    for _ in range(gen_state):
        torch.randn(4, 1, 28, 28, generator=gen)
    for _ in range(3):
        x = torch.randn(4, 1, 28, 28, generator=gen)
        h = b.conv2(torch.relu(b.conv1(x)))
        loss = b.ip2(torch.relu(b.ip1(h.mean(dim=(2, 3)).repeat(1, 16)))).square().mean()
        loss.backward()
        resumed.step()
        resumed.zero_grad()
    assert resumed.iterations == 6
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_a_compiled_model_trains_the_same(torch) -> None:
    """The optimizer runs eagerly around a ``torch.compile``d model (backend "eager": the
    same graph capture without a C++ toolchain)."""
    module = _lenet_module()
    torch.manual_seed(0)
    a = _lenet_model(torch)
    b = _lenet_model(torch)
    b.load_state_dict(a.state_dict())
    _train(torch, module, a, 3, 2)
    compiled = torch.compile(b, backend="eager")
    opt = module.build_optimizer(compiled)
    _train(torch, module, compiled, 3, 2, opt=opt)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6)


def test_convert_target_torch_writes_only_its_module(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from caffe2tf.app.targets import TARGETS
    from caffe2tf.cli import TARGET_NAMES, cli

    assert tuple(TARGETS) == TARGET_NAMES
    case = ts.CASES / "lenet_sgd_multistep"
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "convert",
            str(case / "solver.prototxt"),
            "--net",
            str(case / "net.prototxt"),
            "--target",
            TARGET,
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [ts_module()]
    assert "Wrote" in res.output and "optimizer_torch.py" in res.output


def _check(tmp_path: Path, edit=None) -> tuple[int, str]:
    """``caffe2tf check --target torch`` on lenet_sgd_multistep converted into OUT, after
    ``edit(text)`` of the module when given."""
    from click.testing import CliRunner

    from caffe2tf.cli import cli

    out = tmp_path / "out"
    solver, files = ts.cli_convert(TARGET, out)
    if edit is not None:
        module = out / ts_module()
        module.write_text(edit(module.read_text()))
    res = CliRunner().invoke(cli, ["check", solver, str(out), *files, "--target", TARGET])
    return res.exit_code, res.output


def test_check_target_torch_passes_the_module_and_fails_a_wrong_edit(torch, tmp_path) -> None:
    code, output = _check(tmp_path / "a")
    assert code == 0, output
    assert "stream component only" in output and "check PASSED" in output
    # the usual hand port: torch.optim.SGD under lr_policy multistep (the rate outside)
    code, output = _check(tmp_path / "b", lambda t: t.replace("= CaffeSGD(", "= torch.optim.SGD("))
    assert code == 1, output
    assert "check FAILED" in output


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
    from caffe2tf.targets.torch.plan import plan

    p = plan(forked)
    assert any(n.exactness is Exactness.UNSUPPORTED and "ForkSolver" in n.message for n in p.notes)
