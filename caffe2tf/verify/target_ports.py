"""The usual wrong ports of a Caffe solver to PyTorch and optax, for the same comparison.

Each port is the emitted module with ONE mistake that a careful-looking hand port makes; the
rest (multipliers, clip, accumulation, the exact Caffe rate per update) is taken from the
emitted module itself, so the measured drift is that mistake's. Each must FAIL the comparison
with the real Caffe on the recipes :func:`applies` names (docs/torch-target.md#wrong-ports,
docs/optax-target.md#wrong-ports).

``torch_sgd``
    ``torch.optim.SGD(momentum=mu)`` with the rate scheduled per update: torch keeps the rate
    outside its momentum buffer (param -= lr * buf), Caffe inside (h = mu * h + lr * g), so a
    rate change rescales torch's whole history at once (``torch/optim/sgd.py``
    ``_single_tensor_sgd``). Wrong under any changing rate with momentum.
``torch_adamw``
    ``torch.optim.AdamW(weight_decay=wd * decay_mult)``: decoupled decay w -= lr * wd * w,
    where Caffe's Adam adds wd * w to the gradient (``adam_solver.cpp``, ``Regularize``).
``optax_adamw``
    ``optax.adamw(rate, b1, b2, eps=delta, weight_decay=wd * decay_mult)`` per group: its
    ``add_decayed_weights`` sits after ``scale_by_adam`` (decoupled).
``optax_decay_after_scaling``
    The emitted group chain with ``add_decayed_weights`` moved after the solver's scaling
    (after ``trace`` for SGD, after ``scale_by_*`` for the adaptive solvers), just before the
    rate: the decay no longer passes through the momentum / adaptive denominator.
``tf_momentum``
    ``tf.compat.v1.train.MomentumOptimizer`` with the rate scheduled per update: the rate
    outside its accumulation (``tensorflow/python/training/momentum.py``), as ``torch_sgd``.
``tf_l2_doubled``
    The decay as loss terms ``weight_decay x decay_mult x sum(w^2)`` (a regularizer without
    ``tf.nn.l2_loss``'s 1/2, e.g. ``l2_regularizer(2 * wd)`` to "undo" the 1/2, or Keras'
    ``l2(wd)``): twice Caffe's decay.

torch and optax are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from caffe2tf.rule.model import Adam, AddDecay, Momentum, UpdateRule
from caffe2tf.rule.schedules import lr_sequence

TORCH_PORTS = ("torch_sgd", "torch_adamw")
OPTAX_PORTS = ("optax_adamw", "optax_decay_after_scaling")
TF_PORTS = ("tf_momentum", "tf_l2_doubled")
PORTS = TORCH_PORTS + OPTAX_PORTS + TF_PORTS


def _l2(rule: UpdateRule) -> AddDecay | None:
    d = rule.step(AddDecay)
    return d if isinstance(d, AddDecay) and d.kind == "L2" and d.weight_decay > 0 else None


def applies(port: str, rule: UpdateRule) -> bool:
    """Whether ``port`` mistranslates something this recipe has (so it must fail on it)."""
    step = rule.solver_step
    if port == "torch_sgd":
        return isinstance(step, Momentum) and step.momentum != 0 and rule.schedule.policy != "fixed"
    if port in ("torch_adamw", "optax_adamw"):
        return isinstance(step, Adam) and _l2(rule) is not None
    if port == "optax_decay_after_scaling":
        return _l2(rule) is not None
    if port == "tf_momentum":  # built-ins run without accumulation (see the TF1 target)
        return applies("torch_sgd", rule) and rule.iter_size == 1
    if port == "tf_l2_doubled":  # the decay as loss terms: the TF1 idiom, where it is exact
        return _l2(rule) is not None and _clip(rule) < 0
    raise ValueError(f"unknown port {port!r}")


def rate_factors(rule: UpdateRule, updates: int) -> np.ndarray:
    """Caffe's rate of updates 0..updates-1 over base_lr (float64), for a LambdaLR."""
    rates = lr_sequence(rule.schedule, max(1, updates), precision="float64")
    base = rule.schedule.base_lr
    return np.asarray(rates, np.float64) / base if base else np.zeros(len(rates))


