"""TSN's fork (yjxiong/caffe 9831a2b4, docs/forks.md#tsn): its solver and net read strictly with
the fork's caffe.proto and into BVLC's by field name; its BN layer's blobs (slope, bias,
running mean, running variance; shape (1, C)) with the multipliers the fork's LayerSetUp forces
(bn_layer.cpp:49-68); ``richness`` and ``device_id`` noted; the corpus solver converting."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from caffe2tf.app.convert import convert_solver
from caffe2tf.caffe.load import load_recipe
from caffe2tf.rule.lower import lower
from caffe2tf.rule.model import Momentum

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("CAFFE2TF_CORPUS", ROOT.parent / "shared" / "corpus"))
NET = textwrap.dedent("""\
    name: "tsn"
    input: "data"
    input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "conv_bn" type: "BN" bottom: "conv" top: "conv_bn"
      param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 2 decay_mult: 0 }
      bn_param { frozen: false momentum: 0.9 } }
    layer { name: "conv2" type: "Convolution" bottom: "conv_bn" top: "conv2"
      convolution_param { num_output: 5 kernel_size: 1 } }
    layer { name: "conv2_bn" type: "BN" bottom: "conv2" top: "conv2_bn"
      param { lr_mult: 1 decay_mult: 1 } bn_param { frozen: true } }
    layer { name: "ip" type: "InnerProduct" bottom: "conv2_bn" top: "ip"
      inner_product_param { num_output: 2 } }
    """)
SOLVER = textwrap.dedent("""\
    net: "net.prototxt"
    base_lr: 0.01
    lr_policy: "step"
    gamma: 0.1
    stepsize: 10
    max_iter: 30
    momentum: 0.9
    weight_decay: 0.0005
    solver_type: NESTEROV
    device_id: [0, 1, 2]
    richness: 200
    """)


def _recipe(tmp_path: Path, solver: str = SOLVER, net: str = NET):
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(solver)
    return load_recipe(tmp_path / "solver.prototxt")


def test_tsn_files_are_the_forks_and_its_solver_fields_are_noted(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    assert recipe.solver.dialect == "tsn" and recipe.net.dialect == "tsn"
    assert recipe.solver.type == "Nesterov"  # the fork's enum, upgraded as BVLC does
    codes = {n.code: n for n in recipe.solver.notes}
    assert "richness" in codes["dialect.tsn"].message
    assert not codes["upgrade.tsn_richness"].affects_training
    assert "3 x batch_size" in codes["upgrade.tsn_devices"].message
    rule = lower(recipe)
    assert rule.solver == "Nesterov"
    assert not any(n.inexact for n in (*recipe.solver.notes, *recipe.net.notes, *rule.notes))


def test_bn_blobs_and_the_multipliers_the_fork_forces(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    table = {p.key: (p.lr_mult, p.decay_mult, p.shape) for p in recipe.net.params}
    # slope and bias as written; the statistics 0/0 whatever was written (bn_layer.cpp:56-59)
    assert table["conv_bn/0"] == (1.0, 0.0, (1, 4))
    assert table["conv_bn/1"] == (2.0, 0.0, (1, 4))
    assert table["conv_bn/2"] == (0.0, 0.0, (1, 4))
    assert table["conv_bn/3"] == (0.0, 0.0, (1, 4))
    # frozen: the slope and bias too, although param {} says lr_mult 1 (bn_layer.cpp:60-68)
    for i in range(4):
        assert table[f"conv2_bn/{i}"][:2] == (0.0, 0.0)
    assert table["conv2_bn/0"][2] == (1, 5)


def test_a_bvlc_net_refuses_the_bn_type(tmp_path: Path) -> None:
    from caffe2tf.errors import InputError

    bvlc_net = NET.replace("bn_param { frozen: false momentum: 0.9 }", "").replace(
        "bn_param { frozen: true }", ""
    )
    solver = SOLVER.replace("device_id: [0, 1, 2]\nrichness: 200\n", "")
    with pytest.raises(InputError, match="Unknown layer type: BN"):
        _recipe(tmp_path, solver, bvlc_net)


def test_a_forks_field_number_never_lands_in_bvlcs_field_of_that_number(tmp_path: Path) -> None:
    # TSN's bn_param is field 137, BVLC's embed_param; the copy goes by name
    recipe = _recipe(tmp_path)
    for layer in recipe.net.message.layer:
        assert not layer.HasField("embed_param")


def test_the_keras_plan_binds_slope_and_bias_to_gamma_and_beta(tmp_path: Path) -> None:
    from caffe2tf.targets.keras.plan import plan

    rule = lower(_recipe(tmp_path, SOLVER.replace("solver_type: NESTEROV", "solver_type: SGD")))
    assert isinstance(rule.solver_step, Momentum)
    p = plan(rule)
    bound = {(b.caffe_key, b.blob, b.keras_layer) for b in p.blobs}
    assert ("conv_bn/0", 0, "conv_bn") in bound and ("conv_bn/1", 1, "conv_bn") in bound
    assert not any(b.caffe_key in ("conv_bn/2", "conv_bn/3") for b in p.blobs)


def test_shared_blobs_in_the_fork_are_not_claimed_exact(tmp_path: Path) -> None:
    net = NET.replace(
        'layer { name: "ip" type: "InnerProduct" bottom: "conv2_bn" top: "ip"\n'
        "  inner_product_param { num_output: 2 } }",
        'layer { name: "ip" type: "InnerProduct" bottom: "conv2_bn" top: "ip"\n'
        '  param { name: "w" } inner_product_param { num_output: 2 bias_term: false } }\n'
        'layer { name: "ip2" type: "InnerProduct" bottom: "conv2_bn" top: "ip2"\n'
        '  param { name: "w" } inner_product_param { num_output: 2 bias_term: false } }',
    )
    rule = lower(_recipe(tmp_path, net=net))
    note = next(n for n in rule.notes if n.code == "rule.tsn.shared_params")
    assert note.exactness is not None and note.exactness.value == "approx"


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS} (optional)")
def test_the_corpus_tsn_solver_converts_exactly(tmp_path: Path) -> None:
    here = CORPUS / "yjxiong__temporal-segment-networks"
    report = convert_solver(
        here / "models__ucf101__tsn_bn_inception_rgb_solver.prototxt",
        net_path=here / "models__ucf101__tsn_bn_inception_rgb_train_val.prototxt",
        out_dir=tmp_path / "out",
        force=True,
    )
    assert report.exit_code == 0


def test_a_file_with_only_fields_other_forks_share_is_not_called_tsns(tmp_path: Path) -> None:
    # fast-rcnn's ROIPooling is in TSN's schema too; without a field of TSN's own the file
    # is not TSN's: strictly it is refused with BVLC's reason, as before
    from caffe2tf.errors import InputError

    net = NET.replace(
        'layer { name: "ip" type: "InnerProduct"',
        'layer { name: "roi" type: "ROIPooling" bottom: "conv2" bottom: "conv2" top: "roi"\n'
        "  roi_pooling_param { pooled_w: 2 pooled_h: 2 } }\n"
        'layer { name: "ip" type: "InnerProduct"',
    )
    net = net.replace("bn_param { frozen: false momentum: 0.9 }", "")
    net = net.replace("bn_param { frozen: true }", "")
    solver = SOLVER.replace("device_id: [0, 1, 2]\nrichness: 200\n", "")
    with pytest.raises(InputError) as err:
        _recipe(tmp_path, solver, net)
    assert "roi_pooling_param" in err.value.message and "TSN" not in err.value.message


@pytest.mark.keras
def test_verify_passes_on_a_tsn_recipe_with_bn(tmp_path: Path) -> None:
    """The mirror holds BN's four (1, C) blobs (slope, bias bound as gamma/beta; the running
    statistics never bound) and the emitted module follows the rule on them."""
    pytest.importorskip("keras")
    from caffe2tf.app.verify import verify_solver

    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER.replace("solver_type: NESTEROV", "solver_type: SGD"))
    report = verify_solver(solver, steps=15)
    assert report.exit_code == 0, report
