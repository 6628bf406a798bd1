"""Build a :class:`SolverSpec` from an upgraded ``SolverParameter`` and apply Caffe's own checks.

Every check below is one that BVLC Caffe performs (a ``CHECK`` or ``LOG(FATAL)`` that aborts the
run) and is reported with Caffe's reason and the ``file:line:col`` of the offending field (or of
the file when the field is absent). Citations: BVLC/caffe ``9b891540``.

=============================================  ===============================================
condition                                      Caffe source
=============================================  ===============================================
``average_loss < 1``                           ``solver.cpp:48`` (CHECK_GE, "should be
                                               non-negative")
not exactly one train net field                ``solver.cpp:79-84``
``net`` and ``net_param`` both given           ``solver.cpp:126-127``
too few ``test_iter`` for the test nets        ``solver.cpp:131-137``
``test_state`` count != test nets              ``solver.cpp:146-148``
test nets but ``test_interval <= 0``           ``solver.cpp:149-151``
``type`` not a registered solver               ``solver_factory.hpp:73-76``
``momentum != 0`` with AdaGrad / RMSProp       ``sgd_solvers.hpp:75-77, 95-97``
RMSProp ``rms_decay`` outside ``[0, 1)``       ``sgd_solvers.hpp:98-101``
``lr_policy`` missing or unknown               ``sgd_solver.cpp:66-68``
``gamma`` not ``>= 0`` (step/exp/inv/         ``sgd_solver.cpp:35,39,42,53,61`` (NaN
multistep/sigmoid; NaN included)               fails ``CHECK_GE`` too)
``stepsize <= 0`` (step, sigmoid)              ``sgd_solver.cpp:33,62``
unknown ``regularization_type`` and a blob     ``sgd_solver.cpp:160-182`` (the type is read
whose ``weight_decay * decay_mult`` != 0       only for such a blob; checked with the net)
=============================================  ===============================================

Two more are rejected although Caffe does not abort, because training would silently be NaN or
empty: ``lr_policy: "poly"`` with ``max_iter`` 0 (``sgd_solver.cpp:56-59`` divides ``iter`` by
``max_iter``: 0/0 = NaN at the first update) and ``iter_size < 1`` (``solver.cpp:229-233`` runs
no forward/backward pass and then scales by ``1/iter_size``).

Non-finite values (``nan``, ``inf``, ``-inf``; also a float literal beyond float32, which
becomes ``inf``) in a field the update rule reads are rejected with the field's position,
after Caffe's own checks (which reject some of them with Caffe's reason, e.g. ``gamma: nan``).
Caffe 1.0 accepts the others and trains on NaN/inf numbers. A non-finite value in a field the
rule does not read (``gamma`` under ``lr_policy: "fixed"``) is accepted with a note, as Caffe
ignores it; ``clip_gradients: -inf`` is "no clipping" like any negative value. The per-field
decisions and Caffe's verdicts are in ``docs/nonfinite.md``.

Floats are the float32 values Caffe uses: protobuf ``float`` fields read back as the rounded
value (``momentum: 0.9`` -> 0.8999999761581421).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

from caffe2tf.caffe.model import SolverSpec
from caffe2tf.caffe.parse import Parsed
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

__all__ = [
    "FORK_LR_POLICIES",
    "LR_POLICIES",
    "NVIDIA_FIELDS",
    "NVIDIA_LARC_POLICIES",
    "NVIDIA_MOMENTUM_POLICIES",
    "NVIDIA_SOLVER_TYPES",
    "NONFINITE_FIELDS",
    "REGULARIZATION_TYPES",
    "SOLVER_TYPES",
    "build_solver_spec",
    "check_finite",
    "check_nvidia",
    "check_regularization",
    "check_solver",
]

#: ``SGDSolver::GetLearningRate`` (``sgd_solver.cpp:26-70``), case-sensitive.
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
#: The solvers registered by ``REGISTER_SOLVER_CLASS`` in ``src/caffe/solvers/*.cpp``.
SOLVER_TYPES = ("AdaDelta", "AdaGrad", "Adam", "Nesterov", "RMSProp", "SGD")
#: The lr policies a fork's ``GetLearningRate`` adds to BVLC's seven, per dialect: the yolo
#: fork's ``multifixed`` (QiaoXie/caffe-yolo-2 ``src/caffe/solvers/sgd_solver.cpp:32-40``).
FORK_LR_POLICIES = {"yolo": ("multifixed",)}
#: ``SGDSolver::Regularize`` (``sgd_solver.cpp:155-215``).
REGULARIZATION_TYPES = ("L1", "L2")

#: NVIDIA Caffe's solver registry: BVLC's six and ``SAG`` (NVIDIA/caffe
#: ``src/caffe/solvers/sag_solver.cpp:140``); its ``GetLearningRate`` knows BVLC's seven policies
#: (``sgd_solver.cpp:36-65``; ``plateau`` appears only in a comment of its caffe.proto, :419-420)
NVIDIA_SOLVER_TYPES = (*SOLVER_TYPES, "SAG")
#: NVIDIA's ``GetMomentum`` (``sgd_solver.cpp:78-94``) and LARC policies (``:257-263``)
NVIDIA_MOMENTUM_POLICIES = ("fixed", "poly", "opt")
NVIDIA_LARC_POLICIES = ("scale", "clip")
#: NVIDIA's solver fields that change training, with their caffe.proto defaults
#: (NVIDIA/caffe caffe.proto:392-394,429-442): SolverSpec attributes of the same names
NVIDIA_FIELDS = (
    "rampup_interval",
    "rampup_lr",
    "min_lr",
    "momentum_policy",
    "max_momentum",
    "momentum_power",
    "larc",
    "larc_policy",
    "larc_eta",
    "larc_turbo",
    "weight_decay_policy",
    "weight_decay_power",
    "max_weight_decay",
)

_GAMMA_POLICIES = ("step", "exp", "inv", "multistep", "sigmoid")
_STEPSIZE_POLICIES = ("step", "sigmoid")

#: float fields of the rule -> when the rule reads them (policy, solver type) and what a
#: non-finite value would do in Caffe 1.0, which accepts it (sgd_solver.cpp:26-70, 87-127,
#: 155-215; the solvers' ComputeUpdateValue).
_READ_BY_POLICY = {"gamma": _GAMMA_POLICIES, "power": ("inv", "poly")}
_READ_BY_TYPE = {
    "momentum": ("SGD", "Nesterov", "AdaDelta", "Adam"),
    "momentum2": ("Adam",),
    "delta": ("AdaGrad", "RMSProp", "AdaDelta", "Adam"),
    "rms_decay": ("RMSProp",),
}
_NONFINITE_EFFECT = {
    "base_lr": "every learning rate would be {v}, and the weights NaN/inf after one update",
    "gamma": "the learning rate would become inf, 0 or NaN after the first decay",
    "power": "the learning rate would become 0, inf or NaN",
    "momentum": "the solver's history (and so the weights) would become NaN/inf",
    "momentum2": "Adam's second moment (and so the weights) would become NaN/inf",
    "rms_decay": "the squared-gradient history would become NaN/inf",
    "delta": "every update would be 0 or NaN",
    "weight_decay": "every decayed gradient would become NaN/inf",
    "clip_gradients": "Caffe never clips with it (no norm is greater than {v}, "
    "sgd_solver.cpp:87-106); remove the field, or write -1, to say no clipping",
}
#: the float fields of SolverParameter that the update rule can read
NONFINITE_FIELDS = tuple(_NONFINITE_EFFECT)

#: SolverSpec field names that come straight from SolverParameter fields of the same name.
_SPEC_FIELDS = (
    "type",
    "base_lr",
    "lr_policy",
    "gamma",
    "power",
    "stepsize",
    "max_iter",
    "momentum",
    "momentum2",
    "delta",
    "rms_decay",
    "weight_decay",
    "regularization_type",
    "clip_gradients",
    "iter_size",
)


def check_solver(
    msg: Any,
    parsed: Parsed,
    locations: dict[str, SourceLocation],
    *,
    lenient: bool = False,
    defer_regularization: bool = False,
    net_given: bool = False,
    dialect: str = "bvlc",
) -> list[Note]:
    """Raise :class:`InputError` for what Caffe refuses; return notes for lenient leniencies.

    ``dialect="nvidia"``: NVIDIA Caffe's checks instead (:func:`check_nvidia`); it has no gamma
    or stepsize CHECKs, its GPU code never aborts on a ``regularization_type``, and it adds
    ``SAG`` and the checks of its own fields.

    ``defer_regularization``: the caller knows the train net and calls
    :func:`check_regularization` with it (an unknown ``regularization_type`` aborts Caffe only
    when some blob is decayed); otherwise every blob is assumed decayed (Caffe's default
    ``decay_mult`` 1). ``net_given``: the train net comes from ``--net``, so a solver that
    names none is read as if it said ``net: NET`` (tools such as DIGITS write solvers without
    a net field and hand Caffe the net themselves)."""
    notes: list[Note] = []
    path = parsed.path

    def loc(field: str) -> SourceLocation:
        return locations.get(field) or parsed.location(field) or SourceLocation(path)

    def fail(field: str, reason: str) -> InputError:
        return InputError(reason, loc(field))

    nvidia = dialect == "nvidia"
    # the factory checks the type before constructing anything (solver_factory.hpp:73-76)
    if nvidia and msg.type not in NVIDIA_SOLVER_TYPES:
        raise fail(
            "type",
            f"Unknown solver type: {msg.type} (NVIDIA Caffe knows "
            f"{', '.join(NVIDIA_SOLVER_TYPES)}; solver_factory.hpp)",
        )
    if not nvidia and msg.type not in SOLVER_TYPES:
        raise fail(
            "type",
            f"Unknown solver type: {msg.type} (known types: "
            f"{', '.join(SOLVER_TYPES)}; solver_factory.hpp:73-76)",
        )
    # solver.cpp:48
    if msg.average_loss < 1:
        raise fail(
            "average_loss",
            f"average_loss should be non-negative (Caffe requires >= 1, "
            f"got {msg.average_loss}; solver.cpp:48)",
        )
    # solver.cpp:76-84
    train_fields = [
        f for f in ("net", "net_param", "train_net", "train_net_param") if msg.HasField(f)
    ]
    if not train_fields and net_given:
        notes.append(
            Note(
                "solver.net_from_option",
                "the solver names no train net (Caffe alone would refuse it, solver.cpp:79-81); "
                "the --net file is used as if the solver said net: NET",
                Severity.INFO,
                SourceLocation(path),
            )
        )
    elif not train_fields:
        raise InputError(
            "SolverParameter must specify a train net using one of these fields: "
            "net, net_param, train_net, train_net_param (solver.cpp:79-81; or give --net NET)",
            SourceLocation(path),
        )
    if len(train_fields) > 1:
        raise fail(
            train_fields[1],
            "SolverParameter must not contain more than one of these fields specifying "
            f"a train_net: net, net_param, train_net, train_net_param (found "
            f"{', '.join(train_fields)}; solver.cpp:82-84)",
        )
    # solver.cpp:122-151 (InitTestNets)
    num_generic = int(msg.HasField("net")) + int(msg.HasField("net_param"))
    num_generic += int(net_given and not train_fields)  # --net stands for net: NET
    num_test_nets = len(msg.test_net_param) + len(msg.test_net)
    n_iter = len(msg.test_iter)
    if (num_generic and n_iter < num_test_nets) or (not num_generic and n_iter != num_test_nets):
        raise fail(
            "test_iter" if n_iter else ("test_net" if msg.test_net else "test_net_param"),
            f"test_iter must be specified for each test network ({num_test_nets} test "
            f"net(s), {n_iter} test_iter; solver.cpp:131-137)",
        )
    instances = num_test_nets + (n_iter - num_test_nets)
    if len(msg.test_state) and len(msg.test_state) != instances:
        raise fail(
            "test_state",
            "test_state must be unspecified or specified once per test net "
            f"({instances} test net(s); solver.cpp:146-148)",
        )
    if instances and msg.test_interval <= 0:
        raise fail(
            "test_interval",
            f"{instances} test net(s) but test_interval is {msg.test_interval}: Caffe "
            "requires test_interval > 0 when testing (CHECK_GT, solver.cpp:149-151)",
        )
    if msg.type in ("AdaGrad", "RMSProp") and msg.momentum != 0:
        raise fail(
            "momentum",
            f"Momentum cannot be used with {msg.type} (momentum is "
            f"{msg.momentum:g}; sgd_solvers.hpp:75-77,95-97)",
        )
    if msg.type == "RMSProp" and not 0 <= msg.rms_decay < 1:
        raise fail(
            "rms_decay",
            f"rms_decay should lie between 0 and 1 (got {msg.rms_decay:g}; sgd_solvers.hpp:98-101)",
        )
    if nvidia:
        notes.extend(check_nvidia(msg, loc, fail))
        return notes
    # sgd_solver.cpp:26-70
    policy = msg.lr_policy
    known = LR_POLICIES + FORK_LR_POLICIES.get(dialect, ())
    if policy == "multifixed" and policy in known:
        _check_multifixed(msg, fail)
    if policy not in known:
        reason = (
            f"Unknown learning rate policy: {policy!r}"
            if policy
            else "lr_policy is missing: Caffe has no default policy ('Unknown learning rate "
            "policy: ')"
        )
        reason += f" (known: {', '.join(known)}; sgd_solver.cpp:66-68)"
        if lenient and policy:
            notes.append(
                Note(
                    "lenient.unknown_lr_policy",
                    f"{reason}; kept as written because of --lenient: BVLC Caffe "
                    "would abort at the first update",
                    Severity.WARNING,
                    loc("lr_policy"),
                    affects_training=True,
                )
            )
        else:
            raise fail("lr_policy", reason)
    if policy in _GAMMA_POLICIES and not msg.gamma >= 0:  # NaN fails CHECK_GE too
        raise fail(
            "gamma",
            f"gamma must be >= 0 for lr_policy {policy!r} (got {msg.gamma:g}; "
            "CHECK_GE in sgd_solver.cpp:35-61)",
        )
    if policy in _STEPSIZE_POLICIES and msg.stepsize <= 0:
        what = "absent (0)" if not msg.HasField("stepsize") else str(msg.stepsize)
        raise fail(
            "stepsize",
            f"stepsize must be > 0 for lr_policy {policy!r} (it is {what}; "
            "CHECK_GT in sgd_solver.cpp:33,62)",
        )
    if policy == "poly" and msg.max_iter == 0:
        raise fail(
            "max_iter",
            "lr_policy 'poly' divides by max_iter, which is "
            f"{'absent (0)' if not msg.HasField('max_iter') else '0'}: Caffe "
            "would compute a NaN learning rate (sgd_solver.cpp:56-59)",
        )
    if not defer_regularization:
        check_regularization(msg, None, loc("regularization_type"))
    if msg.iter_size < 1:
        raise fail(
            "iter_size",
            f"iter_size must be >= 1 (got {msg.iter_size}): Caffe would run "
            "no forward/backward pass and scale by 1/iter_size "
            "(solver.cpp:229-233, sgd_solver.cpp:129-135)",
        )
    if msg.weight_decay == 0 and msg.regularization_type not in REGULARIZATION_TYPES:
        notes.append(
            Note(
                "solver.regularization_unused",
                f"regularization_type {msg.regularization_type!r} is not one Caffe "
                "knows, but weight_decay is 0 so Caffe never reads it "
                "(sgd_solver.cpp:162-165)",
                Severity.INFO,
                loc("regularization_type"),
            )
        )
    # an unknown regularization_type is judged with the net first (Caffe's reason wins), then
    # weight_decay's value (check_finite_with_net)
    deferred = defer_regularization and msg.regularization_type not in REGULARIZATION_TYPES
    fields = tuple(f for f in NONFINITE_FIELDS if not (deferred and f == "weight_decay"))
    notes.extend(check_finite(msg, loc, fields))
    return notes


def check_nvidia(msg: Any, loc: Any, fail: Any) -> list[Note]:
    """NVIDIA Caffe's own checks on what its update reads (citations: NVIDIA/caffe 87a25543,
    ``src/caffe/solvers/sgd_solver.cpp`` unless said otherwise), then the non-finite values
    caffe2tf refuses (docs/nonfinite.md). ``loc(field)``, ``fail(field, reason)`` as in
    :func:`check_solver`. Fields NVIDIA reads only in some cases are checked in those cases."""
    notes: list[Note] = []
    get = _nvidia_getter(msg)
    policy = msg.lr_policy
    rampup = int(get("rampup_interval"))
    # the ramp-up branch runs first (:29-35): the policy is read from k = rampup_interval on
    policy_read = msg.max_iter > rampup
    if not get("min_lr") >= 0:  # CHECK_GE(min_lr, 0.F) on every call (:27-28)
        raise fail("min_lr", f"min_lr must be >= 0 (got {get('min_lr'):g}; CHECK_GE, :28)")
    if policy not in LR_POLICIES and policy_read:
        reason = (
            f"Unknown learning rate policy: {policy!r}"
            if policy
            else "lr_policy is missing: NVIDIA Caffe has no default policy"
        )
        if policy == "plateau":
            reason += (
                " (NVIDIA's caffe.proto describes 'plateau' in a comment, :419-420, but its "
                "GetLearningRate does not implement it)"
            )
        raise fail("lr_policy", f"{reason} (known: {', '.join(LR_POLICIES)}; :63-64)")
    if policy == "step" and msg.stepsize <= 0 and policy_read:
        raise fail(
            "stepsize",
            f"lr_policy 'step' divides the iteration by stepsize, which is {msg.stepsize}: "
            "NVIDIA Caffe would crash on an integer division by zero or step backwards (:39)",
        )
    if policy == "poly" and policy_read:
        if msg.max_iter <= 0:
            raise fail("max_iter", "lr_policy 'poly' with max_iter <= 0: no update would run")
        if not msg.base_lr >= get("min_lr"):
            raise fail(
                "base_lr",
                f"base_lr {msg.base_lr:g} < min_lr {get('min_lr'):g}: CHECK_GE(base_lr, min_lr) "
                "of lr_policy 'poly' (:55-56)",
            )
    reads_momentum_policy = msg.type in ("SGD", "SAG") or msg.display > 0
    if get("momentum_policy") not in NVIDIA_MOMENTUM_POLICIES and reads_momentum_policy:
        raise fail(
            "momentum_policy",
            f"Unknown momentum policy: {get('momentum_policy')} (known: "
            f"{', '.join(NVIDIA_MOMENTUM_POLICIES)}; :92-93, read by SGD and SAG and, with "
            "display > 0, by PrintRate :178)",
        )
    if get("momentum_policy") == "poly" and reads_momentum_policy and msg.max_iter <= 0:
        raise fail("max_iter", "momentum_policy 'poly' divides by max_iter, which is 0 (:83-84)")
    if get("weight_decay_policy") == "poly" and msg.weight_decay != 0 and msg.max_iter <= 0:
        raise fail("max_iter", "weight_decay_policy 'poly' divides by max_iter, which is 0 (:106)")
    if get("larc") and msg.type in ("SGD", "SAG"):
        if get("larc_policy") not in NVIDIA_LARC_POLICIES:
            raise fail(
                "larc_policy",
                f"Unknown larc policy: {get('larc_policy')} (known: scale, clip; :261-262, "
                "sag_solver.cpp:31-32)",
            )
    if msg.type == "SAG" and msg.regularization_type not in ("L2", "WD"):
        raise fail(
            "regularization_type",
            f"Unknown regularization mode: {msg.regularization_type} (SAG's GPU kernel knows "
            "L2 and WD; sag_solver.cu:173-185)",
        )
    if msg.iter_size < 1:
        raise fail("iter_size", f"iter_size must be >= 1 (got {msg.iter_size})")
    notes.extend(check_finite(msg, loc, NONFINITE_FIELDS))
    read = {
        "rampup_lr": rampup > 0,
        "min_lr": True,
        "max_momentum": get("momentum_policy") in ("poly", "opt"),
        "momentum_power": get("momentum_policy") == "poly",
        "larc_eta": bool(get("larc")),
        "max_weight_decay": get("weight_decay_policy") == "poly",
        "weight_decay_power": get("weight_decay_policy") == "poly",
    }
    for name, is_read in read.items():
        value = float(get(name))
        if is_read and not math.isfinite(value):
            raise fail(
                name,
                f"{name} is {value}: NVIDIA Caffe would train on NaN/inf numbers; caffe2tf "
                "refuses non-finite hyper-parameters (see docs/nonfinite.md)",
            )
    return notes


def _check_multifixed(msg: Any, fail: Any) -> None:
    """The yolo fork's ``multifixed`` (QiaoXie/caffe-yolo-2 ``sgd_solver.cpp:32-40``): it
    CHECKs that ``stageiter`` and ``stagelr`` have as many entries (:33); with none it would
    read ``stagelr(-1)`` (:39-40), out of bounds, so that is refused too; a non-finite stage
    rate would train on NaN/inf (refused as every such field is, docs/nonfinite.md)."""
    n_lr, n_iter = len(msg.stagelr), len(msg.stageiter)
    if n_lr != n_iter:
        raise fail(
            "stagelr" if n_lr else "stageiter",
            f"lr_policy 'multifixed' needs one stageiter per stagelr ({n_iter} stageiter, "
            f"{n_lr} stagelr; CHECK_EQ in the yolo fork's sgd_solver.cpp:33)",
        )
    if n_lr == 0:
        raise fail(
            "lr_policy",
            "lr_policy 'multifixed' without stagelr/stageiter: the yolo fork would read "
            "stagelr(-1), past the end of the list (sgd_solver.cpp:35-40)",
        )
    for value in msg.stagelr:
        if not math.isfinite(value):
            raise fail(
                "stagelr",
                f"stagelr holds {value}: every rate of that stage would be {value}, and the "
                "weights NaN/inf. caffe2tf refuses non-finite hyper-parameters that Caffe "
                "would train with (see docs/nonfinite.md)",
            )


def _nvidia_getter(msg: Any) -> Any:
    """``get(field)``: the NVIDIA field's value, or NVIDIA's default when ``msg`` is a BVLC
    message (a BVLC-schema solver run by NVIDIA Caffe because its net is NVIDIA's)."""
    from caffe2tf.caffe.model import SolverSpec

    defaults = {f.name: f.default for f in dataclasses.fields(SolverSpec)}

    def get(name: str) -> Any:
        if name in {f.name for f in msg.DESCRIPTOR.fields}:
            return getattr(msg, name)
        return defaults[name]

    return get


def _f32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def check_regularization(
    msg: Any, decay_mults: list[float] | None, where: SourceLocation
) -> Note | None:
    """``SGDSolver::Regularize`` reads ``regularization_type`` only for a blob whose
    ``local_decay = weight_decay * decay_mult`` (formed in float) is not 0
    (``sgd_solver.cpp:160-182``; NaN counts as not 0) and aborts there on a type other than
    "L2"/"L1". ``decay_mults`` are the train net's blobs (None: unknown, every blob assumed
    decayed). Raises :class:`InputError` when Caffe aborts; a note when the unknown type is
    never read because no blob is decayed."""
    kind = msg.regularization_type
    if msg.weight_decay == 0 or kind in REGULARIZATION_TYPES:
        return None
    if decay_mults is None or any(_f32(msg.weight_decay * d) != 0 for d in decay_mults):
        raise InputError(
            f"Unknown regularization type: {kind} (Caffe accepts 'L2' and 'L1' when a blob's "
            "weight_decay * decay_mult != 0; sgd_solver.cpp:160-182)",
            where,
        )
    return Note(
        "solver.regularization_unused",
        f"regularization_type {kind!r} is not one Caffe knows, but no blob of the train net is "
        "decayed (weight_decay x decay_mult is 0 for each), so Caffe never reads it "
        "(sgd_solver.cpp:160-164)",
        Severity.INFO,
        where,
    )


def check_finite(msg: Any, loc: Any, fields: tuple[str, ...]) -> list[Note]:
    """Reject a non-finite value in a float field the rule reads (Caffe accepts it and trains
    on NaN/inf); note one in a field the rule does not read. Runs after Caffe's own checks, so
    where Caffe aborts on the value its reason is the one reported. ``fields``: those of
    :data:`NONFINITE_FIELDS` to look at; ``loc(name)`` gives a field's location."""
    notes: list[Note] = []
    for name in fields:
        effect = _NONFINITE_EFFECT[name]
        value = getattr(msg, name)
        if math.isfinite(value) or (name == "clip_gradients" and value < 0):
            continue
        if name in _READ_BY_POLICY:
            reader = f"lr_policy {msg.lr_policy!r}"
            read = msg.lr_policy in _READ_BY_POLICY[name]
        elif name in _READ_BY_TYPE:
            reader = f"solver type {msg.type}"
            read = msg.type in _READ_BY_TYPE[name]
        else:
            reader, read = "", True
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        if read:
            raise InputError(
                f"{name} is {text}: {effect.format(v=text)}. caffe2tf refuses non-finite "
                "hyper-parameters that Caffe would train with (see docs/nonfinite.md)",
                loc(name),
            )
        notes.append(
            Note(
                "solver.nonfinite_unused",
                f"{name} is {text}, but {reader} does not read it (nor does Caffe)",
                Severity.INFO,
                loc(name),
            )
        )
    return notes


def build_solver_spec(
    msg: Any,
    parsed: Parsed,
    locations: dict[str, SourceLocation],
    notes: tuple[Note, ...] = (),
    *,
    lenient: bool = False,
    net_path: str | None = None,
    defer_regularization: bool = False,
    net_given: bool = False,
    dialect: str = "bvlc",
) -> SolverSpec:
    """Check ``msg`` (an upgraded ``SolverParameter``) and freeze it into a :class:`SolverSpec`
    (``defer_regularization``, ``net_given``, ``dialect``: see :func:`check_solver`)."""
    more = check_solver(
        msg,
        parsed,
        locations,
        lenient=lenient,
        defer_regularization=defer_regularization,
        net_given=net_given,
        dialect=dialect,
    )
    defaulted = frozenset(
        f.name for f in msg.DESCRIPTOR.fields if f.has_presence and not msg.HasField(f.name)
    )
    defaulted |= frozenset(
        f.name for f in msg.DESCRIPTOR.fields if f.is_repeated and len(getattr(msg, f.name)) == 0
    )
    top_locations = {k: v for k, v in locations.items() if "." not in k and "[" not in k}
    values = {name: getattr(msg, name) for name in _SPEC_FIELDS}
    if dialect == "nvidia":
        get = _nvidia_getter(msg)
        values.update({name: get(name) for name in NVIDIA_FIELDS})
        values["has_max_momentum"] = "max_momentum" not in defaulted and hasattr(
            msg, "max_momentum"
        )
    if dialect in FORK_LR_POLICIES:  # the yolo fork's multifixed stages
        values["stagelr"] = tuple(msg.stagelr)
        values["stageiter"] = tuple(msg.stageiter)
    return SolverSpec(
        dialect=dialect,
        path=parsed.path,
        stepvalue=tuple(msg.stepvalue),
        net_path=net_path,
        defaulted=defaulted,
        locations=top_locations,
        message=msg,
        notes=tuple(notes) + tuple(more),
        **values,
    )
