"""Save and resume with the emitted module: once ``optimizer.py`` is imported, ``model.save`` +
``keras.models.load_model`` need no ``custom_objects``; the decay (regularizers) survives the
round trip without calling ``prepare_model`` again; and a run interrupted after k updates and
resumed from the saved model continues the uninterrupted trajectory, on every route."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

import keras  # noqa: E402

from caffe2tf.cli import cli  # noqa: E402

pytestmark = pytest.mark.keras
CASES = Path(__file__).resolve().parents[1] / "tests" / "cases"
_ids = itertools.count()

ROUTES = {
    "builtin": "adam_no_momentum",
    "multi": "lenet_sgd_multistep",
    "custom": "itersize3_inv",
}


def _module(case: str, tmp: Path):
    out = tmp / "out"
    result = CliRunner().invoke(
        cli, ["convert", str(CASES / case / "solver.prototxt"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location(f"saved_opt_{next(_ids)}", out / "optimizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model():
    keras.utils.set_random_seed(3)
    x = keras.Input((5,))
    h = keras.layers.Dense(4, name="ip1")(x)
    return keras.Model(x, keras.layers.Dense(3, name="ip2")(h))


def _data(n: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    return x, rng.normal(size=(n, 3)).astype("float32")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_save_load_resume_continues_the_trajectory(route: str, tmp_path: Path) -> None:
    module = _module(ROUTES[route], tmp_path)
    x, y = _data(48)
    first = 24

    straight = _model()
    module.prepare_model(straight)
    straight.compile(optimizer=module.build_optimizer(), loss="mse")
    straight.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)

    broken = _model()
    module.prepare_model(broken)
    broken.compile(optimizer=module.build_optimizer(), loss="mse")
    broken.fit(x[:first], y[:first], batch_size=2, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    broken.save(path)

    resumed = keras.models.load_model(path)  # no custom_objects, no prepare_model
    assert type(resumed.optimizer).__name__ == type(broken.optimizer).__name__
    if route == "custom":  # the decay lives in the optimizer, whose config is saved
        assert resumed.optimizer.caffe_weight_decay == broken.optimizer.caffe_weight_decay > 0
    else:  # the decay lives in the regularizers, which the layers' configs now carry
        decayed = [v for v in resumed.trainable_variables if v.path.endswith("kernel")]
        assert decayed and all(v.regularizer is not None for v in decayed)
    assert int(resumed.optimizer.iterations) == int(broken.optimizer.iterations)
    resumed.fit(x[first:], y[first:], batch_size=2, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.trainable_variables, resumed.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b.numpy()), np.asarray(a.numpy()), atol=2e-6)


def test_a_frozen_layer_stays_frozen_after_loading(tmp_path: Path) -> None:
    """A layer whose blobs all have lr_mult 0 is saved as non-trainable, so the loaded model
    trains on without prepare_model and the layer does not move."""
    net = (CASES / "lenet_sgd_multistep" / "net.prototxt").read_text()
    net = net.replace(
        "param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n  inner_product_param "
        "{ num_output: 4 }",
        "param { lr_mult: 0 } param { lr_mult: 0 }\n  inner_product_param { num_output: 4 }",
        1,
    )
    assert "lr_mult: 0 } param { lr_mult: 0" in net
    (tmp_path / "net.prototxt").write_text(net)
    solver = (CASES / "lenet_sgd_multistep" / "solver.prototxt").read_text()
    solver = solver.replace('net: "net.prototxt"', f'net: "{tmp_path / "net.prototxt"}"')
    (tmp_path / "solver.prototxt").write_text(solver)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "solver.prototxt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location(f"frozen_{next(_ids)}", out / "optimizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = _model()
    module.prepare_model(model)
    model.compile(optimizer=module.build_optimizer(), loss="mse")
    x, y = _data(8)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    before = np.asarray(loaded.get_layer("ip1").kernel.numpy())
    loaded.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    assert not loaded.get_layer("ip1").trainable
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("ip1").kernel.numpy()), before)


#: (case, ip1's param lines): one blob of ip1 frozen, the other trained, on each route
PARTIAL = {
    "builtin": ("adam_no_momentum", "param { lr_mult: 0 } param { lr_mult: 1 }"),
    "multi": ("lenet_sgd_multistep", "param { lr_mult: 0 } param { lr_mult: 2 decay_mult: 0 }"),
    "multi-bias": ("lenet_sgd_multistep", "param { lr_mult: 1 } param { lr_mult: 0 }"),
    "custom": ("itersize3_inv", "param { lr_mult: 0 } param { lr_mult: 1 }"),
}


def _partly_frozen_module(case: str, params: str, tmp: Path):
    net = (CASES / case / "net.prototxt").read_text()
    first_ip = net.index('name: "ip1"')
    head, tail = net[:first_ip], net[first_ip:]
    old = tail[: tail.index("inner_product_param")]
    new = old.replace("param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }", "").rstrip()
    new = new.rstrip() + "\n  " + params + "\n  "
    (tmp / "net.prototxt").write_text(head + tail.replace(old, new, 1))
    assert params in (tmp / "net.prototxt").read_text()
    solver = (CASES / case / "solver.prototxt").read_text()
    solver = solver.replace('net: "net.prototxt"', f'net: "{tmp / "net.prototxt"}"')
    (tmp / "solver.prototxt").write_text(solver)
    out = tmp / "out"
    result = CliRunner().invoke(cli, ["convert", str(tmp / "solver.prototxt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location(f"partial_{next(_ids)}", out / "optimizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_path(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


@pytest.mark.parametrize("route", sorted(PARTIAL))
def test_a_partly_frozen_layer_survives_save_and_load(route: str, tmp_path: Path) -> None:
    """ip1 has one blob with lr_mult 0 and one that trains: after ``load_model`` (no
    ``prepare_model``) the frozen blob stays put, the other blobs keep their decay, and the
    resumed run continues the uninterrupted one."""
    case, params = PARTIAL[route]
    module = _partly_frozen_module(case, params, tmp_path)
    frozen = "ip1/kernel" if "lr_mult: 0 } param" in params else "ip1/bias"
    x, y = _data(48)
    first = 24

    straight = _model()
    start = _by_path(straight)
    module.prepare_model(straight)
    straight.compile(optimizer=module.build_optimizer(), loss="mse")
    straight.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)

    broken = _model()
    module.prepare_model(broken)
    broken.compile(optimizer=module.build_optimizer(), loss="mse")
    broken.fit(x[:first], y[:first], batch_size=2, epochs=1, shuffle=False, verbose=0)
    broken.save(tmp_path / "model.keras")

    resumed = keras.models.load_model(tmp_path / "model.keras")  # no prepare_model
    if route != "custom":  # ip2's kernel is decayed through its regularizer
        assert resumed.get_layer("ip2").kernel.regularizer is not None
    resumed.fit(x[first:], y[first:], batch_size=2, epochs=1, shuffle=False, verbose=0)
    want, got = _by_path(straight), _by_path(resumed)
    assert sorted(want) == sorted(got)
    np.testing.assert_array_equal(got[frozen], start[frozen])
    moved = [p for p in want if p != frozen and not np.array_equal(want[p], start[p])]
    assert len(moved) == 3, moved  # every other blob trained
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=2e-6, err_msg=path)


def test_binding_walks_the_layers_once_and_every_layer_keeps_its_regularizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bind_caffe_blobs`` (what ``prepare_model`` calls) lists the model's layers once, not
    once per variable, and still puts each variable's regularizer on its layer's config
    attribute, nested models included; a wholly frozen layer is marked non-trainable."""
    from caffe2tf.targets.keras import runtime

    walks = []
    real = runtime.all_layers
    monkeypatch.setattr(runtime, "all_layers", lambda m: walks.append(m) or real(m))
    x = keras.Input((5,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="ip2")], name="inner")
    h = inner(keras.layers.Dense(4, name="ip1")(x))
    model = keras.Model(x, keras.layers.Dense(3, name="ip3")(h))
    blobs = [
        ("ip1", 0, True, ("L2", 0.25)),
        ("ip1", 1, True, None),
        ("ip2", 0, True, ("L1", 0.5)),
        ("ip2", 1, True, ("L2", 0.125)),
        ("ip3", 0, False, None),
        ("ip3", 1, False, None),
    ]
    bound = runtime.bind_caffe_blobs(model, blobs, (True, None), {})
    assert len(walks) == 1
    assert len(bound) == 6
    ip1, ip3 = model.get_layer("ip1"), model.get_layer("ip3")
    ip2 = inner.get_layer("ip2")
    assert float(ip1.kernel_regularizer.l2) == pytest.approx(0.25) and ip1.bias_regularizer is None
    assert float(ip2.kernel_regularizer.l1) == pytest.approx(0.5)
    assert float(ip2.bias_regularizer.l2) == pytest.approx(0.125)
    assert not ip3.trainable and ip1.trainable and ip2.trainable
