"""Tests for our own copy of Caffe's schema (proto/caffe.proto -> caffe2tf.caffe._proto.caffe_pb2).

Three kinds of check:

* staleness: regenerating with the pinned generator reproduces the committed module byte for byte;
* oracle: every message and enum of Debian's python3-caffe ``caffe_pb2`` (Caffe 1.0, BVLC master
  of 2018-08-21) matches ours exactly — names, numbers, types, labels, defaults, packing,
  nesting, enum values;
* spot checks of defaults and field numbers stated in BVLC ``src/caffe/proto/caffe.proto``
  (SolverParameter ``delta`` = 1e-8 at field 31, ``momentum2`` = 0.999, ``rms_decay`` = 0.99,
  ``type`` = "SGD", ``regularization_type`` = "L2", ``clip_gradients`` = -1, ``iter_size`` = 1;
  ParamSpec ``lr_mult``/``decay_mult`` = 1; V1LayerParameter ``blobs_lr`` = 7 and
  ``weight_decay`` = 8; V0LayerParameter ``blobs_lr`` = 51).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

from caffe2tf.caffe._proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = "/var/cache/caffe2tf/bullseye-root"
DEBIAN_PB2 = "usr/lib/python3/dist-packages/caffe/proto/caffe_pb2.py"


def _skip_or_fail(reason: str) -> None:
    """Skip locally; under CI=true a missing prerequisite is a failure (see conftest.need)."""
    need(False, reason)


def _load_regen():
    path = REPO / "scripts" / "regen_proto.py"
    spec = importlib.util.spec_from_file_location("regen_proto", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ staleness


def test_generated_module_is_fresh():
    regen = _load_regen()
    try:
        fresh = regen.generate()
    except regen.GeneratorUnavailable as exc:
        _skip_or_fail(f"cannot regenerate caffe_pb2.py: {exc}")
    committed = regen.OUTPUT.read_bytes()
    assert fresh == committed, (
        "caffe2tf/caffe/_proto/caffe_pb2.py is stale; run python scripts/regen_proto.py"
    )


def test_gencode_targets_the_runtime_floor():
    """The gencode's declared protobuf version must equal the lowest runtime we allow, so that
    runtime_version.ValidateProtobufRuntimeVersion accepts it on the whole supported range."""
    text = (REPO / "caffe2tf" / "caffe" / "_proto" / "caffe_pb2.py").read_text()
    declared = re.search(r"^# Protobuf Python Version: (\S+)$", text, re.M)
    assert declared, "generated module does not state its protobuf gencode version"
    floor = re.search(r'"protobuf\s*>=\s*([0-9.]+)', (REPO / "pyproject.toml").read_text())
    assert floor, "no protobuf>=X requirement in pyproject.toml"
    assert declared.group(1) == floor.group(1)


def test_import_is_light():
    """Importing the bindings must not drag in TensorFlow/Keras/numpy (cold CLI budget)."""
    code = (
        "import sys\n"
        "from caffe2tf.caffe._proto import caffe_pb2\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert proc.stderr.strip() == "", proc.stderr


# ------------------------------------------------------------------------------ oracle
#
# DUMP_SRC runs unchanged under our Python (protobuf 6/7) and the root's python3.9
# (protobuf 3.12). Defaults are normalised so that the same value compares equal whatever
# text protoc used for it (protoc 31 writes float 1e-8 as "9.99999994e-09").

DUMP_SRC = r"""
import json, struct

_LABELS = {1: "optional", 2: "required", 3: "repeated"}


def _label(f):
    if hasattr(f, "is_repeated"):  # protobuf >= 6 (label() is deprecated there)
        return "repeated" if f.is_repeated else "required" if f.is_required else "optional"
    return _LABELS[f.label]  # protobuf 3.12 inside the Caffe root


def _default(f):
    if not f.has_default_value:
        return None
    v = f.default_value
    if f.type == f.TYPE_ENUM:
        return f.enum_type.values_by_number[v].name
    if f.type == f.TYPE_FLOAT:
        return repr(struct.unpack("<f", struct.pack("<f", v))[0])
    if f.type == f.TYPE_DOUBLE:
        return repr(float(v))
    if f.type == f.TYPE_BYTES:
        return v.hex()
    if f.type == f.TYPE_BOOL:
        return bool(v)
    return v


