"""UpdateRule -> KerasPlan: which Keras 3 objects reproduce Caffe's update, and why.

Pure data, no Keras import. Three routes (target-semantics.md §10):

* ``builtin``: one Keras optimizer (SGD / Nesterov SGD / Adam / Adadelta, or Adam(beta_1=0)
  with a correcting schedule for RMSProp), a Keras schedule, and Caffe's weight decay as
  per-variable regularizers (``L2(weight_decay*decay_mult/2)``: Keras' L2 has no 1/2).
* ``multi``: the same, inside ``keras.optimizers.MultiOptimizer`` with one sub-optimizer per
  distinct ``lr_mult`` whose schedule is scaled by it (exact for every solver: the local rate
  multiplies the whole step in Caffe, ``sgd_solver.cpp:228``).
* ``custom``: :class:`~caffe2tf.targets.keras.runtime.CaffeOptimizer`, used where no built-in is
  exact: AdaGrad (Keras puts epsilon inside the root and starts at 0.1), any
  ``clip_gradients`` (Keras clips the regularized gradient; MultiOptimizer clips per group;
  ``global_clipnorm`` multiplies unclipped gradients by c*(1/c), which is not always 1 in
  float32), ``iter_size > 1`` (Keras averages before clipping and evaluates the schedule per
  micro-step) and L1 decay (the JAX backend differentiates |w| at 0 as 1, Caffe uses 0).
  The decay then happens inside the optimizer, after the clip, and the model carries no
  regularizers.

Every choice leaves a :class:`~caffe2tf.notes.Note` marked exact / approx / unsupported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from caffe2tf.caffe.model import NetSpec
from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import (
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    ParamGroup,
    RMSProp,
    UpdateRule,
)
from caffe2tf.targets.keras.layers import SUPPORTED_LAYER_TYPES, keras_layer_name, scale_pairs

Route = Literal["builtin", "multi", "custom"]

F32_EXACT_STEPS = 2**24  # step counts above this are not exact float32 integers
_KERAS_NAME = re.compile(r"^[A-Za-z0-9_.>-]+$")  # TF scope names, without '/' (Keras)


def f32(x: float) -> float:
    """The float32 value of ``x`` as the shortest decimal that rounds back to it."""
    return float(str(np.float32(x)))


@dataclass(frozen=True)
class Arg:
    """One constructor argument: ``source`` names the prototxt field(s) it came from."""

    name: str
    value: Any
    source: str = ""


@dataclass(frozen=True)
class CallSpec:
    """A Keras constructor call: ``keras.optimizers.<cls>(**args)`` or a schedule class.

    ``cls`` "constant" (schedules only) means a plain float learning rate, ``args[0]``.
    """

    cls: str
    args: tuple[Arg, ...] = ()

    def arg(self, name: str) -> Any:
        for a in self.args:
            if a.name == name:
                return a.value
        raise KeyError(name)

    def kwargs(self) -> dict[str, Any]:
        return {a.name: a.value for a in self.args}

    def scaled(self, lr_mult: float) -> CallSpec:
        """The same schedule with every learning rate multiplied by ``lr_mult``."""
        if lr_mult == 1.0:
            return self
        out = []
        for a in self.args:
            if a.name in ("learning_rate", "initial_learning_rate"):
                out.append(replace(a, value=f32(a.value * lr_mult), source=f"{a.source} * lr_mult"))
            elif a.name == "values":
                out.append(
                    replace(
                        a,
                        value=tuple(f32(v * lr_mult) for v in a.value),
                        source=f"{a.source} * lr_mult",
                    )
                )
            else:
                out.append(a)
        if self.cls == "CaffeSchedule":
            out.append(Arg("lr_mult", f32(lr_mult), "param.lr_mult"))
        return CallSpec(self.cls, tuple(out))


@dataclass(frozen=True)
class BlobBinding:
    """One Caffe learnable blob and the Keras variable that holds it.

    ``keras_layer`` is the Keras layer name (the Caffe name, the ``--layer-map`` entry, or for
    a BatchNorm+Scale pair the BatchNormalization's name); ``blob`` 0 is the main weight, 1 the
    bias. ``regularizer`` is ``("L2"|"L1", coefficient)`` on the regularizer route, else None.
    """

    caffe_key: str
    caffe_layer: str
    blob: int
    keras_layer: str
    layer_type: str
    lr_mult: float
    decay_mult: float
    trainable: bool
    regularizer: tuple[str, float] | None = None

    @property
    def key(self) -> str:
        return f"{self.keras_layer}/{self.blob}"


@dataclass(frozen=True)
class KerasPlan:
    """Everything the renderers and the builder need; see the module docstring for routes."""

    route: Route
    solver: str
    optimizer: CallSpec
    schedule: CallSpec
    blobs: tuple[BlobBinding, ...]
    default_blob: BlobBinding
    decay_kind: str = "L2"
    weight_decay: float = 0.0
    decay_route: Literal["regularizer", "optimizer", "none"] = "none"
    clip_gradients: float = -1.0
    iter_size: int = 1
    max_iter: int = 0
    lr_mults: tuple[float, ...] = (1.0,)
    notes: tuple[Note, ...] = ()
    source: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def exact(self) -> bool:
        return not any(n.exactness in (Exactness.APPROX, Exactness.UNSUPPORTED) for n in self.notes)

    @property
    def unsupported(self) -> bool:
        return any(n.exactness is Exactness.UNSUPPORTED for n in self.notes)


# ---- helpers -----------------------------------------------------------------------------------


def _note(
    code: str,
    message: str,
    exactness: Exactness | None = Exactness.EXACT,
    severity: Severity = Severity.INFO,
) -> Note:
    return Note(
        code=f"keras.{code}",
        message=message,
        severity=severity,
        affects_training=exactness not in (Exactness.EXACT, None),
        exactness=exactness,
    )


def _fmt(x: float) -> str:
    return repr(f32(x))


def _split_key(key: str) -> tuple[str, int]:
    layer, _, index = key.rpartition("/")
    return layer, int(index)


def effective_stepvalues(stepvalue: tuple[int, ...]) -> tuple[int, ...]:
    """The iterations where Caffe's multistep really advances: ``current_step_`` moves by at
    most one per update (``sgd_solver.cpp:46-52``), so stage i starts at
    max(stepvalue[i], start of stage i-1 + 1) (duplicates decay on consecutive updates)."""
    out: list[int] = []
    prev = -1
    for v in stepvalue:
        prev = max(int(v), prev + 1)
        out.append(prev)
    return tuple(out)


def _schedule(
    s: LrSchedule, *, iter_size: int, rms_decay: float | None, force_custom: bool
) -> tuple[CallSpec, list[Note]]:
    """Caffe lr_policy -> the exact Keras schedule (target-semantics.md §4.1)."""
    if s.policy == "multistep":
        s = replace(s, stepvalue=effective_stepvalues(s.stepvalue))
    base = Arg("initial_learning_rate", f32(s.base_lr), "base_lr")
    notes: list[Note] = []
    custom_reason = ""
    if rms_decay is not None:
        custom_reason = (
            "RMSProp runs as keras.optimizers.Adam(beta_1=0), so the schedule "
            "also divides by sqrt(1 - rms_decay^(k+1)) to cancel Adam's bias "
            "correction"
        )
    elif force_custom:
        custom_reason = (
            "the custom optimizer counts Caffe updates, not micro-batches, so it "
            "takes Caffe's policy as CaffeSchedule"
        )
    elif s.policy == "inv" and f32(s.power) != 1.0:
        custom_reason = (
            f"lr_policy 'inv' with power {_fmt(s.power)}: Keras' InverseTimeDecay "
            "has power 1 only, so a small exact CaffeSchedule is used"
        )
    elif s.policy == "sigmoid":
        custom_reason = (
            "lr_policy 'sigmoid' has no Keras built-in; a small exact CaffeSchedule is used"
        )
    elif s.policy == "step" and s.max_iter >= F32_EXACT_STEPS:
        custom_reason = (
            "lr_policy 'step' with max_iter >= 2^24: ExponentialDecay's float32 "
            "step / stepsize could switch one step early, so CaffeSchedule is used"
        )
    if custom_reason:
        args = [Arg("policy", s.policy, "lr_policy"), Arg("base_lr", f32(s.base_lr), "base_lr")]
        if s.policy in ("step", "exp", "inv", "multistep", "sigmoid"):
            args.append(Arg("gamma", f32(s.gamma), "gamma"))
        if s.policy in ("inv", "poly"):
            args.append(Arg("power", f32(s.power), "power"))
        if s.policy in ("step", "sigmoid"):
            args.append(Arg("stepsize", int(s.stepsize), "stepsize"))
        if s.policy == "multistep":
            args.append(Arg("stepvalue", tuple(int(v) for v in s.stepvalue), "stepvalue"))
        if s.policy == "poly":
            args.append(Arg("max_iter", int(s.max_iter), "max_iter"))
        if iter_size > 1:
            args.append(Arg("iter_size", int(iter_size), "iter_size"))
        if rms_decay is not None:
            args.append(Arg("rms_decay", f32(rms_decay), "rms_decay"))
        notes.append(
            _note(
                "schedule.custom",
                f"lr_policy '{s.policy}' becomes CaffeSchedule, "
                f"Caffe's formula evaluated at the update count: {custom_reason}.",
            )
        )
        return CallSpec("CaffeSchedule", tuple(args)), notes
    if s.policy == "fixed":
        notes.append(
            _note("schedule.fixed", f"lr_policy 'fixed': constant learning rate {_fmt(s.base_lr)}.")
        )
        return CallSpec("constant", (Arg("learning_rate", f32(s.base_lr), "base_lr"),)), notes
    if s.policy == "step":
        notes.append(
            _note(
                "schedule.step",
                "lr_policy 'step' becomes ExponentialDecay("
                f"decay_steps={s.stepsize}, decay_rate={_fmt(s.gamma)}, "
                "staircase=True): lr = base_lr * gamma^floor(k / stepsize).",
            )
        )
        return CallSpec(
            "ExponentialDecay",
            (
                base,
                Arg("decay_steps", int(s.stepsize), "stepsize"),
                Arg("decay_rate", f32(s.gamma), "gamma"),
                Arg("staircase", True, "lr_policy"),
            ),
        ), notes
    if s.policy == "exp":
        notes.append(
            _note(
                "schedule.exp",
                "lr_policy 'exp' becomes ExponentialDecay("
                f"decay_steps=1, decay_rate={_fmt(s.gamma)}): lr = base_lr * gamma^k.",
            )
        )
        return CallSpec(
            "ExponentialDecay",
            (base, Arg("decay_steps", 1, "lr_policy"), Arg("decay_rate", f32(s.gamma), "gamma")),
        ), notes
    if s.policy == "inv":
        notes.append(
            _note(
                "schedule.inv",
                "lr_policy 'inv' with power 1 becomes InverseTimeDecay("
                f"decay_steps=1, decay_rate={_fmt(s.gamma)}).",
            )
        )
        return CallSpec(
            "InverseTimeDecay",
            (base, Arg("decay_steps", 1, "lr_policy"), Arg("decay_rate", f32(s.gamma), "gamma")),
        ), notes
    if s.policy == "multistep":
        bounds = tuple(int(v) - 1 for v in s.stepvalue)
        values = tuple(
            f32(float(np.float32(s.base_lr)) * float(np.float32(s.gamma)) ** j)
            for j in range(len(bounds) + 1)
        )
        notes.append(
            _note(
                "schedule.multistep",
                "lr_policy 'multistep' becomes "
                f"PiecewiseConstantDecay(boundaries={list(bounds)}): multistep "
                "boundaries shifted by one, because Keras switches after the "
                "boundary step and Caffe at the stepvalue itself.",
            )
        )
        return CallSpec(
            "PiecewiseConstantDecay",
            (
                Arg("boundaries", bounds, "stepvalue - 1"),
                Arg("values", values, "base_lr * gamma^j"),
            ),
        ), notes
    if s.policy == "poly":
        notes.append(
            _note(
                "schedule.poly",
                "lr_policy 'poly' becomes PolynomialDecay("
                f"decay_steps={s.max_iter}, power={_fmt(s.power)}, "
                "end_learning_rate=0.0): Keras' default end rate is 1e-4, Caffe's 0.",
            )
        )
        return CallSpec(
            "PolynomialDecay",
            (
                base,
                Arg("decay_steps", int(s.max_iter), "max_iter"),
                Arg("end_learning_rate", 0.0, "lr_policy"),
                Arg("power", f32(s.power), "power"),
            ),
        ), notes
    raise AssertionError(s.policy)


def _bindings(
    rule: UpdateRule,
    layer_map: Mapping[str, str],
    net: NetSpec | None,
    decay: AddDecay | None,
    decay_route: str,
) -> tuple[list[BlobBinding], list[Note]]:
    notes: list[Note] = []
    pairs = scale_pairs(net)
    out: list[BlobBinding] = []
    unsupported_types: set[str] = set()
    for group in rule.params:
        layer, index = _split_key(group.key)
        if group.layer_type == "BatchNorm":
            continue  # mean/variance/factor: moving statistics in Keras, never optimized
        if group.layer_type and group.layer_type not in SUPPORTED_LAYER_TYPES:
            unsupported_types.add(group.layer_type)
        keras_layer = keras_layer_name(layer, layer_map, pairs)
        reg = None
        if (
            decay_route == "regularizer"
            and decay is not None
            and group.decay_mult != 0.0
            and group.trainable
        ):
            coef = float(np.float32(decay.weight_decay)) * float(np.float32(group.decay_mult))
            reg = ("L2", f32(coef / 2.0)) if decay.kind == "L2" else ("L1", f32(coef))
        out.append(
            BlobBinding(
                caffe_key=group.key,
                caffe_layer=layer,
                blob=index,
                keras_layer=keras_layer,
                layer_type=group.layer_type,
                lr_mult=f32(group.lr_mult),
                decay_mult=f32(group.decay_mult),
                trainable=group.trainable,
                regularizer=reg,
            )
        )
    if pairs:
        notes.append(
            _note(
                "layers.bn_scale",
                f"{len(pairs)} Caffe BatchNorm+Scale pair(s): the "
                "Scale's gamma/beta live in the Keras BatchNormalization's gamma/beta "
                "(named after the BatchNorm layer); Caffe's BatchNorm statistics are "
                "Keras' non-trainable moving mean/variance.",
            )
        )
    for t in sorted(unsupported_types):
        notes.append(
            _note(
                "layers.unsupported_type",
                f"Caffe layer type {t!r} has learnable "
                "blobs that prepare_model cannot place on Keras variables.",
                Exactness.UNSUPPORTED,
                Severity.ERROR,
            )
        )
    odd = sorted({b.keras_layer for b in out if not _KERAS_NAME.match(b.keras_layer)})
    if odd:
        notes.append(
            _note(
                "layers.names",
                f"{len(odd)} Keras layer name(s) taken from the "
                "net are not valid Keras/TensorFlow names (Keras forbids '/', "
                "TensorFlow scopes allow only letters, digits and _.->): give "
                "those layers other names and map them with --layer-map: "
                + ", ".join(repr(n) for n in odd[:10])
                + ("..." if len(odd) > 10 else ""),
                exactness=None,
                severity=Severity.WARNING,
            )
        )
    shared = [g for g in rule.params if g.sharers]
    if shared:
        notes.append(
            _note(
                "layers.shared",
                f"{len(shared)} blob(s) are shared between Caffe "
                "layers: reuse one Keras layer, named like the owner, for them.",
            )
        )
    frozen = [b for b in out if not b.trainable]
    if frozen:
        notes.append(
            _note(
                "layers.frozen",
                f"{len(frozen)} blob(s) have lr_mult 0: "
                "prepare_model sets variable.trainable = False on them (Caffe never "
                "updates them, and their zero gradient adds nothing to the clip norm).",
            )
        )
    return out, notes


def _decay_count(rule: UpdateRule) -> str:
    if not rule.params:
        return "every trainable variable, biases included (the net is unknown)"
    decayed = [g for g in rule.params if g.trainable and g.decay_mult != 0.0]
    biases = [g for g in decayed if g.key.endswith("/1")]
    return (
        f"each of the {len(decayed)} blobs Caffe decays here ({len(biases)} of them "
        "biases: Caffe decays a bias unless its decay_mult is 0)"
    )


def plan(
    rule: UpdateRule,
    *,
    layer_map: Mapping[str, str] | None = None,
    allow_approx: bool = False,
    net: NetSpec | None = None,
    source: Mapping[str, str] | None = None,
) -> KerasPlan:
    """Choose the Keras 3 objects that reproduce ``rule`` (see the module docstring).

    ``layer_map`` maps Caffe layer names to Keras layer names; ``net`` (optional) lets the
    plan pair BatchNorm+Scale layers; without it and without per-blob groups in ``rule`` the
    multipliers are unknown (an APPROX note). ``allow_approx`` is recorded by the caller; every
    route chosen here is exact, so it does not change the plan.
    """
    del allow_approx
    layer_map = dict(layer_map or {})
    notes: list[Note] = []
    solver_step = rule.solver_step
    clip = rule.step(ClipByGlobalNorm)
    decay = rule.step(AddDecay)
    if decay is not None and decay.weight_decay == 0.0:
        decay = None
    trainable_mults = sorted(
        {f32(g.lr_mult) for g in rule.params if g.trainable}
        | ({f32(rule.default_group.lr_mult)} if not rule.params else set())
    )
    reasons: list[str] = []
    if isinstance(solver_step, AdaGrad):
        reasons.append(
            "Keras' Adagrad puts epsilon inside the square root and starts its "
            "accumulator at 0.1 (Caffe: epsilon outside, start 0)"
        )
    if clip is not None:
        reasons.append(
            f"clip_gradients {_fmt(clip.threshold)}: Caffe clips the raw gradient "
            "sum before weight decay; Keras would clip the regularized gradient "
            "(and MultiOptimizer per group)"
        )
    if rule.iter_size > 1:
        reasons.append(
            f"iter_size {rule.iter_size}: Keras' gradient accumulation averages "
            "before clipping and advances the schedule per micro-batch"
        )
    if decay is not None and decay.kind == "L1":
        reasons.append(
            "L1 decay: Caffe uses sign(0) = 0, the JAX backend differentiates |w| at 0 as 1"
        )
    if isinstance(solver_step, Momentum) and not 0.0 <= solver_step.momentum <= 1.0:
        reasons.append("momentum outside [0, 1], which keras.optimizers.SGD rejects")
    route: Route
    if reasons:
        route = "custom"
    elif len(trainable_mults) > 1 or (trainable_mults and trainable_mults[0] != 1.0):
        route = "multi"
    else:
        route = "builtin"

    decay_route = "none" if decay is None else ("optimizer" if route == "custom" else "regularizer")
    rms = solver_step.rms_decay if isinstance(solver_step, RMSProp) and route != "custom" else None
    schedule, sched_notes = _schedule(
        rule.schedule, iter_size=rule.iter_size, rms_decay=rms, force_custom=route == "custom"
    )
    notes.extend(sched_notes)

    # optimizer
    if route == "custom":
        args = [Arg("solver", rule.solver, "type")]
        if isinstance(solver_step, Momentum):
            args.append(Arg("momentum", f32(solver_step.momentum), "momentum"))
        elif isinstance(solver_step, Adam):
            args += [
                Arg("momentum", f32(solver_step.beta1), "momentum"),
                Arg("momentum2", f32(solver_step.beta2), "momentum2"),
                Arg("delta", f32(solver_step.delta), "delta"),
            ]
        elif isinstance(solver_step, AdaDelta):
            args += [
                Arg("momentum", f32(solver_step.rho), "momentum"),
                Arg("delta", f32(solver_step.delta), "delta"),
            ]
        elif isinstance(solver_step, RMSProp):
            args += [
                Arg("rms_decay", f32(solver_step.rms_decay), "rms_decay"),
                Arg("delta", f32(solver_step.delta), "delta"),
            ]
        elif isinstance(solver_step, AdaGrad):
            args.append(Arg("delta", f32(solver_step.delta), "delta"))
        if decay is not None:
            args += [
                Arg("weight_decay", f32(decay.weight_decay), "weight_decay"),
                Arg("regularization_type", decay.kind, "regularization_type"),
            ]
        if clip is not None:
            args.append(Arg("clip_gradients", f32(clip.threshold), "clip_gradients"))
        if rule.iter_size > 1:
            args.append(Arg("iter_size", int(rule.iter_size), "iter_size"))
        optimizer = CallSpec("CaffeOptimizer", tuple(args))
        notes.append(
            _note(
                "optimizer.custom",
                f"Caffe {rule.solver} becomes the inlined "
                "CaffeOptimizer (a keras.optimizers.Optimizer subclass that follows "
                "Caffe's order: clip the raw gradient sum, normalize, decay, "
                "lr x lr_mult, solver step) because " + "; ".join(reasons) + ".",
            )
        )
        if decay is not None:
            notes.append(
                _note(
                    "decay.optimizer",
                    f"weight_decay {_fmt(decay.weight_decay)} "
                    f"({decay.kind}) is added inside CaffeOptimizer after the clip; "
                    "prepare_model removes regularizers from the mapped variables.",
                )
            )
        if rule.iter_size > 1:
            notes.append(
                _note(
                    "accumulation",
                    f"iter_size {rule.iter_size}: call "
                    "apply_gradients once per micro-batch; each group of "
                    f"{rule.iter_size} calls ends with one Caffe update on the raw "
                    "sum of their gradients (optimizer.iterations counts Caffe "
                    "updates).",
                )
            )
    else:
        if isinstance(solver_step, Momentum):
            args = [Arg("momentum", f32(solver_step.momentum), "momentum")]
            if solver_step.nesterov:
                args.append(Arg("nesterov", True, "type"))
            optimizer = CallSpec("SGD", tuple(args))
            notes.append(
                _note(
                    "optimizer.sgd",
                    f"Caffe {rule.solver} becomes keras.optimizers."
                    f"SGD(momentum={_fmt(solver_step.momentum)}"
                    f"{', nesterov=True' if solver_step.nesterov else ''}): both keep "
                    "the learning rate inside the velocity.",
                )
            )
        elif isinstance(solver_step, Adam):
            optimizer = CallSpec(
                "Adam",
                (
                    Arg("beta_1", f32(solver_step.beta1), "momentum"),
                    Arg("beta_2", f32(solver_step.beta2), "momentum2"),
                    Arg("epsilon", f32(solver_step.delta), "delta"),
                ),
            )
            notes.append(
                _note(
                    "optimizer.adam",
                    "Caffe Adam becomes keras.optimizers.Adam("
                    f"beta_1={_fmt(solver_step.beta1)}, beta_2={_fmt(solver_step.beta2)}"
                    f", epsilon={_fmt(solver_step.delta)}): same bias correction and "
                    "epsilon outside the root; epsilon set explicitly (Keras default "
                    "1e-7).",
                )
            )
        elif isinstance(solver_step, AdaDelta):
            optimizer = CallSpec(
                "Adadelta",
                (
                    Arg("rho", f32(solver_step.rho), "momentum"),
                    Arg("epsilon", f32(solver_step.delta), "delta"),
                ),
            )
            notes.append(
                _note(
                    "optimizer.adadelta",
                    "Caffe AdaDelta becomes keras.optimizers."
                    f"Adadelta(rho={_fmt(solver_step.rho)}, epsilon="
                    f"{_fmt(solver_step.delta)}) with learning_rate = base_lr.",
                )
            )
        elif isinstance(solver_step, RMSProp):
            optimizer = CallSpec(
                "Adam",
                (
                    Arg("beta_1", 0.0, "type"),
                    Arg("beta_2", f32(solver_step.rms_decay), "rms_decay"),
                    Arg("epsilon", f32(solver_step.delta), "delta"),
                ),
            )
            notes.append(
                _note(
                    "optimizer.rmsprop",
                    "Caffe RMSProp becomes keras.optimizers."
                    f"Adam(beta_1=0.0, beta_2={_fmt(solver_step.rms_decay)}, "
                    f"epsilon={_fmt(solver_step.delta)}) with a schedule divided by "
                    "sqrt(1 - rms_decay^(k+1)): with beta_1 = 0 this is Caffe's "
                    "RMSProp (Keras' RMSprop puts epsilon inside the root).",
                )
            )
        else:  # pragma: no cover - AdaGrad always takes the custom route
            raise AssertionError(solver_step)
        if decay is not None:
            notes.append(
                _note(
                    "decay.regularizer",
                    f"Caffe's weight_decay "
                    f"{_fmt(decay.weight_decay)} becomes "
                    + (
                        f"L2({_fmt(decay.weight_decay / 2)}) x decay_mult: Keras' L2 "
                        "penalty has no 1/2"
                        if decay.kind == "L2"
                        else f"L1({_fmt(decay.weight_decay)}) x decay_mult"
                    )
                    + "; prepare_model puts it on "
                    + _decay_count(rule)
                    + ". A custom loop must add sum(model.losses) to the loss.",
                )
            )
        if route == "multi":
            notes.append(
                _note(
                    "lr_mult.multi",
                    "lr_mult values "
                    f"{', '.join(_fmt(m) for m in trainable_mults)} become a "
                    "keras.optimizers.MultiOptimizer with one sub-optimizer per "
                    "lr_mult whose learning rate is the schedule x lr_mult.",
                )
            )
    if not rule.params and net is None:
        # Without the net the per-blob multipliers are a guess (Caffe's defaults): the Keras
        # side cannot be shown to do what Caffe does, so it is an approximation that convert
        # only writes with --allow-approx (issue 4).
        notes.append(
            _note(
                "net.unknown",
                "per-blob lr_mult/decay_mult unknown: the train net "
                "was not found; Caffe's defaults (lr_mult 1, decay_mult 1 on every "
                "blob, biases included) assumed -- give --net NET",
                Exactness.APPROX,
                severity=Severity.WARNING,
            )
        )
    elif not rule.params:
        notes.append(
            _note(
                "net.no_params",
                "the train net has no learnable blob: every "
                "trainable Keras variable gets Caffe's defaults (lr_mult 1, "
                "decay_mult 1).",
                severity=Severity.WARNING,
            )
        )

    bindings, layer_notes = _bindings(rule, layer_map, net, decay, decay_route)
    notes.extend(layer_notes)
    default_reg = None
    if decay_route == "regularizer" and not rule.params and decay is not None:
        wd = float(np.float32(decay.weight_decay))
        default_reg = ("L2", f32(wd / 2)) if decay.kind == "L2" else ("L1", f32(wd))
    default = BlobBinding(
        caffe_key="*",
        caffe_layer="*",
        blob=-1,
        keras_layer="*",
        layer_type="",
        lr_mult=f32(rule.default_group.lr_mult),
        decay_mult=f32(rule.default_group.decay_mult) if not rule.params else 0.0,
        trainable=True,
        regularizer=default_reg,
    )
    return KerasPlan(
        route=route,
        solver=rule.solver,
        optimizer=optimizer,
        schedule=schedule,
        blobs=tuple(bindings),
        default_blob=default,
        decay_kind=decay.kind if decay else "L2",
        weight_decay=f32(decay.weight_decay) if decay else 0.0,
        decay_route=decay_route,
        clip_gradients=f32(clip.threshold) if clip else -1.0,
        iter_size=rule.iter_size,
        max_iter=rule.max_iter,
        lr_mults=tuple(trainable_mults) or (1.0,),
        notes=tuple(notes),
        source=dict(source or {}),
    )


def custom_multipliers(p: KerasPlan) -> dict[str, tuple[float, float]]:
    """``{"<keras layer>/<blob>": (lr_mult, decay_mult)}`` for CaffeOptimizer."""
    return {b.key: (b.lr_mult, b.decay_mult) for b in p.blobs}


def lr_groups(p: KerasPlan) -> list[tuple[float, list[BlobBinding]]]:
    """Trainable blobs grouped by lr_mult (route ``multi``), lr_mult 1 first."""
    groups: dict[float, list[BlobBinding]] = {}
    for b in p.blobs:
        if b.trainable:
            groups.setdefault(b.lr_mult, []).append(b)
    return sorted(groups.items(), key=lambda kv: (kv[0] != 1.0, kv[0]))


__all__ = [
    "Arg",
    "BlobBinding",
    "CallSpec",
    "KerasPlan",
    "ParamGroup",
    "custom_multipliers",
    "f32",
    "lr_groups",
    "plan",
]
