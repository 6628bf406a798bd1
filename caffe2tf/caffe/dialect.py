"""Which Caffe a prototxt was written for: BVLC Caffe 1.0, NVIDIA Caffe or a known fork, told
from its fields.

NVIDIA Caffe (NVIDIA/caffe, the fork behind DIGITS and NGC) extends BVLC's schema: its
``SolverParameter`` adds warm-up, ``min_lr``, momentum and weight-decay policies, LARC and
precision fields (``NVIDIA/caffe caffe.proto:392-394,429-442,513``), its ``NetParameter`` and
``LayerParameter`` add precision and loss-scaling fields (``:295-318``, ``:607-623``), and
``BatchNormParameter`` a learnable scale and bias (``:1140``). Both schemas are compiled into
``caffe2tf/caffe/_proto`` (NVIDIA's under package ``nvcaffe``, its only change; see
docs/nvidia-caffe.md).

The yolo fork (QiaoXie/caffe-yolo-2 ``2bee16c``, a Caffe of 2016 with YOLO's layers) adds the
``multifixed`` lr policy's ``stagelr``/``stageiter`` (``caffe-yolo-2 caffe.proto:184-186``,
``src/caffe/solvers/sgd_solver.cpp:32-40``) and its detection layers' parameters; compiled
under package ``yolocaffe`` (docs/forks.md).

TSN's fork (yjxiong/caffe ``9831a2b4``, the Caffe of temporal-segment-networks) is an older
Caffe with MPI training: its ``SolverParameter`` has the ``solver_type`` enum only (SGD,
Nesterov, AdaGrad), ``richness`` (cuDNN's workspace, MB) and a repeated ``device_id``
(``yjxiong/caffe caffe.proto:186-213``); its ``BN`` layer has a ``bn_param``
(``yjxiong/caffe caffe.proto:458-472``).

A file is read with the first schema that accepts it strictly, BVLC first, then NVIDIA's, the
yolo fork's and TSN's: a file BVLC's parser accepts is BVLC Caffe, one that only a fork's accepts is
that fork's, and a note names the fields that decided it. With ``lenient`` (``--lenient``) a
file no schema accepts strictly is read with the schema that skips fewer items that can change
training (the earlier one on a tie). No flag picks the dialect: the fields do.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from caffe2tf.caffe.parse import Parsed, parse_text
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

__all__ = [
    "BVLC",
    "DIALECTS",
    "NVIDIA",
    "NVIDIA_LAYER_BLOBS",
    "TSN",
    "TSN_LAYER_BLOBS",
    "YOLO",
    "YOLO_LAYER_BLOBS",
    "Dialect",
    "read_dialect",
]


@dataclass(frozen=True)
class Dialect:
    """One Caffe schema: ``name`` as used in the rule (``"bvlc"``, ``"nvidia"``), the title
    shown in notes, and the generated protobuf module of its ``caffe.proto``."""

    name: str
    title: str
    module: str
    #: the layer types this Caffe registers that BVLC's does not, with their learnable blobs
    layer_blobs: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)
    #: where its schema lives and what its solver translates as (for the detection note)
    about: str = ""
    #: its name in a sentence ("NVIDIA Caffe")
    short: str = "BVLC Caffe"
    #: fields only this fork has (by name, at any depth): a file its schema accepts is its
    #: only when it writes one of them (fast-rcnn's ROIPooling is in TSN's schema too, and
    #: does not make a file TSN's); empty: any file its schema alone accepts
    signature: frozenset[str] = frozenset()

    def pb2(self) -> Any:
        return importlib.import_module(f"caffe2tf.caffe._proto.{self.module}")

    def message(self, kind: str) -> Any:
        """A fresh ``SolverParameter`` (``kind="solver"``) or ``NetParameter`` (``"net"``)."""
        pb2 = self.pb2()
        return pb2.SolverParameter() if kind == "solver" else pb2.NetParameter()


#: Layer types NVIDIA Caffe registers that BVLC Caffe does not (REGISTER_LAYER_CLASS in
#: NVIDIA/caffe src/caffe/layers/), with the learnable blobs each owns: the SSD layers
#: (``Normalize`` learns a channel scale, normalize_layer.cpp), DetectNet's, video data,
#: TensorRT inference.
NVIDIA_LAYER_BLOBS = {
    "AnnotatedData": 0,
    "Axpy": 0,
    "DetectNetTransformation": 0,
    "DetectionEvaluate": 0,
    "DetectionOutput": 0,
    "L1Loss": 0,
    "MultiBoxLoss": 0,
    "Normalize": 1,
    "Permute": 0,
    "PriorBox": 0,
    "SmoothL1Loss": 0,
    "TRT": 0,
    "VideoData": 0,
}

#: The yolo fork's layers (REGISTER_LAYER_CLASS in QiaoXie/caffe-yolo-2
#: src/caffe/layers/box_data_layer.cpp:211, detection_loss_layer.cpp:225,
#: region_loss_layer.cpp:352): a data layer and two losses, none with learnable blobs
#: (its EvalDetection layer is not compiled: eval_detection_layer.cpp_bac).
YOLO_LAYER_BLOBS = {"BoxData": 0, "DetectionLoss": 0, "RegionLoss": 0}

#: TSN's fork (yjxiong/caffe 9831a2b4, REGISTER_LAYER_CLASS/CREATOR in src/caffe/layers/ and
#: layer_factory.cpp:201) adds these to BVLC's: BN and SyncBN own a slope, a bias and two
#: running statistics, each of shape (1, C) (bn_layer.cpp:17-45, sync_bn_layer.cpp:19-42);
#: its Normalize has no blob (unlike SSD's); the others are data, gather/scatter and pooling.
TSN_LAYER_BLOBS = {
    "BN": 4,
    "SyncBN": 4,
    "VideoData": 0,
    "SegData": 0,
    "Gather": 0,
    "Scatter": 0,
    "BatchReduction": 0,
    "ROIPooling": 0,
    "Normalize": 0,
}

BVLC = Dialect("bvlc", "BVLC Caffe 1.0", "caffe_pb2")
NVIDIA = Dialect(
    "nvidia",
    "NVIDIA Caffe 0.17 (NVIDIA/caffe 87a25543)",
    "nvidia_caffe_pb2",
    NVIDIA_LAYER_BLOBS,
    "proto/nvidia_caffe.proto). Its rule is translated as NVIDIA's GPU code runs it "
    "(docs/nvidia-caffe.md)",
    "NVIDIA Caffe",
)
YOLO = Dialect(
    "yolo",
    "the yolo fork of Caffe (QiaoXie/caffe-yolo-2 2bee16c)",
    "yolo_caffe_pb2",
    YOLO_LAYER_BLOBS,
    "proto/yolo_caffe.proto). Its update is BVLC's with the fork's lr policy 'multifixed' "
    "(docs/forks.md)",
    "the yolo fork's Caffe",
    frozenset(
        {
            "stagelr",
            "stageiter",
            "detection_loss_param",
            "region_loss_param",
            "eval_detection_param",
            "side",
            "darknet_version",
        }
    ),
)
TSN = Dialect(
    "tsn",
    "TSN's fork of Caffe (yjxiong/caffe 9831a2b4)",
    "tsn_caffe_pb2",
    TSN_LAYER_BLOBS,
    "proto/tsn_caffe.proto). Its update is BVLC's SGD, Nesterov or AdaGrad; its BN layer "
    "learns a slope and a bias (docs/forks.md)",
    "TSN's Caffe",
    frozenset(
        {
            "richness",
            "group_id",
            "bn_param",
            "video_data_param",
            "seg_data_param",
            "fix_crop",
            "multi_scale",
            "scale_ratios",
            "max_distort",
            "is_flow",
            "more_fix_crop",
        }
    ),
)
DIALECTS = {d.name: d for d in (BVLC, NVIDIA, YOLO, TSN)}
#: the forks, in the order a file BVLC's schema refuses is tried against them
FORKS = (NVIDIA, YOLO, TSN)


def _fields_only_in(message: Any, other: Any, prefix: str = "") -> list[str]:
    """Paths of the fields set in ``message`` (an NVIDIA message) that the BVLC message type
    ``other`` does not declare, depth first (for the note that names them)."""
    out: list[str] = []
    declared = {f.name: f for f in other.DESCRIPTOR.fields}
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.name not in declared:
            out.append(path)
            continue
        if fd.message_type is None:
            continue
        sub_type = declared[fd.name].message_type
        if sub_type is None:
            continue
        sub_other = BVLC.pb2().__dict__.get(sub_type.name)
        if sub_other is None:
            continue
        items = value if fd.is_repeated else [value]
        for i, item in enumerate(items):
            where = f"{path}[{i}]." if fd.is_repeated else f"{path}."
            out.extend(_fields_only_in(item, sub_other(), where))
    return out


def _training_skips(parsed: Parsed) -> int:
    return sum(1 for n in parsed.notes if n.affects_training)


def read_dialect(
    text: str, path: str, kind: str, *, lenient: bool = False
) -> tuple[Parsed, Dialect, tuple[Note, ...]]:
    """Parse ``text`` (a ``kind`` = ``"solver"`` or ``"net"`` prototxt) with the schema it was
    written for (see the module docstring). Returns the parse, its dialect and a note naming
    the fork's fields when the file is a fork's. A file that no schema accepts raises the
    error of the schema that read furthest (the earlier on a tie), unless ``lenient``."""
    try:
        parsed = parse_text(text, BVLC.message(kind), path=path)
    except InputError as bvlc_error:
        errors = [(BVLC, bvlc_error)]
        for fork in FORKS:
            try:
                parsed = parse_text(text, fork.message(kind), path=path)
            except InputError as fork_error:
                errors.append((fork, fork_error))
            else:
                if _signed(parsed, kind, fork):
                    return parsed, fork, (_detected(parsed, kind, fork),)
                errors.append((fork, _unsigned(parsed, fork)))
        if not lenient:
            raise _further(errors) from None
    else:
        values = _nvidia_values(parsed.message) if kind == "solver" else []
        if not values:
            return parsed, BVLC, ()
        return (
            parse_text(text, NVIDIA.message(kind), path=path),
            NVIDIA,
            (_detected(parsed, kind, NVIDIA, values),),
        )
    best = (parse_text(text, BVLC.message(kind), path=path, lenient=True), BVLC)
    for fork in FORKS:
        candidate = parse_text(text, fork.message(kind), path=path, lenient=True)
        if not _signed(candidate, kind, fork):
            continue
        if _training_skips(candidate) < _training_skips(best[0]):
            best = (candidate, fork)
    parsed, dialect = best
    return parsed, dialect, (() if dialect is BVLC else (_detected(parsed, kind, dialect),))


def _signed(parsed: Parsed, kind: str, fork: Dialect) -> bool:
    """Whether ``parsed`` (read with ``fork``'s schema) writes a field of the fork's
    signature (every field BVLC lacks, when the fork has no signature)."""
    if not fork.signature:
        return True
    own = _fields_only_in(parsed.message, BVLC.message(kind))
    return any(_leaf(path) in fork.signature for path in own)


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1].split("[")[0]


def _unsigned(parsed: Parsed, fork: Dialect) -> InputError:
    """Why a file that ``fork``'s schema reads is not taken as the fork's: it writes none of
    its own fields (reported at the file, so a real schema error elsewhere reads further)."""
    return InputError(
        f"{fork.title}'s schema reads it, but it writes none of that fork's own fields",
        SourceLocation(parsed.path),
    )


def _further(errors: list[tuple[Dialect, InputError]]) -> InputError:
    def key(item: tuple[Dialect, InputError]) -> tuple[int, int]:
        loc = item[1].location or SourceLocation("")
        return (loc.line or 0, loc.col or 0)

    dialect, err = max(errors, key=key)  # the first of equals: BVLC's on a tie
    if dialect is BVLC:
        return err
    return InputError(f"{err.message} (read as {dialect.title})", err.location)


#: values BVLC Caffe refuses and NVIDIA Caffe runs: a solver that writes one is NVIDIA's
#: (``regularization_type``: NVIDIA sgd_solver.cu:152-157; ``type: "SAG"``: sag_solver.cpp:140)
_NVIDIA_VALUES = {"regularization_type": ("WD", "L2_unitary"), "type": ("SAG",)}


def _nvidia_values(msg: Any) -> list[str]:
    return [
        f"{name}: {getattr(msg, name)!r}"
        for name, values in _NVIDIA_VALUES.items()
        if getattr(msg, name) in values
    ]


def _detected(parsed: Parsed, kind: str, dialect: Dialect, values: list[str] | None = None) -> Note:
    bvlc_type = BVLC.message(kind)
    fields = values or _fields_only_in(parsed.message, bvlc_type)
    shown = ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
    return Note(
        f"dialect.{dialect.name}",
        f"read as {dialect.title}: "
        + (
            f"BVLC Caffe refuses {shown}, which {dialect.title} runs"
            if values
            else f"BVLC Caffe's schema has no {shown}; its caffe.proto has"
        )
        + f" ({dialect.about}",
        Severity.INFO,
        SourceLocation(parsed.path),
    )