def _enum(e):
    return {"values": [[v.name, v.number] for v in e.values]}


def _message(m):
    return {
        "fields": [
            {
                "name": f.name,
                "number": f.number,
                "type": f.type,
                "label": _label(f),
                "default": _default(f),
                "type_name": (f.message_type.full_name if f.message_type is not None
                              else f.enum_type.full_name if f.enum_type is not None else None),
                "packed": bool(f.GetOptions().packed),
                "oneof": f.containing_oneof.name if f.containing_oneof is not None else None,
            }
            for f in m.fields
        ],
        "nested": sorted(n.full_name for n in m.nested_types),
        "enums": sorted(e.full_name for e in m.enum_types),
        "extension_ranges": [list(r) for r in m.extension_ranges],
        "extensions": sorted(x.full_name for x in m.extensions),
    }


def dump(module):
    from google.protobuf import descriptor_pb2

    fd = module.DESCRIPTOR
    # FileDescriptor.syntax is gone in protobuf 7; the serialized file proto has it on both
    # sides (empty means proto2).
    syntax = descriptor_pb2.FileDescriptorProto.FromString(fd.serialized_pb).syntax or "proto2"
    out = {"file": {"package": fd.package, "syntax": syntax,
                    "messages": [m.full_name for m in fd.message_types_by_name.values()],
                    "enums": [e.full_name for e in fd.enum_types_by_name.values()],
                    "extensions": sorted(fd.extensions_by_name)},
           "messages": {}, "enums": {}}

    def walk(m):
        out["messages"][m.full_name] = _message(m)
        for e in m.enum_types:
            out["enums"][e.full_name] = _enum(e)
        for n in m.nested_types:
            walk(n)

    for m in fd.message_types_by_name.values():
        walk(m)
    for e in fd.enum_types_by_name.values():
        out["enums"][e.full_name] = _enum(e)
    return out
