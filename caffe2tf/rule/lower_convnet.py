"""cuda-convnet / cuda-convnet2 layer files -> :class:`~caffe2tf.rule.model.UpdateRule`.

What both versions do with one weight matrix or bias vector (docs/cuda-convnet.md#update):

1. the backward pass writes ``grad = (scale / numCases) * sum_n dC_n/dW`` where C is the
   *negated* cost (``kLogregCostGrad``, ``layer_kernels.cu:260-276``, writes the gradient of
   ``+coeff * log p_label``) and numCases the
   minibatch size: cuda-convnet2 ``layer.cu:848-856`` (``getGradScale``: ``1/numCases`` on the
   ``useGrad`` path, ``eps/numCases`` when the gradient goes straight into the increment),
   ``:870-873`` (biases: ``1/numCases``); original cuda-convnet ``layer.cu:384-401`` (FC:
   ``eps/numCases`` into the increment, ``momW`` as the increment's scale on the first pass);
2. the increment and the weights, cuda-convnet2 ``weights.cu:286-311`` (``useGrad``:
   ``inc = momW*inc + eps*grad - wc*eps*w``, one ``WeightedAdd``, ``nvmatrix_operators.cuh:
   472-480``) and ``:332-336`` (otherwise ``inc`` already holds ``momW*inc + eps*grad``; then
   ``inc -= wc*eps*w``); original ``weights.cuh:150-162``; then ``w += inc``;
3. a blob whose base eps is not > 0 (0, negative, NaN) is never updated (``weights.cu:328``,
   ``weights.cuh:152``): it becomes ``lr_mult`` 0;
   biases are never decayed (``layer.cu:743``: ``wc = 0`` for the bias).

With ``h = -inc`` and ``g`` the gradient of the mean (not summed) loss, that is Caffe's SGD:
``h = mu_p*h + eps_p*(g + wc_p*w); w -= h`` -- so the rule is Caffe's steps with
``weight_decay = 1`` and ``decay_mult = wc_p``, a fixed rate of 1 with ``lr_mult = eps_p``, and
the per-blob momentum ``mu_p`` on :class:`ParamGroup` (the Momentum step's own momentum is
used where every blob has the same one).

Blob keys: weight matrix i of layer L is ``L/0`` for i = 0 and ``L.in<i>/0`` for i >= 1 (a
Keras layer of its own, e.g. ``Dense(use_bias=False)`` on input i whose output is added), the
bias is ``L/1``.
"""

from __future__ import annotations

from dataclasses import replace

from caffe2tf.convnet.spec import ConvNetSpec, Schedule, WeightLayer
from caffe2tf.errors import SourceLocation
from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import AddDecay, LrSchedule, Momentum, ParamGroup, ScaleByLr, UpdateRule

#: cuda-convnet layer type -> the Caffe type whose Keras layers hold its weights
#: (caffe2tf/targets/keras/layers.py): fc/sfc -> Dense, conv -> Conv2D, local -> a locally
#: connected layer with ``kernel``/``bias`` variables
CAFFE_TYPE_OF_CONVNET = {
    "fc": "InnerProduct",
    "sfc": "InnerProduct",
    "conv": "Convolution",
    "local": "LocallyConnected",
}


def weight_key(layer: str, index: int) -> str:
    """The rule key of weight matrix ``index`` of ``layer`` (see the module docstring)."""
    return f"{layer}/0" if index == 0 else f"{layer}.in{index}/0"


def _note(
    code: str,
    message: str,
    exactness: Exactness,
    where: SourceLocation | None = None,
    sev: Severity = Severity.INFO,
) -> Note:
    return Note(
        code=f"convnet.{code}",
        message=message,
        severity=sev,
        location=where,
        affects_training=exactness is not Exactness.EXACT,
        exactness=exactness,
    )


def _unsupported(code: str, message: str, where: SourceLocation | None = None) -> Note:
    return _note(code, message, Exactness.UNSUPPORTED, where, Severity.ERROR)


def _schedule_notes(layer: WeightLayer, key: str, s: Schedule) -> list[Note]:
    """A schedule other than ``const`` becomes its base rate, an APPROX note that says for how
    long that is exact: cuda-convnet2 evaluates the schedule at the training progress
    ``p = (data batches done - 1) / (epochs x training batches)`` (``gpumodel.py:184-185``,
    ``:293-295``), once per data batch (``convnet.py:46-48``); ``lr.cu:66-113``: ``linear``
    and ``exp`` leave the base rate as soon as p > 0, ``dexp`` keeps it while
    p <= 1/numSteps."""
    if s.kind == "const":
        return []
    if s.kind == "dexp":
        n = int(s.param("numSteps"))
        window = (
            f"exact while the progress p <= 1/{n}, i.e. for the first {n}th of the data "
            "batches of the whole run"
            if n > 1
            else "never exact (one step: the rate is base/tgtFactor throughout)"
        )
    else:
        window = "exact only for the first data batch (p = 0)"
    return [
        _note(
            "schedule",
            f"layer {layer.name!r}: {key} {s.kind}[...] follows cuda-convnet2's training "
            "progress p = (data batches done - 1) / (epochs x training batches), set once per "
            "data batch (gpumodel.py:184-185, :293-295; lr.cu:66-113), which depends on "
            "--epochs and the data provider, not on these files: the base rate "
            f"{s.base:g} is used throughout ({window}); convert each stage with a constant "
            "rate for an exact port",
            Exactness.APPROX,
            s.location,
            Severity.WARNING,
        )
    ]


