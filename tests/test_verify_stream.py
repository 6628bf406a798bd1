"""The pieces that let verify run at the scale of real recipes: Caffe's rate over a whole
``max_iter`` (10^6..10^7 iterations) without a Python call per iteration."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import lr_sequence
from caffe2tf.verify.schedule_check import lr_array


def f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.parametrize(
    "schedule",
    [
        LrSchedule("fixed", f32(0.01)),
        LrSchedule("step", f32(0.01), gamma=f32(0.96), stepsize=7),
        LrSchedule("exp", f32(0.01), gamma=f32(0.999)),
        LrSchedule("inv", f32(0.01), gamma=f32(1e-4), power=f32(0.75)),
        LrSchedule("multistep", f32(0.1), gamma=f32(0.1), stepvalue=(50, 50, 900, 1200)),
        LrSchedule("poly", f32(0.01), power=f32(0.5), max_iter=3000),
        LrSchedule("poly", f32(0.01), power=2.0, max_iter=1000),  # past max_iter: NaN/inf
        LrSchedule("sigmoid", f32(0.01), gamma=f32(0.05), stepsize=1000),
    ],
    ids=lambda s: s.policy,
)
def test_vectorised_rates_equal_caffes_float32_expressions(schedule):
    want = lr_sequence(schedule, 3000)
    got = lr_array(schedule, 3000)
    assert got.dtype == np.float32
    assert np.array_equal(got, want, equal_nan=True)
