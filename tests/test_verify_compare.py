"""The deviation measure of caffe2tf.verify.compare (definitions in its module docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe2tf.verify.compare import (
    StreamingComparison,
    compare_trajectories,
    trajectory_from_flat,
    trajectory_to_flat,
)


def _line(start: float, step: float, n: int) -> list[dict[str, np.ndarray]]:
    return [{"a/0": np.array([start + step * t, 0.0], np.float32)} for t in range(1, n + 1)]


def test_identical_trajectories_have_zero_deviation():
    init = {"a/0": np.array([1.0, 0.0], np.float32)}
    ref = _line(1.0, -0.1, 5)
    cmp = compare_trajectories(init, ref, ref)
    assert cmp.deviation == 0.0 and cmp.passed
    assert cmp.travelled == pytest.approx(0.5, rel=1e-6)


def test_deviation_is_max_abs_diff_over_distance_travelled():
    init = {"a/0": np.array([1.0, 0.0], np.float32)}
    ref = _line(1.0, -0.1, 5)  # travels 0.5 at the last step
    cand = [{"a/0": w["a/0"] + np.array([0.0, 0.01 * t], np.float32)} for t, w in enumerate(ref, 1)]
    cmp = compare_trajectories(init, ref, cand, tolerance=1e-3)
    assert cmp.deviation == pytest.approx(0.05 / 0.5, rel=1e-5)
    assert cmp.worst_step == 5 and cmp.worst_key == "a/0"
    assert not cmp.passed
    assert cmp.per_step[0] == pytest.approx(0.01 / 0.5, rel=1e-5)
    assert len(cmp.per_step) == 5


def test_floor_is_one_percent_of_initial_magnitude():
    init = {"a/0": np.array([100.0, 0.0], np.float32)}
    ref = [{"a/0": np.array([100.0, 0.0], np.float32)}] * 3  # does not move at all
    cand = [{"a/0": np.array([100.0, 0.5], np.float32)}] * 3
    cmp = compare_trajectories(init, ref, cand)
    assert cmp.travelled == 0.0 and cmp.scale == pytest.approx(1.0)
    assert cmp.deviation == pytest.approx(0.5)


def test_one_scale_for_all_blobs():
    init = {"a/0": np.zeros(2, np.float32), "b/0": np.zeros(2, np.float32)}
    ref = [{"a/0": np.array([2.0, 0.0], np.float32), "b/0": np.zeros(2, np.float32)}]
    cand = [{"a/0": np.array([2.0, 0.0], np.float32), "b/0": np.array([0.0, 0.002], np.float32)}]
    cmp = compare_trajectories(init, ref, cand)
    assert cmp.per_blob["a/0"] == 0.0
    assert cmp.per_blob["b/0"] == pytest.approx(0.001, rel=1e-4)
    assert cmp.worst_key == "b/0"


def test_nan_candidate_fails():
    init = {"a/0": np.array([1.0], np.float32)}
    ref = [{"a/0": np.array([0.9], np.float32)}]
    cand = [{"a/0": np.array([np.nan], np.float32)}]
    cmp = compare_trajectories(init, ref, cand)
    assert math.isinf(cmp.deviation) and not cmp.passed


def test_shape_and_length_mismatch_raise():
    init = {"a/0": np.zeros(2, np.float32)}
    with pytest.raises(ValueError):
        compare_trajectories(init, [init], [init, init])
    with pytest.raises(ValueError):
        compare_trajectories(init, [init], [{"a/0": np.zeros(3, np.float32)}])
    with pytest.raises(ValueError):
        compare_trajectories(init, [init], [{}])


def test_flat_round_trip():
    traj = _line(0.0, 1.0, 3)
    flat = trajectory_to_flat(traj)
    assert set(flat) == {"1/a/0", "2/a/0", "3/a/0"}
    back = trajectory_from_flat({**flat, "meta": np.zeros(1)})
    assert len(back) == 3 and np.array_equal(back[2]["a/0"], traj[2]["a/0"])
    with pytest.raises(ValueError):
        trajectory_from_flat({"2/a/0": np.zeros(1)})


def test_the_sliced_maximum_is_the_whole_arrays(monkeypatch):
    """``max|a - b|`` taken slice by slice (so a VGG16 blob makes no blob-sized temporaries)
    equals the whole arrays' maximum, NaN and inf included, whichever slice holds them."""
    from caffe2tf.verify import compare

    monkeypatch.setattr(compare, "SLICE", 7)
    r = np.random.default_rng(5)
    a = r.normal(size=(6, 9)).astype(np.float32)
    b = r.normal(size=(6, 9)).astype(np.float32)
    assert compare.max_abs_diff(a, b) == float(np.max(np.abs(a - b)))
    for where, bad in (((5, 8), np.nan), ((0, 0), np.inf), ((3, 2), np.nan)):
        c = a.copy()
        c[where] = bad
        got, want = compare.max_abs_diff(c, b), float(np.max(np.abs(c - b)))
        assert (np.isnan(got) and np.isnan(want)) or got == want
    assert compare.max_abs_diff(a[:1, :3], b[:1, :3]) == float(
        np.max(np.abs(a[:1, :3] - b[:1, :3]))
    )