def _layer_notes(layer: WeightLayer) -> list[Note]:
    notes: list[Note] = []
    for i, s in enumerate(layer.eps_w):
        notes += _schedule_notes(layer, f"epsW[{i}]", s)
    notes += _schedule_notes(layer, "epsB", layer.eps_b)
    if any(b > 0 for b in layer.wball):
        notes.append(
            _unsupported(
                "wball",
                f"layer {layer.name!r}: wball {', '.join(map(str, layer.wball))} rescales "
                "every filter (column) to that norm after each update (cuda-convnet2 "
                "layer.cu:923-933, :1126-1134, HardWeightConstraintOperator layer_kernels.cuh:"
                "49-58), a projection no optimizer step here performs",
                layer.locations.get("wball"),
            )
        )
    if layer.update_period > 1:
        notes.append(
            _unsupported(
                "update_period",
                f"layer {layer.name!r}: updatePeriod {layer.update_period} updates this "
                "layer every few passes with its own gradient scale (layer.cu:800-808, "
                ":848-856)",
                layer.locations.get("updatePeriod"),
            )
        )
    if any(layer.weight_source):
        notes.append(
            _unsupported(
                "weight_source",
                f"layer {layer.name!r}: weightSource shares a weight matrix, updated by its "
                "owner's momW and wc with each user's own epsW (weights.cu:105-108, "
                "layer.cu:733-738)",
                layer.locations.get("weightSource"),
            )
        )
    if layer.replicas > 1:
        notes.append(
            _note(
                "replicas",
                f"layer {layer.name!r} runs on {layer.replicas} GPUs (gpu=...): cuda-convnet2 "
                "reduces the replicas' gradients into one increment (weights.cu:277-318); "
                "this summation has not been checked against one device here",
                Exactness.APPROX,
                layer.locations.get("gpu"),
                Severity.WARNING,
            )
        )
    return notes


def lower_convnet(spec: ConvNetSpec) -> UpdateRule:
    """The :class:`UpdateRule` of a cuda-convnet net (see the module docstring)."""
    groups: list[ParamGroup] = []
    notes: list[Note] = []
    extra_inputs: dict[str, list[str]] = {}  # layer -> its "L.in<i>" Keras layers
    for layer in spec.weight_layers:
        notes += _layer_notes(layer)
        caffe_type = CAFFE_TYPE_OF_CONVNET[layer.type]
        for i, (eps, mom, wc) in enumerate(zip(layer.eps_w, layer.mom_w, layer.wc, strict=True)):
            key = weight_key(layer.name, i)
            if i:
                extra_inputs.setdefault(layer.name, []).append(key.rpartition("/")[0])
            groups.append(
                ParamGroup(
                    key=key,
                    lr_mult=eps.base,
                    # a negative wc is never applied (weights.cu:289, :333: "if (_wc > 0)")
                    decay_mult=wc if wc > 0 else 0.0,
                    layer_type=caffe_type,
                    momentum=mom,
                    location=layer.locations.get("epsW"),
                )
            )
        groups.append(
            ParamGroup(
                key=f"{layer.name}/1",
                lr_mult=layer.eps_b.base,
                decay_mult=0.0,
                layer_type=caffe_type,
                momentum=layer.mom_b,
                location=layer.locations.get("epsB"),
            )
        )
    frozen = [g for g in groups if not g.lr_mult > 0]
    if frozen:  # weights.cu:328: a blob is updated only when its base eps is > 0
        groups = [g if g.lr_mult > 0 else replace(g, lr_mult=0.0) for g in groups]
        notes.append(
            _note(
                "frozen",
                f"{len(frozen)} blob(s) with eps <= 0 (or NaN) are never updated by "
                "cuda-convnet (weights.cu:328 updates only when the base eps is > 0): lr_mult 0, "
                "trainable False: " + ", ".join(g.key for g in frozen[:10]),
                Exactness.EXACT,
            )
        )
    momenta = {g.momentum for g in groups}
    shared = momenta.pop() if len(momenta) == 1 else None
    if shared is not None:  # one momentum for every blob: the step holds it, as in Caffe
        groups = [replace(g, momentum=None) for g in groups]
    first = shared if shared is not None else (groups[0].momentum if groups else 0.0)
    for name, coeff in spec.costs:
        notes.append(
            _note(
                "loss",
                f"cost layer {name!r} (coeff {coeff:g}): cuda-convnet scales each weight "
                "gradient by eps/minibatch size (layer.cu:848-856), i.e. it trains on the "
                "MEAN over the minibatch of coeff x the per-case cost: use a mean-reduced "
                "Keras loss (the default 'sum_over_batch_size') times coeff, not a sum",
                Exactness.EXACT,
            )
        )
    notes.append(
        _note(
            "rule",
            "cuda-convnet's update h = momW*h + epsW*(g + wc*w), w -= h (biases: momB, epsB, "
            "no decay) is Caffe's SGD with base_lr 1, lr_mult = eps, weight_decay 1, "
            "decay_mult = wc and a momentum per blob (docs/cuda-convnet.md)",
            Exactness.EXACT,
        )
    )
    layers = tuple(x for name, _ in spec.layers for x in (name, *extra_inputs.get(name, ())))
    return UpdateRule(
        solver="SGD",
        steps=(
            AddDecay("L2", 1.0),
            ScaleByLr(LrSchedule("fixed", 1.0)),
            Momentum(first if first is not None else 0.0),
        ),
        params=tuple(groups),
        notes=tuple(notes),
        net_known=True,
        layers=layers,
        dialect="cuda-convnet",
    )


__all__ = ["CAFFE_TYPE_OF_CONVNET", "lower_convnet", "weight_key"]
