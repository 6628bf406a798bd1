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

from dataclasses import replace

from caffe2tf.caffe.model import NetSpec, Recipe, SolverSpec
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.rule.model import (
    NVIDIA_DELTA_FLOOR,
    SOLVER_TABLES,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    NormalizeBy,
    NvidiaDecay,
    NvidiaSGD,
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
    """The solver's step from its dialect's table (:data:`caffe2tf.rule.model.SOLVER_TABLES`;
    the front end has already refused an unknown type, ``caffe/solver.py``)."""
    entry = SOLVER_TABLES[spec.dialect][spec.type]
    return entry.build(**{name: getattr(spec, name) for name in entry.reads})


def schedule_of(spec: SolverSpec) -> LrSchedule:
    """The solver's lr_policy with the fields it reads (float32-rounded, as Caffe uses them);
    NVIDIA Caffe's warm-up and floor for that dialect."""
    nvidia = spec.dialect == "nvidia"
    return LrSchedule(
        policy=spec.lr_policy,  # type: ignore[arg-type]
        base_lr=spec.base_lr,
        gamma=spec.gamma,
        power=spec.power,
        stepsize=spec.stepsize,
        stepvalue=tuple(spec.stepvalue),
        max_iter=spec.max_iter,
        rampup_interval=spec.rampup_interval if nvidia else 0,
        rampup_lr=spec.rampup_lr if nvidia else 0.0,
        min_lr=spec.min_lr if nvidia else None,
        stagelr=tuple(spec.stagelr),
        stageiter=tuple(spec.stageiter),
    )


def fp16_gradient_layers(net: NetSpec | None) -> frozenset[str]:
    """The layers whose learnable blobs get FLOAT16 diffs in NVIDIA Caffe: the layer's
    ``backward_type``, else the net's ``default_backward_type`` (proto/nvidia_caffe.proto:
    293-298, 607-610). Empty for a BVLC net."""
    msg = net.message if net is not None else None
    if msg is None or not hasattr(msg, "default_backward_type"):
        return frozenset()
    fp16 = 2  # enum Type FLOAT16 (NVIDIA/caffe caffe.proto:9)
    out = set()
    for layer in msg.layer:
        btype = layer.backward_type if layer.HasField("backward_type") else None
        if (msg.default_backward_type if btype is None else btype) == fp16:
            out.add(layer.name)
    return frozenset(out)


def nvidia_decay_kind(spec: SolverSpec, net: NetSpec | None = None) -> tuple[str, Note | None]:
    """What NVIDIA's GPU kernels do with ``regularization_type`` (docs/nvidia-caffe.md#decay):
    SGD runs ``WD`` decoupled and ``L2``/``L2_unitary`` as L2 (``sgd_solver.cu:152-160``); the
    other kernels test ``reg_type == "L2"`` only, so every other string, ``L2_unitary`` and
    ``WD`` included, decays with sign(w) like L1 (e.g. ``adam_solver.cu:62-65``). So does SGD's
    kernel for FLOAT16 gradients (``sgd_solver.cu:211-226``). Nothing is refused on the GPU
    (the CPU path aborts on all but L1/L2, ``sgd_solver.cpp:227-229``)."""
    reg = spec.regularization_type
    learnable = {p.layer for p in net.params} if net is not None else set()
    fp16 = fp16_gradient_layers(net) & learnable
    if spec.type == "SGD" and not fp16:
        kind = "WD" if reg == "WD" else ("L2" if reg in ("L2", "L2_unitary") else "L1")
        where = "sgd_solver.cu:152-161"
    else:
        kind = "L2" if reg == "L2" else "L1"
        where = (
            "SGD's kernel for FLOAT16 gradients, sgd_solver.cu:211-226"
            if spec.type == "SGD"
            else "its kernel tests for L2 only"
        )
    if spec.type == "SAG":  # L2 or WD, else refused (sag_solver.cu:173-185)
        return ("WD" if reg == "WD" else "L2"), None
    if reg in ("L1", "L2") or (spec.type == "SGD" and reg == "WD" and not fp16):
        return kind, None
    mixed = spec.type == "SGD" and fp16 and fp16 != learnable and reg in ("WD", "L2_unitary")
    return kind, Note(
        "rule.nvidia.regularization",
        f"regularization_type {reg!r} with {spec.type}: NVIDIA Caffe's GPU kernel decays with "
        + ("w, as L2" if kind == "L2" else "sign(w), as L1")
        + f" ({where}); its CPU path would abort (sgd_solver.cpp:227-229)"
        + (
            "; here only some layers have FLOAT16 gradients, and the others decay as "
            f"{reg}: one decay kind for all blobs is an approximation"
            if mixed
            else ""
        ),
        Severity.WARNING,
        _loc(spec, "regularization_type"),
        True,
        Exactness.APPROX if mixed else None,
    )


def _nvidia_notes(spec: SolverSpec, net: NetSpec | None) -> list[Note]:
    """What NVIDIA's solver ignores or does differently from what its fields suggest, and the
    precision fields this float32 rule does not model (docs/nvidia-caffe.md#precision)."""
    notes: list[Note] = []

    def add(code: str, msg: str, field: str, *, approx: bool = False) -> None:
        notes.append(
            Note(
                f"rule.nvidia.{code}",
                msg,
                Severity.WARNING if approx else Severity.INFO,
                _loc(spec, field),
                approx,
                Exactness.APPROX if approx else None,
            )
        )

    add(
        "gpu_path",
        f"NVIDIA Caffe's {spec.type} is translated as its GPU code runs it (the CPU path "
        "differs: no decay policy, decay before LARC's norm, L2_unitary/WD refused)",
        "type",
    )
    if spec.type not in ("SGD", "SAG") and spec.momentum_policy != "fixed":
        add(
            "momentum_policy_unused",
            f"momentum_policy {spec.momentum_policy!r} is read only by SGD and SAG; "
            f"{spec.type} uses momentum as written",
            "momentum_policy",
        )
    if spec.type not in ("SGD", "SAG") and spec.larc:
        add("larc_unused", f"larc is read only by SGD and SAG; {spec.type} ignores it", "larc")
    floor = NVIDIA_DELTA_FLOOR.get(spec.type)
    if floor is not None and spec.delta < floor:
        add(
            "delta_floor",
            f"{spec.type} uses delta = max(delta, {floor:.0e}) = {floor:.0e} (NVIDIA's floor; "
            f"delta is {spec.delta:g})",
            "delta",
        )
    if spec.lr_policy == "multistep" and spec.stepvalue:
        early = [v for v in spec.stepvalue if v < spec.rampup_interval]
        ordered = list(spec.stepvalue) == sorted(set(spec.stepvalue))
        extra_calls = (spec.type == "SGD" and spec.momentum_policy == "opt") or (
            spec.message is not None and getattr(spec.message, "display", 0) > 0
        )
        if (early or not ordered) and extra_calls:
            add(
                "multistep_calls",
                "the multistep counter catches up one stepvalue per GetLearningRate call, and "
                "NVIDIA Caffe calls it more than once per update here (momentum_policy 'opt', "
                "or display > 0: sgd_solver.cpp:86,176): the rule assumes one call per update",
                "stepvalue",
                approx=True,
            )
    msg = spec.message
    if msg is not None and getattr(msg, "solver_data_type", 1) != 1:
        add(
            "fp16",
            "solver_data_type is not FLOAT: NVIDIA Caffe keeps weights and history in reduced "
            "precision; this float32 rule does not round like it",
            "solver_data_type",
            approx=True,
        )
    netmsg = net.message if net is not None else None
    if netmsg is not None and any(
        getattr(netmsg, f, 1) == 2
        for f in (
            "default_forward_type",
            "default_backward_type",
            "default_forward_math",
            "default_backward_math",
        )
    ):
        add(
            "fp16_net",
            "the train net computes in FLOAT16 (default_*_type/math) with float32 weights and "
            "history: the gradients the update receives carry fp16 rounding, which is the "
            "model's part (a Keras 'mixed_float16' policy: fp16 compute, float32 variables); "
            "the update itself is float32, as here",
            "type",
        )
    scale = getattr(netmsg, "global_grad_scale", 1.0) if netmsg is not None else 1.0
    adaptive = bool(getattr(netmsg, "global_grad_scale_adaptive", False)) if netmsg else False
    if (scale != 1.0 or adaptive) and spec.clip_gradients >= 0:
        add(
            "loss_scale_clip",
            f"global_grad_scale {scale:g} with clip_gradients: NVIDIA's clipping path does not "
            "divide the loss scale back out (net.cpp:864-873, unlike :859), so its updates use "
            "scaled gradients",
            "clip_gradients",
            approx=True,
        )
    elif scale != 1.0 or adaptive:
        add(
            "loss_scale",
            f"global_grad_scale {scale:g}: the loss layers multiply the gradients by it and the "
            "update divides them back (net.cpp:859); in float32 the update is unchanged",
            "type",
        )
    return notes


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
    if "rms_decay" in d and t == "RMSProp" and spec.dialect == "yolo":
        add(
            "rms_decay",
            "RMSProp rho = rms_decay = 0 because it is not set (the yolo fork's caffe.proto has "
            "no default, caffe-yolo-2 caffe.proto:225; BVLC's is 0.99)",
            Severity.WARNING,
        )
    elif "rms_decay" in d and t == "RMSProp":
        add("rms_decay", "RMSProp rho = rms_decay = 0.99 (caffe.proto default; Keras uses 0.9)")
    if has_decay and "regularization_type" in d:
        add("regularization_type", 'weight decay is L2 (regularization_type default "L2")')
    policy = POLICIES.get(spec.lr_policy)
    fields = policy.reads if policy else ()
    if "base_lr" in d and "base_lr" in fields:
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


def _plain_sgd(step: NvidiaSGD) -> bool:
    """An :class:`NvidiaSGD` that uses none of NVIDIA's SGD features (fixed momentum, no LARC,
    no decoupled or scheduled decay) is BVLC's SGD step."""
    return (
        step.momentum_policy == "fixed"
        and not step.larc
        and step.decay_kind in ("", "L2", "L1")
        and (step.decay_policy != "poly" or not step.decay_kind)
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
    policy = POLICIES.get(spec.lr_policy)
    if policy is None or policy.dialect not in (None, spec.dialect):
        # kept as written by --lenient (caffe/solver.py)
        known = [name for name, p in POLICIES.items() if p.dialect in (None, spec.dialect)]
        forks = [f"{name} in the {p.dialect} dialect" for name, p in POLICIES.items() if p.dialect]
        raise InputError(
            f"lr_policy {spec.lr_policy!r} is a fork's policy that caffe2tf cannot translate "
            f"(it knows {', '.join(known)}; and {', '.join(forks)}, docs/forks.md); "
            "--lenient read it, but no update rule can be built without its formula",
            _loc(spec, "lr_policy"),
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

    nvidia = spec.dialect == "nvidia"
    has_decay = spec.weight_decay != 0
    solver_step: SolverStep | None = _solver_step(spec)
    if nvidia:
        notes.extend(_nvidia_notes(spec, recipe.net))
    if nvidia and has_decay:
        kind, reg_note = nvidia_decay_kind(spec, recipe.net)
        if reg_note is not None:
            notes.append(reg_note)
        if isinstance(solver_step, NvidiaSGD) or (spec.type == "SGD" and kind == "WD"):
            solver_step = replace(
                solver_step if isinstance(solver_step, NvidiaSGD) else NvidiaSGD(spec.momentum),
                decay_kind=kind,  # type: ignore[arg-type]
                weight_decay=spec.weight_decay,
                decay_policy=spec.weight_decay_policy,
                max_weight_decay=spec.max_weight_decay,
                weight_decay_power=spec.weight_decay_power,
                max_iter=spec.max_iter,
            )
        elif spec.weight_decay_policy == "poly":
            steps.append(
                NvidiaDecay(
                    kind,  # type: ignore[arg-type]
                    spec.weight_decay,
                    spec.max_weight_decay,
                    spec.weight_decay_power,
                    spec.max_iter,
                )
            )
        else:
            steps.append(AddDecay(kind=kind, weight_decay=spec.weight_decay))  # type: ignore[arg-type]
    if isinstance(solver_step, NvidiaSGD) and not solver_step.sag and _plain_sgd(solver_step):
        # no NVIDIA feature in use: the GPU kernel is BVLC's SGD with the decay added first
        solver_step = Momentum(solver_step.momentum)
        if solver_step is not None and has_decay:
            steps.append(AddDecay(kind=kind, weight_decay=spec.weight_decay))  # type: ignore[arg-type]
    if has_decay and not nvidia:
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
    assert solver_step is not None
    steps.append(solver_step)
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
        shared = [g.key for g in params if g.sharers]
        if spec.dialect == "tsn" and shared:
            notes.append(
                Note(
                    "rule.tsn.shared_params",
                    "TSN's fork updates every sharer of a shared blob on its own (its own "
                    "history, lr_mult and decay) and adds the sharers' updates to the owner "
                    "(yjxiong/caffe solver.cpp:637-650 loops over net.params(), net.cpp:907-940); "
                    "BVLC Caffe 1.0 updates the owner once with the summed gradient, and so does "
                    f"this rule: shared blobs {', '.join(shared[:4])}",
                    Severity.WARNING,
                    SourceLocation(recipe.net.path),
                    True,
                    Exactness.APPROX,
                )
            )
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
        dialect=spec.dialect,
    )
