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
``net`` and ``net_param`` both given           ``solver.cpp:131-133``
too few ``test_iter`` for the test nets        ``solver.cpp:137-143``
``test_state`` count != test nets              ``solver.cpp:146-148``
test nets but ``test_interval <= 0``           ``solver.cpp:149-151``
``type`` not a registered solver               ``solver_factory.hpp:73-76``
``momentum != 0`` with AdaGrad / RMSProp       ``sgd_solvers.hpp:75-77, 95-97``
RMSProp ``rms_decay`` outside ``[0, 1)``       ``sgd_solvers.hpp:98-101``
``lr_policy`` missing or unknown               ``sgd_solver.cpp:66-68``
``gamma < 0`` (step/exp/inv/multistep/sigm.)   ``sgd_solver.cpp:35,39,42,53,61``
``stepsize <= 0`` (step, sigmoid)              ``sgd_solver.cpp:33,62``
unknown ``regularization_type``, decay != 0    ``sgd_solver.cpp:160-182``
=============================================  ===============================================

Two more are rejected although Caffe does not abort, because training would silently be NaN or
empty: ``lr_policy: "poly"`` with ``max_iter`` 0 (``sgd_solver.cpp:56-59`` divides ``iter`` by
``max_iter``: 0/0 = NaN at the first update) and ``iter_size < 1`` (``solver.cpp:229-233`` runs
no forward/backward pass and then scales by ``1/iter_size``).

Floats are the float32 values Caffe uses: protobuf ``float`` fields read back as the rounded
value (``momentum: 0.9`` -> 0.8999999761581421).
"""

from __future__ import annotations

from typing import Any

from caffe2tf.caffe.model import SolverSpec
from caffe2tf.caffe.parse import Parsed
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Note, Severity

__all__ = [
    "LR_POLICIES",
    "REGULARIZATION_TYPES",
    "SOLVER_TYPES",
    "build_solver_spec",
    "check_solver",
]

#: ``SGDSolver::GetLearningRate`` (``sgd_solver.cpp:26-70``), case-sensitive.
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
#: The solvers registered by ``REGISTER_SOLVER_CLASS`` in ``src/caffe/solvers/*.cpp``.
SOLVER_TYPES = ("AdaDelta", "AdaGrad", "Adam", "Nesterov", "RMSProp", "SGD")
#: ``SGDSolver::Regularize`` (``sgd_solver.cpp:155-215``).
REGULARIZATION_TYPES = ("L1", "L2")

_GAMMA_POLICIES = ("step", "exp", "inv", "multistep", "sigmoid")
_STEPSIZE_POLICIES = ("step", "sigmoid")

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
    msg: Any, parsed: Parsed, locations: dict[str, SourceLocation], *, lenient: bool = False
) -> list[Note]:
    """Raise :class:`InputError` for what Caffe refuses; return notes for lenient leniencies."""
    notes: list[Note] = []
    path = parsed.path

    def loc(field: str) -> SourceLocation:
        return locations.get(field) or parsed.location(field) or SourceLocation(path)

    def fail(field: str, reason: str) -> InputError:
        return InputError(reason, loc(field))

    # the factory checks the type before constructing anything (solver_factory.hpp:73-76)
    if msg.type not in SOLVER_TYPES:
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
    if not train_fields:
        raise InputError(
            "SolverParameter must specify a train net using one of these fields: "
            "net, net_param, train_net, train_net_param (solver.cpp:79-81)",
            SourceLocation(path),
        )
    if len(train_fields) > 1:
        raise fail(
            train_fields[1],
            "SolverParameter must not contain more than one of these fields specifying "
            f"a train_net: net, net_param, train_net, train_net_param (found "
            f"{', '.join(train_fields)}; solver.cpp:82-84)",
        )
    # solver.cpp:128-151 (InitTestNets)
    num_generic = int(msg.HasField("net")) + int(msg.HasField("net_param"))
    num_test_nets = len(msg.test_net_param) + len(msg.test_net)
    n_iter = len(msg.test_iter)
    if (num_generic and n_iter < num_test_nets) or (not num_generic and n_iter != num_test_nets):
        raise fail(
            "test_iter" if n_iter else ("test_net" if msg.test_net else "test_net_param"),
            f"test_iter must be specified for each test network ({num_test_nets} test "
            f"net(s), {n_iter} test_iter; solver.cpp:137-143)",
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
    # sgd_solver.cpp:26-70
    policy = msg.lr_policy
    if policy not in LR_POLICIES:
        reason = (
            f"Unknown learning rate policy: {policy!r}"
            if policy
            else "lr_policy is missing: Caffe has no default policy ('Unknown learning rate "
            "policy: ')"
        )
        reason += f" (known: {', '.join(LR_POLICIES)}; sgd_solver.cpp:66-68)"
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
    if policy in _GAMMA_POLICIES and msg.gamma < 0:
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
    if msg.weight_decay != 0 and msg.regularization_type not in REGULARIZATION_TYPES:
        raise fail(
            "regularization_type",
            f"Unknown regularization type: {msg.regularization_type} (Caffe accepts "
            "'L2' and 'L1' when weight_decay != 0; sgd_solver.cpp:160-182)",
        )
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
                "(sgd_solver.cpp:162-164)",
                Severity.INFO,
                loc("regularization_type"),
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
) -> SolverSpec:
    """Check ``msg`` (an upgraded ``SolverParameter``) and freeze it into a :class:`SolverSpec`."""
    more = check_solver(msg, parsed, locations, lenient=lenient)
    defaulted = frozenset(
        f.name for f in msg.DESCRIPTOR.fields if f.has_presence and not msg.HasField(f.name)
    )
    defaulted |= frozenset(
        f.name for f in msg.DESCRIPTOR.fields if f.is_repeated and len(getattr(msg, f.name)) == 0
    )
    top_locations = {k: v for k, v in locations.items() if "." not in k and "[" not in k}
    values = {name: getattr(msg, name) for name in _SPEC_FIELDS}
    return SolverSpec(
        path=parsed.path,
        stepvalue=tuple(msg.stepvalue),
        net_path=net_path,
        defaulted=defaulted,
        locations=top_locations,
        message=msg,
        notes=tuple(notes) + tuple(more),
        **values,
    )
