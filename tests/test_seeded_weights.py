"""verify's initial weights as a mapping that can let go of its arrays
(caffe2tf/verify/inputs.py ``SeededWeights``): drawn when first read, bit for bit those of
``initial_weights``, drawn again the same after ``release``; and the streaming comparison,
which the fused engines feed, reads them when it is made and does not hold them."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2tf.verify.compare import StreamingComparison
from caffe2tf.verify.inputs import SeededWeights, initial_weights, shapes_of

SHAPES = {"ip1/0": (50, 80), "ip1/1": (50,), "conv1/0": (20, 1, 5, 5), "empty/0": (0, 3)}


def same(a, b) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_drawn_when_first_read_let_go_and_drawn_again_bit_for_bit():
    seeded = SeededWeights(SHAPES, 7)
    # keys, order, length and shapes do not draw
    assert list(seeded) == sorted(SHAPES) and len(seeded) == len(SHAPES)
    assert shapes_of(seeded) == {k: tuple(v) for k, v in SHAPES.items()}
    assert not seeded.drawn
    want = initial_weights(SHAPES, 7)
    assert same(seeded, want) and seeded.drawn
    first = seeded["ip1/0"]
    seeded.release()
    assert not seeded.drawn
    again = seeded["ip1/0"]
    assert again is not first and np.array_equal(again, first)
    assert same(seeded, want)
    # the comparison has teeth: another seed gives other weights
    assert not same(SeededWeights(SHAPES, 8), want)
    with pytest.raises(KeyError):
        seeded["nope/0"]


def test_the_streaming_comparison_reads_init_once_and_does_not_hold_it():
    seeded = SeededWeights(SHAPES, 3)
    keys = list(SHAPES)
    comparison = StreamingComparison(seeded, keys=keys, tolerance=1e-3, norms=False)
    seeded.release()
    n = 4
    diffs = np.full((n, len(keys)), 1e-6)
    moved = np.tile(np.arange(1, len(keys) + 1, dtype=float), (n, 1))
    comparison.observe_block(diffs, moved, np.zeros((n, len(keys), 4), bool))
    result = comparison.result()
    assert not seeded.drawn  # neither observing nor the result drew the weights again
    weights = initial_weights(SHAPES, 3)
    largest = max(float(np.max(np.abs(w))) for w in weights.values() if w.size)
    assert result.floor == pytest.approx(0.01 * largest, rel=0, abs=0)
    # the empty blob is skipped: its column's travel (the largest) does not count
    assert result.travelled == len(keys) - 1
    assert result.steps == n and result.passed


def test_a_non_finite_init_is_reported_and_left_out_of_the_floor():
    weights = initial_weights(SHAPES, 3)
    weights["ip1/1"][4] = np.nan
    weights["conv1/0"][0, 0, 0, 0] = 1e6
    weights["conv1/0"][0, 0, 0, 1] = -np.inf
    comparison = StreamingComparison(weights, tolerance=1e-3)
    assert comparison.nonfinite == "init has inf in conv1/0"  # the first key with one
    assert comparison.largest_init == 1e6
    assert not comparison.result().passed
