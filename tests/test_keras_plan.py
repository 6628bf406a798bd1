"""The plan: routes and notes per case, schedules against Caffe's policies, and the usual wrong
ports failing the same trajectory test (so the test has teeth)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from caffe2tf.notes import Exactness
from caffe2tf.rule.model import LrSchedule
from caffe2tf.rule.schedules import lr_sequence
from caffe2tf.targets.keras.schedules import effective_stepvalues

sys.path.insert(0, str(Path(__file__).parent))

import keras_support as ks  # noqa: E402

ROUTES = {
    "lenet_sgd_multistep": ("multi", "SGD", "PiecewiseConstantDecay"),
    "adam_no_momentum": ("builtin", "Adam", "constant"),
    "rmsprop_step": ("builtin", "Adam", "CaffeSchedule"),
    "adagrad_poly": ("custom", "CaffeAdaGrad", "CaffeSchedule"),
    "clip_decay_sgd": ("custom", "CaffeSGD", "CaffeSchedule"),
    "itersize3_inv": ("custom", "CaffeSGD", "CaffeSchedule"),
    "adadelta_sigmoid": ("multi", "Adadelta", "CaffeSchedule"),
    "l1_nesterov_exp": ("custom", "CaffeSGD", "CaffeSchedule"),
    "bn_scale_step": ("builtin", "SGD", "ExponentialDecay"),
    "hostile_names": ("multi", "Adam", "constant"),
}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_route_and_classes(name: str) -> None:
    _, p = ks.plan_of(ks.CASES / name)
    assert (p.route, p.optimizer.cls, p.schedule.cls) == ROUTES[name]
    assert p.exact
    assert all(n.exactness is Exactness.EXACT for n in p.notes if n.exactness is not None)


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_emitted_module_inlines_only_what_the_recipe_uses(name: str) -> None:
    """The generated optimizer.py carries the one solver step and the one lr policy its
    recipe uses, and nothing of the other solvers or policies."""
    from caffe2tf.targets.keras.render_python import render_python

    _, p = ks.plan_of(ks.CASES / name)
    text = render_python(p)
    solver_classes = ("CaffeSGD", "CaffeAdaGrad", "CaffeRMSProp", "CaffeAdaDelta", "CaffeAdam")
    defined = {c for c in solver_classes if f"class {c}(" in text}
    assert defined == ({p.optimizer.cls} if p.route == "custom" else set())
    policies = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
    rates = {pol for pol in policies if f"def {pol}_rate(" in text}
    custom = p.schedule.cls == "CaffeSchedule"
    assert rates == ({p.schedule.arg("policy")} if custom else set())


def test_unknown_net_is_an_approximation() -> None:
    """Without the train net the per-blob multipliers are Caffe's defaults, a guess: an APPROX
    note (so convert needs --allow-approx) that says what was assumed and how to fix it."""
    _, p = ks.plan_of(ks.CASES / "no_net_sgd")
    assert not p.exact and not p.blobs
    note = next(n for n in p.notes if n.code == "keras.net.unknown")
    assert note.exactness is Exactness.APPROX and note.affects_training
    assert "--net" in note.message and "biases included" in note.message
    _, p = ks.plan_of(ks.CASES / "lenet_sgd_multistep")  # with the net: no such note
    assert not any(n.code == "keras.net.unknown" for n in p.notes)


def test_notes_say_what_changed_in_plain_words() -> None:
    _, p = ks.plan_of(ks.CASES / "lenet_sgd_multistep")
    text = "\n".join(n.message for n in p.notes)
    assert "weight_decay 0.0005 becomes L2(0.00025)" in text and "no 1/2" in text
    assert "boundaries shifted by one" in text and "[29, 69]" in text
    bias = [b for b in p.blobs if b.blob == 1]
    assert all(b.lr_mult == 2.0 and b.regularizer is None for b in bias)
    kernels = [b for b in p.blobs if b.blob == 0]
    assert all(b.regularizer == ("L2", 0.00025) for b in kernels)
    _, p = ks.plan_of(ks.CASES / "adagrad_poly")
    assert "epsilon inside the square root" in "\n".join(n.message for n in p.notes)
    _, p = ks.plan_of(ks.CASES / "bn_scale_step")
    assert {b.keras_layer for b in p.blobs if b.layer_type == "Scale"} == {"bn1"}
    assert p.schedule.kwargs()["staircase"] is True


def test_a_frozen_blob_that_load_model_would_thaw_takes_the_multi_route() -> None:
    """lr_mult 0 next to a trained blob of the same layer: Keras cannot save it as frozen, so
    the builtin recipe becomes multi with the blob on a zero-rate SGD; a wholly frozen layer
    (saved as non-trainable) leaves the route alone."""
    import dataclasses

    from caffe2tf.targets.keras.plan import plan, thawed_by_loading

    rule, p = ks.plan_of(ks.CASES / "adam_no_momentum")
    assert p.route == "builtin" and not thawed_by_loading(rule)

    def frozen(*keys: str):  # type: ignore[no-untyped-def]
        params = tuple(
            dataclasses.replace(g, lr_mult=0.0) if g.key in keys else g for g in rule.params
        )
        return dataclasses.replace(rule, params=params)

    whole = frozen("ip1/0", "ip1/1")
    assert not thawed_by_loading(whole) and plan(whole).route == "builtin"
    part = frozen("ip1/0")
    assert thawed_by_loading(part) == ["ip1/0"]
    p = plan(part)
    assert p.route == "multi" and p.exact
    assert any(n.code == "keras.lr_mult.frozen_route" for n in p.notes)
    assert not any(n.code == "keras.lr_mult.multi" for n in p.notes)  # every trained mult is 1
    from caffe2tf.targets.keras.render_python import render_python

    assert "frozen = keras.optimizers.SGD(learning_rate=0.0)" in render_python(p)


def test_multistep_caffe_advances_one_stage_per_update() -> None:
    s = LrSchedule("multistep", 0.1, gamma=0.5, stepvalue=(10, 10, 5, 30))
    assert effective_stepvalues(s) == (10, 11, 12, 30)


POLICIES = [
    LrSchedule("fixed", 0.1),
    LrSchedule("step", 0.1, gamma=0.5, stepsize=7),
    LrSchedule("exp", 0.1, gamma=0.97),
    LrSchedule("inv", 0.1, gamma=0.05, power=0.75),
    LrSchedule("inv", 0.1, gamma=0.05, power=1.0),
    LrSchedule("multistep", 0.1, gamma=0.3, stepvalue=(5, 5, 20)),
    LrSchedule("poly", 0.1, power=1.5, max_iter=60),
    LrSchedule("sigmoid", 0.1, gamma=0.2, stepsize=25),
]


@pytest.mark.keras
@pytest.mark.parametrize("schedule", POLICIES, ids=lambda s: f"{s.policy}")
@pytest.mark.parametrize("iter_size", [1, 3])
def test_keras_schedules_follow_caffe_policy(schedule: LrSchedule, iter_size: int) -> None:
    """Built-in or CaffeSchedule, the rate at Keras step s is Caffe's rate at update s // k
    (the custom route counts micro-batches and floors)."""
    require("keras")
    from caffe2tf.rule.model import Momentum, ScaleByLr, UpdateRule
    from caffe2tf.targets.keras.build import _schedule
    from caffe2tf.targets.keras.plan import plan
    from caffe2tf.targets.keras.render_yaml import plan_to_config

    rule = UpdateRule(
        solver="SGD", steps=(ScaleByLr(schedule), Momentum(0.9)), iter_size=iter_size, max_iter=60
    )
    p = plan(rule)
    if iter_size > 1:
        assert p.route == "custom"
    keras_sched = _schedule(plan_to_config(p)["schedule"])
    n = 60
    caffe = lr_sequence(schedule, n)
    for s in range(n * iter_size):
        got = keras_sched if isinstance(keras_sched, float) else float(keras_sched(s))
        assert got == pytest.approx(float(caffe[s // iter_size]), rel=2e-6), s


@pytest.mark.keras
def test_rmsprop_correction_schedule() -> None:
    require("keras")
    from caffe2tf.targets.keras.runtime import CaffeSchedule

    sched = CaffeSchedule("fixed", 0.01, rms_decay=0.9)
    for k in range(5):
        assert float(sched(k)) == pytest.approx(0.01 / np.sqrt(1 - 0.9 ** (k + 1)), rel=1e-6)


# ---- the usual wrong ports must fail the same test --------------------------------------------


def _wrong_port_deviation(name: str, build_optimizer, prepare_model) -> float:  # type: ignore[no-untyped-def]
    from caffe2tf.rule.reference import run_reference

    rule, p = ks.plan_of(ks.CASES / name)
    init, grads = ks.streams(rule, 100, seed=7)
    ref = run_reference(rule, init, grads, precision="float32")
    cand = ks.run_keras(build_optimizer, prepare_model, rule, init, grads, plan=p)
    return ks.deviation(init, ref, cand)


@pytest.mark.keras
def test_wrong_ports_fail() -> None:
    keras = require("keras")
    if keras.backend.backend() != "tensorflow":  # a deliberate KERAS_BACKEND choice, not a gap
        pytest.skip(f"TF-backend test; KERAS_BACKEND selects {keras.backend.backend()!r}")
    emitted = {
        n: ks.load_module(ks.CASES / n / "expected" / "optimizer.py")
        for n in ("bn_scale_step", "rmsprop_step", "adagrad_poly", "adam_no_momentum")
    }

    def kernel_only_l2(model):  # type: ignore[no-untyped-def]
        emitted["adam_no_momentum"].prepare_model(model)
        for v in model.trainable_variables:
            v.regularizer = keras.regularizers.L2(0.001) if v.path.endswith("kernel") else None

    sched = emitted["bn_scale_step"].build_schedule
    results = {
        # kernel_regularizer=l2(wd): no 1/2 and no decay on the biases
        "kernel-only l2(wd)": _wrong_port_deviation(
            "adam_no_momentum", emitted["adam_no_momentum"].build_optimizer, kernel_only_l2
        ),
        # Keras' decoupled weight_decay instead of Caffe's coupled L2
        "SGD(weight_decay=wd)": _wrong_port_deviation(
            "bn_scale_step",
            lambda: keras.optimizers.SGD(sched(), momentum=0.9, weight_decay=0.0005),
            lambda m: [setattr(v, "regularizer", None) for v in m.trainable_variables],
        ),
        # Keras RMSprop: epsilon inside the root
        "RMSprop(rho, epsilon)": _wrong_port_deviation(
            "rmsprop_step",
            lambda: keras.optimizers.RMSprop(
                keras.optimizers.schedules.ExponentialDecay(0.01, 40, 0.5, staircase=True),
                rho=0.98,
                epsilon=1e-4,
            ),
            emitted["rmsprop_step"].prepare_model,
        ),
        # Keras Adagrad defaults (accumulator 0.1, epsilon 1e-7 inside the root)
        "Adagrad defaults": _wrong_port_deviation(
            "adagrad_poly",
            lambda: keras.optimizers.Adagrad(
                keras.optimizers.schedules.PolynomialDecay(
                    0.1, 120, end_learning_rate=0.0, power=2.0
                )
            ),
            lambda m: [
                setattr(v, "regularizer", keras.regularizers.L2(0.0005))
                for v in m.trainable_variables
            ],
        ),
    }
    print(results)
    assert all(dev > 1e-3 for dev in results.values()), results


@pytest.mark.keras
def test_custom_optimizer_config_round_trip() -> None:
    require("keras")
    module = ks.load_module(ks.CASES / "itersize3_inv" / "expected" / "optimizer.py")
    opt = module.build_optimizer()
    config = opt.get_config()
    assert type(opt).__name__ == "CaffeSGD"
    again = module.CaffeSGD.from_config(
        config, custom_objects={"CaffeSchedule": module.CaffeSchedule}
    )
    assert again.get_config()["multipliers"] == config["multipliers"]
    assert (again.nesterov, again.iter_size, again.momentum) == (True, 3, opt.momentum)
    assert again._learning_rate.get_config() == opt._learning_rate.get_config()


@pytest.mark.keras
def test_custom_optimizer_iterations_count_caffe_updates() -> None:
    keras = require("keras")
    module = ks.load_module(ks.CASES / "itersize3_inv" / "expected" / "optimizer.py")
    opt = module.build_optimizer()
    w = keras.Variable(np.ones((2,), np.float32), name="kernel")
    for _ in range(7):
        opt.apply_gradients([(np.ones((2,), np.float32), w)])
    assert int(opt.iterations) == 2 and int(opt._iterations) == 7