def torch_port(port: str, rule: UpdateRule, module: Any, updates: int) -> Callable[[Any], Any]:
    """``build_optimizer(model)`` of ``port``, from the emitted ``optimizer_torch.py``
    ``module`` of the same recipe (its blob table, param groups and CaffeSolver)."""
    import torch

    table = rate_factors(rule, updates + 1)
    decay = _l2(rule)
    wd = float(np.float32(decay.weight_decay)) if decay else 0.0
    base_lr = float(np.float32(rule.schedule.base_lr))
    step = rule.solver_step

    def factor(k: int) -> float:
        return float(table[min(k, len(table) - 1)])

    def build(model: Any) -> Any:
        groups, _ = module.caffe_param_groups(
            model, module.CAFFE_BLOBS, module.DEFAULT_BLOB, base_lr, wd, True
        )
        before = None
        if port == "torch_sgd":
            assert isinstance(step, Momentum)
            optimizer = torch.optim.SGD(
                groups, lr=base_lr, momentum=float(step.momentum), nesterov=step.nesterov
            )
        elif port == "torch_adamw":
            assert isinstance(step, Adam)
            optimizer = torch.optim.AdamW(
                groups, lr=base_lr, betas=(float(step.beta1), float(step.beta2)), eps=step.delta
            )
            before = module.caffe_adam_epsilon(float(step.delta))
        else:
            raise ValueError(f"unknown torch port {port!r}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return module.CaffeSolver(
            optimizer,
            scheduler,
            clip_gradients=_clip(rule),
            iter_size=rule.iter_size,
            before_update=before,
        )

    return build


def _clip(rule: UpdateRule) -> float:
    from caffe2tf.rule.model import ClipByGlobalNorm

    c = rule.step(ClipByGlobalNorm)
    return float(np.float32(c.threshold)) if isinstance(c, ClipByGlobalNorm) else -1.0


def optax_port(port: str, rule: UpdateRule, module: Any) -> Callable[[], Any]:
    """``build_optimizer()`` of ``port``, from the emitted ``optimizer_optax.py`` ``module``
    of the same recipe (its blob table, labels and ``learning_rate``)."""
    import optax

    decay = _l2(rule)
    wd = float(np.float32(decay.weight_decay)) if decay else 0.0
    step = rule.solver_step

    def group(lr_mult: float, decay_mult: float) -> Any:
        if lr_mult == 0.0:
            return optax.set_to_zero()
        rate = module.learning_rate(lr_mult)
        if port == "optax_adamw":
            assert isinstance(step, Adam)
            return optax.adamw(
                rate,
                b1=float(step.beta1),
                b2=float(step.beta2),
                eps=float(step.delta),
                weight_decay=wd * decay_mult,
            )
        if port != "optax_decay_after_scaling":
            raise ValueError(f"unknown optax port {port!r}")
        # the solver's scaling, then the decay, then the rate
        return optax.chain(
            *_solver_scaling(step),
            optax.add_decayed_weights(wd * decay_mult),
            optax.scale_by_learning_rate(rate),
        )

    def build() -> Any:
        groups = module.caffe_groups(module.CAFFE_BLOBS, module.DEFAULT_BLOB)
        labels = module.caffe_labels(module.CAFFE_BLOBS, module.DEFAULT_BLOB)
        parts = []
        if any(not row[4] for row in module.CAFFE_BLOBS):
            mask = module.caffe_labels(module.CAFFE_BLOBS, module.DEFAULT_BLOB, "no_gradient")
            parts.append(optax.masked(optax.set_to_zero(), mask))
        if _clip(rule) >= 0:
            parts.append(optax.clip_by_global_norm(_clip(rule)))
        if rule.iter_size > 1:
            parts.append(optax.scale(float(np.float32(1.0) / np.float32(rule.iter_size))))
        parts.append(optax.multi_transform({k: group(*m) for k, m in groups.items()}, labels))
        chain = optax.chain(*parts)
        if rule.iter_size > 1:
            return optax.MultiSteps(
                chain, every_k_schedule=rule.iter_size, use_grad_mean=False
            ).gradient_transformation()
        return chain

    return build


