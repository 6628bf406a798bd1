"""Lower a parsed Caffe recipe (``SolverSpec`` + ``NetSpec``) to an :class:`UpdateRule`.

The chain follows ``SGDSolver::ApplyUpdate`` (caffe ``src/caffe/solvers/sgd_solver.cpp:108-127``)::

    ClipByGlobalNorm   only when clip_gradients >= 0          (:87-106; default -1 = off)
    NormalizeBy        only when iter_size != 1               (:129-153)
    AddDecay           only when weight_decay != 0            (:155-215; "L2" | "L1")
    ScaleByLr          lr_policy(k) * lr_mult                 (:26-70, :228)
    <solver step>      SGD/Nesterov -> Momentum(momentum); AdaGrad(delta);
                       RMSProp(rms_decay, delta); AdaDelta(rho = momentum, delta);
                       Adam(beta1 = momentum, beta2 = momentum2, delta)

``momentum`` has no default in caffe.proto (-> 0) and doubles as Adam's beta1 and AdaDelta's rho
(``adam_solver.cpp:30-31``, ``adadelta_solver.cpp:30``); ``delta`` 1e-8, ``momentum2`` 0.999,
``rms_decay`` 0.99 are caffe.proto defaults (``caffe.proto:219-225``). Every default that changes
what training does is reported as a :class:`~caffe2tf.notes.Note`.
"""

from __future__ import annotations

from caffe2tf.caffe.model import NetSpec, Recipe, SolverSpec
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity
from caffe2tf.rule.model import (
    SOLVERS,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    NormalizeBy,
    ParamGroup,
    ScaleByLr,
    SolverStep,
    Step,
    UpdateRule,
)
from caffe2tf.rule.schedules import POLICIES


def _loc(spec: SolverSpec, name: str) -> SourceLocation:
    return spec.locations.get(name) or SourceLocation(spec.path)


def _solver_step(spec: SolverSpec) -> SolverStep:
    """The solver's step from :data:`caffe2tf.rule.model.SOLVERS` (the front end has already
    refused an unknown type, ``caffe/solver.py``)."""
    entry = SOLVERS[spec.type]
    return entry.build(**{name: getattr(spec, name) for name in entry.reads})


def schedule_of(spec: SolverSpec) -> LrSchedule:
    """The solver's lr_policy with the fields it reads (float32-rounded, as Caffe uses them)."""
    return LrSchedule(
        policy=spec.lr_policy,  # type: ignore[arg-type]
        base_lr=spec.base_lr,
        gamma=spec.gamma,
        power=spec.power,
        stepsize=spec.stepsize,
        stepvalue=tuple(spec.stepvalue),
        max_iter=spec.max_iter,
    )


def scale_pairs(net: NetSpec | None) -> tuple[tuple[str, str], ...]:
    """``(Scale layer, BatchNorm layer)`` for each Caffe ``Scale`` whose bottom is the top of a
    ``BatchNorm`` that nothing else wrote since: BVLC's BatchNorm has no learnable affine, so
    ResNet-style nets put a Scale (``bias_term: true``) right after it, and Keras'
    BatchNormalization holds both (its gamma/beta are the Scale's blobs 0/1)."""
    if net is None:
        return ()
    pairs: list[tuple[str, str]] = []
    bn_of_top: dict[str, str] = {}
    for layer in net.layers:
        if layer.type == "BatchNorm" and layer.tops:
            bn_of_top[layer.tops[0]] = layer.name
        elif layer.type == "Scale" and layer.bottoms and layer.bottoms[0] in bn_of_top:
            pairs.append((layer.name, bn_of_top.pop(layer.bottoms[0])))
        else:
            for top in layer.tops:
                bn_of_top.pop(top, None)
    return tuple(pairs)


