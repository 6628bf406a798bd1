"""Caffe's own solver validity checks: each bad solver is rejected with Caffe's reason at the
offending field's file:line:col, good ones are accepted with float32 values and defaults
marked; the oracle test asks the real Caffe for its verdict on the same texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from caffe2tf.caffe.load import load_recipe, load_solver
from caffe2tf.errors import InputError

NET = 'net: "net.prototxt"\n'

# name, solver text, field whose line the error must point at (None: the file), reason needle,
# whether Caffe itself aborts (False: we reject what Caffe silently turns into NaN/no-op).
BAD: list[tuple[str, str, str | None, str, bool]] = [
    ("no_policy", NET + "base_lr: 0.1\n", None, "lr_policy is missing", True),
    (
        "unknown_policy",
        NET + 'lr_policy: "triangular"\n',
        "lr_policy",
        "Unknown learning rate policy",
        True,
    ),
    ("policy_case", NET + 'lr_policy: "Fixed"\n', "lr_policy", "Unknown learning rate", True),
    (
        "step_gamma",
        NET + 'lr_policy: "step"\nstepsize: 10\ngamma: -0.1\n',
        "gamma",
        "gamma must be >= 0",
        True,
    ),
    ("exp_gamma", NET + 'lr_policy: "exp"\ngamma: -1\n', "gamma", "gamma must be >= 0", True),
    ("inv_gamma", NET + 'lr_policy: "inv"\ngamma: -1\npower: 1\n', "gamma", "gamma", True),
    (
        "multistep_gamma",
        NET + 'lr_policy: "multistep"\nstepvalue: 5\ngamma: -2\n',
        "gamma",
        "gamma",
        True,
    ),
    (
        "sigmoid_gamma",
        NET + 'lr_policy: "sigmoid"\nstepsize: 5\ngamma: -2\n',
        "gamma",
        "gamma",
        True,
    ),
    (
        "step_no_stepsize",
        NET + 'lr_policy: "step"\ngamma: 0.1\n',
        None,
        "stepsize must be > 0",
        True,
    ),
    (
        "step_neg_stepsize",
        NET + 'lr_policy: "step"\ngamma: 0.1\nstepsize: -3\n',
        "stepsize",
        "stepsize must be > 0",
        True,
    ),
    ("sigmoid_stepsize", NET + 'lr_policy: "sigmoid"\ngamma: 0.1\n', None, "stepsize", True),
    (
        "unknown_type",
        NET + 'lr_policy: "fixed"\ntype: "LARS"\n',
        "type",
        "Unknown solver type: LARS",
        True,
    ),
    ("type_case", NET + 'lr_policy: "fixed"\ntype: "adam"\n', "type", "Unknown solver type", True),
    (
        "adagrad_momentum",
        NET + 'lr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n',
        "momentum",
        "Momentum cannot be used with AdaGrad",
        True,
    ),
    (
        "rmsprop_momentum",
        NET + 'lr_policy: "fixed"\ntype: "RMSProp"\nmomentum: 0.5\n',
        "momentum",
        "Momentum cannot be used with RMSProp",
        True,
    ),
    (
        "rmsprop_decay_1",
        NET + 'lr_policy: "fixed"\ntype: "RMSProp"\nrms_decay: 1\n',
        "rms_decay",
        "rms_decay should lie between 0 and 1",
        True,
    ),
    (
        "rmsprop_decay_neg",
        NET + 'lr_policy: "fixed"\ntype: "RMSProp"\nrms_decay: -0.1\n',
        "rms_decay",
        "rms_decay",
        True,
    ),
    (
        "solver_type_enum_adagrad",
        NET + 'lr_policy: "fixed"\nsolver_type: ADAGRAD\nmomentum: 0.9\n',
        "momentum",
        "AdaGrad",
        True,
    ),
    (
        "both_types",
        NET + 'lr_policy: "fixed"\ntype: "SGD"\nsolver_type: SGD\n',
        "solver_type",
        "cannot be both specified",
        True,
    ),
    (
        "bad_regularization",
        NET + 'lr_policy: "fixed"\nweight_decay: 0.1\nregularization_type: "l2"\n',
        "regularization_type",
        "Unknown regularization type",
        True,
    ),
    (
        "average_loss",
        NET + 'lr_policy: "fixed"\naverage_loss: 0\n',
        "average_loss",
        "average_loss",
        True,
    ),
    ("no_train_net", 'lr_policy: "fixed"\n', None, "must specify a train net", True),
    (
        "two_train_nets",
        'net_param { name: "a" }\ntrain_net_param { name: "b" }\nlr_policy: "fixed"\n',
        "train_net_param",
        "more than one",
        True,
    ),
    (
        "test_without_interval",
        NET + 'lr_policy: "fixed"\ntest_iter: 10\n',
        None,
        "test_interval",
        True,
    ),
    (
        "test_state_count",
        NET + 'lr_policy: "fixed"\ntest_iter: 1\ntest_interval: 5\n'
        "test_state { stage: 'a' }\ntest_state { stage: 'b' }\n",
        "test_state",
        "test_state",
        True,
    ),
    ("poly_without_max_iter", NET + 'lr_policy: "poly"\npower: 1\n', None, "max_iter", False),
    ("iter_size_zero", NET + 'lr_policy: "fixed"\niter_size: 0\n', "iter_size", "iter_size", False),
]

# -- borderline numbers (issue 13): NaN, +-Inf and -0.0 in every float field of the rule ------

_GAMMA_CONTEXTS = {
    "step": 'lr_policy: "step"\nstepsize: 10\n',
    "exp": 'lr_policy: "exp"\n',
    "inv": 'lr_policy: "inv"\npower: 1\n',
    "multistep": 'lr_policy: "multistep"\nstepvalue: 5\n',
    "sigmoid": 'lr_policy: "sigmoid"\nstepsize: 5\n',
}
_FIXED = 'lr_policy: "fixed"\n'


def _typed(solver_type: str) -> str:
    return f'{_FIXED}type: "{solver_type}"\n'


# field -> {context name: solver text before the field} for the contexts where the rule reads it
_READ = {
    "base_lr": {"fixed": _FIXED},
    "gamma": _GAMMA_CONTEXTS,
    "power": {"inv": 'lr_policy: "inv"\ngamma: 0.1\n', "poly": 'lr_policy: "poly"\nmax_iter: 10\n'},
    "momentum": {
        t: _typed(t) for t in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
    },
    "momentum2": {"Adam": _typed("Adam")},
    "delta": {t: _typed(t) for t in ("AdaGrad", "RMSProp", "AdaDelta", "Adam")},
    "rms_decay": {"RMSProp": _typed("RMSProp")},
    "weight_decay": {"L2": _FIXED, "L3": f'{_FIXED}regularization_type: "L3"\n'},
    "clip_gradients": {"fixed": _FIXED},
}
# ... and contexts where it does not read it: Caffe ignores the value, so do we (with a note)
_UNREAD = {
    "gamma": {"fixed": _FIXED, "poly": 'lr_policy: "poly"\nmax_iter: 10\n'},
    "power": {"step": _GAMMA_CONTEXTS["step"], "fixed": _FIXED},
    "momentum2": {"SGD": _typed("SGD"), "RMSProp": _typed("RMSProp")},
    "delta": {"SGD": _typed("SGD"), "Nesterov": _typed("Nesterov")},
    "rms_decay": {"Adam": _typed("Adam"), "SGD": _typed("SGD")},
}


def _caffe_reason(field: str, context: str, value: str) -> str | None:
    """Caffe 1.0's own abort for ``field: value`` in ``context`` (observed on the real binary by
    ``test_verdicts_agree_with_caffe``), or None where Caffe accepts it."""
    if field == "gamma" and value in ("nan", "-inf"):
        return "gamma must be >= 0"  # CHECK_GE fails for NaN too (sgd_solver.cpp:35-61)
    if field == "momentum" and context in ("AdaGrad", "RMSProp"):
        return "Momentum cannot be used"  # CHECK_EQ(0, momentum) (sgd_solvers.hpp:75-77,95-97)
    if field == "rms_decay":
        return "rms_decay should lie between 0 and 1"
    if field == "weight_decay" and context == "L3":
        return "Unknown regularization type"  # local_decay NaN/inf is not 0
    return None


NONFINITE = ("nan", "inf", "-inf")
BORDER_BAD: list[tuple[str, str, str | None, str, bool]] = []
BORDER_GOOD: list[tuple[str, str]] = []
for _field, _contexts in _READ.items():
    for _context, _head in _contexts.items():
        _base = "" if _field == "base_lr" else "base_lr: 0.01\n"
        for _value in NONFINITE:
            _text = NET + _base + _head + f"{_field}: {_value}\n"
            _name = f"{_field}_{_value}_{_context}"
            if _field == "clip_gradients" and _value == "-inf":
                BORDER_GOOD.append((_name, _text))  # negative: no clipping, as -1
                continue
            _reason = _caffe_reason(_field, _context, _value)
            _where = "regularization_type" if _context == "L3" else _field
            BORDER_BAD.append(
                (_name, _text, _where, _reason or f"{_field} is {_value}", _reason is not None)
            )
        BORDER_GOOD.append((f"{_field}_neg0_{_context}", NET + _base + _head + f"{_field}: -0.0\n"))
for _field, _contexts in _UNREAD.items():
    for _context, _head in _contexts.items():
        for _value in NONFINITE:
            BORDER_GOOD.append(
                (f"{_field}_{_value}_unread_{_context}", NET + _head + f"{_field}: {_value}\n")
            )
BAD += BORDER_BAD

# The oracle harness points every solver without an inline net at its own net file, so a
# solver with no train net at all cannot be shown to it.
ORACLE_SKIP = {"no_train_net"}

GOOD: list[tuple[str, str]] = [
    ("fixed", NET + 'lr_policy: "fixed"\nbase_lr: 0.01\n'),
    ("step", NET + 'lr_policy: "step"\nbase_lr: 0.01\ngamma: 0.1\nstepsize: 100\n'),
    ("multistep_no_values", NET + 'lr_policy: "multistep"\ngamma: 0.1\n'),
    ("poly", NET + 'lr_policy: "poly"\npower: 0.5\nmax_iter: 1000\n'),
    ("adagrad", NET + 'lr_policy: "fixed"\ntype: "AdaGrad"\n'),
    ("rmsprop", NET + 'lr_policy: "fixed"\ntype: "RMSProp"\nrms_decay: 0\n'),
    ("adam_enum", NET + 'lr_policy: "fixed"\nsolver_type: ADAM\nmomentum: 0.9\n'),
    ("l1", NET + 'lr_policy: "fixed"\nweight_decay: 0.1\nregularization_type: "L1"\n'),
    ("bad_reg_no_decay", NET + 'lr_policy: "fixed"\nregularization_type: "L3"\n'),
    ("generic_test", NET + 'lr_policy: "fixed"\ntest_iter: 5\ntest_interval: 10\n'),
    ("gamma_inf_fixed", NET + 'lr_policy: "fixed"\ngamma: inf\n'),
]
GOOD += BORDER_GOOD


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "solver.prototxt"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name,text,field,needle,caffe_rejects", BAD, ids=[b[0] for b in BAD])
def test_rejected_with_reason_and_location(
    tmp_path: Path, name: str, text: str, field: str | None, needle: str, caffe_rejects: bool
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_solver(path)
    err = info.value
    assert needle in err.message
    assert err.location is not None and err.location.path == str(path)
    if field is None:
        assert err.location.line is None
    else:
        line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith(field))
        assert (err.location.line, err.location.col) == (line, 1)


@pytest.mark.parametrize("name,text", GOOD, ids=[g[0] for g in GOOD])
def test_accepted(tmp_path: Path, name: str, text: str) -> None:
    spec = load_solver(_write(tmp_path, text))
    assert spec.type in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
    if "_unread_" in name:
        (note,) = [n for n in spec.notes if n.code == "solver.nonfinite_unused"]
        field = name.split("_")[0] if not name.startswith("rms") else "rms_decay"
        line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith(field + ":"))
        assert "does not read it" in note.message and note.location.line == line


# -- a solver with its (inline) train net: the checks that need both ----------------------------


def _inline(param: str = "", dim: int = 2) -> str:
    return (
        'net_param { layer { name: "p" type: "Parameter" top: "p" '
        f"parameter_param {{ shape {{ dim: {dim} }} }} {param} }} }}\n"
    )


_NO_PARAMS = (
    'net_param { layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 } } } }\n'
)
_L3 = 'lr_policy: "fixed"\nregularization_type: "L3"\n'
# name, solver text (inline net), reason needle (None: accepted), whether Caffe aborts
RECIPES: list[tuple[str, str, str | None, bool]] = [
    # Caffe reads regularization_type only for a blob whose weight_decay * decay_mult != 0
    (
        "l3_no_decayed_blob",
        _inline("param { decay_mult: 0 }") + _L3 + "weight_decay: 0.1\n",
        None,
        False,
    ),
    ("l3_net_without_params", _NO_PARAMS + _L3 + "weight_decay: 0.1\n", None, False),
    (
        "l3_neg0_decay_mult",
        _inline("param { decay_mult: -0.0 }") + _L3 + "weight_decay: 0.1\n",
        None,
        False,
    ),
    (
        "l3_decayed_blob",
        _inline() + _L3 + "weight_decay: 0.1\n",
        "Unknown regularization type",
        True,
    ),
    # NaN x 0 is NaN, which is not 0: the type is read after all
    (
        "l3_nan_decay_no_mult",
        _inline("param { decay_mult: 0 }") + _L3 + "weight_decay: nan\n",
        "Unknown regularization type",
        True,
    ),
    (
        "l3_inf_decay_no_mult",
        _inline("param { decay_mult: 0 }") + _L3 + "weight_decay: inf\n",
        "Unknown regularization type",
        True,
    ),
    (
        "l3_nan_mult",
        _inline("param { decay_mult: nan }") + _L3 + "weight_decay: 0.1\n",
        "Unknown regularization type",
        True,
    ),
    # Caffe trains these with NaN; caffe2tf refuses them
    ("lr_mult_nan", _inline("param { lr_mult: nan }") + _FIXED, "has lr_mult nan", False),
    ("decay_mult_inf", _inline("param { decay_mult: inf }") + _FIXED, "has decay_mult inf", False),
    ("lr_mult_neg0", _inline("param { lr_mult: -0.0 }") + _FIXED, None, False),
]


@pytest.mark.parametrize("name,text,needle,caffe_rejects", RECIPES, ids=[r[0] for r in RECIPES])
def test_recipe_checks_with_the_net(
    tmp_path: Path, name: str, text: str, needle: str | None, caffe_rejects: bool
) -> None:
    path = _write(tmp_path, text)
    if needle is None:
        recipe = load_recipe(path)
        if name.startswith("l3"):
            assert any(n.code == "solver.regularization_unused" for n in recipe.notes)
        return
    with pytest.raises(InputError, match=needle) as info:
        load_recipe(path)
    assert info.value.location is not None and info.value.location.line is not None


def test_values_are_float32_and_defaults_marked(tmp_path: Path) -> None:
    spec = load_solver(
        _write(
            tmp_path,
            NET + 'lr_policy: "multistep"\nbase_lr: 0.1\n'
            "momentum: 0.9\nweight_decay: 5e-4\n"
            "stepvalue: 10\nstepvalue: 20\ngamma: 0.1\n",
        )
    )
    assert spec.momentum == 0.8999999761581421
    assert spec.base_lr == 0.10000000149011612
    assert spec.weight_decay == 0.0005000000237487257
    assert spec.stepvalue == (10, 20)
    assert spec.delta == 9.99999993922529e-09 and spec.momentum2 == 0.9990000128746033
    assert spec.rms_decay == 0.9900000095367432 and spec.clip_gradients == -1
    assert spec.type == "SGD" and spec.regularization_type == "L2" and spec.iter_size == 1
    assert {
        "type",
        "delta",
        "momentum2",
        "rms_decay",
        "clip_gradients",
        "iter_size",
        "regularization_type",
        "power",
        "stepsize",
        "max_iter",
    } <= spec.defaulted
    assert (
        not {"base_lr", "momentum", "weight_decay", "stepvalue", "lr_policy", "gamma"}
        & spec.defaulted
    )
    assert spec.locations["momentum"].line == 4
    assert "delta" not in spec.locations


def test_lenient_keeps_unknown_policy_with_a_note(tmp_path: Path) -> None:
    path = _write(tmp_path, NET + 'lr_policy: "triangular"\nmax_lr: 0.3\n')
    with pytest.raises(InputError):
        load_solver(path)
    spec = load_solver(path, lenient=True)
    assert spec.lr_policy == "triangular"
    policy = [n for n in spec.notes if n.code == "lenient.unknown_lr_policy"]
    skipped = [n for n in spec.notes if n.code == "lenient.skipped_field"]
    assert policy[0].affects_training and policy[0].location.line == 2
    assert skipped[0].affects_training and "max_lr" in skipped[0].message


def test_net_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "recipe"
    sub.mkdir()
    (sub / "net.prototxt").write_text(
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 3 } } }\n'
    )
    solver = sub / "solver.prototxt"
    solver.write_text(NET + 'lr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)  # Caffe would look for ./net.prototxt here: absent
    recipe = load_recipe(solver)
    assert recipe.net is not None and recipe.solver.net_path == str(sub / "net.prototxt")
    assert any(
        n.code == "load.net_path" and "next to the solver" in n.message for n in recipe.solver.notes
    )
    monkeypatch.chdir(sub)  # now the working directory has it, as Caffe expects
    recipe = load_recipe(solver)
    assert recipe.solver.net_path == "net.prototxt"
    assert any("working directory" in n.message for n in recipe.solver.notes)


def test_missing_net_is_a_warning(tmp_path: Path) -> None:
    solver = _write(tmp_path, 'net: "nowhere/net.prototxt"\nlr_policy: "fixed"\n')
    recipe = load_recipe(solver)
    assert recipe.net is None and recipe.solver.net_path is None
    (note,) = [n for n in recipe.solver.notes if n.code == "load.net_missing"]
    assert note.severity.value == "warning" and "lr_mult" in note.message
    assert note.location.line == 1


def test_net_override(tmp_path: Path) -> None:
    other = tmp_path / "other.prototxt"
    other.write_text(
        'layer { name: "q" type: "Parameter" top: "q" '
        "parameter_param { shape { dim: 4 } } param { lr_mult: 3 } }\n"
    )
    solver = _write(tmp_path, 'net: "nowhere.prototxt"\nlr_policy: "fixed"\n')
    recipe = load_recipe(solver, net_path=other)
    assert recipe.net is not None and recipe.net.param("q/0").lr_mult == 3
    assert recipe.solver.net_path == str(other)
    assert any(n.code == "load.net_override" for n in recipe.notes)
    assert not any(n.code == "load.net_missing" for n in recipe.solver.notes)


def test_train_state_reaches_the_net(tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "a" type: "Parameter" top: "a" parameter_param { shape '
        '{ dim: 1 } } include { stage: "big" } }\n'
        'layer { name: "b" type: "Parameter" top: "b" parameter_param { shape '
        '{ dim: 1 } } exclude { stage: "big" } }\n'
    )
    solver = _write(tmp_path, f'net: "{net}"\nlr_policy: "fixed"\ntrain_state {{ stage: "big" }}\n')
    recipe = load_recipe(solver)
    assert [layer.name for layer in recipe.net.layers] == ["a"]


@pytest.mark.oracle
def test_verdicts_agree_with_caffe(caffe_root: Path) -> None:
    from caffe2tf.verify import oracle

    texts = [t for _, t, _, _, _ in BAD] + [t for _, t in GOOD] + [t for _, t, _, _ in RECIPES]
    verdicts = oracle.caffe_read_solvers(texts, root=caffe_root)
    wrong = []
    for (name, _, _, _, caffe_rejects), verdict in zip(BAD, verdicts, strict=False):
        if name not in ORACLE_SKIP and verdict.ok == caffe_rejects:
            wrong.append((name, verdict))
    for (name, _), verdict in zip(GOOD, verdicts[len(BAD) : len(BAD) + len(GOOD)], strict=True):
        if not verdict.ok:
            wrong.append((name, verdict))
    for (name, _, _, caffe_rejects), verdict in zip(
        RECIPES, verdicts[len(BAD) + len(GOOD) :], strict=True
    ):
        if verdict.ok == caffe_rejects:
            wrong.append((name, verdict))
    assert wrong == []
    # where Caffe aborts, its reason is the one we give (the needle is Caffe's words)
    for (name, _, _, needle, caffe_rejects), verdict in zip(BAD, verdicts, strict=False):
        if name.split("_")[0] in ("gamma", "momentum", "rms") and caffe_rejects:
            caffe_words = {"gamma must be >= 0": "gamma() >= 0"}.get(needle, needle)
            assert caffe_words in verdict.message, (name, verdict.message)
