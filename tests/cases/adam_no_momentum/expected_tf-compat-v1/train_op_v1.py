"""TF1 (tf.compat.v1) train op that trains exactly like a Caffe solver (by caffe2tf).

Caffe solver type Adam.

Build the train op once, then run it once per Caffe forward/backward pass (one micro-batch
when iter_size > 1), in graph mode::

    import tensorflow as tf

    import train_op_v1 as caffe_solver

    tf.compat.v1.disable_eager_execution()
    logits = model(images)  # variables named <caffe layer>/weights|kernel, /biases|bias
    loss = tf.reduce_mean(tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits))
    train_op, global_step = caffe_solver.build_train_op(loss)  # the data loss only
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for batch in batches:
            session.run(train_op, feed_dict=batch)

What was translated, and how:

- [exact] Caffe Adam becomes tf.compat.v1.train.AdamOptimizer(beta1=0.0, beta2=0.99,
epsilon=1e-06): TF1's Adam folds the bias correction into the rate and adds epsilon to
sqrt(v), exactly Caffe's form.
- [exact] lr_policy 'fixed': the rate is 0.01.
- [exact] weight_decay 0.001 (L2) x decay_mult becomes weight_decay x decay_mult x
tf.nn.l2_loss(w) terms added to the loss by build_train_op: l2_loss has the 1/2, so its
gradient is Caffe's weight_decay x w (a regularizer of 2 x that, or l2_regularizer(2 x
wd), would decay twice as hard); Caffe decays biases too unless their decay_mult is 0.
- [exact] 1 (lr_mult, decay_mult) pair(s) (1.0, 1.0): each variable's rate is Caffe's
rate x lr_mult (a built-in optimizer is made once per lr_mult); lr_mult 0 variables get
no update.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

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


# One row per learnable Caffe blob of the train net, in Caffe's order: Caffe layer (the
# scope of its variables; a Scale after a BatchNorm: the BatchNorm's), blob index
# (0: weights/kernel, 1: biases/bias), lr_mult and decay_mult (param { } of the net
# prototxt).
CAFFE_BLOBS: list[BlobRow] = [
    ("ip1", 0, 1.0, 1.0),
    ("ip1", 1, 1.0, 1.0),
    ("ip2", 0, 1.0, 1.0),
    ("ip2", 1, 1.0, 1.0),
]
# Variables of no listed blob (every variable when the net is unknown): lr_mult,
# decay_mult.
DEFAULT_BLOB: tuple[float, float] = (1.0, 0.0)


def learning_rate(global_step: Any) -> Any:
    """Caffe's lr_policy at global_step = the Caffe updates applied (iter_)."""
    return 0.01  # base_lr


def make_optimizer(rate: Any) -> Any:
    """The tf.compat.v1.train optimizer of Caffe's solver step at this rate."""
    return tf.compat.v1.train.AdamOptimizer(
        learning_rate=rate,
        beta1=0.0,  # momentum
        beta2=0.99,  # momentum2
        epsilon=1e-06,  # delta
    )


def build_train_op(loss: Any, var_list: Sequence[Any] | None = None) -> tuple[Any, Any]:
    """(train_op, global_step): run train_op once per Caffe forward/backward pass."""
    return caffe_train_op(
        loss,
        var_list,
        CAFFE_BLOBS,
        DEFAULT_BLOB,
        learning_rate=learning_rate,
        solver=builtin_step(make_optimizer),
        weight_decay=0.001,  # weight_decay
        regularization_type="L2",  # regularization_type
        decay_in_loss=True,
    )
