"""Exact Caffe pieces for Keras 3: ``CaffeSchedule``, ``CaffeOptimizer`` and the model binder.

This module is imported (lazily) by :mod:`caffe2tf.targets.keras.build` and is ALSO the source
that :mod:`caffe2tf.targets.keras.render_python` inlines into the emitted ``optimizer.py``: the
text between the ``# -- inline begin`` and ``# -- inline end`` markers is copied verbatim, so it
must only use ``keras``, ``numpy``, ``math``, ``re``, ``warnings`` and ``typing.Any`` and stay
``ruff format`` clean at the default line length (88).

Caffe's update (BVLC ``src/caffe/solvers/sgd_solver.cpp:108-127``, ``solver.cpp:229-267``), which
:class:`CaffeOptimizer` reproduces, for update k (0-based) after S = ``iter_size`` micro-batches
with raw data gradients g_1..g_S::

    G = g_1 + ... + g_S                                  (Caffe sums the diffs)
    n = sqrt(sum_p ||G_p||^2); G *= c / n if n > c        ClipGradients   :87-106 (strict >)
    g = G * fl(1/S)                                      Normalize       :129-153
    g += wd * decay_mult * w   (L2)  or * sign(w)  (L1)  Regularize      :155-215
    r = policy(k) * lr_mult                              GetLearningRate :26-70, :228
    solver step with r                                   sgd/nesterov/adagrad/rmsprop/adadelta/adam

Keras facts used (keras 3.15.1, ``keras/src/optimizers/base_optimizer.py``): ``apply_gradients``
and ``fit`` call the public ``apply(grads, variables)`` (L466-533), which ``CaffeOptimizer``
overrides as a whole, so no Keras clip/decay/update runs and only public optimizer API is used;
``iterations`` is the step counter ``apply`` increments once per call, and a
``LearningRateSchedule`` is evaluated at it before that increment (L777-786). Under
``tf.distribute`` (TensorFlow backend) the replicas' gradients are summed with the replica
context's ``all_reduce`` and the variables updated in a ``merge_call``, as Keras' own
TensorFlow optimizer does (``keras/src/backend/tensorflow/optimizer.py``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

# -- inline begin binder
# Which Keras variable name holds which Caffe blob of a layer: blob 0 is the main weight
# (kernel / depthwise_kernel / embeddings / BatchNormalization gamma / PReLU alpha),
# blob 1 the bias (bias / BatchNormalization beta).
CAFFE_BLOB_OF_KERAS_NAME: dict[str, int] = {
    "kernel": 0,
    "depthwise_kernel": 0,
    "embeddings": 0,
    "gamma": 0,
    "alpha": 0,
    "bias": 1,
    "beta": 1,
}


def caffe_blob_key(path: str) -> str | None:
    """``"<keras layer>/<blob>"`` for a variable path such as ``"model/conv1/kernel"``.

    Keras layer names cannot contain ``/``, so the last two path parts are the layer name and
    the variable name. A variable named like its layer (a one-weight custom layer, e.g. for
    Caffe's ``Parameter``) is blob 0. Returns None for variables that hold no Caffe blob.
    """
    parts = path.split("/")
    if len(parts) < 2:
        return None
    if parts[-1] == parts[-2]:  # a one-weight layer that names its weight after itself
        return f"{parts[-2]}/0"
    if parts[-1] not in CAFFE_BLOB_OF_KERAS_NAME:
        return None
    return f"{parts[-2]}/{CAFFE_BLOB_OF_KERAS_NAME[parts[-1]]}"


def caffe_serializable(cls: Any) -> Any:
    """Register ``cls`` with Keras by its class name, so that ``keras.models.load_model``
    finds it once this module is imported (no ``custom_objects``). The last definition
    wins: several generated modules may be imported in one process."""
    keras.saving.get_custom_objects()[cls.__name__] = cls
    return cls


# -- inline end binder


# -- inline begin schedule
#: lr_policy -> f(schedule, k_int, k) -> the rate (float32 tensor); one entry per policy
#: block below (the generated module holds only the policy it uses).
CAFFE_POLICY_RATES: dict[str, Any] = {}


@caffe_serializable
class CaffeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe's ``lr_policy`` (``sgd_solver.cpp:26-70``) as a Keras schedule, in float32.

    ``k`` = floor(step / iter_size) is the number of Caffe updates already applied; the rate
    of each policy is the function registered in :data:`CAFFE_POLICY_RATES` (equations in
    docs/caffe-semantics.md#learning-rate-policies). The result is multiplied by ``lr_mult``; with
    ``rms_decay`` set it is divided by sqrt(1 - rms_decay^(k+1)), which turns
    ``keras.optimizers.Adam(beta_1=0)`` into Caffe's RMSProp (Adam's factor sqrt(1 - beta_2^(k+1))
    cancels).
    """

    def __init__(
        self,
        policy: str,
        base_lr: float = 0.0,
        gamma: float = 0.0,
        power: float = 0.0,
        stepsize: int = 0,
        stepvalue: tuple[int, ...] | list[int] = (),
        max_iter: int = 0,
        iter_size: int = 1,
        rms_decay: float | None = None,
        lr_mult: float = 1.0,
        rampup_interval: int = 0,
        rampup_lr: float = 0.0,
        min_lr: float | None = None,
        stagelr: tuple[float, ...] | list[float] = (),
        stageiter: tuple[int, ...] | list[int] = (),
    ) -> None:
        if policy not in CAFFE_POLICY_RATES:
            raise ValueError(f"no rate function for Caffe lr_policy {policy!r}")
        self.policy = str(policy)
        self.base_lr = float(base_lr)
        self.gamma = float(gamma)
        self.power = float(power)
        self.stepsize = int(stepsize)
        self.stepvalue = [int(s) for s in stepvalue]
        self.max_iter = int(max_iter)
        self.iter_size = max(int(iter_size), 1)
        self.rms_decay = None if rms_decay is None else float(rms_decay)
        self.lr_mult = float(lr_mult)
        self.rampup_interval = int(rampup_interval)
        self.rampup_lr = float(rampup_lr)
        self.min_lr = None if min_lr is None else float(min_lr)
        self.stagelr = [float(r) for r in stagelr]
        self.stageiter = [int(i) for i in stageiter]

    def __call__(self, step: Any) -> Any:
        k_int = ops.floor_divide(ops.convert_to_tensor(step), self.iter_size)
        k = ops.cast(k_int, "float32")
        rate = self.caffe_rate(k_int, k)
        if self.lr_mult != 1.0:
            rate = rate * self.lr_mult
        if self.rms_decay is not None:
            rho = ops.convert_to_tensor(self.rms_decay, dtype="float32")
            rate = rate / ops.sqrt(1.0 - ops.power(rho, k + 1.0))
        return rate

    def caffe_rate(self, k_int: Any, k: Any) -> Any:
        """The global rate at update ``k``: the policy's, with NVIDIA Caffe's warm-up and
        ``min_lr`` floor when set (NVIDIA sgd_solver.cpp:29-35,66-68)."""
        rate = CAFFE_POLICY_RATES[self.policy](self, k_int, k)
        if self.rampup_interval > 0:
            alpha = k / float(self.rampup_interval)
            ramp = self.rampup_lr + (self.base_lr - self.rampup_lr) * alpha * alpha
            rate = ops.where(ops.less(k_int, self.rampup_interval), ramp, rate)
        if self.min_lr is not None:
            rate = ops.where(ops.less(rate, self.min_lr), _f32(self.min_lr), rate)
        return rate

    def get_config(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "base_lr": self.base_lr,
            "gamma": self.gamma,
            "power": self.power,
            "stepsize": self.stepsize,
            "stepvalue": list(self.stepvalue),
            "max_iter": self.max_iter,
            "iter_size": self.iter_size,
            "rms_decay": self.rms_decay,
            "lr_mult": self.lr_mult,
            "rampup_interval": self.rampup_interval,
            "rampup_lr": self.rampup_lr,
            "min_lr": self.min_lr,
            "stagelr": list(self.stagelr),
            "stageiter": list(self.stageiter),
        }


def _f32(x: float) -> Any:
    return ops.convert_to_tensor(x, dtype="float32")


# -- inline end schedule


# -- inline begin policy_fixed
def fixed_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """fixed: base_lr."""
    return _f32(s.base_lr)


CAFFE_POLICY_RATES["fixed"] = fixed_rate
# -- inline end policy_fixed


# -- inline begin policy_step
def step_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """step: base_lr * gamma ^ floor(k / stepsize) (integer division)."""
    exponent = ops.cast(ops.floor_divide(k_int, s.stepsize), "float32")
    return _f32(s.base_lr) * ops.power(_f32(s.gamma), exponent)


CAFFE_POLICY_RATES["step"] = step_rate
# -- inline end policy_step


# -- inline begin policy_exp
def exp_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """exp: base_lr * gamma ^ k."""
    return _f32(s.base_lr) * ops.power(_f32(s.gamma), k)


CAFFE_POLICY_RATES["exp"] = exp_rate
# -- inline end policy_exp


# -- inline begin policy_inv
def inv_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """inv: base_lr * (1 + gamma * k) ^ (-power)."""
    return _f32(s.base_lr) * ops.power(1.0 + _f32(s.gamma) * k, -s.power)


CAFFE_POLICY_RATES["inv"] = inv_rate
# -- inline end policy_inv


# -- inline begin policy_multistep
def multistep_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """multistep: base_lr * gamma ^ (number of stepvalues <= k); the plan passes the
    iterations where Caffe's counter really advances (at most one per update)."""
    passed = ops.zeros((), dtype="float32")
    for value in s.stepvalue:
        passed = passed + ops.cast(ops.greater_equal(k, float(value)), "float32")
    return _f32(s.base_lr) * ops.power(_f32(s.gamma), passed)


CAFFE_POLICY_RATES["multistep"] = multistep_rate
# -- inline end policy_multistep


# -- inline begin policy_poly
def poly_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """poly: base_lr * (1 - k / max_iter) ^ power; NVIDIA Caffe (min_lr set):
    (base_lr - min_lr) * (1 - k / max_iter) ^ power + min_lr."""
    if s.min_lr is None:
        return _f32(s.base_lr) * ops.power(1.0 - k / float(s.max_iter), s.power)
    span = _f32(s.base_lr - s.min_lr)
    return span * ops.power(1.0 - k / float(s.max_iter), s.power) + s.min_lr


CAFFE_POLICY_RATES["poly"] = poly_rate
# -- inline end policy_poly


# -- inline begin policy_sigmoid
def sigmoid_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """sigmoid: base_lr / (1 + exp(-gamma * (k - stepsize)))."""
    e = ops.exp(-_f32(s.gamma) * (k - float(s.stepsize)))
    return _f32(s.base_lr) * (1.0 / (1.0 + e))


CAFFE_POLICY_RATES["sigmoid"] = sigmoid_rate
# -- inline end policy_sigmoid


# -- inline begin policy_multifixed
def multifixed_rate(s: CaffeSchedule, k_int: Any, k: Any) -> Any:
    """multifixed (the yolo fork, QiaoXie/caffe-yolo-2 sgd_solver.cpp:32-40): stagelr[j] for
    the first stage j with k <= stageiter[j]; past every stageiter, the last stage's rate."""
    rate = _f32(s.stagelr[-1])
    for rate_j, last_k in reversed(list(zip(s.stagelr, s.stageiter, strict=True))):
        rate = ops.where(ops.less_equal(k_int, last_k), _f32(rate_j), rate)
    return rate


CAFFE_POLICY_RATES["multifixed"] = multifixed_rate
# -- inline end policy_multifixed


# -- inline begin optimizer
#: what a solver step returns: (variable, new value) for its state and the weight
Updates = list[tuple[Any, Any]]


class CaffeOptimizer(keras.optimizers.Optimizer):
    """Caffe's fixed update order on any Keras 3 backend; a subclass adds one solver step.

    Call ``apply_gradients`` once per Caffe forward/backward pass with the gradients of the
    data loss (the model carries no regularizers on this route: the decay is added here, after
    the clip, as Caffe does). Every ``iter_size``-th call applies one Caffe update to the raw
    SUM of the gradients of the last ``iter_size`` calls; the other calls only accumulate.
    ``learning_rate`` must count Caffe updates, i.e. be a :class:`CaffeSchedule` built with
    the same ``iter_size``. ``iterations`` counts Caffe updates (calls // iter_size).

    One update (``sgd_solver.cpp:108-127``; docs/caffe-semantics.md#update-order)::

        G = sum of the iter_size micro-batch gradients      solver.cpp:229-233
        G *= c / ||G|| when ||G|| > c (all variables)       ClipGradients  :87-106
        g = G * fl(1/iter_size)                             Normalize      :129-153
        g += wd * decay_mult * w  (L2) or * sign(w)  (L1)   Regularize     :155-215
        r = lr(k) * lr_mult                                 :228
        the solver step of the subclass: caffe_step(i, g, w, r, t), t = k + 1

    ``multipliers`` maps ``"<keras layer name>/<caffe blob index>"`` (see
    :func:`caffe_blob_key`) to ``(lr_mult, decay_mult)``; other variables use
    ``default_multipliers``. The lookup happens once, in ``build``, by ``variable.path``.
    A variable with lr_mult 0 gets no state, no update and no part in the clip norm, as if
    it were not trainable (Caffe computes no diff for it, ``net.cpp:149-152``), so a
    model reloaded with ``keras.models.load_model`` (trainable again) trains on the same.
    """

    #: names of the per-variable state a solver keeps (zero-initialised, sgd_solver.cpp:72-85)
    slot_names: tuple[str, ...] = ()

    def __init__(
        self,
        learning_rate: Any,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
        multipliers: dict[str, Any] | None = None,
        default_multipliers: tuple[float, float] | list[float] = (1.0, 1.0),
        name: str = "caffe_optimizer",
        weight_decay_policy: str = "fixed",
        max_weight_decay: float = 0.0,
        weight_decay_power: float = 1.0,
        max_iter: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        # NVIDIA Caffe's weight_decay_policy "poly" (sgd_solver.cpp:98-110): the decay at
        # update k is wd + (max_weight_decay - wd) * (k / max_iter) ^ weight_decay_power
        self.weight_decay_policy = str(weight_decay_policy)
        self.max_weight_decay = float(max_weight_decay)
        self.weight_decay_power = float(weight_decay_power)
        self.max_iter = int(max_iter)
        if regularization_type not in ("L1", "L2"):
            raise ValueError(f"unknown regularization_type {regularization_type!r}")
        self.caffe_weight_decay = float(weight_decay)
        self.regularization_type = regularization_type
        self.clip_gradients = float(clip_gradients)
        self.iter_size = max(int(iter_size), 1)
        self.multipliers = {
            str(k): (float(v[0]), float(v[1])) for k, v in (multipliers or {}).items()
        }
        self.default_multipliers = (
            float(default_multipliers[0]),
            float(default_multipliers[1]),
        )

    @property
    def iterations(self) -> Any:
        """Caffe updates applied so far (``iter_``): calls // iter_size."""
        calls = super().iterations
        if self.iter_size > 1:
            return ops.floor_divide(calls, self.iter_size)
        return calls

    def multipliers_for(self, path: str) -> tuple[float, float]:
        """(lr_mult, decay_mult) for the variable at ``path``."""
        key = caffe_blob_key(path)
        if key is not None and key in self.multipliers:
            return self.multipliers[key]
        return self.default_multipliers

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        built_for = list(variables)
        # a function, not a list: a list of the model's variables would be tracked as
        # optimizer state (Keras' auto-tracking) and appear twice in stateless_apply
        self.caffe_variables = lambda: built_for
        # lr_mult 0 blobs get no state and no update: prepare_model makes them
        # non-trainable, but after keras.models.load_model they come back trainable
        live = [v for v in variables if self.multipliers_for(v.path)[0] != 0.0]
        self.caffe_frozen = {v.path for v in variables} - {v.path for v in live}
        self.caffe_index = {v.path: i for i, v in enumerate(live)}
        self._caffe_mults = [self.multipliers_for(v.path) for v in live]
        slots = self.slot_names
        self._caffe_slots = [self.add_optimizer_variables(live, s) for s in slots]
        if self.iter_size > 1:
            self._grad_sum = self.add_optimizer_variables(live, "grad_sum")

    def slot(self, name: str, i: int) -> Any:
        """The solver state ``name`` of variable ``i``."""
        return self._caffe_slots[self.slot_names.index(name)][i]

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        """The solver step: ``[(variable, new value), ...]`` for the state and ``w``."""
        raise NotImplementedError

    def apply(self, grads: list, trainable_variables: Any = None) -> None:
        """One call per Caffe forward/backward pass (``apply_gradients`` and ``fit`` call
        it): Caffe's fixed order on ``grads``, then one optimizer step counted. Under
        ``tf.distribute`` the gradients of the replicas are summed first (Keras' TF trainer
        already divides each replica's loss by their number, so the sum is the mean over
        the global batch, as Caffe averages its GPUs) and every replica applies the same
        update to its copy of each variable."""
        if trainable_variables is None:
            trainable_variables = self.caffe_variables()
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        given = zip(grads, trainable_variables, strict=True)
        frozen = self.caffe_frozen
        pairs = [(g, v) for g, v in given if g is not None and v.path not in frozen]
        indices = [self.caffe_index[v.path] for _, v in pairs]
        variables = [v for _, v in pairs]
        grads = [ops.convert_to_tensor(g, dtype=v.dtype) for g, v in pairs]
        grads = self.aggregate(grads)
        calls = super().iterations  # apply_gradients calls so far (micro-batches)
        updates: Updates = []
        is_update = None
        if self.iter_size > 1:
            # Sum the raw micro-batch gradients (Caffe's diffs accumulate, solver.cpp:229-233).
            is_update = ops.equal((calls + 1) % self.iter_size, 0)
            grads = [self._grad_sum[i] + g for i, g in zip(indices, grads, strict=True)]
            for i, g in zip(indices, grads, strict=True):
                kept = ops.where(is_update, ops.zeros_like(g), g)
                updates.append((self._grad_sum[i], kept))
        if self.clip_gradients >= 0:
            norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads))
            factor = ops.where(
                ops.greater(norm, self.clip_gradients),
                self.clip_gradients / norm,
                ops.ones_like(norm),
            )
            grads = [g * ops.cast(factor, g.dtype) for g in grads]
        if self.iter_size > 1:
            scale = float(np.float32(1.0) / np.float32(self.iter_size))
            grads = [g * scale for g in grads]
        lr = ops.cast(self.learning_rate, "float32")
        updates_done = ops.floor_divide(calls, self.iter_size)
        t = ops.cast(updates_done + 1, "float32")
        wd_k = None
        if self.weight_decay_policy == "poly" and self.caffe_weight_decay != 0.0:
            frac = (t - 1.0) / float(self.max_iter)
            base = self.caffe_weight_decay
            span = self.max_weight_decay - base
            wd_k = base + span * ops.power(frac, self.weight_decay_power)
        for i, g, w in zip(indices, grads, variables, strict=True):
            lr_mult, decay_mult = self._caffe_mults[i]
            wd = np.float32(self.caffe_weight_decay)
            local_decay = float(wd * np.float32(decay_mult))
            if wd_k is not None and decay_mult != 0.0:
                local_decay = ops.cast(wd_k * float(decay_mult), w.dtype)
            if wd_k is not None or local_decay != 0.0:
                if self.regularization_type == "L2":
                    g = g + local_decay * w
                else:
                    g = g + local_decay * ops.sign(w)
            r = ops.cast(lr, w.dtype) * float(lr_mult)
            for var, value in self.caffe_step(i, g, w, r, t):
                if is_update is not None:
                    value = ops.where(is_update, value, var.value)
                updates.append((var, value))
        self.commit(updates)
        calls.assign_add(1)

    def aggregate(self, grads: list) -> list:
        """The replicas' gradients summed under ``tf.distribute`` (as Keras' own
        optimizers do); unchanged on one device and on the other backends."""
        if keras.backend.backend() != "tensorflow":
            return grads
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return grads
        return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

    def commit(self, updates: Updates) -> None:
        """Assign the new values: under ``tf.distribute`` every replica's copy of each
        variable gets its replica's (identical) value in a cross-replica update."""
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:

                def merge(strategy: Any, pairs: Updates) -> None:
                    for var, value in pairs:
                        strategy.extended.update(
                            var.value,
                            lambda v, x: v.assign(x),
                            args=(value,),
                            group=False,
                        )

                context.merge_call(merge, args=(updates,))
                return
        for var, value in updates:
            self.assign(var, value)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.caffe_weight_decay,
                "regularization_type": self.regularization_type,
                "clip_gradients": self.clip_gradients,
                "iter_size": self.iter_size,
                "multipliers": {k: list(v) for k, v in self.multipliers.items()},
                "default_multipliers": list(self.default_multipliers),
                "weight_decay_policy": self.weight_decay_policy,
                "max_weight_decay": self.max_weight_decay,
                "weight_decay_power": self.weight_decay_power,
                "max_iter": self.max_iter,
            }
        )
        return config


