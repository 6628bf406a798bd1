"""Continue a Caffe run in Keras: a ``.caffemodel`` and ``.solverstate`` snapshot loaded into a
Keras model and the optimizer the emitted ``optimizer.py`` builds.

Caffe's snapshot (``Solver::Snapshot``, ``solver.cpp:420-435``; ``SGDSolver::
SnapshotSolverStateToBinaryProto``, ``sgd_solver.cpp:271-287``) holds the net's blobs and a
``SolverState``: ``iter`` (updates applied), ``current_step`` and ``history``, one blob per
learnable param in ``learnable_params_`` order, followed by a second set for AdaDelta (the
squared updates) and Adam (the second moments), whose ``PreSolve`` appends them
(``adadelta_solver.cpp:8-17``, ``adam_solver.cpp:14``).

Where each history goes in Keras (docs/keras-target.md#solver-mapping):

* ``SGD`` / Nesterov (``keras.optimizers.SGD``): Keras keeps ``m = mu*m - lr*g`` and adds it,
  Caffe keeps ``h = mu*h + lr*g`` and subtracts it: ``momentums = -h``;
* ``Adam``: ``_momentums = m``, ``_velocities = v``; RMSProp as ``Adam(beta_1=0)``:
  ``_velocities = h`` (the first moment is recomputed from each gradient);
* ``Adadelta``: ``_accumulated_grads`` = Caffe's history, ``_accumulated_delta_vars`` = its
  update history;
* caffe2tf's ``CaffeSGD``/``CaffeAdaGrad``/``CaffeRMSProp``/``CaffeAdaDelta``/``CaffeAdam``:
  their slots hold Caffe's own quantities.

The step counters become ``iter`` (times ``iter_size`` for the custom optimizer, which counts
micro-batches), so schedules and Adam's bias correction continue where Caffe stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caffe2tf.errors import InputError, SourceLocation

PathLike = str | os.PathLike[str]


def _blob_array(blob: Any) -> np.ndarray:
    """A ``BlobProto`` as an array of its shape (``shape.dim``, or the legacy 4-D fields)."""
    dims = list(blob.shape.dim) if blob.HasField("shape") else None
    if dims is None:
        dims = [blob.num, blob.channels, blob.height, blob.width]
    values = blob.double_data if len(blob.double_data) else blob.data
    return np.asarray(values, dtype=np.float32).reshape(dims)


def _read(path: PathLike, message: Any, what: str) -> Any:
    p = os.fspath(path)
    try:
        message.ParseFromString(Path(p).read_bytes())
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", SourceLocation(p)) from None
    except Exception as err:  # protobuf's DecodeError
        raise InputError(f"not a binary {what}: {err}", SourceLocation(p)) from None
    return message


def read_caffemodel(path: PathLike) -> dict[str, np.ndarray]:
    """``{"layer/i": blob}`` of a binary ``.caffemodel`` (V2 ``layer`` or V1 ``layers``)."""
    from caffe2tf.caffe._proto import caffe_pb2

    net = _read(path, caffe_pb2.NetParameter(), "NetParameter (.caffemodel)")
    out = {}
    for layer in (*net.layer, *net.layers):
        for i, blob in enumerate(layer.blobs):
            out[f"{layer.name}/{i}"] = _blob_array(blob)
    return out


def read_solverstate(path: PathLike) -> tuple[int, int, list[np.ndarray]]:
    """``(iter, current_step, history)`` of a binary ``.solverstate``."""
    from caffe2tf.caffe._proto import caffe_pb2

    state = _read(path, caffe_pb2.SolverState(), "SolverState (.solverstate)")
    return int(state.iter), int(state.current_step), [_blob_array(b) for b in state.history]


def _slots(opt: Any, index: int, solver: str) -> list[tuple[Any, int, float]]:
    """``(optimizer variable, history set, sign)`` for the variable at ``index`` of ``opt``."""
    name = type(opt).__name__
    if name == "SGD":
        return [(opt.momentums[index], 0, -1.0)] if opt.momentums else []
    if name == "Adam":
        if solver == "RMSProp":
            return [(opt._velocities[index], 0, 1.0)]
        return [(opt._momentums[index], 0, 1.0), (opt._velocities[index], 1, 1.0)]
    if name == "Adadelta":
        return [
            (opt._accumulated_grads[index], 0, 1.0),
            (opt._accumulated_delta_vars[index], 1, 1.0),
        ]
    if name in ("CaffeSGD", "CaffeAdaGrad", "CaffeRMSProp"):
        return [(opt.slot("history", index), 0, 1.0)]
    if name == "CaffeAdaDelta":
        return [(opt.slot("history", index), 0, 1.0), (opt.slot("update_history", index), 1, 1.0)]
    if name == "CaffeAdam":
        return [(opt.slot("m", index), 0, 1.0), (opt.slot("v", index), 1, 1.0)]
    raise InputError(f"cannot load Caffe's solver state into a {name} optimizer")


def import_caffe_snapshot(
    solver: PathLike,
    model: Any,
    optimizer: Any,
    caffemodel: PathLike,
    solverstate: PathLike,
    *,
    net: PathLike | None = None,
    layer_map: Mapping[str, str] | None = None,
) -> int:
    """Load a Caffe snapshot into ``model`` (prepared with the emitted ``prepare_model``) and
    ``optimizer`` (from the emitted ``build_optimizer()``); returns Caffe's ``iter``.

    Afterwards, training in Keras per the module's contract continues Caffe's run."""
    from caffe2tf.app.pipeline import keras_plan, load_pipeline
    from caffe2tf.targets.keras.runtime import caffe_blob_key
    from caffe2tf.verify.keras_harness import fast_forward, optimizers_in
    from caffe2tf.verify.mirror import caffe_to_keras

    pipeline = load_pipeline(solver, net_path=net, lenient=False)
    rule = pipeline.rule
    plan, _ = keras_plan(pipeline, layer_map)
    blobs = read_caffemodel(caffemodel)
    iteration, _, history = read_solverstate(solverstate)
    owners = [g.key for g in rule.params]
    sets = len(history) // max(1, len(owners))
    if not owners or len(history) != sets * len(owners) or sets not in (1, 2):
        raise InputError(
            f"the solver state holds {len(history)} history blobs for {len(owners)} learnable "
            "params: not a snapshot of this solver and net",
            SourceLocation(os.fspath(solverstate)),
        )
    variables = {caffe_blob_key(v.path): v for v in model.variables}
    trainable = [v for v in model.trainable_variables]
    fast_forward(optimizer, trainable, iteration * max(1, rule.iter_size))
    for b in plan.blobs:
        var = variables.get(f"{b.keras_layer}/{b.blob}")
        if var is None:
            raise InputError(f"no Keras variable holds Caffe blob {b.caffe_key}")
        if b.caffe_key not in blobs:
            raise InputError(
                f"the .caffemodel has no blob {b.caffe_key}", SourceLocation(os.fspath(caffemodel))
            )
        var.assign(caffe_to_keras(b.layer_type, b.blob, blobs[b.caffe_key]))
        if not b.trainable or b.caffe_key not in owners:
            continue
        j = owners.index(b.caffe_key)
        opt = next(
            (o for o in optimizers_in(optimizer)[1:] if _routes_to(optimizer, o, var)), optimizer
        )
        index = opt._get_variable_index(var)
        for slot, which, sign in _slots(opt, index, rule.solver):
            slot.assign(
                sign * caffe_to_keras(b.layer_type, b.blob, history[which * len(owners) + j])
            )
    return iteration


def _routes_to(multi: Any, inner: Any, variable: Any) -> bool:
    """Whether ``multi`` (a ``MultiOptimizer``) hands ``variable`` to ``inner``."""
    routes = getattr(multi, "_optimizer_map", None)
    return callable(routes) and routes(variable) is inner
