"""``layers.cfg`` + ``layer-params.cfg`` -> :class:`ConvNetSpec`: what cuda-convnet reads for
its weight updates, with where each value was written. No meaning is given here (that is
:mod:`caffe2tf.rule.lower_convnet`); cuda-convnet's own parse checks run here once.

Sources (docs/cuda-convnet.md): cuda-convnet2 ``layer.py`` (``WeightLayerParser.add_params``
``:832-861``, ``parse`` ``:944-989``, ``LayerParser.parse_params`` ``:178-197``,
``verify_num_params`` ``:359-365``, ``parse_layers`` ``:306-345``, the schedule parsers
``ParamParser`` ``:82-106`` and ``lrs_parsers`` ``:1534-1537``, the layer types
``layer_parsers``); the original cuda-convnet ``layer.py`` (mirror dnouri/cuda-convnet,
``WeightLayerParser.add_params`` ``:644-656``: ``epsW``/``momW``/``wc`` lists, scalar ``epsB``,
``momB``, no schedules, no ``wball``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from caffe2tf.convnet.cfg import CfgFile, CfgSection, CfgValue, read_cfg
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note

#: layer types with weights: cuda-convnet2 ``layer.py`` FCLayerParser, SplitFCLayerParser,
#: ConvLayerParser, LocalUnsharedLayerParser (all WeightLayerParser subclasses; the original
#: cuda-convnet has all but ``sfc``)
WEIGHT_LAYER_TYPES = ("fc", "sfc", "conv", "local")
#: every layer type either version registers (cuda-convnet2 ``layer.py`` ``layer_parsers``,
#: the original's subset, plus the ``dropout`` layers of later forks of either)
LAYER_TYPES = frozenset(
    {
        *WEIGHT_LAYER_TYPES,
        "data",
        "softmax",
        "eltsum",
        "eltmax",
        "sum",
        "neuron",
        "pool",
        "cmpool",
        "rnorm",
        "cnorm",
        "cmrnorm",
        "nailbed",
        "blur",
        "href",
        "resize",
        "rgb2yuv",
        "rgb2lab",
        "rscale",
        "crop",
        "concat",
        "pass",
        "dropout",
        "dropout2",
        "cost.logreg",
        "cost.crossent",
        "cost.bce",
        "cost.dce",
        "cost.sum2",
    }
)
#: cuda-convnet2's learning-rate schedules and their parameters, in the order its parser
#: demands them (``layer.py:1534-1537``; ``i`` = int, else float)
SCHEDULE_PARAMS = {
    "const": ("base",),
    "linear": ("base", "tgtFactor"),
    "exp": ("base", "tgtFactor"),
    "dexp": ("base", "tgtFactor", "numSteps"),
}
_SCHEDULE = re.compile(r"\s*(?P<kind>\w+)\s*\[(?P<params>[^]]*)\]\s*\Z")


@dataclass(frozen=True)
class Schedule:
    """One ``epsW``/``epsB`` item: a plain number is ``const[base=number]``
    (``convert_scalars_to_schedules``, cuda-convnet2 ``layer.py:847-853``)."""

    kind: str
    params: tuple[tuple[str, float], ...]
    location: SourceLocation | None = field(default=None, compare=False)

    @property
    def base(self) -> float:
        return dict(self.params)["base"]

    def param(self, name: str) -> float:
        return dict(self.params)[name]


@dataclass(frozen=True)
class WeightLayer:
    """A layer with weights: one weight matrix per input, one bias vector.

    The per-input lists (``eps_w``, ``mom_w``, ``wc``, ``wball``, ``weight_source``) have one
    entry per input; a single value written for several inputs is repeated (cuda-convnet2
    ``layer.py:182-195``, ``:359-365``)."""

    name: str
    type: str
    inputs: tuple[str, ...]
    eps_w: tuple[Schedule, ...]
    eps_b: Schedule
    mom_w: tuple[float, ...]
    mom_b: float
    wc: tuple[float, ...]
    wball: tuple[float, ...]
    update_period: int = 0
    weight_source: tuple[str, ...] = ()
    replicas: int = 1
    location: SourceLocation | None = field(default=None, compare=False)
    params_location: SourceLocation | None = field(default=None, compare=False)
    locations: dict[str, SourceLocation] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ConvNetSpec:
    """Both files as cuda-convnet reads them: every layer's ``(name, type)`` in file order,
    the weight layers with their update parameters, the cost layers' ``coeff``."""

    layers_path: str
    params_path: str
    layers: tuple[tuple[str, str], ...]
    weight_layers: tuple[WeightLayer, ...]
    costs: tuple[tuple[str, float], ...] = ()
    notes: tuple[Note, ...] = ()