@pytest.mark.parametrize("with_norms", [True, False])
def test_a_block_of_device_scalars_judges_as_the_same_updates_one_by_one(with_norms: bool):
    """The fused engine hands back a chunk of updates at once (``observe_block``): the same
    comparison as ``observe_scalars`` per update, non-finite moves, an overflowing difference,
    a flagged NaN and an empty blob included; norms kept only when asked for."""
    from caffe2tf.verify.compare import StreamingComparison

    init = {"a/0": np.ones(3, np.float32), "e/0": np.zeros(0, np.float32), "b/0": np.ones(2)}
    keys = list(init)
    rng = np.random.default_rng(0)
    n = 7
    diffs, moved = rng.random((n, 3)) * 1e-4, rng.random((n, 3))
    moved[2, 0], diffs[3, 2] = np.inf, np.inf  # a move past float32's range; c - r overflowed
    diffs[:, 1] = moved[:, 1] = 0.0  # the empty blob
    norms = rng.random((n, 3, 2))
    for flagged in (False, True):
        flags = np.zeros((n, 3, 4), bool)
        if flagged:
            flags[5, 2, 2] = True  # the candidate holds a NaN after update 6
            diffs[5, 2] = np.nan
        one = StreamingComparison(init, keys=keys, norms=with_norms)
        block = StreamingComparison(init, keys=keys, norms=with_norms)
        for t in range(n):
            one.observe_scalars(
                {k: float(diffs[t, i]) for i, k in enumerate(keys)},
                {k: float(moved[t, i]) for i, k in enumerate(keys)},
                {k: tuple(bool(x) for x in flags[t, i]) for i, k in enumerate(keys)},
                {k: (float(norms[t, i, 0]), float(norms[t, i, 1])) for i, k in enumerate(keys)},
            )
        block.observe_block(diffs[:4], moved[:4], flags[:4], norms[:4])
        block.observe_block(diffs[4:], moved[4:], flags[4:], norms[4:])
        a, b = one.result(), block.result()
        assert a.to_dict() == b.to_dict()
        assert a.per_blob_step == b.per_blob_step and a.nonfinite == b.nonfinite
        assert (b.nonfinite == "the candidate has NaN in b/0 after update 6") is flagged
        assert a.reference_norms == b.reference_norms
        assert bool(b.candidate_norms) is with_norms
        assert a.travelled == b.travelled and math.isfinite(b.travelled) and b.travelled > 0


class _CountingView(dict):
    """A mapping that counts its lookups, as a view over a backend's variables would pay for
    each (a read and a transpose)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.reads = 0

    def __getitem__(self, key: str) -> np.ndarray:
        self.reads += 1
        return super().__getitem__(key)


def test_streaming_observe_reads_each_blob_once_and_names_what_is_wrong():
    init = {"a/0": np.zeros((2, 3), np.float32), "a/1": np.zeros(3, np.float32)}
    comparison = StreamingComparison(init, tolerance=1e-3)
    cand = _CountingView({k: v + 1 for k, v in init.items()})
    comparison.observe({k: v + 1 for k, v in init.items()}, cand)
    assert cand.reads == len(init)
    with pytest.raises(ValueError, match="candidate lacks 'a/1' at step 2"):
        comparison.observe(init, {"a/0": init["a/0"]})
    with pytest.raises(ValueError, match=r"reference 'a/0' at step 3 has shape \(3, 2\)"):
        comparison.observe({**init, "a/0": np.zeros((3, 2), np.float32)}, init)
