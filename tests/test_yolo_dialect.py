"""The yolo fork's dialect (QiaoXie/caffe-yolo-2 2bee16c, docs/forks.md): told from its fields,
read strictly with the fork's own caffe.proto, and its ``lr_policy: "multifixed"`` lowered
exactly, checked against a float64 restatement of the fork's ``GetLearningRate``
(``src/caffe/solvers/sgd_solver.cpp:32-40``) with a planted off-by-one caught."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from caffe2tf.app.convert import convert_solver
from caffe2tf.caffe.load import load_recipe
from caffe2tf.caffe.solver import FORK_LR_POLICIES, LR_POLICIES
from caffe2tf.errors import InputError
from caffe2tf.rule.lower import lower
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import POLICIES, boundaries, lr_sequence, multifixed_bounds
from caffe2tf.verify.schedule_check import lr_array

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("CAFFE2TF_CORPUS", ROOT.parent / "shared" / "corpus"))
LENET = ROOT / "fixtures" / "lenet" / "train.prototxt"
NET = textwrap.dedent("""\
    name: "t"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 2 } }
    """)
STAGES = (
    "stagelr: 0.001\nstagelr: 0.01\nstagelr: 0.0001\nstageiter: 5\nstageiter: 12\nstageiter: 20\n"
)
SOLVER = 'net: "net.prototxt"\nlr_policy: "multifixed"\nmax_iter: 30\nmomentum: 0.9\n'


def fork_rate(stagelr: list[float], stageiter: list[int], k: int, *, planted: bool = False):
    """The fork's GetLearningRate for "multifixed", restated in float64 line by line
    (QiaoXie/caffe-yolo-2 src/caffe/solvers/sgd_solver.cpp): CHECK_EQ of the sizes (:33);
    ``stage`` from 0 while ``stage < num_stages`` (:34-36), leaving the loop at the first
    ``iter_ <= stageiter(stage)`` (:37); ``stage == num_stages ? stage - 1 : stage`` (:39);
    ``rate = stagelr(stage)`` (:40). ``planted``: ``<`` for ``<=``, the off-by-one a port
    that copies the multistep convention would make."""
    assert len(stagelr) == len(stageiter)
    num_stages = len(stagelr)
    stage = 0
    while stage < num_stages:
        hit = k < stageiter[stage] if planted else k <= stageiter[stage]
        if hit:
            break
        stage += 1
    if stage == num_stages:
        stage = stage - 1
    return float(stagelr[stage])


def _f32(values) -> list[float]:
    return [float(np.float32(v)) for v in values]


CASES = {
    "increasing": (_f32([0.001, 0.01, 0.001, 0.0001]), [3, 9, 14, 20]),
    "one stage": (_f32([0.05]), [4]),
    "unsorted (a smaller later stageiter never wins)": (_f32([0.1, 0.2, 0.3, 0.4]), [8, 3, 8, 12]),
    "negative first": (_f32([0.5, 0.25]), [-1, 6]),
    "stageiter 0": (_f32([0.7, 0.07]), [0, 2]),
}


def _schedule(stagelr, stageiter) -> LrSchedule:
    return LrSchedule(
        policy="multifixed", base_lr=0.0, stagelr=tuple(stagelr), stageiter=tuple(stageiter)
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_and_vector_rates_equal_the_restatement(case: str) -> None:
    stagelr, stageiter = CASES[case]
    n = max(stageiter) + 6  # past the last stage too
    want = np.array([fork_rate(stagelr, stageiter, k) for k in range(n)])
    assert lr_sequence(_schedule(stagelr, stageiter), n, precision="float64").tolist() == list(want)
    f32 = lr_sequence(_schedule(stagelr, stageiter), n)
    assert np.array_equal(f32, want.astype(np.float32))
    assert np.array_equal(lr_array(_schedule(stagelr, stageiter), n), f32)
    # every change of rate is at a boundary the verify windows know
    changes = [k for k in range(1, n) if want[k] != want[k - 1]]
    assert set(changes) <= set(boundaries(_schedule(stagelr, stageiter), n))


def test_the_planted_off_by_one_is_caught_at_each_stageiter() -> None:
    stagelr, stageiter = CASES["increasing"]
    n = 25
    right = lr_sequence(_schedule(stagelr, stageiter), n, precision="float64")
    planted = np.array([fork_rate(stagelr, stageiter, k, planted=True) for k in range(n)])
    differ = [k for k in range(n) if right[k] != planted[k]]
    # exactly where k == stageiter (the rule says <=), but the last: past it the last stage
    # holds anyway
    assert differ == [3, 9, 14]


def test_past_the_last_stage_the_last_stagelr_holds_even_when_a_larger_stageiter_is_earlier():
    s = _schedule(_f32([0.1, 0.2, 0.3]), [10, 4, 6])
    bounds, rates = multifixed_bounds(s)
    assert bounds == (10,) and rates == (s.stagelr[0], s.stagelr[2])
    assert lr_sequence(s, 12, precision="float64")[11] == s.stagelr[2]


def test_the_policy_tables_agree() -> None:
    assert tuple(p for p, v in POLICIES.items() if v.dialect is None) == LR_POLICIES
    forks = {v.dialect: () for v in POLICIES.values() if v.dialect}
    for name, v in POLICIES.items():
        if v.dialect:
            forks[v.dialect] += (name,)
    assert forks == FORK_LR_POLICIES


def _recipe(tmp_path: Path, solver: str, net: str = NET):
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(solver)
    return load_recipe(tmp_path / "solver.prototxt")


def test_stage_fields_make_the_recipe_the_yolo_forks(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, SOLVER + STAGES)
    assert recipe.solver.dialect == "yolo"
    note = next(n for n in recipe.solver.notes if n.code == "dialect.yolo")
    assert "stagelr" in note.message and "stageiter" in note.message
    rule = lower(recipe)
    assert rule.schedule.stageiter == (5, 12, 20)
    assert rule.schedule.stagelr == tuple(_f32([0.001, 0.01, 0.0001]))
    # base_lr is not read by multifixed: no "nothing trains" warning
    assert not any(n.code == "rule.default.base_lr" for n in rule.notes)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("stagelr: 0.1\nstagelr: 0.2\nstageiter: 5\n", "one stageiter per stagelr"),
        ("stagelr: 0.1\n", "one stageiter per stagelr"),
        ("stagelr: nan\nstageiter: 5\n", "non-finite"),
    ],
)
def test_the_forks_checks(tmp_path: Path, extra: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        _recipe(tmp_path, SOLVER + extra)


def test_multifixed_without_stages_is_bvlc_and_refused(tmp_path: Path) -> None:
    # no stage field: BVLC's schema reads it, and BVLC Caffe knows no such policy
    with pytest.raises(InputError, match="Unknown learning rate policy: 'multifixed'"):
        _recipe(tmp_path, SOLVER)


def test_rmsprop_without_rms_decay_is_zero_in_the_fork(tmp_path: Path) -> None:
    solver = SOLVER.replace("momentum: 0.9\n", 'type: "RMSProp"\n') + STAGES
    recipe = _recipe(tmp_path, solver)
    assert recipe.solver.rms_decay == 0.0  # caffe-yolo-2 caffe.proto:225 has no default
    rule = lower(recipe)
    assert any(n.code == "rule.default.rms_decay" and "0 because" in n.message for n in rule.notes)


def _keras_rates(schedule, n: int) -> np.ndarray:
    import keras

    return np.array([float(keras.ops.convert_to_numpy(schedule(k))) for k in range(n)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_schedules_equal_the_restatement_and_a_shifted_port_does_not(case: str) -> None:
    pytest.importorskip("keras")
    import keras

    from caffe2tf.targets.keras.runtime import CaffeSchedule
    from caffe2tf.targets.keras.schedules import keras_schedule

    stagelr, stageiter = CASES[case]
    s = _schedule(stagelr, stageiter)
    n = max(stageiter) + 6
    want = np.array([fork_rate(stagelr, stageiter, k) for k in range(n)], np.float32)
    call, note = keras_schedule(s, iter_size=1, rms_decay=None, force_custom=False)
    assert call.cls == "PiecewiseConstantDecay" and note.exactness.name == "EXACT"
    args = {a.name: a.value for a in call.args}
    builtin = keras.optimizers.schedules.PiecewiseConstantDecay(
        list(args["boundaries"]), list(args["values"])
    )
    assert np.array_equal(_keras_rates(builtin, n).astype(np.float32), want)
    custom_call, _ = keras_schedule(s, iter_size=1, rms_decay=None, force_custom=True)
    custom = CaffeSchedule(**{a.name: a.value for a in custom_call.args})
    assert np.array_equal(_keras_rates(custom, n).astype(np.float32), want)
    # the planted mistake: boundaries shifted by one as multistep's are; it shows wherever
    # the rate changes (one case has a single rate for k >= 0)
    if np.all(want == want[0]):
        return
    shifted = keras.optimizers.schedules.PiecewiseConstantDecay(
        [b - 1 for b in args["boundaries"]], list(args["values"])
    )
    assert not np.array_equal(_keras_rates(shifted, n).astype(np.float32), want)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS} (optional)")
def test_the_corpus_yolo_solver_converts_exactly_with_a_net(tmp_path: Path) -> None:
    solver = CORPUS / "QiaoXie__caffe-yolo-2" / "examples__yolo__gnet_solver.prototxt"
    report = convert_solver(solver, net_path=LENET, out_dir=tmp_path / "out", force=True)
    assert report.exit_code == 0
    text = (tmp_path / "out" / "optimizer.py").read_text()
    assert "PiecewiseConstantDecay" in text and "[520, 16000, 24000, 32000]" in text


def test_verify_passes_on_a_multifixed_recipe(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from caffe2tf.app.verify import verify_solver

    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{LENET}"\nlr_policy: "multifixed"\nmax_iter: 40\nmomentum: 0.9\n'
        "weight_decay: 0.0005\n" + STAGES
    )
    report = verify_solver(solver, steps=25)
    assert report.exit_code == 0, report


def test_verify_against_caffe_refuses_a_forks_recipe_with_its_reason(tmp_path: Path) -> None:
    """BVLC's binary cannot read the fork's stagelr: a one-line refusal, not Caffe's abort."""
    from caffe2tf.app.verify import verify_solver

    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{LENET}"\nlr_policy: "multifixed"\nmax_iter: 40\n' + STAGES)
    with pytest.raises(InputError, match="--against caffe runs BVLC Caffe 1.0"):
        verify_solver(solver, steps=5, against="caffe")
