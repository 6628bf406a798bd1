"""lower(Recipe) -> UpdateRule: the steps in Caffe's order, the defaults, the per-blob groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffe2tf.caffe.model import NetSpec, ParamBlob, Recipe, SolverSpec
from caffe2tf.errors import InputError
from caffe2tf.notes import Severity
from caffe2tf.rule.lower import lower
from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    Momentum,
    NormalizeBy,
    RMSProp,
    ScaleByLr,
)

ROOT = Path(__file__).resolve().parents[1]
F = lambda x: float(np.float32(x))  # noqa: E731

_DEFAULTS = dict(
    type="SGD",
    base_lr=0.0,
    lr_policy="",
    gamma=0.0,
    power=0.0,
    stepsize=0,
    stepvalue=(),
    max_iter=0,
    momentum=0.0,
    momentum2=F(0.999),
    delta=F(1e-8),
    rms_decay=F(0.99),
    weight_decay=0.0,
    regularization_type="L2",
    clip_gradients=-1.0,
    iter_size=1,
)


def solver(**given) -> SolverSpec:
    """A SolverSpec as the front end makes it: fields not given take caffe.proto's default and
    are listed in ``defaulted``."""
    fields = dict(_DEFAULTS)
    fields.update({k: (F(v) if isinstance(v, float) else v) for k, v in given.items()})
    defaulted = frozenset(k for k in _DEFAULTS if k not in given)
    return SolverSpec(path="solver.prototxt", defaulted=defaulted, **fields)


def net(*blobs: ParamBlob) -> NetSpec:
    return NetSpec(path="net.prototxt", name="n", layers=(), params=blobs)


def blob(key: str, shape=(2,), lr=1.0, dm=1.0, sharers=(), explicit=False) -> ParamBlob:
    layer, idx = key.rsplit("/", 1)
    return ParamBlob(
        key=key,
        layer=layer,
        layer_type="InnerProduct",
        index=int(idx),
        shape=shape,
        lr_mult=lr,
        decay_mult=dm,
        sharers=tuple(sharers),
        lr_mult_explicit=explicit,
        decay_mult_explicit=explicit,
    )


def test_full_chain_in_caffes_order():
    rule = lower(
        Recipe(
            solver(
                type="SGD",
                base_lr=0.01,
                lr_policy="fixed",
                momentum=0.9,
                weight_decay=0.0005,
                clip_gradients=10.0,
                iter_size=2,
            ),
            None,
        )
    )
    kinds = [type(s) for s in rule.steps]
    assert kinds == [ClipByGlobalNorm, NormalizeBy, AddDecay, ScaleByLr, Momentum]
    assert rule.step(ClipByGlobalNorm).threshold == 10.0
    assert rule.step(NormalizeBy).iter_size == 2
    assert rule.step(AddDecay) == AddDecay(kind="L2", weight_decay=F(0.0005))
    assert rule.solver_step == Momentum(momentum=F(0.9))
    assert rule.schedule.base_lr == F(0.01)
    assert rule.iter_size == 2


def test_optional_steps_are_absent_by_default():
    rule = lower(Recipe(solver(base_lr=0.01, lr_policy="fixed"), None))
    assert [type(s) for s in rule.steps] == [ScaleByLr, Momentum]


def test_clip_zero_is_kept_and_warned():
    rule = lower(Recipe(solver(base_lr=0.01, lr_policy="fixed", clip_gradients=0.0), None))
    assert rule.step(ClipByGlobalNorm) == ClipByGlobalNorm(threshold=0.0)
    assert any(n.code == "rule.clip.zero" and n.severity == Severity.WARNING for n in rule.notes)


def test_l1_decay():
    rule = lower(
        Recipe(
            solver(base_lr=0.01, lr_policy="fixed", weight_decay=0.01, regularization_type="L1"),
            None,
        )
    )
    assert rule.step(AddDecay).kind == "L1"


@pytest.mark.parametrize(
    "type_,given,expected",
    [
        ("Nesterov", {"momentum": 0.9}, Momentum(momentum=F(0.9), nesterov=True)),
        ("AdaGrad", {"delta": 1e-6}, AdaGrad(delta=F(1e-6))),
        ("RMSProp", {"rms_decay": 0.9}, RMSProp(rms_decay=F(0.9), delta=F(1e-8))),
        ("AdaDelta", {"momentum": 0.95, "delta": 1e-6}, AdaDelta(rho=F(0.95), delta=F(1e-6))),
        ("Adam", {"momentum": 0.9}, Adam(beta1=F(0.9), beta2=F(0.999), delta=F(1e-8))),
    ],
)
def test_solver_steps_and_momentum_doubling(type_, given, expected):
    rule = lower(Recipe(solver(type=type_, base_lr=0.01, lr_policy="fixed", **given), None))
    assert rule.solver == type_
    assert rule.solver_step == expected


def test_adam_beta1_defaults_to_zero_with_a_note():
    rule = lower(Recipe(solver(type="Adam", base_lr=0.001, lr_policy="fixed"), None))
    assert rule.solver_step.beta1 == 0.0
    assert rule.solver_step.beta2 == F(0.999)
    msgs = [n.message for n in rule.notes if n.code == "rule.default.momentum"]
    assert msgs and "beta1 = momentum = 0" in msgs[0]
    assert any(n.code == "rule.default.delta" for n in rule.notes)
    assert any(n.code == "rule.default.momentum2" for n in rule.notes)


def test_adadelta_rho_defaults_to_zero_with_a_warning():
    rule = lower(Recipe(solver(type="AdaDelta", base_lr=1.0, lr_policy="fixed"), None))
    assert rule.solver_step.rho == 0.0
    assert any(
        n.code == "rule.default.momentum" and n.severity == Severity.WARNING for n in rule.notes
    )


def test_unknown_net_gives_empty_params_and_a_warning():
    rule = lower(Recipe(solver(base_lr=0.01, lr_policy="fixed"), None))
    assert rule.params == ()
    assert rule.group("fc/0").lr_mult == 1.0 and rule.group("fc/0").decay_mult == 1.0
    note = next(n for n in rule.notes if n.code == "rule.net_unknown")
    assert note.severity == Severity.WARNING and "multipliers" in note.message


def test_groups_from_the_net_with_sharing():
    spec = net(
        blob("a/0", (3, 2), lr=1.0, dm=1.0),
        blob("a/1", (3,), lr=2.0, dm=0.0, explicit=True),
        blob("b/0", (3, 2), lr=0.0, dm=1.0, sharers=("c/0",), explicit=True),
    )
    rule = lower(Recipe(solver(base_lr=0.01, lr_policy="fixed", weight_decay=0.1), spec))
    assert [g.key for g in rule.params] == ["a/0", "a/1", "b/0"]
    assert rule.group("a/1").lr_mult == 2.0 and rule.group("a/1").decay_mult == 0.0
    assert rule.group("c/0").key == "b/0"  # a sharer resolves to its owner
    assert not rule.group("b/0").trainable
    note = next(n for n in rule.notes if n.code == "rule.default.multipliers")
    assert "a/0" in note.message and "a/1" not in note.message


@pytest.mark.parametrize(
    "given,field",
    [
        ('type: "sgd"', "type"),
        ('lr_policy: "cosine"', "lr_policy"),
        ('lr_policy: "step" gamma: 0.1', "stepsize"),
        ('lr_policy: "exp" gamma: -0.5', "gamma"),
        ('type: "AdaGrad" momentum: 0.9', "momentum"),
        ('type: "RMSProp" rms_decay: 1.0', "rms_decay"),
        ('weight_decay: 0.1 regularization_type: "l2"', "regularization_type"),
    ],
)
def test_caffe_fatal_checks_become_input_errors(given, field, tmp_path):
    """Caffe's checks run once, in the front end (caffe/solver.py), before anything is lowered:
    the pipeline stops there with the field's name and position."""
    from caffe2tf.caffe.load import load_recipe

    net_file = ROOT / "fixtures" / "lenet" / "train.prototxt"
    policy = "" if "lr_policy" in given else 'lr_policy: "fixed"\n'
    text = f'net: "{net_file}"\nbase_lr: 0.1\n{policy}{given}\n'
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        lower(load_recipe(path))
    where = err.value.location
    assert where is not None and where.path == str(path)
    lines = [i for i, line in enumerate(text.splitlines(), 1) if f"{field}:" in line]
    if lines:  # at the field as written
        assert where.line == lines[0], (err.value.message, where)
    else:  # a missing field is named
        assert field in err.value.message


def test_bad_regularization_type_is_harmless_when_no_blob_is_decayed():
    spec = net(blob("a/0", dm=0.0, explicit=True))
    rule = lower(
        Recipe(
            solver(base_lr=0.1, lr_policy="fixed", weight_decay=0.1, regularization_type="L3"), spec
        )
    )
    assert rule.step(AddDecay) is None


def test_schedule_fields_are_carried():
    rule = lower(
        Recipe(
            solver(base_lr=0.1, lr_policy="multistep", gamma=0.5, stepvalue=(3, 7), max_iter=10),
            None,
        )
    )
    s = rule.schedule
    assert (s.policy, s.base_lr, s.gamma, s.stepvalue, s.max_iter) == (
        "multistep",
        F(0.1),
        0.5,
        (3, 7),
        10,
    )