def _default_notes(spec: SolverSpec, has_decay: bool) -> list[Note]:
    """Notes for the caffe.proto defaults that were filled in and matter for this rule."""
    d = spec.defaulted
    notes: list[Note] = []

    def add(code: str, msg: str, severity: Severity = Severity.INFO, field: str = "") -> None:
        notes.append(
            Note(
                code=f"rule.default.{code}",
                message=msg,
                severity=severity,
                location=SourceLocation(spec.path),
                affects_training=True,
            )
        )

    t = spec.type
    if "type" in d:
        add("type", "solver type = SGD (default; neither type nor solver_type is set)")
    if "momentum" in d:
        if t in ("SGD", "Nesterov"):
            add(
                "momentum",
                f"{t} momentum = 0 because momentum is not set (caffe.proto has no "
                "default): plain gradient steps, no velocity",
                Severity.WARNING,
            )
        elif t == "Adam":
            add(
                "momentum",
                "Adam beta1 = momentum = 0 because momentum is not set (caffe.proto "
                "has no default; the Adam paper and Keras use 0.9)",
                Severity.WARNING,
            )
        elif t == "AdaDelta":
            add(
                "momentum",
                "AdaDelta rho = momentum = 0 because momentum is not set "
                "(caffe.proto has no default; the AdaDelta paper uses 0.95)",
                Severity.WARNING,
            )
    if "delta" in d and t in ("AdaGrad", "RMSProp", "AdaDelta", "Adam"):
        add("delta", f"{t} delta = 1e-08 (caffe.proto default; Keras epsilon defaults to 1e-07)")
    if "momentum2" in d and t == "Adam":
        add("momentum2", "Adam beta2 = momentum2 = 0.999 (caffe.proto default)")
    if "rms_decay" in d and t == "RMSProp":
        add("rms_decay", "RMSProp rho = rms_decay = 0.99 (caffe.proto default; Keras uses 0.9)")
    if has_decay and "regularization_type" in d:
        add("regularization_type", 'weight decay is L2 (regularization_type default "L2")')
    policy = POLICIES.get(spec.lr_policy)
    fields = policy.reads if policy else ()
    if "base_lr" in d:
        add(
            "base_lr",
            "base_lr = 0 because it is not set (caffe.proto has no default): nothing trains",
            Severity.WARNING,
        )
    if "gamma" in fields and "gamma" in d:
        add(
            "gamma",
            f"gamma = 0 because it is not set (lr_policy {spec.lr_policy!r} reads it)",
            Severity.WARNING,
        )
    if "power" in fields and "power" in d:
        add(
            "power",
            f"power = 0 because it is not set: lr_policy {spec.lr_policy!r} keeps "
            "the rate constant",
            Severity.WARNING,
        )
    if spec.lr_policy == "poly" and spec.max_iter == 0:
        add(
            "max_iter",
            "lr_policy 'poly' with max_iter = 0 divides by zero (rate is NaN)",
            Severity.WARNING,
        )
    if spec.lr_policy == "multistep" and not spec.stepvalue:
        add("stepvalue", "lr_policy 'multistep' without stepvalue: the rate stays base_lr")
    if spec.lr_policy == "multistep" and list(spec.stepvalue) != sorted(set(spec.stepvalue)):
        notes.append(
            Note(
                code="rule.multistep.order",
                message="stepvalue is not strictly increasing: Caffe consumes it in "
                "list order, advancing at most one step per iteration",
                severity=Severity.WARNING,
                location=_loc(spec, "stepvalue"),
                affects_training=True,
            )
        )
    return notes


def _groups(net: NetSpec) -> tuple[ParamGroup, ...]:
    return tuple(
        ParamGroup(
            key=p.key,
            lr_mult=p.lr_mult,
            decay_mult=p.decay_mult,
            shape=p.shape,
            layer_type=p.layer_type,
            sharers=p.sharers,
            location=p.location,
        )
        for p in net.params
    )