def _items(value: CfgValue) -> list[tuple[str, SourceLocation]]:
    """A ','-separated list (``safe_get_list``, cuda-convnet2 ``layer.py:122-129``) with the
    place of each item."""
    out = []
    start = 0
    loc = value.location
    for part in value.text.split(","):
        lead = len(part) - len(part.lstrip())
        col = None if loc.col is None else loc.col + start + lead
        out.append((part.strip(), SourceLocation(loc.path, loc.line, col)))
        start += len(part) + 1
    return out


def _float(text: str, loc: SourceLocation, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text[:40]!r}", loc) from None


def _expand(values: list, n: int, name: str, layer: str, loc: SourceLocation) -> list:
    """One value per input, or one value for all (``verify_num_params``, ``:359-365``)."""
    if len(values) == n:
        return values
    if len(values) == 1:
        return values * n
    raise InputError(
        f"layer {layer!r}: {name} has {len(values)} values but the layer has {n} inputs "
        "(give one value, or one per input)",
        loc,
    )


def _schedule(text: str, loc: SourceLocation, layer: str, key: str) -> Schedule:
    try:  # a plain number: const[base=number]
        return Schedule("const", (("base", float(text)),), loc)
    except ValueError:
        pass
    m = _SCHEDULE.match(text)
    kind = m.group("kind").lower() if m else ""
    if m is None or kind not in SCHEDULE_PARAMS:
        raise InputError(
            f"layer {layer!r}: cannot read learning-rate schedule {key}={text[:60]!r} "
            "(a number, or const[base=B], linear[base=B;tgtFactor=F], exp[base=B;tgtFactor=F], "
            "dexp[base=B;tgtFactor=F;numSteps=N])",
            loc,
        )
    want = SCHEDULE_PARAMS[kind]
    parts = [p.split("=", 1) for p in m.group("params").split(";")]
    names = [p[0].strip() for p in parts]
    if [n.lower() for n in names] != [w.lower() for w in want] or any(len(p) != 2 for p in parts):
        raise InputError(
            f"layer {layer!r}: {key} schedule {kind} takes "
            + ";".join(f"{w}=..." for w in want)
            + f" in that order, got [{m.group('params')[:60]}]",
            loc,
        )
    values = []
    for w, (_, v) in zip(want, parts, strict=True):
        if w == "numSteps":
            try:
                values.append((w, float(int(v.strip()))))
            except ValueError:
                raise InputError(
                    f"layer {layer!r}: numSteps must be an integer, got {v.strip()[:40]!r}", loc
                ) from None
        else:
            values.append((w, _float(v.strip(), loc, f"layer {layer!r}: {key} {w}")))
    return Schedule(kind, tuple(values), loc)


def _required(section: CfgSection, key: str, where: str) -> CfgValue:
    v = section.get(key)
    if v is None:
        raise InputError(
            f"layer {section.name!r}: required parameter {key!r} missing in {where}",
            section.location,
        )
    return v