# -- inline end optimizer


# -- inline begin solver_CaffeSGD
@caffe_serializable
class CaffeSGD(CaffeOptimizer):
    """Caffe SGD ``h = mu*h + r*g; w -= h`` (the lr inside the velocity,
    sgd_solver.cpp:223-238) or, with ``nesterov``, ``h' = mu*h + r*g;
    w -= (1+mu)*h' - mu*h`` (nesterov_solver.cpp:13-40)."""

    slot_names = ("history",)

    def __init__(
        self,
        learning_rate: Any,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        h = self.slot("history", i)
        h_new = self.momentum * h + r * g
        if self.nesterov:
            w_new = w - ((1.0 + self.momentum) * h_new - self.momentum * h)
        else:
            w_new = w - h_new
        return [(h, h_new), (w, w_new)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


# -- inline end solver_CaffeSGD


# -- inline begin solver_CaffeAdaGrad
@caffe_serializable
class CaffeAdaGrad(CaffeOptimizer):
    """Caffe AdaGrad ``h += g^2; w -= r*g/(sqrt(h)+delta)``: delta outside the root, the
    accumulator starts at 0 (adagrad_solver.cpp:13-49)."""

    slot_names = ("history",)

    def __init__(self, learning_rate: Any, delta: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.delta = float(delta)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        h = self.slot("history", i)
        h_new = h + ops.square(g)
        return [(h, h_new), (w, w - r * g / (ops.sqrt(h_new) + self.delta))]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(delta=self.delta)
        return config


# -- inline end solver_CaffeAdaGrad


# -- inline begin solver_CaffeRMSProp
@caffe_serializable
class CaffeRMSProp(CaffeOptimizer):
    """Caffe RMSProp ``h = rho*h + (1-rho)*g^2; w -= r*g/(sqrt(h)+delta)``
    (rmsprop_solver.cpp:13-51)."""

    slot_names = ("history",)

    def __init__(
        self,
        learning_rate: Any,
        rms_decay: float = 0.99,
        delta: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rms_decay = float(rms_decay)
        self.delta = float(delta)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        h = self.slot("history", i)
        h_new = self.rms_decay * h + (1.0 - self.rms_decay) * ops.square(g)
        return [(h, h_new), (w, w - r * g / (ops.sqrt(h_new) + self.delta))]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(rms_decay=self.rms_decay, delta=self.delta)
        return config


# -- inline end solver_CaffeRMSProp


# -- inline begin solver_CaffeAdaDelta
@caffe_serializable
class CaffeAdaDelta(CaffeOptimizer):
    """Caffe AdaDelta, rho = ``momentum``: ``a = rho*a + (1-rho)*g^2;
    d = g*sqrt((b+delta)/(a+delta)); b = rho*b + (1-rho)*d^2; w -= r*d``
    (adadelta_solver.cpp:25-90)."""

    slot_names = ("history", "update_history")

    def __init__(
        self,
        learning_rate: Any,
        momentum: float = 0.0,
        delta: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.delta = float(delta)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        a, b = self.slot("history", i), self.slot("update_history", i)
        a_new = self.momentum * a + (1.0 - self.momentum) * ops.square(g)
        d = g * ops.sqrt((b + self.delta) / (a_new + self.delta))
        b_new = self.momentum * b + (1.0 - self.momentum) * ops.square(d)
        return [(a, a_new), (b, b_new), (w, w - r * d)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(momentum=self.momentum, delta=self.delta)
        return config


# -- inline end solver_CaffeAdaDelta


# -- inline begin solver_CaffeAdam
@caffe_serializable
class CaffeAdam(CaffeOptimizer):
    """Caffe Adam, beta1 = ``momentum``, beta2 = ``momentum2``, t = k + 1:
    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    w -= r*sqrt(1-b2^t)/(1-b1^t)*m/(sqrt(v)+delta)`` (adam_solver.cpp:25-74)."""

    slot_names = ("m", "v")

    def __init__(
        self,
        learning_rate: Any,
        momentum: float = 0.0,
        momentum2: float = 0.999,
        delta: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.momentum2 = float(momentum2)
        self.delta = float(delta)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        m, v = self.slot("m", i), self.slot("v", i)
        m_new = self.momentum * m + (1.0 - self.momentum) * g
        v_new = self.momentum2 * v + (1.0 - self.momentum2) * ops.square(g)
        b1_t = ops.power(ops.cast(self.momentum, "float32"), t)
        b2_t = ops.power(ops.cast(self.momentum2, "float32"), t)
        correction = ops.cast(ops.sqrt(1.0 - b2_t) / (1.0 - b1_t), w.dtype)
        w_new = w - r * correction * m_new / (ops.sqrt(v_new) + self.delta)
        return [(m, m_new), (v, v_new), (w, w_new)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            momentum2=self.momentum2,
            delta=self.delta,
        )
        return config


# -- inline end solver_CaffeAdam


# -- inline begin solver_CaffeNvidiaSGD
@caffe_serializable
class CaffeNvidiaSGD(CaffeOptimizer):
    """NVIDIA Caffe's SGD as its GPU kernel runs it (NVIDIA/caffe sgd_solver.cpp:72-368,
    sgd_solver.cu:9-164): momentum policy, LARC (scale/clip, turbo) on the undecayed
    gradient, and the weight decay fused into the update (L2, L1 or WD decoupled, with
    NVIDIA's decay policy). The base class adds no decay (its weight_decay is 0); k = t - 1.
    """

    def __init__(
        self,
        learning_rate: Any,
        momentum: float = 0.0,
        momentum_policy: str = "fixed",
        max_momentum: float = 0.99,
        momentum_power: float = 1.0,
        cap_momentum: bool = False,
        larc: str = "",
        larc_eta: float = 0.001,
        larc_turbo: bool = False,
        decay_kind: str = "",
        decay: float = 0.0,
        decay_policy: str = "fixed",
        max_decay: float = 0.0,
        decay_power: float = 1.0,
        sag: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.sag = bool(sag)  # NVIDIA's SAG solver (sag_solver.cpp:14-137)
        self.momentum = float(momentum)
        self.momentum_policy = str(momentum_policy)
        self.max_momentum = float(max_momentum)
        self.momentum_power = float(momentum_power)
        self.cap_momentum = bool(cap_momentum)
        self.larc = str(larc)
        self.larc_eta = float(larc_eta)
        self.larc_turbo = bool(larc_turbo)
        self.decay_kind = str(decay_kind)
        self.decay = float(decay)
        self.decay_policy = str(decay_policy)
        self.max_decay = float(max_decay)
        self.decay_power = float(decay_power)
        self.slot_names = ("history", "larc_corr") if self.larc_turbo else ("history",)

    def nvidia_momentum(self, lr: Any, k: Any) -> Any:
        """GetMomentum (sgd_solver.cpp:72-96)."""
        if self.momentum_policy == "poly":
            grow = ops.power(k / float(self.max_iter), self.momentum_power)
            return self.momentum + (self.max_momentum - self.momentum) * grow
        if self.momentum_policy == "opt":
            m = ops.square(1.0 - 0.5 * ops.sqrt(lr))
            return ops.minimum(m, self.max_momentum) if self.cap_momentum else m
        return ops.convert_to_tensor(self.momentum)

    def caffe_step(self, i: int, g: Any, w: Any, r: Any, t: Any) -> Updates:
        lr_mult, decay_mult = self._caffe_mults[i]
        lr = ops.cast(self.learning_rate, w.dtype)
        k = ops.cast(t - 1.0, w.dtype)
        mu = ops.cast(self.nvidia_momentum(lr, k), w.dtype)
        h = self.slot("history", i)
        updates = []
        if self.larc and self.sag:
            r, corr_updates = self.sag_larc(i, g, w, h, lr, lr_mult, k)
            updates += corr_updates
        elif self.larc:
            gn = ops.sqrt(ops.sum(ops.square(g)))
            wn = ops.sqrt(ops.sum(ops.square(w)))
            both = ops.logical_and(ops.greater(wn, 0.0), ops.greater(gn, 0.0))
            safe = ops.where(both, gn, ops.ones_like(gn))
            c = ops.where(both, (1.0 - mu) * self.larc_eta * wn / safe, 1.0)
            if self.larc_turbo:
                corr_slot = self.slot("larc_corr", i)
                hn = ops.sqrt(ops.sum(ops.square(h)))
                ok = ops.logical_and(ops.greater(gn, 0.0), ops.greater(hn, 0.0))
                den = ops.where(ok, gn * hn, ops.ones_like(gn))
                cos = ops.where(ok, ops.sum(g * h) / den, 0.0)
                prev = ops.reshape(corr_slot, (-1,))[0]
                avg = 0.95 * prev + (1.0 - 0.95) * cos
                fill = ops.zeros(tuple(corr_slot.shape), dtype=corr_slot.dtype)
                updates.append((corr_slot, fill + avg))
                c = c - 0.9 * avg
            local = c if lr_mult > 0.0 else ops.zeros_like(c) + float(lr_mult)
            r = lr * local if self.larc == "scale" else ops.minimum(lr, local)
        lam = ops.convert_to_tensor(self.decay, dtype=w.dtype)
        if self.decay_policy == "poly":
            grow = ops.power(k / float(self.max_iter), self.decay_power)
            lam = self.decay + (self.max_decay - self.decay) * grow
        decay = lam * float(decay_mult)
        r = ops.cast(r, w.dtype)
        if self.sag:  # sag_solver.cu:11-29 (L2), :87-104 (WD)
            if self.decay_kind == "WD":
                h_new = mu * h + (1.0 - mu) * g
                w_new = w - r * (h_new + decay * w)
            else:
                h_new = mu * h + (1.0 - mu) * (g + decay * w)
                w_new = w - r * h_new
        elif self.decay_kind == "WD":
            h_new = mu * h + r * g
            w_new = w - (h_new + decay * r * w)
        else:
            if self.decay_kind:
                reg = w if self.decay_kind == "L2" else ops.sign(w)
                g = g + decay * reg
            h_new = mu * h + r * g
            w_new = w - h_new
        return updates + [(h, h_new), (w, w_new)]

    def sag_larc(
        self, i: int, g: Any, w: Any, h: Any, lr: Any, lr_mult: float, k: Any
    ) -> tuple[Any, Updates]:
        """SAG's LARC rate (sag_solver.cpp:95-137): c = eta ||w|| / ||h|| where lr_mult > 0;
        turbo from k = 2 on: c * (1 - 0.9 corr), corr the running mean of cos(g, h)."""
        wn = ops.sqrt(ops.sum(ops.square(w)))
        hn = ops.sqrt(ops.sum(ops.square(h)))
        gn = ops.sqrt(ops.sum(ops.square(g)))
        both = ops.logical_and(ops.greater(wn, 0.0), ops.greater(hn, 0.0))
        c = ops.where(both, self.larc_eta * wn / ops.where(both, hn, 1.0), 1.0)
        local = c if lr_mult > 0.0 else ops.zeros_like(c) + float(lr_mult)
        updates = []
        if self.larc_turbo:
            corr_slot = self.slot("larc_corr", i)
            ok = ops.logical_and(ops.greater(gn, 0.0), ops.greater(hn, 0.0))
            cos = ops.where(ok, ops.sum(g * h) / ops.where(ok, gn * hn, 1.0), 0.0)
            prev = ops.reshape(corr_slot, (-1,))[0]
            late = ops.greater(k, 1.0)
            avg = ops.where(late, 0.95 * prev + (1.0 - 0.95) * cos, prev)
            fill = ops.zeros(tuple(corr_slot.shape), dtype=corr_slot.dtype)
            updates.append((corr_slot, fill + avg))
            local = ops.where(late, local * (1.0 - 0.9 * avg), local)
        r = lr * local if self.larc == "scale" else ops.minimum(lr, local)
        return r, updates

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            sag=self.sag,
            momentum=self.momentum,
            momentum_policy=self.momentum_policy,
            max_momentum=self.max_momentum,
            momentum_power=self.momentum_power,
            cap_momentum=self.cap_momentum,
            larc=self.larc,
            larc_eta=self.larc_eta,
            larc_turbo=self.larc_turbo,
            decay_kind=self.decay_kind,
            decay=self.decay,
            decay_policy=self.decay_policy,
            max_decay=self.max_decay,
            decay_power=self.decay_power,
        )
        return config


# -- inline end solver_CaffeNvidiaSGD


# -- inline begin binder
def make_regularizer(spec: tuple[str, float] | list[Any] | None) -> Any:
    """``("L2", c)`` -> ``keras.regularizers.L2(c)``; ``("L1", c)`` -> ``L1(c)``; None -> None."""
    if spec is None:
        return None
    kind, coefficient = spec[0], float(spec[1])
    if kind == "L2":
        return keras.regularizers.L2(coefficient)
    return keras.regularizers.L1(coefficient)


def all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, nested models' layers included."""
    out, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        out.append(layer)
        stack += list(getattr(layer, "layers", []))
    return out


def keep_regularizers(layers: list[Any], variables: list[Any]) -> None:
    """Also set each variable's layer's ``<name>_regularizer`` attribute
    (``kernel_regularizer``, ``bias_regularizer``, ``gamma_regularizer``...), which the
    layer's config saves: after ``model.save`` and ``keras.models.load_model`` the rebuilt
    variable carries the decay again (``variable.regularizer`` itself is not saved).
    ``layers`` is :func:`all_layers` of the model, read once for all ``variables``."""
    by_name: dict[str, list[Any]] = {}
    for layer in layers:
        by_name.setdefault(layer.name, []).append(layer)
    renamed = {"depthwise_kernel": "depthwise_regularizer"}
    for variable in variables:
        layer_name, _, weight = variable.path.rpartition("/")
        layer_name = layer_name.rpartition("/")[2]
        attribute = renamed.get(weight, f"{weight}_regularizer")
        for layer in by_name.get(layer_name, []):
            if hasattr(layer, attribute):
                setattr(layer, attribute, variable.regularizer)


def keep_frozen_layers(layers: list[Any], bound: dict[str, str]) -> None:
    """Mark a layer (of ``layers``, :func:`all_layers` of the model) whose every Caffe blob
    has lr_mult 0 as ``trainable = False``, which the model's config saves (Keras saves no
    per-variable flag), so it stays frozen after ``keras.models.load_model``.
    BatchNormalization layers are left alone: their ``trainable`` also switches them to the
    moving statistics, which Caffe does not do."""
    for layer in layers:
        mine = [v for v in layer.weights if v.path in bound]
        frozen = mine and not any(v.trainable for v in mine)
        if frozen and not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def bind_caffe_blobs(
    model: Any,
    blobs: list[tuple[str, int, bool, Any]],
    default_blob: tuple[bool, Any],
    caffe_names: dict[str, str],
) -> dict[str, str]:
    """Attach Caffe's per-blob settings to the variables of an (already built) Keras model.

    ``blobs`` holds ``(keras_layer, blob_index, trainable, regularizer_spec)`` for every
    Caffe blob of the net; ``default_blob`` is ``(trainable, regularizer_spec)`` for every
    variable when the net is unknown (``blobs`` empty). ``caffe_names`` maps a Keras layer
    name back to its Caffe name (for messages). Regularizers go on ``variable.regularizer``
    (a regularizer given to a layer after it was built is never read). Existing regularizers
    of mapped variables are replaced, so ``sum(model.losses)`` is exactly Caffe's decay.

    Raises ValueError listing every Caffe blob with no Keras variable; warns about trainable
    Keras variables with no Caffe blob. Returns ``{variable.path: "<keras layer>/<blob>"}``.
    """
    by_key: dict[str, list[Any]] = {}
    for variable in model.variables:
        key = caffe_blob_key(variable.path)
        if key is not None:
            by_key.setdefault(key, []).append(variable)
    bound: dict[str, str] = {}
    kept: list[Any] = []  # the bound variables, whose layers keep their regularizer
    if not blobs:
        trainable, spec = default_blob
        for variable in model.trainable_variables:
            key = caffe_blob_key(variable.path)
            if key is None:
                continue
            variable.regularizer = make_regularizer(spec)
            variable.trainable = bool(trainable)
            bound[variable.path] = key
            kept.append(variable)
        keep_regularizers(all_layers(model), kept)
        return bound
    missing = []
    for layer, index, trainable, spec in blobs:
        found = by_key.get(f"{layer}/{index}", [])
        if not found:
            missing.append(f"{caffe_names.get(layer, layer)!r} blob {index}")
            continue
        for variable in found:
            variable.regularizer = make_regularizer(spec)
            variable.trainable = bool(trainable)
            bound[variable.path] = f"{layer}/{index}"
            kept.append(variable)
    if missing:
        raise ValueError(
            "These Caffe blobs have no Keras variable (a Keras layer must carry the Caffe "
            "layer's name, or map names with --layer-map): " + ", ".join(missing)
        )
    layers = all_layers(model)  # one walk for both
    keep_regularizers(layers, kept)
    keep_frozen_layers(layers, bound)
    extra = [v.path for v in model.trainable_variables if v.path not in bound]
    if extra:
        warnings.warn(
            "Keras variables with no Caffe counterpart (trained with lr_mult 1 and no "
            "weight decay): " + ", ".join(extra),
            stacklevel=2,
        )
    return bound


# -- inline end binder


# -- inline begin multi
def path_pattern(keras_layer: str, blob: int) -> str:
    """Regex for ``re.fullmatch`` on the ``variable.path`` of a Caffe blob's Keras variable:
    the names :data:`CAFFE_BLOB_OF_KERAS_NAME` gives that blob (and, for blob 0, a variable
    named like its layer, as :func:`caffe_blob_key` reads it)."""
    layer = re.escape(keras_layer)
    names = [n for n, b in CAFFE_BLOB_OF_KERAS_NAME.items() if b == blob]
    if blob == 0:
        names.append(layer)
    return f"(?:.*/)?{layer}/(?:{'|'.join(names)})"


# -- inline end multi

__all__ = [
    "CAFFE_BLOB_OF_KERAS_NAME",
    "CAFFE_POLICY_RATES",
    "CaffeAdaDelta",
    "CaffeAdaGrad",
    "CaffeAdam",
    "CaffeNvidiaSGD",
    "CaffeOptimizer",
    "CaffeRMSProp",
    "CaffeSGD",
    "CaffeSchedule",
    "bind_caffe_blobs",
    "caffe_blob_key",
    "make_regularizer",
    "path_pattern",
]