def lower(recipe: Recipe) -> UpdateRule:
    """Build the :class:`UpdateRule` for ``recipe`` (see the module docstring for the order).

    Caffe's own checks (unknown type/policy, failed CHECKs) ran once, in the front end
    (``caffe/solver.py``). ``params`` is empty and a WARNING note is added when the net is
    unknown.
    """
    spec = recipe.solver
    notes: list[Note] = []
    steps: list[Step] = []
    if spec.dialect == "nvidia":
        notes.append(
            Note(
                "rule.nvidia.untranslated",
                "NVIDIA Caffe's update rule is not translated yet",
                Severity.ERROR,
                SourceLocation(spec.path),
                True,
            )
        )

    if spec.clip_gradients >= 0:
        steps.append(ClipByGlobalNorm(threshold=spec.clip_gradients))
        if spec.clip_gradients == 0:
            notes.append(
                Note(
                    "rule.clip.zero",
                    "clip_gradients: 0 multiplies every gradient by "
                    "0 whenever any gradient is non-zero (Caffe clips when norm > 0)",
                    Severity.WARNING,
                    _loc(spec, "clip_gradients"),
                    True,
                )
            )
        if spec.iter_size != 1:
            notes.append(
                Note(
                    "rule.clip.iter_size",
                    f"clipping acts on the raw sum over "
                    f"iter_size = {spec.iter_size} passes, before the division: the "
                    f"threshold on the averaged gradient is "
                    f"{spec.clip_gradients / spec.iter_size:g}",
                    Severity.INFO,
                    _loc(spec, "clip_gradients"),
                    True,
                )
            )
    if spec.iter_size != 1:
        steps.append(NormalizeBy(iter_size=spec.iter_size))

    has_decay = spec.weight_decay != 0
    if has_decay:
        kind = spec.regularization_type
        net_decays = [p.decay_mult for p in recipe.net.params] if recipe.net else None
        if kind not in ("L2", "L1"):
            if net_decays is not None and not any(net_decays):
                has_decay = False  # Caffe only looks at the type when local_decay != 0
            else:
                raise InputError(
                    f"unknown regularization_type {kind!r} (Caffe: 'L2' or 'L1', case-sensitive)",
                    _loc(spec, "regularization_type"),
                )
        if has_decay:
            steps.append(AddDecay(kind=kind, weight_decay=spec.weight_decay))  # type: ignore[arg-type]

    steps.append(ScaleByLr(schedule=schedule_of(spec)))
    steps.append(_solver_step(spec))
    notes.extend(_default_notes(spec, has_decay))

    params: tuple[ParamGroup, ...] = ()
    if recipe.net is None:
        notes.append(
            Note(
                "rule.net_unknown",
                "the train net is unknown: per-blob multipliers "
                "are unknown; Caffe's defaults lr_mult 1 / decay_mult 1 are assumed "
                "for every blob (pass --net to use the real ones)",
                Severity.WARNING,
                SourceLocation(spec.path),
                True,
            )
        )
    else:
        params = _groups(recipe.net)
        implicit = [
            p.key for p in recipe.net.params if not p.lr_mult_explicit and not p.decay_mult_explicit
        ]
        if implicit:
            decayed = " (and weight-decayed)" if has_decay else ""
            notes.append(
                Note(
                    "rule.default.multipliers",
                    f"{len(implicit)} blob(s) without param {{}} multipliers use "
                    f"lr_mult 1, decay_mult 1 (Caffe default){decayed}: "
                    + ", ".join(implicit[:8])
                    + (" ..." if len(implicit) > 8 else ""),
                    Severity.INFO,
                    SourceLocation(recipe.net.path),
                    True,
                )
            )
    net = recipe.net
    return UpdateRule(
        solver=spec.type,  # type: ignore[arg-type]
        steps=tuple(steps),
        params=params,
        iter_size=spec.iter_size,
        max_iter=spec.max_iter,
        notes=tuple(notes),
        net_known=net is not None,
        layers=tuple(layer.name for layer in net.layers) if net else (),
        scale_pairs=scale_pairs(net),
        force_backward=bool(getattr(net.message, "force_backward", False)) if net else False,
    )
