#!/usr/bin/env python3
"""Regenerate caffe2tf/caffe/_proto/caffe_pb2.py from proto/caffe.proto (and the NVIDIA Caffe
dialect's nvidia_caffe_pb2.py from proto/nvidia_caffe.proto, NVIDIA's schema in package nvcaffe,
the yolo fork's yolo_caffe_pb2.py from proto/yolo_caffe.proto, package yolocaffe, and TSN's
fork's tsn_caffe_pb2.py from proto/tsn_caffe.proto, package tsncaffe).

    python scripts/regen_proto.py          # (re)write the generated module
    python scripts/regen_proto.py --check  # exit 1 if the committed module is stale

The generator is the protoc bundled in grpcio-tools (dev extra, pinned). Every
grpcio-tools release from 1.74 to 1.80 bundles protoc 31.1, whose gencode declares
protobuf 6.31.1: that is the floor of our runtime range (protobuf >=6.31.1,<8), and
runtime_version.ValidateProtobufRuntimeVersion accepts it silently on every 6.31+ and
7.x runtime (it only rejects runtimes *older* than the gencode). Newer grpcio-tools
(1.85+, protoc 35) emit 7.35 gencode, which 6.x runtimes refuse to load.

protoc output is a pure function of its version and the .proto bytes, so the result is
deterministic; the version is checked so that a different protoc cannot silently churn
the committed file. Exit codes: 0 ok, 1 stale (--check), 2 generator unusable.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_NAME = "caffe.proto"
OUTPUT = ROOT / "caffe2tf" / "caffe" / "_proto" / "caffe_pb2.py"
#: every (proto file, generated module) pair this script keeps fresh
OUTPUTS = (
    (PROTO_NAME, OUTPUT),
    ("nvidia_caffe.proto", ROOT / "caffe2tf" / "caffe" / "_proto" / "nvidia_caffe_pb2.py"),
    ("yolo_caffe.proto", ROOT / "caffe2tf" / "caffe" / "_proto" / "yolo_caffe_pb2.py"),
    ("tsn_caffe.proto", ROOT / "caffe2tf" / "caffe" / "_proto" / "tsn_caffe_pb2.py"),
)
EXPECTED_PROTOC = "libprotoc 31.1"


class GeneratorUnavailable(RuntimeError):
    """grpcio-tools is missing or bundles a protoc other than EXPECTED_PROTOC."""


def _protoc(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def protoc_version() -> str:
    """The bundled protoc's `--version` line; raises GeneratorUnavailable if absent."""
    try:
        import grpc_tools  # noqa: F401
    except ImportError as exc:
        raise GeneratorUnavailable(
            "grpcio-tools is not installed (pip install -e '.[dev]')"
        ) from exc
    proc = _protoc(["--version"])
    if proc.returncode != 0:
        raise GeneratorUnavailable(f"grpc_tools.protoc --version failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def generate(proto_name: str = PROTO_NAME) -> bytes:
    """Run the pinned protoc on proto/<proto_name> and return the generated module's bytes."""
    version = protoc_version()
    if version != EXPECTED_PROTOC:
        raise GeneratorUnavailable(
            f"grpc_tools bundles {version!r}, need {EXPECTED_PROTOC!r} "
            "(install the grpcio-tools version pinned in pyproject.toml's dev extra)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        proc = _protoc([f"-I{PROTO_DIR}", f"--python_out={tmp}", str(PROTO_DIR / proto_name)])
        if proc.returncode != 0:
            raise GeneratorUnavailable(f"protoc failed:\n{proc.stderr}")
        return (Path(tmp) / proto_name.replace(".proto", "_pb2.py")).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed module is stale"
    )
    ns = parser.parse_args(argv)
    status = 0
    for proto_name, output in OUTPUTS:
        try:
            fresh = generate(proto_name)
        except GeneratorUnavailable as exc:
            print(f"regen_proto: {exc}", file=sys.stderr)
            return 2
        current = output.read_bytes() if output.exists() else None
        rel = output.relative_to(ROOT)
        if ns.check:
            if current != fresh:
                print(
                    f"regen_proto: {rel} is stale; run python scripts/regen_proto.py",
                    file=sys.stderr,
                )
                status = 1
            else:
                print(f"regen_proto: {rel} is up to date")
        elif current == fresh:
            print(f"regen_proto: {rel} already up to date")
        else:
            output.write_bytes(fresh)
            print(f"regen_proto: wrote {rel}")
    return status


if __name__ == "__main__":
    sys.exit(main())
