"""NVIDIA Caffe's dialect in the front end: told from its fields (no flag), read strictly with
NVIDIA's own caffe.proto, NVIDIA's checks with its reasons, its BatchNorm's param table."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from caffe2tf.caffe.load import load_recipe
from caffe2tf.errors import InputError

NET = textwrap.dedent("""\
    name: "t"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 2 } }
    """)
BN_NET = textwrap.dedent("""\
    name: "bn"
    layer { name: "data" type: "Input" top: "data"
      input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 } } }
    layer { name: "bn1" type: "BatchNorm" bottom: "data" top: "bn1"
      param { lr_mult: 5 } batch_norm_param { scale_bias: true } }
    layer { name: "bn2" type: "BatchNorm" bottom: "bn1" top: "bn2" }
    """)
SOLVER = 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\n'


def _recipe(tmp_path: Path, solver: str, net: str = NET):
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(solver)
    return load_recipe(tmp_path / "solver.prototxt")


def test_bvlc_files_stay_bvlc(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, SOLVER)
    assert recipe.solver.dialect == "bvlc" and recipe.net.dialect == "bvlc"
    assert not any(n.code.startswith("dialect.") for n in recipe.solver.notes)


def test_an_nvidia_field_makes_the_recipe_nvidia_and_a_note_names_it(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, SOLVER + "larc: true\nlarc_eta: 0.002\nrampup_interval: 5\n")
    assert recipe.solver.dialect == "nvidia"
    assert recipe.solver.larc and recipe.solver.rampup_interval == 5
    assert recipe.solver.larc_eta == pytest.approx(0.002)
    note = next(n for n in recipe.solver.notes if n.code == "dialect.nvidia")
    assert "rampup_interval" in note.message and "larc" in note.message
    # the defaults of NVIDIA's caffe.proto for what was not written (:429-442)
    assert recipe.solver.momentum_policy == "fixed" and recipe.solver.larc_policy == "scale"


def test_an_nvidia_net_makes_the_recipe_nvidia(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, SOLVER, BN_NET)
    assert recipe.net.dialect == "nvidia" and recipe.solver.dialect == "nvidia"
    assert any(n.code == "dialect.nvidia_net" for n in recipe.notes)
    # NVIDIA's BatchNorm: statistics 0/0 whatever was written, scale and bias 1/1
    # (batch_norm_layer.cpp:89-109); no scale_bias: three statistics only
    table = {p.key: (p.lr_mult, p.decay_mult, p.shape) for p in recipe.net.params}
    assert table == {
        "bn1/0": (0.0, 0.0, (4,)),
        "bn1/1": (0.0, 0.0, (4,)),
        "bn1/2": (0.0, 0.0, (1,)),
        "bn1/3": (1.0, 1.0, (4,)),
        "bn1/4": (1.0, 1.0, (4,)),
        "bn2/0": (0.0, 0.0, (4,)),
        "bn2/1": (0.0, 0.0, (4,)),
        "bn2/2": (0.0, 0.0, (1,)),
    }


@pytest.mark.parametrize(
    ("extra", "field", "needle"),
    [
        ("min_lr: -0.1\n", "min_lr", "min_lr must be >= 0"),
        ('lr_policy: "plateau"\n', "lr_policy", "does not implement it"),
        (
            'type: "SAG"\nregularization_type: "L1"\nweight_decay: 0.1\n',
            "regularization_type",
            "SAG",
        ),
        ('momentum_policy: "cosine"\n', "momentum_policy", "Unknown momentum policy"),
        ('larc: true\nlarc_policy: "trust"\n', "larc_policy", "Unknown larc policy"),
        ('rampup_lr: 0.1\nmin_lr: 0.5\nlr_policy: "poly"\n', "base_lr", "CHECK_GE(base_lr"),
        ('type: "Adamax"\nlarc: false\n', "type", "NVIDIA Caffe knows"),
        ("larc: true\nlarc_eta: nan\n", "larc_eta", "non-finite"),
    ],
)
def test_nvidia_refuses_what_nvidia_caffe_refuses(
    tmp_path: Path, extra: str, field: str, needle: str
) -> None:
    text = SOLVER.replace('lr_policy: "fixed"\n', "") if "lr_policy" in extra else SOLVER
    with pytest.raises(InputError) as info:
        _recipe(tmp_path, text + extra + ("" if "larc" in extra else "larc: false\n"))
    assert needle in info.value.message
    line = [i for i, t in enumerate((text + extra).splitlines(), 1) if t.startswith(field)]
    assert info.value.location.line == (line[0] if line else None), info.value


def test_nvidia_has_no_gamma_check_but_bvlc_does(tmp_path: Path) -> None:
    text = SOLVER.replace('"fixed"', '"exp"') + "gamma: -0.5\n"
    with pytest.raises(InputError, match="gamma must be >= 0"):
        _recipe(tmp_path, text)
    assert _recipe(tmp_path, text + "min_lr: 0\n").solver.gamma == -0.5


def test_a_file_neither_schema_reads_fails_with_the_error_that_read_further(
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError) as info:
        _recipe(tmp_path, SOLVER + "larc: true\nno_such_field: 1\n")
    assert info.value.location.line == 6 and "read as NVIDIA" in info.value.message
    recipe_text = SOLVER + "larc: true\nno_such_field: 1\n"
    (tmp_path / "solver.prototxt").write_text(recipe_text)
    lenient = load_recipe(tmp_path / "solver.prototxt", lenient=True)
    assert lenient.solver.dialect == "nvidia" and lenient.solver.larc


def test_nvidia_batchnorm_scale_and_bias_bind_to_keras_gamma_and_beta(tmp_path: Path) -> None:
    from caffe2tf.rule.lower import lower
    from caffe2tf.targets.keras.plan import plan

    p = plan(lower(_recipe(tmp_path, SOLVER, BN_NET)))
    bound = {b.caffe_key: (b.keras_layer, b.blob, b.lr_mult, b.trainable) for b in p.blobs}
    assert bound == {"bn1/3": ("bn1", 0, 1.0, True), "bn1/4": ("bn1", 1, 1.0, True)}


FP16_NET = textwrap.dedent("""\
    name: "half"
    default_forward_type: FLOAT16
    default_backward_type: FLOAT16
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 2 } }
    layer { name: "perm" type: "Permute" bottom: "ip" top: "perm" }
    """)


def test_fp16_nets_and_nvidia_layers(tmp_path: Path) -> None:
    """FLOAT16 layer math leaves the float32 update exact (a note); SGD's kernel for FLOAT16
    gradients tests for L2 only, so WD decays with sign(w) (sgd_solver.cu:211-226); NVIDIA's
    own layer types need no --lenient."""
    from caffe2tf.rule.lower import lower
    from caffe2tf.rule.model import AddDecay

    text = SOLVER + 'regularization_type: "WD"\nweight_decay: 0.01\n'
    recipe = _recipe(tmp_path, text, FP16_NET)
    rule = lower(recipe)
    assert rule.step(AddDecay) == AddDecay("L1", rule.step(AddDecay).weight_decay)
    codes = {n.code: n for n in rule.notes}
    assert codes["rule.nvidia.fp16_net"].exactness is None
    assert "211-226" in codes["rule.nvidia.regularization"].message
    assert any("NVIDIA Caffe layer type 'Permute'" in n.message for n in recipe.net.notes)
    # the same net in fp32 keeps WD decoupled
    rule32 = lower(_recipe(tmp_path, text, FP16_NET.replace("FLOAT16", "FLOAT")))
    assert rule32.solver_step.decay_kind == "WD"


def test_ssd_normalize_binds_its_scale(tmp_path: Path) -> None:
    """NVIDIA's Normalize (SSD) owns one learnable blob, its channel scale
    (normalize_layer.cpp:33-51): the Keras plan binds it to the layer's gamma."""
    from caffe2tf.rule.lower import lower
    from caffe2tf.targets.keras.plan import plan

    net = BN_NET.replace(
        'layer { name: "bn2" type: "BatchNorm" bottom: "bn1" top: "bn2" }',
        'layer { name: "norm" type: "Normalize" bottom: "bn1" top: "norm"\n'
        "  norm_param { across_spatial: false channel_shared: false } }",
    )
    recipe = _recipe(tmp_path, SOLVER, net)
    assert [p.key for p in recipe.net.params if p.layer == "norm"] == ["norm/0"]
    p = plan(lower(recipe))
    assert not p.unsupported
    assert ("norm/0", "norm", 0) in {(b.caffe_key, b.keras_layer, b.blob) for b in p.blobs}
