"""The update-rule test matrix and the gradient streams: coverage, validity, and that the numbers
make decay, clipping and schedules matter. No Caffe root needed."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from caffe2tf.verify import matrix, streams


@pytest.fixture(scope="module")
def cases() -> list[matrix.MatrixCase]:
    return matrix.matrix_cases()


def _field(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}:\s*(.+?)\s*$", text, re.M)


def test_every_value_and_every_pair_is_covered(cases):
    names = list(matrix.FACTORS)
    combos = [tuple(c.factors[n] for n in names) for c in cases]
    for i, name in enumerate(names):
        assert {combo[i] for combo in combos} == set(matrix.FACTORS[name]), name
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        seen = {(combo[i], combo[j]) for combo in combos}
        want = set(itertools.product(matrix.FACTORS[a], matrix.FACTORS[b]))
        assert want <= seen, f"uncovered {a}×{b}: {sorted(want - seen, key=str)}"


def test_matrix_is_much_smaller_than_the_full_product(cases):
    full = np.prod([len(v) for v in matrix.FACTORS.values()])
    assert len(cases) < full / 10
    assert len(cases) >= 6 * 7  # at least solver × policy


def test_pairwise_generator_on_a_toy_design():
    factors = {"a": (0, 1, 2), "b": ("x", "y"), "c": (True, False), "d": (5, 6, 7)}
    chosen = matrix.pairwise(factors)
    covered = set().union(*(matrix.pairs_of(c, factors) for c in chosen))
    assert covered == matrix.all_pairs(factors)
    assert len(chosen) < 3 * 2 * 2 * 3
    assert matrix.pairwise(factors) == chosen  # deterministic


def test_cases_are_deterministic_and_uniquely_named(cases):
    again = matrix.matrix_cases()
    assert [c.name for c in again] == [c.name for c in cases]
    assert len({c.name for c in cases}) == len(cases)
    for a, b in zip(cases, again, strict=True):
        assert a.solver_text == b.solver_text and a.net_text == b.net_text
        for k in a.init:
            assert np.array_equal(a.init[k], b.init[k])
            assert np.array_equal(a.grads[-1][k], b.grads[-1][k])


def test_shapes_steps_and_dtypes(cases):
    for c in cases:
        assert c.steps >= 100 and len(c.grads) == c.steps
        assert len(c.micro_grads) == c.steps * c.iter_size
        assert set(c.init) == set(matrix.SHAPES)
        for k, shape in matrix.SHAPES.items():
            assert c.init[k].shape == shape and c.init[k].dtype == np.float32
            assert all(g[k].shape == shape and g[k].dtype == np.float32 for g in c.grads)
        assert _field(c.solver_text, "max_iter") == [str(c.steps)]
        assert int((_field(c.solver_text, "iter_size") or ["1"])[0]) == c.iter_size


def test_grads_are_float32_running_sums_of_the_micro_batches(cases):
    for c in (c for c in cases if c.iter_size > 1):
        k = c.steps // 2
        for key in c.init:
            parts = [c.micro_grads[k * c.iter_size + j][key] for j in range(c.iter_size)]
            total = np.float32(0) + parts[0]
            for p in parts[1:]:
                total = (total + p).astype(np.float32)
            assert np.array_equal(total, c.grads[k][key])


def test_solver_texts_are_valid_for_their_solver(cases):
    for c in cases:
        solver = c.factors["solver"]
        assert _field(c.solver_text, "type") == [f'"{solver}"']
        momentum = [float(v) for v in _field(c.solver_text, "momentum")]
        if solver in ("AdaGrad", "RMSProp"):
            assert all(m == 0 for m in momentum)  # sgd_solvers.hpp:75-78, 95-102
        if solver == "AdaDelta":
            assert momentum and 0 < momentum[0] < 1
        assert "net" not in {line.split(":")[0] for line in c.solver_text.splitlines()}
    adam = [c for c in cases if c.factors["solver"] == "Adam"]
    assert any(not _field(c.solver_text, "momentum") for c in adam)  # beta1 = 0 case
    assert any(_field(c.solver_text, "momentum") for c in adam)


def test_schedules_change_within_the_run(cases):
    for c in cases:
        policy = c.factors["policy"]
        if policy in ("step", "sigmoid"):
            assert 0 < int(_field(c.solver_text, "stepsize")[0]) < c.steps
        if policy == "multistep":
            values = [int(v) for v in _field(c.solver_text, "stepvalue")]
            assert len(values) >= 2 and values == sorted(set(values))
            assert 0 < values[0] and values[-1] < c.steps
        if policy in ("step", "exp", "inv", "multistep", "sigmoid"):
            assert float(_field(c.solver_text, "gamma")[0]) > 0
        if policy in ("inv", "poly"):
            assert float(_field(c.solver_text, "power")[0]) not in (0.0, 1.0)


def test_clip_threshold_triggers_sometimes_but_not_always(cases):
    clipped = [c for c in cases if c.factors["clip"] == "on"]
    assert clipped
    for c in clipped:
        assert float(_field(c.solver_text, "clip_gradients")[0]) == pytest.approx(c.clip_threshold)
        over = streams.global_norms(c.grads) > c.clip_threshold
        assert 0 < over.sum() < c.steps, c.name
    for c in cases:
        if c.factors["clip"] == "off":
            assert not _field(c.solver_text, "clip_gradients")


def test_decay_is_a_visible_share_of_the_gradient(cases):
    for c in cases:
        wd = float((_field(c.solver_text, "weight_decay") or ["0"])[0])
        if c.factors["decay"] == "none":
            assert wd == 0
            continue
        w = np.concatenate([v.ravel() for v in c.init.values()])
        g = np.concatenate([v.ravel() for step in c.grads for v in step.values()]) / c.iter_size
        term = wd * (np.sign(w) if c.factors["decay"] == "L1" else w)
        share = np.median(np.abs(term)) / np.median(np.abs(g))
        assert share > 0.05, (c.name, share)
        want = '"L1"' if c.factors["decay"] == "L1" else None
        types = _field(c.solver_text, "regularization_type")
        assert (types == [want]) if want else (types in ([], ['"L2"']))


def test_net_texts_carry_the_multiplier_variants(cases):
    default = matrix.net_text("default")
    assert "  param {" not in default
    assert matrix.net_text("one_block").count("  param {") == 1
    assert matrix.net_text("explicit").count("  param {") == 4
    assert "lr_mult: 0 " in matrix.net_text("explicit")
    for c in cases:
        assert c.net_text == matrix.net_text(str(c.factors["mults"]))
        assert c.multipliers == matrix.MULTIPLIERS[str(c.factors["mults"])]
    lr = {m for table in matrix.MULTIPLIERS.values() for m, _ in table.values()}
    decay = {d for table in matrix.MULTIPLIERS.values() for _, d in table.values()}
    assert {0.0, 2.0} <= lr and 0.0 in decay


def test_dead_elements_start_at_zero_and_never_get_a_gradient(cases):
    c = cases[0]
    masks = streams.dead_mask(matrix.SHAPES, c.seed)
    assert any(m.any() for m in masks.values())
    for key, mask in masks.items():
        assert np.all(c.init[key][mask] == 0)
        assert all(np.all(g[key][mask] == 0) for g in c.micro_grads)
        assert not mask.all()


def test_streams_are_seeded_and_spiky():
    shapes = {"a/0": (5, 4), "a/1": (5,)}
    one = streams.gradient_stream(shapes, 200, seed=3)
    two = streams.gradient_stream(shapes, 200, seed=3)
    other = streams.gradient_stream(shapes, 200, seed=4)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(one, two, strict=True) for k in x)
    assert not np.array_equal(one[0]["a/0"], other[0]["a/0"])
    spiked = streams.spike_steps(200, 3)
    assert 0 < spiked.sum() < 200
    norms = streams.global_norms(one)
    assert norms[spiked].min() > 2 * np.median(norms[~spiked])
    # A few steps still get at least one spike and one ordinary step.
    few = streams.spike_steps(2, 11, spikes=0.01)
    assert few.sum() == 1


def test_accumulate_rejects_ragged_groups():
    micro = streams.micro_batches({"a/0": (2,)}, 3, seed=1, iter_size=2)
    assert len(micro) == 6
    with pytest.raises(ValueError):
        streams.accumulate(micro[:5], 2)


def test_goldens_cover_all_solvers_and_every_factor_value():
    goldens = matrix.golden_cases()
    assert {g.case.factors["solver"] for g in goldens} == set(matrix.SOLVERS)
    for name, values in matrix.FACTORS.items():
        assert {g.case.factors[name] for g in goldens} == set(values), name
    for g in goldens:
        assert g.case.steps >= 100 and len(g.weights) == g.case.steps
        assert "1.0.0" in g.caffe
        for key, w0 in g.case.init.items():
            moved = np.abs(g.weights[-1][key] - w0).max()
            lr_mult = g.case.multipliers[key][0]
            assert (moved > 0) == (lr_mult != 0), (g.case.name, key)
