"""Exact Caffe pieces for TF1-style graphs (``tf.compat.v1``), inlined into ``train_op_v1.py``.

:mod:`caffe2tf.targets.tf_compat_v1.render_python` copies the text between the
``# -- inline begin`` and ``# -- inline end`` markers verbatim (only the blocks a recipe uses),
so a block may use only ``tensorflow``, ``math``, ``warnings``, ``collections.abc`` and
``typing`` and must stay ``ruff format`` clean. The tests import this module too.

``caffe_train_op`` builds Caffe's fixed order (docs/caffe-semantics.md#update-order) as graph
ops run by one ``session.run(train_op)`` per forward/backward pass: accumulate ``iter_size``
passes in variables, clip the raw sum, normalize, decay (or ``tf.nn.l2_loss`` terms in the loss
when nothing comes between the gradient and the decay), then the solver step with the rate of
``global_step`` (Caffe's ``iter_``) times lr_mult, and ``global_step += 1``. Why each built-in
is exact, with the TensorFlow source lines: docs/tf-compat-v1-target.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

# -- inline begin binder
v1 = tf.compat.v1

#: A Caffe learnable blob: (Caffe layer, blob index, lr_mult, decay_mult).
BlobRow = tuple[str, int, float, float]

#: Caffe blob index -> the TF variable names that hold it: tf.compat.v1.layers / Keras
#: (``kernel``, ``bias``) and tf.contrib.layers / slim (``weights``, ``biases``).
TF_NAMES_OF_BLOB: dict[int, tuple[str, ...]] = {
    0: ("weights", "kernel"),
    1: ("biases", "bias"),
}


def bind_caffe_blobs(
    var_list: Sequence[Any],
    blobs: Sequence[BlobRow],
    default_blob: tuple[float, float],
) -> list[tuple[Any, float, float]]:
    """``(variable, lr_mult, decay_mult)`` for every variable of ``var_list``, in its order.

    A Caffe blob is the variable named ``<caffe layer>/<weights|kernel>`` (blob 0) or
    ``<caffe layer>/<biases|bias>`` (blob 1), under any outer scope. Raises ValueError naming
    every Caffe blob with no variable (or with two); warns about variables with no Caffe blob
    (they get ``default_blob``'s multipliers)."""
    by_name = {v.op.name: v for v in var_list}
    found: dict[str, tuple[float, float]] = {}
    problems = []
    for layer, index, lr_mult, decay_mult in blobs:
        names = [f"{layer}/{n}" for n in TF_NAMES_OF_BLOB.get(index, ())]
        hits = []
        for name in by_name:
            if any(name == n or name.endswith("/" + n) for n in names):
                hits.append(name)
        if len(hits) != 1:
            what = "no variable" if not hits else f"{len(hits)} variables"
            named = " or ".join(names)
            problems.append(f"{layer!r} blob {index} ({what} named {named})")
            continue
        found[hits[0]] = (lr_mult, decay_mult)
    if problems:
        listed = ", ".join(problems)
        raise ValueError(f"Caffe blobs without exactly one TF variable: {listed}")
    extra = [name for name in by_name if name not in found]
    if extra and blobs:
        warnings.warn(
            f"TF variables with no Caffe blob (trained with lr_mult {default_blob[0]} and "
            f"decay_mult {default_blob[1]}): {', '.join(extra)}",
            stacklevel=3,
        )
    out = []
    for name, var in by_name.items():
        lr_mult, decay_mult = found.get(name, default_blob)
        out.append((var, lr_mult, decay_mult))
    return out


def slot(var: Any, name: str) -> Any:
    """A zero-initialised, non-trainable variable shaped like ``var`` (solver state)."""
    return v1.Variable(
        tf.zeros(var.shape, var.dtype.base_dtype),
        trainable=False,
        name=f"{var.op.name}/caffe_{name}",
    )


# -- inline end binder


# -- inline begin train_op
#: a solver step: the processed gradients -> the update ops
SolverStep = Callable[[list[Any]], list[Any]]
#: makes a solver's state for (variables, their lr_mults, Caffe's rate) and returns its step
Solver = Callable[[list[Any], list[float], Any], SolverStep]


def caffe_train_op(
    loss: Any,
    var_list: Sequence[Any] | None,
    blobs: Sequence[BlobRow],
    default_blob: tuple[float, float],
    *,
    learning_rate: Callable[[Any], Any],
    solver: Solver,
    weight_decay: float = 0.0,
    regularization_type: str = "L2",
    decay_in_loss: bool = False,
    clip_gradients: float = -1.0,
    iter_size: int = 1,
) -> tuple[Any, Any]:
    """``(train_op, global_step)``: one ``session.run(train_op)`` per Caffe forward/backward
    pass; ``global_step`` counts Caffe updates (its ``iter_``).

    ``learning_rate(global_step)`` is Caffe's rate; ``solver(variables, lr_mults, rate)``
    makes the solver's state and returns its step. ``decay_in_loss``: Caffe's L2 decay as
    weight_decay x decay_mult x ``tf.nn.l2_loss(w)`` terms added to the loss (exact when no
    clip comes between the gradient and the decay); else it is added to the gradient here."""
    global_step = v1.train.get_or_create_global_step()
    if var_list is None:
        var_list = v1.trainable_variables()
    bound = bind_caffe_blobs(var_list, blobs, default_blob)
    trained = [(v, lr, dm) for v, lr, dm in bound if lr != 0.0]
    variables = [v for v, _, _ in trained]
    if decay_in_loss and weight_decay:
        terms = []
        for v, _, dm in trained:
            if dm != 0.0:
                terms.append((weight_decay * dm) * tf.nn.l2_loss(v))
        if terms:
            loss = loss + tf.add_n(terms)
    grads = tf.gradients(loss, variables)
    grads = [
        tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
        for v, g in zip(variables, grads, strict=True)
    ]
    rate = tf.cast(learning_rate(global_step), tf.float32)
    step = solver(variables, [lr for _, lr, _ in trained], rate)

    def update(grads: list[Any]) -> Any:
        if clip_gradients >= 0 and grads:
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]))
            factor = tf.where(norm > clip_gradients, clip_gradients / norm, 1.0)
            grads = [g * factor for g in grads]
        if iter_size > 1:
            grads = [g * (1.0 / iter_size) for g in grads]
        if weight_decay and not decay_in_loss:
            out = []
            for g, (v, _, dm) in zip(grads, trained, strict=True):
                if dm == 0.0:
                    out.append(g)
                elif regularization_type == "L2":
                    out.append(g + (weight_decay * dm) * v)
                else:
                    out.append(g + (weight_decay * dm) * tf.sign(v))
            grads = out
        ops = step(grads)
        with tf.control_dependencies(ops):
            return global_step.assign_add(1)

    if iter_size == 1:
        return update(grads).op, global_step
    sums = [slot(v, "gradient_sum") for v in variables]
    micro = v1.Variable(0, trainable=False, name="caffe_micro_step", dtype=tf.int64)
    added = [s.assign_add(g) for s, g in zip(sums, grads, strict=True)]
    with tf.control_dependencies(added):
        count = micro.assign_add(1)

    def apply() -> Any:
        done = update([s.read_value() for s in sums])
        with tf.control_dependencies([done]):
            zeroed = [s.assign(tf.zeros_like(s)) for s in sums]
        with tf.control_dependencies(zeroed):
            return tf.constant(True)

    applied = v1.cond(tf.equal(count % iter_size, 0), apply, lambda: tf.constant(False))
    return applied.op, global_step