def _weight_layer(
    lsec: CfgSection, ltype: str, psec: CfgSection | None, params_path: str
) -> WeightLayer:
    name = lsec.name
    if psec is None:
        raise InputError(
            f"layer {name!r} of type {ltype!r} has weights but no [{name}] section in "
            f"{params_path} (cuda-convnet requires epsW, epsB, momW, momB there)",
            lsec.location,
        )
    inputs_v = _required(lsec, "inputs", "the layer definition file")
    inputs = tuple(t for t, _ in _items(inputs_v))
    n = len(inputs)
    locs: dict[str, SourceLocation] = {}

    def floats(key: str, default: float | None) -> list[float]:
        v = psec.get(key)
        if v is None:
            if default is None:
                _required(psec, key, params_path)
            return [default] * n  # type: ignore[list-item]
        locs[key] = v.location
        vals = [_float(t, loc, f"layer {name!r}: {key}") for t, loc in _items(v)]
        return _expand(vals, n, key, name, v.location)

    eps_w_v = _required(psec, "epsW", params_path)
    eps_b_v = _required(psec, "epsB", params_path)
    locs["epsW"], locs["epsB"] = eps_w_v.location, eps_b_v.location
    eps_w = _expand(
        [_schedule(t, loc, name, "epsW") for t, loc in _items(eps_w_v)],
        n,
        "epsW",
        name,
        eps_w_v.location,
    )
    eps_b = _schedule(eps_b_v.text, eps_b_v.location, name, "epsB")
    mom_b_v = _required(psec, "momB", params_path)
    locs["momB"] = mom_b_v.location
    mom_b = _float(mom_b_v.text, mom_b_v.location, f"layer {name!r}: momB")
    period_v = psec.get("updatePeriod")
    period = 0
    if period_v is not None:
        locs["updatePeriod"] = period_v.location
        try:
            period = int(period_v.text)
        except ValueError:
            raise InputError(
                f"layer {name!r}: updatePeriod must be an integer", period_v.location
            ) from None
    source_v = lsec.get("weightSource")
    source: tuple[str, ...] = ()
    if source_v is not None:
        locs["weightSource"] = source_v.location
        source = tuple(t for t, _ in _items(source_v))
        if len(source) != n:  # no auto-expansion here (layer.py:957)
            raise InputError(
                f"layer {name!r}: weightSource has {len(source)} entries for {n} inputs",
                source_v.location,
            )
    gpu_v = lsec.get("gpu")
    replicas = len(_items(gpu_v)) if gpu_v is not None else 1
    if gpu_v is not None:
        locs["gpu"] = gpu_v.location
    return WeightLayer(
        name=name,
        type=ltype,
        inputs=inputs,
        eps_w=tuple(eps_w),
        eps_b=eps_b,
        mom_w=tuple(floats("momW", None)),
        mom_b=mom_b,
        wc=tuple(floats("wc", 0.0)),
        wball=tuple(floats("wball", 0.0)),
        update_period=period,
        weight_source=source,
        replicas=replicas,
        location=lsec.location,
        params_location=psec.location,
        locations=locs,
    )


def read_convnet(
    layers_path: str | os.PathLike[str], params_path: str | os.PathLike[str]
) -> ConvNetSpec:
    """Read a layer definition file and its layer parameter file (cuda-convnet2
    ``LayerParser.parse_layers``, ``layer.py:306-345``). Errors: a section without ``type``
    or of an unknown type, a weight layer without its parameter section or a required
    parameter, lists whose length is neither 1 nor the number of inputs, unreadable
    numbers and schedules -- each at its place."""
    layers_cfg: CfgFile = read_cfg(layers_path)
    params_cfg: CfgFile = read_cfg(params_path)
    if not layers_cfg.sections:
        raise InputError(
            "no [layer] sections: not a cuda-convnet layer definition file",
            SourceLocation(layers_cfg.path),
        )
    layers = []
    weights = []
    costs = []
    for sec in layers_cfg.sections:
        t = sec.get("type")
        if t is None:
            raise InputError(f"layer {sec.name!r}: no type given", sec.location)
        if t.text not in LAYER_TYPES:
            raise InputError(f"layer {sec.name!r}: unknown layer type {t.text[:40]!r}", t.location)
        layers.append((sec.name, t.text))
        psec = params_cfg.section(sec.name)
        if t.text in WEIGHT_LAYER_TYPES:
            weights.append(_weight_layer(sec, t.text, psec, params_cfg.path))
        elif t.text.startswith("cost."):
            c = psec.get("coeff") if psec is not None else None
            coeff = 1.0 if c is None else _float(c.text, c.location, f"layer {sec.name!r}: coeff")
            costs.append((sec.name, coeff))
    return ConvNetSpec(
        layers_path=layers_cfg.path,
        params_path=params_cfg.path,
        layers=tuple(layers),
        weight_layers=tuple(weights),
        costs=tuple(costs),
    )


def looks_like_convnet(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` reads like a cuda-convnet ``.cfg`` (its first non-comment line is
    a ``[section]`` header), not a Caffe prototxt."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return False
    for line in head.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        return s.startswith("[")
    return False


__all__ = [
    "LAYER_TYPES",
    "SCHEDULE_PARAMS",
    "WEIGHT_LAYER_TYPES",
    "ConvNetSpec",
    "Schedule",
    "WeightLayer",
    "looks_like_convnet",
    "read_convnet",
]
