"""Caffe's upgrades: solver_type, V0/V1 nets, data transformation, input fields, BatchNorm;
inline nets left as written. The oracle tests compare with Caffe's own upgrade_net_proto_text."""

from __future__ import annotations

from pathlib import Path

import pytest

from caffe2tf.caffe._proto import caffe_pb2 as pb
from caffe2tf.caffe.load import load_net, load_recipe, load_solver, parse_net_file
from caffe2tf.caffe.parse import parse_text
from caffe2tf.caffe.upgrade import upgrade_net, upgrade_solver
from caffe2tf.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "fixtures" / "legacy"
CORPUS = ROOT.parent / "shared" / "corpus"


def _upgraded(path: Path):
    return upgrade_net(parse_net_file(path))


def _net_text(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_v1_multipliers_sharing_and_data_transform() -> None:
    up = _upgraded(LEGACY / "v1_net.prototxt")
    net = up.message
    assert up.legacy_format == "V1"
    assert len(net.layers) == 0 and [lay.name for lay in net.layer] == [
        "data",
        "conv1",
        "relu1",
        "fc_a",
        "fc_b",
        "sum",
        "loss",
    ]
    types = [lay.type for lay in net.layer]
    assert types == [
        "Data",
        "Convolution",
        "ReLU",
        "InnerProduct",
        "InnerProduct",
        "Eltwise",
        "SoftmaxWithLoss",
    ]
    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    fc_a, fc_b = net.layer[3], net.layer[4]
    assert [p.name for p in fc_a.param] == ["fc_w", "fc_b"]
    assert fc_a.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert not fc_a.param[1].HasField("share_mode")
    assert [p.lr_mult for p in fc_a.param] == [10, 20]
    assert not fc_a.param[0].HasField("decay_mult")
    assert fc_b.param[0].decay_mult == 0.5 and not fc_b.param[0].HasField("lr_mult")
    assert not fc_b.param[1].HasField("lr_mult") and not fc_b.param[1].HasField("decay_mult")
    data = net.layer[0]
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("mirror")
    assert data.transform_param.crop_size == 24 and data.transform_param.mirror
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert list(net.layer[6].loss_weight) == [1]
    assert data.include[0].phase == pb.TRAIN
    codes = [n.code for n in up.notes]
    assert "upgrade.v1_to_v2" in codes and "upgrade.data_transformation" in codes
    assert codes.count("upgrade.v1_multipliers") == 3
    # layer i of the upgraded net points at layer i of the file
    assert [loc.line for loc in up.layer_locations] == [4, 19, 30, 36, 48, 58, 65]


def test_v0_padding_fold_and_fields() -> None:
    up = _upgraded(LEGACY / "v0_net.prototxt")
    net = up.message
    assert up.legacy_format == "V0"
    names = [lay.name for lay in net.layer]
    assert names == ["input", "conv1", "relu1", "conv2", "pool2", "drop", "fc", "lrn"]
    assert "pad2" not in names
    conv1, conv2 = net.layer[1], net.layer[3]
    assert list(conv1.convolution_param.kernel_size) == [3]
    assert conv1.convolution_param.num_output == 8 and conv1.convolution_param.bias_term
    assert conv1.convolution_param.weight_filler.type == "gaussian"
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert list(conv2.bottom) == ["conv1"] and list(conv2.convolution_param.pad) == [2]
    assert conv2.convolution_param.group == 2
    assert net.layer[4].pooling_param.pool == pb.PoolingParameter.MAX
    assert net.layer[5].dropout_param.dropout_ratio == pytest.approx(0.25)
    assert net.layer[6].param[0].decay_mult == 2
    assert net.layer[7].lrn_param.local_size == 3
    inp = net.layer[0]
    assert inp.type == "Input" and list(inp.top) == ["data"]
    assert list(inp.input_param.shape[0].dim) == [2, 3, 12, 12]
    assert len(net.input) == 0 and len(net.input_dim) == 0
    # locations: the Input layer points at `input`, the others at their V0 layer (pad skipped)
    assert [loc.line for loc in up.layer_locations] == [4, 9, 16, 26, 32, 37, 42, 47]
    assert any(n.code == "upgrade.v0_padding" for n in up.notes)


def test_batch_norm_and_input_shape() -> None:
    up = _upgraded(LEGACY / "batchnorm_input.prototxt")
    net = up.message
    assert [lay.name for lay in net.layer] == ["input", "conv", "bn_old", "scale", "bn_two"]
    assert list(net.layer[0].input_param.shape[0].dim) == [4, 3, 8, 8]
    old, two = net.layer[2], net.layer[4]
    assert [(p.lr_mult, p.decay_mult) for p in old.param] == [(0, 0)] * 3
    assert two.param[0].decay_mult == 3 and not two.param[1].HasField("decay_mult")
    assert up.legacy_format == "V2"


def test_input_without_shape_is_dropped(tmp_path: Path) -> None:
    p = _net_text(
        tmp_path, 'input: "data"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
    )
    up = _upgraded(p)
    assert [lay.name for lay in up.message.layer] == ["r"] and len(up.message.input) == 0
    assert any(n.code == "upgrade.input" for n in up.notes)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('layer { name: "a" }\nlayers { name: "b" type: RELU }', "both 'layer' and 'layers'"),
        ('layers { layer { name: "x" type: "bogus" } }', "Unknown layer name: bogus"),
        (
            'input: "a"\ninput: "b"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 3\ninput_dim: 4',
            "input_dim",
        ),
        (
            'input: "d"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n'
            'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" }\n'
            'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }',
            "Padding layer input",
        ),
        (
            'layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }',
            "Unknown blob input",
        ),
    ],
)
def test_fatal_upgrades(tmp_path: Path, text: str, needle: str) -> None:
    p = _net_text(tmp_path, text)
    with pytest.raises(InputError) as info:
        _upgraded(p)
    assert needle in info.value.message
    assert info.value.location is not None and info.value.location.path == str(p)