# -- inline end train_op


# -- inline begin builtin
def builtin_step(make: Callable[[Any], Any]) -> Solver:
    """A solver step that applies a ``tf.compat.v1.train`` optimizer ``make(learning_rate)``,
    one instance per lr_mult (its rate is Caffe's rate x lr_mult), to the processed
    gradients."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        groups: dict[float, list[int]] = {}
        for i, lr_mult in enumerate(lr_mults):
            groups.setdefault(lr_mult, []).append(i)
        optimizers = {lr_mult: make(rate * lr_mult) for lr_mult in groups}

        def step(grads: list[Any]) -> list[Any]:
            ops = []
            for lr_mult, members in groups.items():
                pairs = [(grads[i], variables[i]) for i in members]
                ops.append(optimizers[lr_mult].apply_gradients(pairs))
            return ops

        return step

    return solver


# -- inline end builtin


# -- inline begin custom_sgd
def caffe_sgd(momentum: float, nesterov: bool = False) -> Solver:
    """Caffe SGD: h = momentum * h + rate * g; w -= h (the rate inside the history,
    sgd_solver.cpp:223-238); Nesterov: w -= (1 + momentum) * h - momentum * h_old
    (nesterov_solver.cpp:13-40)."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        history = [slot(v, "history") for v in variables]

        def step(grads: list[Any]) -> list[Any]:
            rates = [rate * lr_mult for lr_mult in lr_mults]
            ops = []
            for v, h, g, r in zip(variables, history, grads, rates, strict=True):
                h_old = h.read_value()
                h_new = momentum * h_old + r * g
                if nesterov:
                    u = (1.0 + momentum) * h_new - momentum * h_old
                else:
                    u = h_new
                ops += [h.assign(h_new), v.assign_sub(u)]
            return ops

        return step

    return solver


# -- inline end custom_sgd


# -- inline begin custom_adagrad
def caffe_adagrad(delta: float) -> Solver:
    """Caffe AdaGrad: h += g^2; w -= rate * g / (sqrt(h) + delta) (adagrad_solver.cpp:13-49):
    delta outside the root, h from 0."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        history = [slot(v, "history") for v in variables]

        def step(grads: list[Any]) -> list[Any]:
            rates = [rate * lr_mult for lr_mult in lr_mults]
            ops = []
            for v, h, g, r in zip(variables, history, grads, rates, strict=True):
                h_new = h.read_value() + g * g
                ops += [
                    h.assign(h_new),
                    v.assign_sub(r * (g / (tf.sqrt(h_new) + delta))),
                ]
            return ops

        return step

    return solver


# -- inline end custom_adagrad


# -- inline begin custom_rmsprop
def caffe_rmsprop(rms_decay: float, delta: float) -> Solver:
    """Caffe RMSProp: h = rms_decay * h + (1 - rms_decay) * g^2;
    w -= rate * g / (sqrt(h) + delta) (rmsprop_solver.cpp:13-51): delta outside the root."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        history = [slot(v, "history") for v in variables]

        def step(grads: list[Any]) -> list[Any]:
            rates = [rate * lr_mult for lr_mult in lr_mults]
            ops = []
            for v, h, g, r in zip(variables, history, grads, rates, strict=True):
                h_new = rms_decay * h.read_value() + (1.0 - rms_decay) * (g * g)
                ops += [
                    h.assign(h_new),
                    v.assign_sub(r * (g / (tf.sqrt(h_new) + delta))),
                ]
            return ops

        return step

    return solver


