"""``caffe2tf verify`` on nets with BatchNorm+Scale, a lone Scale and PReLU: the mirror binds
the blobs where ``prepare_model`` does, the emitted module passes against the reference and the
real Caffe, and a module that gets the Scale/PReLU decay or the BatchNorm statistics wrong fails.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf.caffe.load import load_recipe  # noqa: E402
from caffe2tf.cli import cli  # noqa: E402
from caffe2tf.errors import InputError  # noqa: E402
from caffe2tf.rule.lower import lower  # noqa: E402
from caffe2tf.verify import mirror  # noqa: E402
from caffe2tf.verify.inputs import initial_weights, never_written_blobs  # noqa: E402

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[1]
BN = REPO / "tests" / "cases" / "bn_scale_step"

# Convolution -> PReLU (per channel) -> lone Scale with bias -> InnerProduct -> PReLU
# (channel_shared: a 0-axis Caffe blob, not decayed) -> InnerProduct.
PRELU_NET = textwrap.dedent("""
    name: "prelu"
    layer { name: "data" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
      convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
    layer { name: "sc" type: "Scale" bottom: "conv1" top: "sc" scale_param { bias_term: true } }
    layer { name: "ip1" type: "InnerProduct" bottom: "sc" top: "ip1"
      inner_product_param { num_output: 5 } }
    layer { name: "relu2" type: "PReLU" bottom: "ip1" top: "ip1"
      prelu_param { channel_shared: true } param { decay_mult: 0 } }
    layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
      inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
""")
PRELU_SOLVER = textwrap.dedent("""
    net: "net.prototxt"
    base_lr: 0.05
    momentum: 0.9
    weight_decay: 0.001
    lr_policy: "fixed"
    max_iter: 100
""")


@pytest.fixture(scope="module")
def prelu_case(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("prelu")
    (d / "net.prototxt").write_text(PRELU_NET)
    (d / "solver.prototxt").write_text(PRELU_SOLVER)
    return d / "solver.prototxt", d / "net.prototxt"


def _verify(solver: Path, net: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["verify", str(solver), "--net", str(net), *args], catch_exceptions=False
    )
    return result.exit_code, result.output


def _json(out: str) -> dict:
    return json.loads(out[out.index("{") :])


# ---- the mirror itself -------------------------------------------------------------------------


def test_bn_scale_pair_is_one_batch_normalization_bound_like_prepare_model():
    from caffe2tf.targets.keras.runtime import caffe_blob_key

    rule = lower(load_recipe(BN / "solver.prototxt", net_path=BN / "net.prototxt"))
    layers = mirror.mirror_layers_from_rule(rule)
    by_name = {spec.name: spec for spec in layers}
    assert "scale1" not in by_name  # the Scale's blobs live in the BatchNorm's Keras layer
    bn = by_name["bn1"]
    assert bn.type == "BatchNorm"
    assert {b.key for b in bn.blobs} == {"bn1/0", "bn1/1", "bn1/2", "scale1/0", "scale1/1"}
    model = mirror.build_mirror_model(layers)
    variables = model.blob_variables()
    assert "bn1/2" not in variables  # Keras keeps no moving-average factor
    paths = {k: v[0].path for k, v in variables.items()}
    assert paths["scale1/0"].endswith("bn1/gamma") and paths["scale1/1"].endswith("bn1/beta")
    assert paths["bn1/0"].endswith("bn1/moving_mean")
    assert paths["bn1/1"].endswith("bn1/moving_variance")
    # the emitted module's own lookup reads the Scale's blobs as the plan's bn1/0, bn1/1 and
    # does not see the statistics at all
    assert caffe_blob_key(paths["scale1/0"]) == "bn1/0"
    assert caffe_blob_key(paths["scale1/1"]) == "bn1/1"
    assert caffe_blob_key(paths["bn1/0"]) is None
    trainable = {id(v) for v in model.trainable_variables}
    assert id(variables["bn1/0"][0]) not in trainable
    assert id(variables["scale1/0"][0]) in trainable


def test_statistics_load_divided_by_the_factor_and_read_back():
    rule = lower(load_recipe(BN / "solver.prototxt", net_path=BN / "net.prototxt"))
    shapes = {p.key: p.shape for p in rule.params}
    init = initial_weights(shapes, 7)
    model = mirror.build_mirror_model(mirror.mirror_layers_from_rule(rule))
    mirror.set_caffe_weights(model, init)
    mean = np.asarray(model.blob_variables()["bn1/0"][0].numpy())
    np.testing.assert_allclose(mean, init["bn1/0"] / init["bn1/2"][0], rtol=1e-6)
    back = mirror.get_caffe_weights(model)
    assert set(back) == set(init)
    for key in init:
        np.testing.assert_allclose(back[key], init[key], rtol=1e-6, err_msg=key)


def test_lone_scale_and_prelu_variables():
    from caffe2tf.targets.keras.runtime import caffe_blob_key

    shapes = {"sc/0": (4,), "sc/1": (4,), "p/0": (6,), "q/0": ()}
    layers = mirror.mirror_layers_from_shapes(shapes, {"sc": "Scale", "p": "PReLU", "q": "PReLU"})
    model = mirror.build_mirror_model(layers)
    keys = {k: caffe_blob_key(v[0].path) for k, v in model.blob_variables().items()}
    assert keys == {"sc/0": "sc/0", "sc/1": "sc/1", "p/0": "p/0", "q/0": "q/0"}
    assert tuple(model.blob_variables()["q/0"][0].shape) == ()


def test_batch_norm_statistics_never_get_a_gradient():
    net = load_recipe(BN / "solver.prototxt", net_path=BN / "net.prototxt").net
    stats = {"bn1/0", "bn1/1", "bn1/2"}
    assert set(never_written_blobs(net.params, force_backward=False)) == stats
    assert set(never_written_blobs(net.params, force_backward=True)) == stats


def test_scale_with_two_channel_axes_is_a_clear_error():
    layers = mirror.mirror_layers_from_shapes(
        {"bn/0": (4,), "bn/1": (4,), "bn/2": (1,), "s/0": (4, 3)},
        {"bn": "BatchNorm", "s": "Scale"},
        {"s": "bn"},
    )
    with pytest.raises(InputError, match="1-D per-channel"):
        mirror.build_mirror_model(layers)


# ---- end to end --------------------------------------------------------------------------------


def test_bn_scale_passes_against_reference():
    code, out = _verify(
        BN / "solver.prototxt", BN / "net.prototxt", "--steps", "60", "--format", "json"
    )
    assert code == 0, out
    data = _json(out)
    assert data["passed"] is True
    per_blob = data["comparison"]["per_blob"]
    assert {"bn1/0", "bn1/1", "bn1/2", "scale1/0", "scale1/1"} <= set(per_blob)
    assert any("BatchNorm statistics" in n for n in data["notes"])


def test_bn_scale_table_names_the_pair():
    code, out = _verify(BN / "solver.prototxt", BN / "net.prototxt", "--steps", "10")
    assert code == 0, out
    assert "scale1/0" in out and "BatchNormalization 'bn1'" in out and "PASS" in out


def test_prelu_and_lone_scale_pass_against_reference(prelu_case):
    code, out = _verify(*prelu_case, "--steps", "60", "--format", "json")
    assert code == 0, out
    assert {"relu1/0", "relu2/0", "sc/0", "sc/1"} <= set(_json(out)["comparison"]["per_blob"])


@pytest.mark.oracle
def test_bn_scale_passes_against_real_caffe():
    code, out = _verify(
        BN / "solver.prototxt", BN / "net.prototxt", "--steps", "100", "--against", "caffe"
    )
    assert code == 0, out
    assert "real Caffe" in out and "scale1/1" in out and "PASS" in out


@pytest.mark.oracle
def test_prelu_and_lone_scale_pass_against_real_caffe(prelu_case):
    code, out = _verify(*prelu_case, "--steps", "60", "--against", "caffe")
    assert code == 0, out
    assert "relu2/0" in out and "PASS" in out


# ---- teeth: the emitted module with one binding done wrong ---------------------------------


WRAPPED = textwrap.dedent('''
    """The emitted optimizer.py with one mistake added after its prepare_model."""
    import importlib.util

    import keras

    _spec = importlib.util.spec_from_file_location("emitted_inner", {emitted!r})
    _inner = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_inner)
    build_optimizer = _inner.build_optimizer


    def prepare_model(model):
        out = _inner.prepare_model(model)
        for v in model.variables:
            if v.path.endswith({suffix!r}):
                {action}
        return out
''')

MISTAKES = {
    # Caffe decays the Scale's gamma (decay_mult 1): forgetting its regularizer must show
    "scale_gamma_not_decayed": ("bn", "bn1/gamma", "v.regularizer = None", "scale1/0"),
    # Keras' L2 has no 1/2: L2(weight_decay) decays twice as hard as Caffe
    "scale_gamma_decay_doubled": (
        "bn",
        "bn1/gamma",
        "v.regularizer = keras.regularizers.L2(0.0005)",
        "scale1/0",
    ),
    # Caffe trains the Scale's bias (lr_mult 1): freezing beta must show
    "scale_beta_frozen": ("bn", "bn1/beta", "v.trainable = False", "scale1/1"),
    # relu2 has decay_mult 0: decaying its alpha must show
    "shared_alpha_decayed": (
        "prelu",
        "relu2/alpha",
        "v.regularizer = keras.regularizers.L2(0.05)",
        "relu2/0",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_wrong_binding_fails(mistake, prelu_case, tmp_path):
    case, suffix, action, key = MISTAKES[mistake]
    solver, net = (BN / "solver.prototxt", BN / "net.prototxt") if case == "bn" else prelu_case
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["convert", str(solver), "--net", str(net), "-o", str(out_dir)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    module = tmp_path / "wrong.py"
    module.write_text(
        WRAPPED.format(emitted=str(out_dir / "optimizer.py"), suffix=suffix, action=action)
    )
    # the same module without the mistake passes (so the failure is the mistake's)
    right = tmp_path / "right.py"
    right.write_text(
        WRAPPED.format(emitted=str(out_dir / "optimizer.py"), suffix=suffix, action="pass")
    )
    code, out = _verify(solver, net, "--steps", "100", "--module", str(right))
    assert code == 0, out
    code, out = _verify(solver, net, "--steps", "100", "--module", str(module), "--format", "json")
    assert code == 1, out
    data = _json(out)
    assert data["comparison"]["per_blob"][key] > 1e-3, data["comparison"]["per_blob"]
