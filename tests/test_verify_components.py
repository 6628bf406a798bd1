"""Which runs verify plans for a rule (no Keras): windows at the schedule's milestones, the
probes that apply, and nothing that does not (a probe on an absent term would pass vacuously)."""

from __future__ import annotations

import numpy as np

from caffe2tf.rule.model import (
    AdaGrad,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    NormalizeBy,
    ParamGroup,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.verify.components import MAX_WINDOWS, WINDOW_UPDATES, milestones, plan_runs

SHAPES = {"ip/0": (3, 4), "ip/1": (3,)}


def _rule(schedule: LrSchedule, *extra, solver=None, decay_mult=1.0, iter_size=1) -> UpdateRule:
    return UpdateRule(
        solver="SGD",
        steps=(*extra, ScaleByLr(schedule), solver or Momentum(0.9)),
        params=(
            ParamGroup("ip/0", shape=(3, 4), decay_mult=decay_mult),
            ParamGroup("ip/1", shape=(3,), decay_mult=0.0),
        ),
        iter_size=iter_size,
        max_iter=schedule.max_iter,
        net_known=True,
    )


def test_milestones_follow_the_policy():
    multistep = LrSchedule("multistep", 0.1, gamma=0.1, stepvalue=(5000, 7000), max_iter=10000)
    assert milestones(_rule(multistep), 100) == [
        (5000, "multistep stage"),
        (7000, "multistep stage"),
        (10000, "last updates before max_iter"),
    ]
    step = LrSchedule("step", 0.1, gamma=0.1, stepsize=2000, max_iter=5000)
    assert [m for m, _ in milestones(_rule(step), 100)] == [2000, 4000, 5000]
    many = LrSchedule("multistep", 0.1, gamma=0.5, stepvalue=tuple(range(10, 10**4, 10)))
    assert len(milestones(_rule(many), 100)) == MAX_WINDOWS


def test_windows_straddle_each_milestone_and_probes_match_the_rule():
    s = LrSchedule("multistep", 0.1, gamma=0.1, stepvalue=(5000,), max_iter=10000)
    runs = plan_runs(_rule(s, AddDecay("L2", 5e-4)), SHAPES, _init(), steps=100, seed=0)
    windows = [r for r in runs if r.component == "schedule"]
    assert [r.start for r in windows] == [4950, 9900]
    assert {r.component for r in runs} == {"stream", "schedule", "decay", "state"}
    decay = next(r for r in runs if r.component == "decay")
    init, micro, grads = decay.data()
    assert decay.dtype == "float64" and decay.floor_fraction == 0.0
    assert all(not np.any(g[k]) for g in grads for k in g)  # decay alone


def test_windows_keep_their_length_when_the_stream_grows():
    """A long ``--steps`` lengthens the stream, not the windows: a mistake at a milestone is
    a fixed amount, so a longer window would only dilute it in the distance travelled."""
    s = LrSchedule("multistep", 0.1, gamma=0.1, stepvalue=(5000,), max_iter=10000)
    runs = plan_runs(_rule(s), SHAPES, _init(), steps=1000, seed=0)
    assert runs[0].component == "stream" and runs[0].updates == 1000
    windows = [r for r in runs if r.component == "schedule"]
    assert [(r.start, r.updates) for r in windows] == [
        (5000 - WINDOW_UPDATES // 2, WINDOW_UPDATES),
        (10000 - WINDOW_UPDATES, WINDOW_UPDATES),
    ]
    assert windows[0].label == "iterations 4950..5049 (multistep stage at 5000)"
    short = plan_runs(_rule(s), SHAPES, _init(), steps=20, seed=0)
    assert [(r.start, r.updates) for r in short if r.component == "schedule"] == [
        (4990, 20),
        (9980, 20),
    ]


def test_probes_are_planned_only_where_their_term_exists():
    s = LrSchedule("fixed", 0.1, max_iter=50)
    plain = plan_runs(_rule(s, solver=Momentum(0.0)), SHAPES, _init(), steps=20, seed=0)
    assert {r.component for r in plain} == {"stream", "schedule"}
    rich = plan_runs(
        _rule(s, ClipByGlobalNorm(2.0), NormalizeBy(3), solver=AdaGrad(1e-6), iter_size=3),
        SHAPES,
        _init(),
        steps=20,
        seed=0,
    )
    names = [r.component for r in rich]
    assert names.count("clipping") == 2
    assert {"state", "epsilon", "accumulation"} <= set(names) and "decay" not in names
    clip = [r for r in rich if r.component == "clipping"]
    for run, factor in zip(clip, (1.05, 0.95), strict=True):
        _, micro, grads = run.data()
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in grads[0].values()))
        assert abs(norm - factor * 2.0) < 1e-9
        assert len(micro) == 3 * len(grads)


def test_frozen_blobs_get_no_gradient_in_any_run():
    s = LrSchedule("fixed", 0.1, max_iter=50)
    runs = plan_runs(
        _rule(s, solver=AdaGrad(1e-6)), SHAPES, _init(), steps=10, seed=1, frozen=("ip/1",)
    )
    for run in runs:
        _, micro, _ = run.data()
        assert all(not np.any(g["ip/1"]) for g in micro), run.label


def _init() -> dict[str, np.ndarray]:
    return {k: np.ones(v, np.float32) for k, v in SHAPES.items()}


def test_rate_differences_judge_tiny_tail_rates_against_a_floor():
    """The rate check forgives float32 noise in rates a thousandth of the run's largest, but
    not a missing floor (NVIDIA's min_lr), nor a relative error where the rate is large."""
    from caffe2tf.verify.schedule_check import RATE_FLOOR, SCHEDULE_TOLERANCE, rate_differences

    k = np.arange(2_400_000, dtype=np.float64)
    poly = (0.005 * (1.0 - k / 2_400_000) ** 2).astype(np.float32)
    # the tail of a poly schedule read with a relative error of 1e-4 (float32 cancellation)
    noisy = poly.copy()
    tail = poly < RATE_FLOOR * poly.max() / 10
    noisy[tail] *= np.float32(1 + 1e-4)
    assert rate_differences(poly, noisy).max() <= SCHEDULE_TOLERANCE
    # the same relative error where the rate is large is a different schedule
    big = poly.copy()
    big[:1000] *= np.float32(1 + 1e-3)
    assert rate_differences(poly, big).max() > SCHEDULE_TOLERANCE
    # a rate floor (min_lr 1e-5) the candidate forgot shows only at the tail, and is caught
    floored = np.maximum(poly, np.float32(1e-5))
    assert rate_differences(floored, poly).max() > SCHEDULE_TOLERANCE
    assert np.isinf(rate_differences(poly, np.where(tail, np.nan, poly)).max())
