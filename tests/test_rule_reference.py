"""The NumPy reference: the same skeleton for every solver, in float64 and float32.

The expected values come from a textbook transcription of Caffe's equations written here
(docs/caffe-semantics.md#one-update-in-formulas and #solvers) -- plain float64, no Caffe operation
order -- and from numbers worked out by hand for the first update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    NormalizeBy,
    ParamGroup,
    RMSProp,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.rule.reference import ReferenceOptimizer, run_reference

SOLVERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
PRECISIONS = ("float64", "float32")
F = lambda x: float(np.float32(x))  # noqa: E731


def solver_step(name: str):
    return {
        "SGD": Momentum(momentum=F(0.9)),
        "Nesterov": Momentum(momentum=F(0.9), nesterov=True),
        "AdaGrad": AdaGrad(delta=F(1e-3)),
        "RMSProp": RMSProp(rms_decay=F(0.9), delta=F(1e-3)),
        "AdaDelta": AdaDelta(rho=F(0.95), delta=F(1e-4)),
        "Adam": Adam(beta1=F(0.9), beta2=F(0.999), delta=F(1e-8)),
    }[name]


def make_rule(
    name: str,
    *,
    schedule: LrSchedule | None = None,
    clip: float | None = None,
    iter_size: int = 1,
    decay: tuple[str, float] | None = None,
    params: tuple[ParamGroup, ...] = (),
) -> UpdateRule:
    steps: list = []
    if clip is not None:
        steps.append(ClipByGlobalNorm(threshold=clip))
    if iter_size != 1:
        steps.append(NormalizeBy(iter_size=iter_size))
    if decay is not None:
        steps.append(AddDecay(kind=decay[0], weight_decay=F(decay[1])))  # type: ignore[arg-type]
    base = 1.0 if name == "AdaDelta" else F(0.05)
    steps.append(ScaleByLr(schedule=schedule or LrSchedule(policy="fixed", base_lr=base)))
    steps.append(solver_step(name))
    return UpdateRule(
        solver=name,
        steps=tuple(steps),
        params=params,  # type: ignore[arg-type]
        iter_size=iter_size,
    )


# ---- an independent textbook version (float64, per-blob dicts) ----------------------------


def textbook(rule: UpdateRule, init, grads):
    w = {k: np.asarray(v, np.float64).copy() for k, v in init.items()}
    st: dict = {k: {} for k in w}
    out = []
    cs = 0
    for k, G in enumerate(grads):
        g = {key: np.asarray(G.get(key, np.zeros_like(w[key])), np.float64) for key in w}
        mult = {key: rule.group(key) for key in w}
        for step in rule.steps:
            if isinstance(step, ClipByGlobalNorm):
                n = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
                if n > step.threshold:
                    g = {key: x * step.threshold / n for key, x in g.items()}
            elif isinstance(step, NormalizeBy):
                g = {key: x / step.iter_size for key, x in g.items()}
            elif isinstance(step, AddDecay):
                for key in g:
                    term = w[key] if step.kind == "L2" else np.sign(w[key])
                    g[key] = g[key] + step.weight_decay * mult[key].decay_mult * term
            elif isinstance(step, ScaleByLr):
                s = step.schedule
                if s.policy == "fixed":
                    alpha = s.base_lr
                elif s.policy == "step":
                    alpha = s.base_lr * s.gamma ** (k // s.stepsize)
                else:
                    assert s.policy == "multistep"
                    if cs < len(s.stepvalue) and k >= s.stepvalue[cs]:
                        cs += 1
                    alpha = s.base_lr * s.gamma**cs
            else:
                for key in w:
                    eta = alpha * mult[key].lr_mult
                    x, S = g[key], st[key]
                    if isinstance(step, Momentum):
                        h0 = S.get("h", 0.0)
                        S["h"] = step.momentum * h0 + eta * x
                        u = (
                            (1 + step.momentum) * S["h"] - step.momentum * h0
                            if step.nesterov
                            else S["h"]
                        )
                    elif isinstance(step, AdaGrad):
                        S["h"] = S.get("h", 0.0) + x * x
                        u = eta * x / (np.sqrt(S["h"]) + step.delta)
                    elif isinstance(step, RMSProp):
                        r = step.rms_decay
                        S["h"] = r * S.get("h", 0.0) + (1 - r) * x * x
                        u = eta * x / (np.sqrt(S["h"]) + step.delta)
                    elif isinstance(step, AdaDelta):
                        r, d = step.rho, step.delta
                        S["a"] = r * S.get("a", 0.0) + (1 - r) * x * x
                        dx = x * np.sqrt((S.get("b", 0.0) + d) / (S["a"] + d))
                        S["b"] = r * S.get("b", 0.0) + (1 - r) * dx * dx
                        u = eta * dx
                    else:
                        b1, b2, t = step.beta1, step.beta2, k + 1
                        S["m"] = b1 * S.get("m", 0.0) + (1 - b1) * x
                        S["v"] = b2 * S.get("v", 0.0) + (1 - b2) * x * x
                        corr = math.sqrt(1 - b2**t) / (1 - b1**t)
                        u = eta * corr * S["m"] / (np.sqrt(S["v"]) + step.delta)
                    w[key] = w[key] - u
        out.append({key: v.copy() for key, v in w.items()})
    return out


def stream(shapes, n, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    init = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: (rng.normal(0.3, 1, s) * scale).astype(np.float32) for k, s in shapes.items()}
        for _ in range(n)
    ]
    return init, grads


def close(a, b, precision, scale=1.0):
    tol = 1e-10 if precision == "float64" else 2e-5
    for x, y in zip(a, b, strict=True):
        for key in y:
            np.testing.assert_allclose(x[key], y[key], rtol=tol, atol=tol * scale)


# ---- the skeleton --------------------------------------------------------------------------

_MU, _RHO, _D3, _D4, _R95 = F(0.9), F(0.9), F(1e-3), F(1e-4), F(0.95)
_B2, _LR = F(0.999), F(0.05)
ONE_STEP_BY_HAND = {
    # w0 = 1, g = 0.5, eta = 0.05 (AdaDelta: eta = 1): the first update, all states start at 0
    "SGD": 1 - _LR * 0.5,  # h = eta*g
    "Nesterov": 1 - (1 + _MU) * _LR * 0.5,  # (1+mu)*h - mu*0
    "AdaGrad": 1 - _LR * 0.5 / (0.5 + _D3),  # sqrt(h) = |g|
    "RMSProp": 1 - _LR * 0.5 / (math.sqrt((1 - _RHO) * 0.25) + _D3),
    "AdaDelta": 1 - 0.5 * math.sqrt(_D4 / ((1 - _R95) * 0.25 + _D4)),
    # m = 0.1*g, v = 0.001*g^2, corr = sqrt(0.001)/0.1 -> step = eta * g/(|g| + delta/...)
    "Adam": 1
    - _LR
    * (math.sqrt(1 - _B2) / (1 - _MU))
    * ((1 - _MU) * 0.5 / (math.sqrt((1 - _B2) * 0.25) + 1e-8)),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_one_step_by_hand(name, precision):
    rule = make_rule(name)
    out = run_reference(
        rule,
        {"a/0": np.ones(3, np.float32)},
        [{"a/0": np.full(3, 0.5, np.float32)}],
        precision=precision,
    )
    assert out[0]["a/0"].dtype == np.dtype(precision)
    np.testing.assert_allclose(
        out[0]["a/0"], ONE_STEP_BY_HAND[name], rtol=1e-9 if precision == "float64" else 1e-6
    )


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_short_trajectory_with_a_step_schedule(name, precision):
    sched = LrSchedule(
        policy="multistep",
        base_lr=1.0 if name == "AdaDelta" else F(0.05),
        gamma=F(0.3),
        stepvalue=(4, 4, 9),
    )
    rule = make_rule(name, schedule=sched)
    init, grads = stream({"a/0": (4, 3), "a/1": (4,)}, 15)
    close(
        run_reference(rule, init, grads, precision=precision),
        textbook(rule, init, grads),
        precision,
    )


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_decay_and_decay_mult_zero(name, precision, kind):
    params = (ParamGroup("a/0", decay_mult=1.0), ParamGroup("a/1", lr_mult=2.0, decay_mult=0.0))
    rule = make_rule(name, decay=(kind, 0.1), params=params)
    init, grads = stream({"a/0": (3, 2), "a/1": (3,)}, 8, seed=1)
    init["a/0"][0, 0] = 0.0  # sign(0) = 0 under L1
    ref = run_reference(rule, init, grads, precision=precision)
    close(ref, textbook(rule, init, grads), precision)
    # with zero gradients only the decayed blob moves
    zeros = [{k: np.zeros_like(v) for k, v in init.items()}] * 3
    still = run_reference(rule, init, zeros, precision=precision)
    assert np.array_equal(still[-1]["a/1"], init["a/1"].astype(precision))
    assert not np.allclose(still[-1]["a/0"], init["a/0"])
    if kind == "L1":
        assert still[-1]["a/0"][0, 0] == 0.0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_clipping_on_the_raw_sum_over_all_blobs(name, precision):
    params = (ParamGroup("a/0"), ParamGroup("b/0", lr_mult=0.0))
    rule = make_rule(name, clip=2.0, iter_size=3, decay=("L2", 0.05), params=params)
    init, grads = stream({"a/0": (3, 2), "b/0": (4,)}, 10, seed=2, scale=3.0)
    ref = run_reference(rule, init, grads, precision=precision)
    close(ref, textbook(rule, init, grads), precision)
    assert np.array_equal(ref[-1]["b/0"], init["b/0"].astype(precision))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_lr_mult_zero_diff_counts_in_the_clip_norm(precision):
    # ApplyUpdate reads whatever the diff holds: a (harness-written) gradient of a frozen blob
    # enlarges the norm and so clips the trainable blob harder, as in the real binary.
    params = (ParamGroup("a/0"), ParamGroup("b/0", lr_mult=0.0))
    rule = make_rule("SGD", clip=1.0, params=params)
    w0 = {"a/0": np.zeros(2, np.float32), "b/0": np.zeros(2, np.float32)}
    quiet = {"a/0": np.array([3.0, 4.0], np.float32), "b/0": np.zeros(2, np.float32)}
    loud = {**quiet, "b/0": np.array([0.0, 5.0 * math.sqrt(3.0)], np.float32)}  # norm 10
    a_quiet = run_reference(rule, w0, [quiet], precision=precision)[0]["a/0"]
    a_loud = run_reference(rule, w0, [loud], precision=precision)[0]["a/0"]
    np.testing.assert_allclose(a_quiet, -_LR * np.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(a_loud, -_LR * np.array([0.3, 0.4]), rtol=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clip_is_strict_and_zero_threshold_freezes(precision):
    g = {"a/0": np.array([3.0, 4.0], np.float32)}  # norm exactly 5
    w0 = {"a/0": np.zeros(2, np.float32)}
    at = run_reference(make_rule("SGD", clip=5.0), w0, [g], precision=precision)
    plain = run_reference(make_rule("SGD"), w0, [g], precision=precision)
    assert np.array_equal(at[0]["a/0"], plain[0]["a/0"])  # n == c: no clipping
    zero = run_reference(make_rule("SGD", clip=0.0), w0, [g] * 3, precision=precision)
    assert np.array_equal(zero[-1]["a/0"], w0["a/0"].astype(precision))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_lr_mult_zero_never_moves_but_has_state(name, precision):
    params = (ParamGroup("a/0", lr_mult=0.0), ParamGroup("b/0", lr_mult=1.0))
    rule = make_rule(name, params=params)
    init, grads = stream({"a/0": (3,), "b/0": (3,)}, 5, seed=3)
    opt = ReferenceOptimizer(rule, init, precision=precision)
    for g in grads:
        w = opt.step(g)
    assert np.array_equal(w["a/0"], init["a/0"].astype(precision))
    assert not np.allclose(w["b/0"], init["b/0"])
    assert opt.state["a/0"]  # Caffe keeps history for it too
    assert opt.k == 5


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_sharing_one_state_owner_key_wins(name, precision):
    params = (ParamGroup("a/0", sharers=("c/0",)), ParamGroup("b/0"))
    rule = make_rule(name, params=params)
    init, grads = stream({"a/0": (3,), "b/0": (2,)}, 6, seed=4)
    ref = run_reference(rule, init, grads, precision=precision)
    close(ref, textbook(rule, init, grads), precision)
    # a gradient given under the sharer's key counts for the owner
    via_sharer = [{"c/0": g["a/0"], "b/0": g["b/0"]} for g in grads]
    assert np.array_equal(
        run_reference(rule, init, via_sharer, precision=precision)[-1]["a/0"], ref[-1]["a/0"]
    )
    # both given (they alias one diff in Caffe): the owner's is used, never the sum
    both = [{**g, "c/0": g["a/0"] * 100} for g in grads]
    assert np.array_equal(
        run_reference(rule, init, both, precision=precision)[-1]["a/0"], ref[-1]["a/0"]
    )
    # init under the sharer's key too: the output reports the shared weights under both keys
    out = run_reference(rule, {**init, "c/0": init["a/0"]}, grads, precision=precision)
    assert np.array_equal(out[-1]["c/0"], out[-1]["a/0"])


def test_unknown_net_uses_default_multipliers_and_ignores_extra_grad_keys():
    rule = make_rule("SGD", decay=("L2", 0.1))
    init, grads = stream({"a/0": (3,)}, 4, seed=5)
    noisy = [{**g, "zzz/0": np.ones(7, np.float32)} for g in grads]
    close(
        run_reference(rule, init, noisy, precision="float64"),
        textbook(rule, init, grads),
        "float64",
    )


def test_missing_gradient_is_a_zero_diff():
    rule = make_rule("SGD")
    init = {"a/0": np.ones(2, np.float32), "b/0": np.ones(2, np.float32)}
    out = run_reference(rule, init, [{"a/0": np.ones(2, np.float32)}])
    assert np.array_equal(out[0]["b/0"], init["b/0"])


def test_shape_mismatch_and_unknown_blob_raise():
    rule = make_rule("SGD", params=(ParamGroup("a/0"),))
    with pytest.raises(ValueError, match="shape"):
        run_reference(rule, {"a/0": np.ones(2, np.float32)}, [{"a/0": np.ones(3, np.float32)}])
    with pytest.raises(ValueError, match="not learnable"):
        run_reference(rule, {"x/0": np.ones(2, np.float32)}, [{}])


def test_float32_follows_caffe_rounding_not_float64():
    # SGD with momentum 0.9 in float32: h = fl(fl(mu*h) + fl(eta*g)); differs from float64
    rule = make_rule("SGD")
    init, grads = stream({"a/0": (50,)}, 30, seed=6)
    f32 = run_reference(rule, init, grads, precision="float32")[-1]["a/0"]
    f64 = run_reference(rule, init, grads, precision="float64")[-1]["a/0"]
    assert f32.dtype == np.float32 and f64.dtype == np.float64
    assert np.allclose(f32, f64, rtol=1e-5) and not np.array_equal(f32.astype(np.float64), f64)
