"""Recipes shaped like the model zoo's (``fixtures/zoo``), run as a Caffe user would from the
repository root: a CaffeNet fed by a Data layer with ``transform_param``, a GoogLeNet whose layer
names hold ``/``, a ResNet with BatchNorm+Scale and Eltwise fed by an ImageData layer. Each is
verified against Caffe's rule and against the real Caffe 1.0 (its data layers become Input
layers of the inferred shapes), converted with Keras-valid layer names, and checked."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

require("tensorflow")

from caffe2tf.cli import cli  # noqa: E402

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[1]
ZOO = ("caffenet", "googlenet", "resnet")


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the solvers name their nets relative to the working directory


def _solver(name: str) -> str:
    return f"fixtures/zoo/{name}/solver.prototxt"


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("against", ["reference", pytest.param("caffe", marks=pytest.mark.oracle)])
def test_zoo_recipe_verifies(name, against):
    code, out = _run(
        "verify", _solver(name), "--steps", "3", "--against", against, "--format", "json"
    )
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    assert data["passed"] and data["comparison"]["deviation"] < 1e-4
    assert {c["component"] for c in data["components"]} >= {"stream", "schedule", "decay"}
    if name == "caffenet":  # a Data layer: 3 channels assumed, the crop from transform_param
        assert data["shapes"]["conv1/0"] == [8, 3, 11, 11]
    if name == "googlenet":  # three mean_values: 3 channels, said by the prototxt
        assert data["shapes"]["conv1/7x7_s2/0"] == [8, 3, 7, 7]
    if name == "resnet":  # ImageData resized to 40x40 and cropped to 32
        assert data["shapes"]["scale_conv1/0"] == [8] and data["shapes"]["fc10/0"] == [10, 16]


def test_assumed_channels_are_named_and_input_shape_overrides_them():
    code, out = _run("verify", _solver("caffenet"), "--steps", "2")
    assert code == 0, out
    code, out = _run("inspect", _solver("caffenet"))
    assert "assumed channels 3 of top 'data'" in out and "--input-shape data=" in out
    code, out = _run(
        "verify", _solver("caffenet"), "--steps", "2", "--format", "json",
        "--input-shape", "data=4,1,67,67",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["shapes"]["conv1/0"] == [8, 1, 11, 11]
    code, out = _run("verify", _solver("caffenet"), "--input-shape", "data=4,x,67")
    assert code == 2 and "expected TOP=N,C,H,W" in out and "Traceback" not in out
    code, out = _run("verify", _solver("caffenet"), "--input-shape", "images=4,3,67,67")
    assert code == 2 and "no layer of the train net" in out and "'images'" in out


def test_googlenet_names_are_mapped_and_the_map_travels(tmp_path):
    out_dir = tmp_path / "out"
    code, out = _run("convert", _solver("googlenet"), "-o", str(out_dir))
    assert code == 0, out
    assert "'conv1/7x7_s2' -> 'conv1_7x7_s2'" in out
    module = (out_dir / "optimizer.py").read_text()
    assert '("conv1_7x7_s2", 0, 1.0, 1.0, True, ("L2", 0.0001), "conv1/7x7_s2")' in module
    config = (out_dir / "train_config.yaml").read_text()
    assert "keras_layer: inception_3a_pool_proj" in config
    # check judges the module written with those names (their map is in its blob table)
    code, out = _run("check", _solver("googlenet"), str(out_dir), "--steps", "2")
    assert code == 0 and "check PASSED" in out, out


def test_layer_map_overrides_the_automatic_names(tmp_path):
    layer_map = tmp_path / "map.yaml"
    layer_map.write_text('"conv1/7x7_s2": stem\n"inception_3a/1x1": i3a_1\n')
    out_dir = tmp_path / "out"
    code, out = _run(
        "convert", _solver("googlenet"), "-o", str(out_dir), "--layer-map", str(layer_map)
    )
    assert code == 0, out
    module = out_dir / "optimizer.py"
    assert '"stem", 0' in module.read_text() and "conv1_7x7_s2" not in module.read_text()
    for extra in ([], ["--layer-map", str(layer_map)]):
        code, out = _run(
            "verify", _solver("googlenet"), "--module", str(module), "--steps", "2", *extra
        )
        assert code == 0, out
    code, out = _run(
        "check", _solver("googlenet"), str(out_dir), "--layer-map", str(layer_map), "--steps", "2"
    )
    assert code == 0, out
    # the automatic module does not bind a model built with the map's names
    auto = tmp_path / "auto"
    assert _run("convert", _solver("googlenet"), "-o", str(auto))[0] == 0
    code, out = _run(
        "verify", _solver("googlenet"), "--module", str(auto / "optimizer.py"), "--steps", "2",
        "--layer-map", str(layer_map),
    )  # fmt: skip
    assert code == 2 and "prepare_model() raised" in out and "'conv1/7x7_s2' blob 0" in out


# ---- the shared corpus of real prototxts (optional: ../shared/corpus or $CAFFE2TF_CORPUS) ----

CORPUS = Path(os.environ.get("CAFFE2TF_CORPUS", REPO.parent / "shared" / "corpus"))

#: corpus train nets whose learnable blobs verify cannot mirror, and why
CORPUS_UNMIRRORED = {
    "alexgkendall__SegNet-Tutorial/Models__segnet_basic_train.prototxt": "SegNet's fork BN layer",
    "rbgirshick__fast-rcnn/models__CaffeNet__train.prototxt": "fc6 after the fork's ROIPooling",
    "rbgirshick__py-faster-rcnn/models__pascal_voc__VGG16__faster_rcnn_end2end__train.prototxt": (
        "fc6 after the fork's ROIPooling"
    ),
    "yjxiong__temporal-segment-networks/models__ucf101__tsn_bn_inception_rgb_train_val.prototxt": (
        "TSN's fork BN layer"
    ),
}


def _corpus_nets() -> list[str]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with open(manifest, newline="") as fh:
        return [r["saved_name"] for r in csv.DictReader(fh, delimiter="\t") if r["kind"] == "net"]


def _generic_solver(tmp_path: Path) -> Path:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" gamma: 0.1 '
        "stepsize: 1000 max_iter: 3000\n"
    )
    return solver


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS} (optional)")
def test_every_corpus_train_net_gets_its_shapes(tmp_path):
    """Every real train net of the corpus, fed by whatever data layer it has, has every
    learnable blob's shape (what the mirror and both rules need), but for the fork layers
    listed in CORPUS_UNMIRRORED."""
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.errors import InputError
    from caffe2tf.verify.mirror import mirror_layers_from_rule

    solver = _generic_solver(tmp_path)
    names = _corpus_nets()
    assert names
    for name in names:
        try:
            pipeline = load_pipeline(solver, net_path=CORPUS / name)
        except InputError:
            pipeline = load_pipeline(solver, net_path=CORPUS / name, lenient=True)
        if name in CORPUS_UNMIRRORED:
            with pytest.raises(InputError, match="cannot be inferred"):
                mirror_layers_from_rule(pipeline.rule)
            continue
        assert all(g.shape is not None for g in pipeline.rule.params), name
        assert mirror_layers_from_rule(pipeline.rule), name


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS} (optional)")
@pytest.mark.parametrize(
    "name",
    [
        "ivancanull__DeepZ-Caffe-Yolo/examples__siamese__mnist_siamese_train_test.prototxt",
        "lnsmith54__super-convergence/architectures__Resnet20Cifar.prototxt",
    ],
)
def test_corpus_train_nets_verify(name, tmp_path):
    code, out = _run(
        "verify", str(_generic_solver(tmp_path)), "--net", str(CORPUS / name), "--steps", "2"
    )
    assert code == 0 and "PASS" in out, out
