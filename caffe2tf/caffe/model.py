"""The data the Caffe front end hands to the rest of caffe2tf (frozen, no behaviour).

Every float hyper-parameter is the float32-rounded value Caffe really uses (caffe.proto declares
them ``float``), stored as a Python float: ``momentum: 0.9`` is 0.8999999761581421 here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caffe2tf.errors import SourceLocation
from caffe2tf.notes import Note


@dataclass(frozen=True)
class SolverSpec:
    """A solver after Caffe's upgrade (``solver_type`` -> ``type``) and validity checks.

    ``defaulted`` names the fields that were absent in the file and took caffe.proto's default.
    ``message`` is the upgraded ``SolverParameter`` protobuf (for display; treat as read-only).
    ``net_path`` is the resolved path of ``net``/``train_net`` (None when inline or missing).
    """

    path: str
    type: str
    base_lr: float
    lr_policy: str
    gamma: float
    power: float
    stepsize: int
    stepvalue: tuple[int, ...]
    max_iter: int
    momentum: float
    momentum2: float
    delta: float
    rms_decay: float
    weight_decay: float
    regularization_type: str
    clip_gradients: float
    iter_size: int
    net_path: str | None = None
    #: ``"bvlc"``, ``"nvidia"`` or ``"yolo"`` (:mod:`caffe2tf.caffe.dialect`): whose code runs
    #: this recipe
    dialect: str = "bvlc"
    # NVIDIA Caffe's solver fields (NVIDIA/caffe caffe.proto:392-394,429-442), with its defaults
    # when absent or when the file is BVLC's (the rule reads them only for dialect "nvidia")
    rampup_interval: int = 0
    rampup_lr: float = 0.0
    min_lr: float = 0.0
    momentum_policy: str = "fixed"
    max_momentum: float = 0.9900000095367432
    has_max_momentum: bool = False
    momentum_power: float = 1.0
    larc: bool = False
    larc_policy: str = "scale"
    larc_eta: float = 0.0010000000474974513
    larc_turbo: bool = False
    weight_decay_policy: str = "fixed"
    weight_decay_power: float = 1.0
    max_weight_decay: float = 0.0
    # the yolo fork's lr_policy "multifixed" (caffe-yolo-2 caffe.proto:184-186): stage rates and
    # the last iteration of each stage (the rule reads them only for that policy)
    stagelr: tuple[float, ...] = ()
    stageiter: tuple[int, ...] = ()
    defaulted: frozenset[str] = frozenset()
    locations: dict[str, SourceLocation] = field(default_factory=dict, compare=False)
    message: Any = field(default=None, compare=False, repr=False)
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True)
class ParamBlob:
    """One learnable blob *owner* of the train net, in Caffe's ``learnable_params_`` order.

    ``key`` is ``"{layer}/{index}"`` (the layer that owns it and the blob index within that
    layer). ``sharers`` lists the keys of other layers' blobs that alias this one through a
    shared ``param { name: ... }``. ``shape`` is None when it cannot be inferred.
    ``lr_mult_explicit``/``decay_mult_explicit`` record whether the prototxt set them
    (Caffe's ``has_params_lr_``/``has_params_decay_``).
    """

    key: str
    layer: str
    layer_type: str
    index: int
    shape: tuple[int, ...] | None
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    share_name: str = ""
    sharers: tuple[str, ...] = ()
    lr_mult_explicit: bool = False
    decay_mult_explicit: bool = False
    location: SourceLocation | None = None


@dataclass(frozen=True)
class LayerInfo:
    """A layer of the TRAIN-phase net (after include/exclude rules)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    location: SourceLocation | None = None


@dataclass(frozen=True)
class DataFeed:
    """A layer that brings data into the TRAIN-phase net (``caffe2tf.caffe.shapes.
    feeds_the_net``) and the shapes its tops are taken to have: what the prototxt says,
    ``--input-shape``, else the conventional values (see the net's ``net.shape_assumed``
    notes). The real-Caffe oracle builds the net with Input layers of these shapes."""

    layer: str
    type: str
    tops: tuple[str, ...]
    shapes: tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True)
class NetSpec:
    """The TRAIN-phase net: its layers and learnable params (owners only, Caffe order)."""

    path: str
    name: str
    layers: tuple[LayerInfo, ...]
    params: tuple[ParamBlob, ...]
    legacy_format: str = "V2"  # "V0", "V1" or "V2": what the file was before upgrading
    message: Any = field(default=None, compare=False, repr=False)
    notes: tuple[Note, ...] = ()
    dialect: str = "bvlc"  # the schema the file was read with (caffe2tf.caffe.dialect)
    feeds: tuple[DataFeed, ...] = ()  # the data layers and their top shapes

    def param(self, key: str) -> ParamBlob:
        for blob in self.params:
            if blob.key == key:
                return blob
        raise KeyError(key)


@dataclass(frozen=True)
class Recipe:
    """A solver and (when found) its train net: the input of :func:`caffe2tf.rule.lower`."""

    solver: SolverSpec
    net: NetSpec | None
    notes: tuple[Note, ...] = ()