"""


def _dump_ours() -> dict:
    ns: dict = {}
    exec(DUMP_SRC, ns)  # noqa: S102 - our own fixed source, shared with the chroot side
    # Round-trip through JSON so both sides are compared in the same representation.
    return json.loads(json.dumps(ns["dump"](caffe_pb2)))


@pytest.fixture(scope="module")
def debian_root(request) -> Path:
    """The Caffe root: tests/conftest.py's ``caffe_root`` fixture if it exists, else
    $CAFFE2TF_CAFFE_ROOT or the default path; skip when absent (fail under CI=true)."""
    try:
        root = request.getfixturevalue("caffe_root")
    except pytest.FixtureLookupError:
        root = os.environ.get("CAFFE2TF_CAFFE_ROOT") or DEFAULT_ROOT
    root = Path(root)
    if not (root / DEBIAN_PB2).is_file():
        _skip_or_fail(f"no Debian Caffe root with python3-caffe at {root}")
    return root


@pytest.fixture(scope="module")
def debian_dump(debian_root: Path) -> dict:
    code = DUMP_SRC + ("\nimport caffe.proto.caffe_pb2 as _m\nprint(json.dumps(dump(_m)))\n")
    proc = subprocess.run(
        ["chroot", str(debian_root), "/usr/bin/python3", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        hint = " (chroot needs root privileges)" if os.geteuid() != 0 else ""
        pytest.fail(f"dumping Debian's caffe_pb2 failed{hint}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


@pytest.mark.oracle
def test_schema_equals_debian_caffe(debian_dump: dict):
    ours = _dump_ours()
    theirs = debian_dump
    assert len(theirs["messages"]) > 60  # sanity: the dump really walked Caffe's schema
    assert ours["file"] == theirs["file"]
    missing = sorted(set(theirs["messages"]) - set(ours["messages"]))
    extra = sorted(set(ours["messages"]) - set(theirs["messages"]))
    assert not missing and not extra, f"missing messages {missing}, extra messages {extra}"
    for name, msg in theirs["messages"].items():
        assert ours["messages"][name] == msg, f"message {name} differs"
    assert ours["enums"] == theirs["enums"]


@pytest.mark.oracle
def test_debian_reads_what_we_write(debian_root: Path):
    """Wire compatibility in both directions on a message touching nested, packed, enum and
    legacy fields: Caffe parses our bytes into the same text form we print."""
    net = caffe_pb2.NetParameter(name="n", force_backward=True)
    net.input_shape.add(dim=[2, 3, 5, 7])
    layer = net.layer.add(name="c", type="Convolution", bottom=["data"], top=["c"])
    layer.param.add(lr_mult=2, decay_mult=0)
    layer.convolution_param.num_output = 4
    layer.convolution_param.kernel_size.extend([3, 1])
    layer.convolution_param.engine = caffe_pb2.ConvolutionParameter.CAFFE
    layer.blobs.add(data=[1.5, -2.0], shape=caffe_pb2.BlobShape(dim=[2]))
    v1 = net.layers.add(name="old", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    v1.blobs_lr.extend([1, 2])
    v1.layer.blobs_lr.append(3)
    code = (
        "import sys\nfrom google.protobuf import text_format\n"
        "import caffe.proto.caffe_pb2 as p\n"
        "m = p.NetParameter()\nm.ParseFromString(sys.stdin.buffer.read())\n"
        "sys.stdout.write(text_format.MessageToString(m))\n"
    )
    proc = subprocess.run(
        ["chroot", str(debian_root), "/usr/bin/python3", "-c", code],
        input=net.SerializeToString(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    from google.protobuf import text_format

    back = caffe_pb2.NetParameter()
    text_format.Parse(proc.stdout.decode(), back)
    assert back == net


# ------------------------------------------------------------------------------ spot checks


def _field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


def test_solver_parameter_defaults():
    s = caffe_pb2.SolverParameter()
    assert s.delta == pytest.approx(1e-8, rel=1e-6)
    assert _field(s, "delta").number == 31
    assert s.momentum2 == pytest.approx(0.999, rel=1e-6)
    assert s.rms_decay == pytest.approx(0.99, rel=1e-6)
    assert s.type == "SGD"
    assert s.regularization_type == "L2"
    assert s.clip_gradients == -1
    assert s.iter_size == 1
    assert s.average_loss == 1
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU
    assert s.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert s.random_seed == -1
    # Hyper-parameters without a default must stay unset-able (presence matters to Caffe).
    for name in ("base_lr", "momentum", "weight_decay", "gamma", "power", "lr_policy"):
        assert not _field(s, name).has_default_value, name
        assert not s.HasField(name)


def test_param_spec_and_legacy_numbers():
    p = caffe_pb2.ParamSpec()
    assert (p.lr_mult, p.decay_mult) == (1.0, 1.0)
    assert _field(caffe_pb2.V1LayerParameter, "blobs_lr").number == 7
    assert _field(caffe_pb2.V1LayerParameter, "weight_decay").number == 8
    assert _field(caffe_pb2.V0LayerParameter, "blobs_lr").number == 51
    assert _field(caffe_pb2.V0LayerParameter, "weight_decay").number == 52
    assert _field(caffe_pb2.NetParameter, "layer").number == 100
    assert _field(caffe_pb2.NetParameter, "layers").number == 2
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST


def test_every_layer_parameter_message_is_reachable():
    """Each *Parameter message is referenced by LayerParameter or a legacy layer message."""
    referenced = set()
    for msg in (
        caffe_pb2.LayerParameter,
        caffe_pb2.V1LayerParameter,
        caffe_pb2.V0LayerParameter,
        caffe_pb2.SolverParameter,
        caffe_pb2.NetParameter,
    ):
        for f in msg.DESCRIPTOR.fields:
            if f.message_type is not None:
                referenced.add(f.message_type.name)
    params = {n for n in caffe_pb2.DESCRIPTOR.message_types_by_name if n.endswith("Parameter")}
    assert params - referenced == {"SolverParameter"}


def test_text_format_solver_roundtrip():
    from google.protobuf import text_format

    text = (
        'net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "step"\nstepsize: 100\n'
        'type: "Adam"\nmomentum: 0.9\nmomentum2: 0.99\ndelta: 1e-6\nsolver_mode: CPU\n'
    )
    s = text_format.Parse(text, caffe_pb2.SolverParameter())
    assert s.type == "Adam" and s.stepsize == 100
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU
    assert s.HasField("momentum2") and not s.HasField("rms_decay")
    assert text_format.Parse(text_format.MessageToString(s), caffe_pb2.SolverParameter()) == s
