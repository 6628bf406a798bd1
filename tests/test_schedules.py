"""Caffe's lr policies (sgd_solver.cpp:26-70) at their boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import boundaries, lr_at, lr_sequence

F = lambda x: float(np.float32(x))  # noqa: E731 - proto fields are float32


def sched(policy: str, **kw) -> LrSchedule:
    kw.setdefault("base_lr", F(0.1))
    return LrSchedule(policy=policy, **kw)


def test_fixed_is_constant():
    seq = lr_sequence(sched("fixed"), 50)
    assert seq.dtype == np.float32
    assert np.all(seq == np.float32(0.1))


def test_step_uses_integer_division_at_the_boundary():
    s = sched("step", gamma=F(0.5), stepsize=3)
    seq = lr_sequence(s, 9)
    expected = [0.1 * 0.5 ** (k // 3) for k in range(9)]
    np.testing.assert_allclose(seq, expected, rtol=1e-7)
    assert seq[2] == seq[0] and seq[3] < seq[2]  # k = stepsize-1 old rate, k = stepsize new
    lr, cs = lr_at(s, 7, current_step=0)
    assert cs == 2  # step overwrites current_step_ with k // stepsize


def test_exp_is_gamma_to_the_k():
    s = sched("exp", gamma=F(0.99))
    seq = lr_sequence(s, 20, precision="float64")
    np.testing.assert_allclose(seq, [F(0.1) * F(0.99) ** k for k in range(20)], rtol=1e-15)


def test_inv_formula_and_float32_base():
    s = sched("inv", gamma=F(1e-4), power=F(0.75))
    assert lr_at(s, 0)[0] == F(0.1)
    for k in (1, 10, 1000, 123456):
        want = F(0.1) * (1 + F(1e-4) * k) ** -F(0.75)
        assert lr_at(s, k)[0] == pytest.approx(want, rel=2e-7)
        assert lr_at(s, k, precision="float64")[0] == pytest.approx(want, rel=1e-14)


def test_multistep_switches_at_stepvalue_not_before():
    s = sched("multistep", gamma=F(0.1), stepvalue=(10, 20))
    seq = lr_sequence(s, 25)
    assert seq[9] == np.float32(0.1)  # k = stepvalue - 1
    assert seq[10] == np.float32(F(0.1) * F(0.1))  # k = stepvalue
    assert seq[19] == seq[10] and seq[20] < seq[19]
    assert boundaries(s, 100) == [10, 20]


def test_multistep_duplicates_advance_one_iteration_apart():
    s = sched("multistep", gamma=F(0.5), stepvalue=(5, 5))
    seq = lr_sequence(s, 8, precision="float64")
    assert seq[4] == F(0.1)
    assert seq[5] == pytest.approx(F(0.1) * 0.5)
    assert seq[6] == pytest.approx(F(0.1) * 0.25)  # gamma^2 only from 5 + 1
    assert boundaries(s, 100) == [5, 6]


def test_multistep_advances_at_most_one_step_per_call():
    s = sched("multistep", gamma=F(0.5), stepvalue=(10, 20, 30))
    lr, cs = lr_at(s, 100, current_step=0)  # e.g. a restored state with current_step 0
    assert cs == 1 and lr == np.float32(F(0.1) * 0.5)
    lr, cs = lr_at(s, 101, current_step=cs)
    assert cs == 2
    # unsorted values are consumed in list order
    u = sched("multistep", gamma=F(0.5), stepvalue=(10, 5))
    seq = lr_sequence(u, 12, precision="float64")
    assert seq[9] == F(0.1) and seq[10] == pytest.approx(F(0.1) / 2)
    assert seq[11] == pytest.approx(F(0.1) / 4)


def test_multistep_past_the_last_value_stays():
    s = sched("multistep", gamma=F(0.1), stepvalue=(2,))
    seq = lr_sequence(s, 50)
    assert np.all(seq[2:] == seq[2])


def test_poly_float_division_and_zero_at_max_iter():
    s = sched("poly", power=F(1.0), max_iter=3)
    assert lr_at(s, 1, precision="float64")[0] == pytest.approx(F(0.1) * (1 - 1 / 3))
    assert lr_at(s, 3)[0] == 0.0
    # power not set (0): constant
    assert np.all(lr_sequence(sched("poly", power=0.0, max_iter=10), 10) == np.float32(0.1))
    s2 = sched("poly", power=F(2.0), max_iter=100)
    seq = lr_sequence(s2, 100)
    assert np.all(np.diff(seq) < 0) and seq[-1] > 0  # the last update (99) is still > 0


def test_sigmoid_is_a_ramp_with_half_rate_at_stepsize():
    s = sched("sigmoid", gamma=F(0.1), stepsize=50)
    seq = lr_sequence(s, 100)
    assert seq[50] == np.float32(F(0.1) / 2)
    assert np.all(np.diff(seq) > 0)
    want = F(0.1) / (1 + math.exp(-F(0.1) * (10 - 50)))
    assert lr_at(s, 10)[0] == pytest.approx(want, rel=3e-7)
    assert boundaries(s, 100) == [50]


def test_float32_rounding_of_the_rate():
    s = sched("step", gamma=F(0.1), stepsize=1)
    for k in range(6):
        lr32 = lr_at(s, k)[0]
        lr64 = lr_at(s, k, precision="float64")[0]
        assert lr32 == float(np.float32(lr64))


def test_invalid_schedules_raise():
    with pytest.raises(ValueError):
        lr_at(sched("cosine"), 0)
    with pytest.raises(ValueError):
        lr_at(sched("step", gamma=0.5, stepsize=0), 0)


def test_boundaries_for_step():
    assert list(boundaries(sched("step", gamma=0.5, stepsize=30), 100)) == [30, 60, 90]
    assert len(boundaries(sched("step", gamma=0.5, stepsize=1), 10**12)) == 10**12 - 1
    assert boundaries(sched("exp", gamma=0.9), 100) == []
