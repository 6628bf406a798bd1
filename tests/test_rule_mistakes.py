"""Planted mistakes: wrong versions of the reference, used to show the comparisons have teeth.

:func:`plant` returns a (rule, registry) pair for ``run_reference``: either a replacement entry
in the step registry (the math is wrong) or a transformed rule (the lowering is wrong). The
oracle test (``test_rule_oracle.py``) asserts the real-Caffe comparison catches every one; the
tests here check, without Caffe, that each plant really changes what the reference computes
where it should, and nothing where it should not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from caffe2tf.caffe.model import NetSpec, ParamBlob, Recipe
from caffe2tf.rule import steps as S
from caffe2tf.rule.model import (
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    ParamGroup,
    RMSProp,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.rule.reference import run_reference

MISTAKES = (
    "decay_x2",
    "lr_outside_momentum",
    "eps_inside_sqrt",
    "multistep_off_by_one",
    "clip_after_decay",
    "bias_decay_default",
    "adam_beta1_default",
)


def _decay_x2(step: AddDecay, env: S.UpdateEnv) -> None:
    S.add_decay(dataclasses.replace(step, weight_decay=step.weight_decay * 2), env)


def _lr_outside_momentum(step: Momentum, env: S.UpdateEnv) -> None:
    """PyTorch/TF1 style: v = mu*v + g; u = eta*v (rescales the whole velocity at a drop)."""
    if step.nesterov:
        S.momentum(step, env)
        return
    mu = env.s(step.momentum)
    for key in env.keys:
        v = mu * env.slot(key, "history") + env.grads[key]
        env.state[key]["history"] = v
        env.updates[key] = env.eta[key] * v


def _eps_inside_sqrt(step: AdaGrad | RMSProp | Adam, env: S.UpdateEnv) -> None:
    """Keras-AdaGrad/RMSProp style: g / sqrt(h + delta)."""
    delta = env.s(step.delta)
    for key in env.keys:
        g = env.grads[key]
        if isinstance(step, AdaGrad):
            h = g * g + env.slot(key, "history")
            env.state[key]["history"] = h
            env.updates[key] = env.eta[key] * (g / np.sqrt(h + delta))
        elif isinstance(step, RMSProp):
            rho = env.s(step.rms_decay)
            h = (1 - rho) * g * g + rho * env.slot(key, "history")
            env.state[key]["history"] = h
            env.updates[key] = env.eta[key] * (g / np.sqrt(h + delta))
        else:
            b1, b2 = env.s(step.beta1), env.s(step.beta2)
            corr = env.s(S.adam_correction(float(b1), float(b2), env.k + 1))
            m = (1 - b1) * g + b1 * env.slot(key, "m")
            v = (1 - b2) * g * g + b2 * env.slot(key, "v")
            env.state[key]["m"], env.state[key]["v"] = m, v
            env.updates[key] = env.eta[key] * corr * (m / np.sqrt(v + delta))


def _multistep_off_by_one(step: ScaleByLr, env: S.UpdateEnv) -> None:
    """Switch one update late (k > stepvalue instead of k >= stepvalue)."""
    s = step.schedule
    if s.policy == "multistep":
        s = dataclasses.replace(s, stepvalue=tuple(v + 1 for v in s.stepvalue))
    S.scale_by_lr(dataclasses.replace(step, schedule=s), env)


def plant(mistake: str, rule: UpdateRule, recipe: Recipe | None = None) -> tuple[UpdateRule, dict]:
    """The wrong (rule, registry) for ``mistake`` (one of :data:`MISTAKES`)."""
    reg = dict(S.STEP_FUNCTIONS)
    if mistake == "decay_x2":
        reg[AddDecay] = _decay_x2
    elif mistake == "lr_outside_momentum":
        reg[Momentum] = _lr_outside_momentum
    elif mistake == "eps_inside_sqrt":
        for cls in (AdaGrad, RMSProp, Adam):
            reg[cls] = _eps_inside_sqrt
    elif mistake == "multistep_off_by_one":
        reg[ScaleByLr] = _multistep_off_by_one
    elif mistake == "clip_after_decay":
        clip = rule.step(ClipByGlobalNorm)
        if clip is not None and rule.step(AddDecay) is not None:
            steps = [s for s in rule.steps if s is not clip]
            at = next(i for i, s in enumerate(steps) if isinstance(s, AddDecay))
            steps.insert(at + 1, clip)
            rule = dataclasses.replace(rule, steps=tuple(steps))
    elif mistake == "bias_decay_default":
        # "biases are not decayed unless asked": decay_mult 0 for a bias without param{} value
        implicit = (
            {p.key for p in recipe.net.params if p.index == 1 and not p.decay_mult_explicit}
            if recipe is not None and recipe.net is not None
            else set()
        )
        rule = dataclasses.replace(
            rule,
            params=tuple(
                dataclasses.replace(g, decay_mult=0.0) if g.key in implicit else g
                for g in rule.params
            ),
        )
    elif mistake == "adam_beta1_default":
        if (
            isinstance(rule.solver_step, Adam)
            and recipe is not None
            and "momentum" in recipe.solver.defaulted
        ):
            rule = dataclasses.replace(
                rule, steps=(*rule.steps[:-1], dataclasses.replace(rule.solver_step, beta1=0.9))
            )
    else:
        raise KeyError(mistake)
    return rule, reg


# ---- the plants change the computation where they should -----------------------------------


def _rule(solver_step, *, schedule=None, pre=(), params=()):
    schedule = schedule or LrSchedule(policy="fixed", base_lr=0.05)
    return UpdateRule(
        solver="SGD", steps=(*pre, ScaleByLr(schedule=schedule), solver_step), params=params
    )


def _stream(n=20, seed=0):
    rng = np.random.default_rng(seed)
    init = {
        "fc/0": rng.normal(size=(3, 2)).astype(np.float32),
        "fc/1": rng.normal(size=3).astype(np.float32),
    }
    grads = [
        {k: (rng.normal(0.2, 1.0, v.shape) * 3).astype(np.float32) for k, v in init.items()}
        for _ in range(n)
    ]
    return init, grads


def _differs(rule, mistake, recipe=None) -> float:
    init, grads = _stream()
    good = run_reference(rule, init, grads)
    bad_rule, reg = plant(mistake, rule, recipe)
    bad = run_reference(bad_rule, init, grads, registry=reg)
    return max(float(np.max(np.abs(good[-1][k] - bad[-1][k]))) for k in init)


def _recipe_with(solver_defaulted=frozenset(), bias_explicit=False):
    from caffe2tf.caffe.model import SolverSpec

    spec = SolverSpec(
        path="s",
        type="Adam",
        base_lr=0.01,
        lr_policy="fixed",
        gamma=0,
        power=0,
        stepsize=0,
        stepvalue=(),
        max_iter=0,
        momentum=0.0,
        momentum2=0.999,
        delta=1e-8,
        rms_decay=0.99,
        weight_decay=0.1,
        regularization_type="L2",
        clip_gradients=-1,
        iter_size=1,
        defaulted=frozenset(solver_defaulted),
    )
    blobs = tuple(
        ParamBlob(
            key=f"fc/{i}",
            layer="fc",
            layer_type="InnerProduct",
            index=i,
            shape=None,
            decay_mult_explicit=bias_explicit and i == 1,
        )
        for i in range(2)
    )
    return Recipe(spec, NetSpec(path="n", name="n", layers=(), params=blobs))


def test_decay_x2_changes_decayed_runs():
    assert _differs(_rule(Momentum(0.9), pre=(AddDecay("L2", 0.1),)), "decay_x2") > 1e-3


def test_lr_outside_momentum_shows_only_when_the_rate_changes():
    step = LrSchedule(policy="step", base_lr=0.05, gamma=0.1, stepsize=5)
    assert _differs(_rule(Momentum(0.9), schedule=step), "lr_outside_momentum") > 1e-3
    assert _differs(_rule(Momentum(0.9)), "lr_outside_momentum") < 1e-5


@pytest.mark.parametrize(
    "step",
    [
        AdaGrad(delta=1e-3),
        RMSProp(rms_decay=0.9, delta=1e-3),
        Adam(beta1=0.9, beta2=0.999, delta=1e-3),
    ],
)
def test_eps_inside_sqrt_changes_adaptive_solvers(step):
    assert _differs(_rule(step), "eps_inside_sqrt") > 1e-4


def test_multistep_off_by_one_changes_multistep_only():
    ms = LrSchedule(policy="multistep", base_lr=0.05, gamma=0.1, stepvalue=(5, 10))
    assert _differs(_rule(Momentum(0.9), schedule=ms), "multistep_off_by_one") > 1e-3
    assert _differs(_rule(Momentum(0.9)), "multistep_off_by_one") == 0.0


def test_clip_after_decay_reorders_the_steps():
    rule = _rule(Momentum(0.9), pre=(ClipByGlobalNorm(1.0), AddDecay("L2", 0.5)))
    bad, _ = plant("clip_after_decay", rule)
    assert [type(s) for s in bad.steps[:2]] == [AddDecay, ClipByGlobalNorm]
    assert _differs(rule, "clip_after_decay") > 1e-4


def test_bias_decay_default_drops_decay_of_implicit_biases():
    params = (ParamGroup("fc/0"), ParamGroup("fc/1"))
    rule = _rule(Momentum(0.9), pre=(AddDecay("L2", 0.5),), params=params)
    assert _differs(rule, "bias_decay_default", _recipe_with()) > 1e-3
    assert _differs(rule, "bias_decay_default", _recipe_with(bias_explicit=True)) == 0.0


def test_adam_beta1_default_only_when_momentum_is_unset():
    rule = _rule(Adam(beta1=0.0, beta2=0.999, delta=1e-8))
    assert _differs(rule, "adam_beta1_default", _recipe_with({"momentum"})) > 1e-3
    assert _differs(rule, "adam_beta1_default", _recipe_with()) == 0.0