def _solver_scaling(step: Any) -> list[Any]:
    """The solver's own scaling (without the rate), as the emitted module builds it."""
    import optax

    from caffe2tf.rule.model import AdaDelta, AdaGrad, RMSProp

    if isinstance(step, Momentum):
        return [optax.trace(decay=float(step.momentum), nesterov=step.nesterov)]
    if isinstance(step, RMSProp):
        return [
            optax.scale_by_rms(
                decay=float(step.rms_decay),
                eps=float(step.delta),
                initial_scale=0.0,
                eps_in_sqrt=False,
            )
        ]
    if isinstance(step, AdaDelta):
        return [optax.scale_by_adadelta(rho=float(step.rho), eps=float(step.delta))]
    if isinstance(step, AdaGrad | Adam):
        from caffe2tf.targets.optax import runtime

        if isinstance(step, AdaGrad):
            return [runtime.scale_by_caffe_adagrad(float(step.delta))]
        return [
            runtime.scale_by_caffe_adam(float(step.beta1), float(step.beta2), float(step.delta))
        ]
    raise TypeError(type(step))


def tf_port(port: str, rule: UpdateRule, module: Any) -> Callable[..., Any]:
    """``build_train_op(loss, var_list=None)`` of ``port``, from the emitted
    ``train_op_v1.py`` ``module`` of the same recipe (its blob table and ``learning_rate``)
    and the runtime's ``caffe_train_op``."""
    import tensorflow as tf

    from caffe2tf.targets.tf_compat_v1 import runtime

    decay = _l2(rule)
    wd = float(np.float32(decay.weight_decay)) if decay else 0.0
    step = rule.solver_step
    if port == "tf_momentum":
        assert isinstance(step, Momentum)
        solver = runtime.builtin_step(
            lambda rate: tf.compat.v1.train.MomentumOptimizer(
                rate, float(step.momentum), use_nesterov=step.nesterov
            )
        )
        doubled = 1.0
    elif port == "tf_l2_doubled":
        solver = plan_solver(rule)  # right as the emitted module has it
        doubled = 2.0
    else:
        raise ValueError(f"unknown TF1 port {port!r}")

    def build(loss: Any, var_list: Any = None) -> Any:
        return runtime.caffe_train_op(
            loss,
            var_list,
            module.CAFFE_BLOBS,
            module.DEFAULT_BLOB,
            learning_rate=module.learning_rate,
            solver=solver,
            weight_decay=wd * doubled,
            regularization_type="L2",
            decay_in_loss=_clip(rule) < 0,
            clip_gradients=_clip(rule),
            iter_size=rule.iter_size,
        )

    return build


def plan_solver(rule: UpdateRule) -> Any:
    """The TF1 target's solver for ``rule`` (what the emitted ``build_train_op`` passes to
    ``caffe_train_op``), built from the plan with the runtime library."""
    import tensorflow as tf

    from caffe2tf.targets.tf_compat_v1 import runtime
    from caffe2tf.targets.tf_compat_v1.plan import plan

    spec = plan(rule).solver
    kwargs = spec.kwargs()
    if spec.cls.startswith("tf.compat.v1.train."):
        optimizer = getattr(tf.compat.v1.train, spec.cls.rpartition(".")[2])
        return runtime.builtin_step(lambda rate: optimizer(rate, **kwargs))
    return getattr(runtime, spec.cls)(**kwargs)