# -- inline end custom_rmsprop


# -- inline begin custom_adadelta
def caffe_adadelta(momentum: float, delta: float) -> Solver:
    """Caffe AdaDelta, rho = momentum: a = rho * a + (1 - rho) * g^2;
    d = g * sqrt((b + delta) / (a + delta)); b = rho * b + (1 - rho) * d^2; w -= rate * d
    (adadelta_solver.cpp:25-90)."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        first = [slot(v, "history") for v in variables]
        second = [slot(v, "update_history") for v in variables]

        def step(grads: list[Any]) -> list[Any]:
            rates = [rate * lr_mult for lr_mult in lr_mults]
            ops = []
            rows = zip(variables, first, second, grads, rates, strict=True)
            for v, a, b, g, r in rows:
                rho = momentum
                a_new = rho * a.read_value() + (1.0 - rho) * (g * g)
                b_old = b.read_value()
                d = g * tf.sqrt((b_old + delta) / (a_new + delta))
                b_new = rho * b_old + (1.0 - rho) * (d * d)
                ops += [a.assign(a_new), b.assign(b_new), v.assign_sub(r * d)]
            return ops

        return step

    return solver


# -- inline end custom_adadelta


# -- inline begin custom_adam
def caffe_adam(momentum: float, momentum2: float, delta: float) -> Solver:
    """Caffe Adam, t = 1, 2, ...: m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2;
    w -= rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta) (adam_solver.cpp:25-74)."""

    def solver(variables: list[Any], lr_mults: list[float], rate: Any) -> SolverStep:
        first = [slot(v, "m") for v in variables]
        second = [slot(v, "v") for v in variables]
        t_var = v1.Variable(0.0, trainable=False, name="caffe_adam_t")

        def step(grads: list[Any]) -> list[Any]:
            rates = [rate * lr_mult for lr_mult in lr_mults]
            t = t_var.assign_add(1.0)
            b1, b2 = momentum, momentum2
            # 1 - b^t as -expm1(t log b): accurate in float32 for b near 1
            one_minus_b1t = -tf.math.expm1(t * math.log(b1)) if b1 > 0 else 1.0
            one_minus_b2t = -tf.math.expm1(t * math.log(b2)) if b2 > 0 else 1.0
            correction = tf.sqrt(one_minus_b2t) / one_minus_b1t
            ops = []
            rows = zip(variables, first, second, grads, rates, strict=True)
            for v, m, s, g, r in rows:
                m_new = b1 * m.read_value() + (1.0 - b1) * g
                s_new = b2 * s.read_value() + (1.0 - b2) * (g * g)
                u = (r * correction) * (m_new / (tf.sqrt(s_new) + delta))
                ops += [m.assign(m_new), s.assign(s_new), v.assign_sub(u)]
            return ops

        return step

    return solver


# -- inline end custom_adam


# -- inline begin policy_inv
def caffe_inv_rate(base_lr: float, gamma: float, power: float) -> Callable[[Any], Any]:
    """Caffe's lr_policy "inv": base_lr * (1 + gamma * k) ^ (-power) (sgd_solver.cpp:41-45)."""

    def rate(global_step: Any) -> Any:
        k = tf.cast(global_step, tf.float32)
        return base_lr * tf.pow(1.0 + gamma * k, -power)

    return rate


# -- inline end policy_inv


# -- inline begin policy_sigmoid
def caffe_sigmoid_rate(
    base_lr: float,
    gamma: float,
    stepsize: int,
) -> Callable[[Any], Any]:
    """Caffe's lr_policy "sigmoid": base_lr / (1 + exp(-gamma * (k - stepsize)))
    (sgd_solver.cpp:60-65)."""

    def rate(global_step: Any) -> Any:
        k = tf.cast(global_step, tf.float32)
        return base_lr * (1.0 / (1.0 + tf.exp(-gamma * (k - stepsize))))

    return rate


# -- inline end policy_sigmoid

__all__ = [
    "TF_NAMES_OF_BLOB",
    "BlobRow",
    "bind_caffe_blobs",
    "builtin_step",
    "caffe_adadelta",
    "caffe_adagrad",
    "caffe_adam",
    "caffe_inv_rate",
    "caffe_rmsprop",
    "caffe_sgd",
    "caffe_sigmoid_rate",
    "caffe_train_op",
    "slot",
]
