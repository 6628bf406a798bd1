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
]


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
    assert spec.type in ("SGD", "AdaGrad", "RMSProp", "Adam")


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

    texts = [t for _, t, _, _, _ in BAD] + [t for _, t in GOOD]
    verdicts = oracle.caffe_read_solvers(texts, root=caffe_root)
    wrong = []
    for (name, _, _, _, caffe_rejects), verdict in zip(BAD, verdicts, strict=False):
        if name not in ORACLE_SKIP and verdict.ok == caffe_rejects:
            wrong.append((name, verdict))
    for (name, _), verdict in zip(GOOD, verdicts[len(BAD) :], strict=True):
        if not verdict.ok:
            wrong.append((name, verdict))
    assert wrong == []