def test_v0_unknown_parameter_is_dropped_with_a_note(tmp_path: Path) -> None:
    p = _net_text(
        tmp_path,
        'input: "d"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 4\n'
        'input_dim: 4\nlayers { layer { name: "r" type: "relu" '
        'num_output: 3 } bottom: "d" top: "r" }',
    )
    up = _upgraded(p)
    assert any(n.code == "upgrade.v0_incompatible" and "num_output" in n.message for n in up.notes)
    assert not up.message.layer[1].HasField("inner_product_param")


def test_solver_type_upgrade(tmp_path: Path) -> None:
    msg = pb.SolverParameter()
    parsed = parse_text('solver_type: ADAM\nbase_lr: 0.1\nlr_policy: "fixed"', msg, path="s")
    out, locs, notes = upgrade_solver(parsed)
    assert out.type == "Adam" and not out.HasField("solver_type")
    assert locs["type"].line == 1 and notes[0].code == "upgrade.solver_type"
    both = parse_text('type: "SGD"\nsolver_type: NESTEROV', pb.SolverParameter(), path="s")
    with pytest.raises(InputError) as info:
        upgrade_solver(both)
    assert "cannot be both specified" in info.value.message
    assert info.value.location.line == 2


def test_inline_net_is_not_upgraded(tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        'base_lr: 0.1\nlr_policy: "fixed"\nnet_param {\n  layers { name: "c" '
        'type: CONVOLUTION blobs_lr: 5 }\n  layer { name: "p" type: "Parameter" '
        'top: "p" parameter_param { shape { dim: 2 dim: 3 } } }\n'
        '  layer { name: "bn" type: "BatchNorm" bottom: "p" top: "q" '
        "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }\n}\n"
    )
    spec = load_solver(solver)
    note = [n for n in spec.notes if n.code == "upgrade.inline_not_upgraded"]
    assert len(note) == 1 and "NOT" in note[0].message and note[0].location.line == 3
    inline = spec.message.net_param
    assert len(inline.layers) == 1  # left as written
    assert [p.HasField("decay_mult") for p in inline.layer[1].param] == [False] * 3
    recipe = load_recipe(solver)
    assert recipe.net is not None
    assert [layer.name for layer in recipe.net.layers] == ["p", "bn"]  # V1 'layers' ignored
    # not upgraded: the BatchNorm blobs keep the default decay_mult 1 (harmless: lr_mult 0)
    assert [recipe.net.param(f"bn/{i}").decay_mult for i in range(3)] == [1.0, 1.0, 1.0]
    assert recipe.net.layers[1].location.line == 6
    solver.write_text(
        'base_lr: 0.1\nlr_policy: "fixed"\nnet_param { layer { name: "p" '
        'type: "Parameter" top: "p" parameter_param { shape { dim: 2 } } } }\n'
    )
    spec = load_solver(solver)
    assert any(
        n.code == "upgrade.inline_not_upgraded" and "none were needed" in n.message
        for n in spec.notes
    )


def test_load_net_reports_legacy_format() -> None:
    net = load_net(LEGACY / "v1_net.prototxt")
    assert net.legacy_format == "V1"
    conv_bias = net.param("conv1/1")
    assert (conv_bias.lr_mult, conv_bias.decay_mult) == (2, 0)


# --------------------------------------------------------------------------------- oracle


def _corpus_nets() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    from caffe2tf.caffe.load import sniff_kind

    out = []
    for p in sorted(CORPUS.rglob("*")):
        if p.is_file() and p.suffix != ".tsv":
            try:
                if sniff_kind(p) == "net":
                    # strict, with BVLC's schema: only files BVLC Caffe itself reads (a fork's
                    # file is read by its own schema, docs/forks.md)
                    parse_text(p.read_text(), pb.NetParameter(), path=str(p))
                    out.append(p)
            except InputError:
                continue
    return out


@pytest.mark.oracle
def test_upgrade_agrees_with_caffe(caffe_root: Path) -> None:
    from caffe2tf.verify import oracle

    paths = sorted(LEGACY.glob("*.prototxt")) + _corpus_nets()
    assert any("V1" in p.read_text()[:2000] or "layers" in p.read_text() for p in paths)
    refs = oracle.caffe_upgrade_net_texts([p.read_text() for p in paths], root=caffe_root)
    mismatches = []
    for path, ref in zip(paths, refs, strict=True):
        assert not isinstance(ref, oracle.OracleError), f"{path}: {ref}"
        expected = pb.NetParameter()
        parse_text(ref, expected)
        ours = _upgraded(path).message
        if ours.SerializeToString() != expected.SerializeToString():
            mismatches.append(str(path))
    assert mismatches == []
