"""Exact Caffe pieces for PyTorch, inlined into the emitted ``optimizer_torch.py``.

:mod:`caffe2tf.targets.torch.render_python` copies the text between the ``# -- inline begin``
and ``# -- inline end`` markers verbatim (only the blocks a recipe uses), so a block may use
only ``torch``, ``math``, ``warnings``, ``collections.abc`` and ``typing`` and must stay
``ruff format`` clean. This module is also imported by the tests (with torch installed) to
check the blocks by themselves.

The wrapper :class:`CaffeSolver` runs Caffe's fixed order (docs/caffe-semantics.md#update-order,
``sgd_solver.cpp:108-127``) around a ``torch.optim`` optimizer that does the solver step::

    G = the raw sum of the iter_size gradients        solver.cpp:229-233
    G *= c / ||G|| when ||G|| > c                     ClipGradients  sgd_solver.cpp:87-106
    g = G * fl(1/iter_size)                           Normalize      :129-153
    g += wd * decay_mult * w  (L2) or * sign(w) (L1)  Regularize     :155-215 (L2 may be the
                                                      optimizer's own coupled weight_decay)
    lr = policy(k) * lr_mult                          the param group's lr, set by a scheduler
    optimizer.step()                                  the solver step (built-in or Caffe*)

Why each built-in is exact, with the torch source lines: docs/torch-target.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

# -- inline begin solver
#: A Caffe learnable blob: (torch submodule, parameter attribute, lr_mult, decay_mult, Caffe
#: layer name). Blob 0 is ``weight``, blob 1 ``bias``.
BlobRow = tuple[str, str, float, float, str]


def caffe_param_groups(
    model: torch.nn.Module,
    blobs: Sequence[BlobRow],
    default_blob: tuple[float, float],
    base_lr: float,
    weight_decay: float,
    decay_in_optimizer: bool,
) -> tuple[list[dict[str, Any]], list[torch.nn.Parameter]]:
    """One torch param group per (lr_mult, decay_mult), in Caffe's blob order, and the
    parameters of the ``lr_mult: 0`` blobs (Caffe never moves them; they join no group).

    A group holds ``lr`` = base_lr * lr_mult (a scheduler then scales it per update),
    ``caffe_decay`` = weight_decay * decay_mult (Caffe's local decay) and ``weight_decay`` = the
    same when the optimizer adds the decay itself (``decay_in_optimizer``), else 0. Raises
    ValueError naming every Caffe blob that has no parameter; warns about trainable parameters
    that hold no Caffe blob (they get ``default_blob``'s multipliers).
    """
    by_mults: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    frozen: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    missing: list[str] = []
    for module_name, attr, lr_mult, decay_mult, caffe_layer in blobs:
        try:
            param = model.get_parameter(f"{module_name}.{attr}")
        except AttributeError:
            missing.append(f"{caffe_layer!r} ({module_name}.{attr})")
            continue
        if id(param) in seen:
            continue
        seen.add(id(param))
        if lr_mult == 0.0:
            frozen.append(param)
        else:
            by_mults.setdefault((lr_mult, decay_mult), []).append(param)
    if missing:
        raise ValueError(
            "These Caffe blobs have no torch parameter (name the submodule like the Caffe "
            "layer; blob 0 is .weight, blob 1 .bias): " + ", ".join(missing)
        )
    extra = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            extra.append((name, p))
    if extra and blobs:
        warnings.warn(
            "torch parameters with no Caffe blob (trained with lr_mult "
            f"{default_blob[0]} and decay_mult {default_blob[1]}): "
            + ", ".join(name for name, _ in extra),
            stacklevel=3,
        )
    for _, p in extra:
        by_mults.setdefault(default_blob, []).append(p)
    groups = []
    for (lr_mult, decay_mult), params in by_mults.items():
        local_decay = weight_decay * decay_mult
        groups.append(
            {
                "params": params,
                "lr": base_lr * lr_mult,
                "weight_decay": local_decay if decay_in_optimizer else 0.0,
                "caffe_decay": local_decay,
                "lr_mult": lr_mult,
                "decay_mult": decay_mult,
            }
        )
    return groups, frozen


class CaffeSolver:
    """Caffe's update order around ``optimizer`` (see the module docstring).

    Call ``loss.backward(); solver.step(); solver.zero_grad()`` once per Caffe forward/backward
    pass. Every ``iter_size``-th call applies one Caffe update to the raw sum of the gradients
    of the last ``iter_size`` calls; the other calls only add to that sum. ``decay`` is
    "L1" or "L2" when this wrapper adds Caffe's decay (each group's ``caffe_decay``), "none"
    when the optimizer adds it (coupled ``weight_decay``) or there is none. ``clip_also``:
    parameters outside the optimizer whose gradients still count in the clip norm (Caffe's
    ``lr_mult: 0`` blobs under ``force_backward``). ``before_update(optimizer, t)`` runs
    before each optimizer step (t = 1, 2, ...). ``iterations`` counts Caffe updates.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        decay: str = "none",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
        clip_also: Sequence[torch.nn.Parameter] = (),
        before_update: Callable[[torch.optim.Optimizer, int], None] | None = None,
    ) -> None:
        if decay not in ("none", "L1", "L2"):
            raise ValueError(f"unknown decay {decay!r}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.decay = decay
        self.clip_gradients = float(clip_gradients)
        self.iter_size = max(int(iter_size), 1)
        self.clip_also = list(clip_also)
        self.before_update = before_update
        self.iterations = 0
        self.calls = 0
        self._sums: list[torch.Tensor] | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for p in self.clip_also:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _tracked(self) -> list[torch.nn.Parameter]:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return params + self.clip_also

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        tracked = self._tracked()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in tracked]
        self.calls += 1
        if self.iter_size > 1:
            # Caffe's diffs start at 0 and each backward pass adds to them (solver.cpp:229-233)
            if self._sums is None:
                self._sums = [g.detach().clone() for g in grads]
            else:
                for total, g in zip(self._sums, grads, strict=True):
                    total.add_(g)
            if self.calls % self.iter_size != 0:
                return loss
            grads, self._sums = self._sums, None
        if self.clip_gradients >= 0 and grads:
            norm = torch.sqrt(torch.stack([torch.sum(g * g) for g in grads]).sum())
            factor = torch.where(
                norm > self.clip_gradients,
                self.clip_gradients / norm,
                torch.ones_like(norm),
            )
            grads = [g * factor for g in grads]
        if self.iter_size > 1:
            grads = [g * (1.0 / self.iter_size) for g in grads]
        i = 0
        for group in self.optimizer.param_groups:
            coefficient = group.get("caffe_decay", 0.0)
            for p in group["params"]:
                g = grads[i]
                i += 1
                if self.decay == "L2" and coefficient != 0.0:
                    g = g + coefficient * p
                elif self.decay == "L1" and coefficient != 0.0:
                    g = g + coefficient * torch.sign(p)
                p.grad = g
        if self.before_update is not None:
            self.before_update(self.optimizer, self.iterations + 1)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.iterations += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler and self.scheduler.state_dict(),
            "iterations": self.iterations,
            "calls": self.calls,
            "sums": self._sums,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.iterations = int(state["iterations"])
        self.calls = int(state["calls"])
        self._sums = state["sums"]


# -- inline end solver


# -- inline begin policy_inv
def inv_factor(k: int, gamma: float, power: float) -> float:
    """Caffe's lr_policy "inv" over base_lr: (1 + gamma * k) ^ (-power)
    (sgd_solver.cpp:41-45)."""
    return math.pow(1.0 + gamma * k, -power)


# -- inline end policy_inv


# -- inline begin policy_sigmoid
def sigmoid_factor(k: int, gamma: float, stepsize: int) -> float:
    """Caffe's lr_policy "sigmoid" over base_lr: 1 / (1 + exp(-gamma * (k - stepsize)))
    (sgd_solver.cpp:60-65)."""
    exponent = -gamma * (k - stepsize)
    if exponent > 709.0:  # exp would overflow: the rate is 0 in float
        return 0.0
    return 1.0 / (1.0 + math.exp(exponent))


# -- inline end policy_sigmoid


# -- inline begin adam_epsilon
def caffe_adam_epsilon(delta: float) -> Callable[[torch.optim.Optimizer, int], None]:
    """Make torch.optim.Adam do Caffe's Adam: torch adds eps to sqrt(v) / sqrt(1 - beta2^t)
    (adam.py ``denom``), Caffe adds delta to sqrt(v) (adam_solver.cpp:63-69). Setting
    eps = delta / sqrt(1 - beta2^t) before update t makes the two denominators equal."""

    def set_epsilon(optimizer: torch.optim.Optimizer, t: int) -> None:
        for group in optimizer.param_groups:
            group["eps"] = delta / math.sqrt(1.0 - group["betas"][1] ** t)

    return set_epsilon


# -- inline end adam_epsilon


# -- inline begin custom_CaffeSGD
class CaffeSGD(torch.optim.Optimizer):
    """Caffe SGD: h = momentum * h + lr * g; w -= h (the rate inside the history,
    sgd_solver.cpp:223-238). With nesterov: w -= (1 + momentum) * h - momentum * h_old
    (nesterov_solver.cpp:13-40). g includes the group's coupled weight_decay."""

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                state = self.state[p]
                h_old = state.get("history")
                if h_old is None:
                    h_old = torch.zeros_like(p)
                h = mu * h_old + lr * g
                state["history"] = h
                if group["nesterov"]:
                    p.sub_((1.0 + mu) * h - mu * h_old)
                else:
                    p.sub_(h)
        return None


# -- inline end custom_CaffeSGD


# -- inline begin custom_CaffeAdaGrad
class CaffeAdaGrad(torch.optim.Optimizer):
    """Caffe AdaGrad: h += g^2; w -= lr * g / (sqrt(h) + delta) (adagrad_solver.cpp:13-49)."""

    def __init__(
        self, params: Any, lr: float, delta: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        defaults = {"lr": lr, "delta": delta, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                state = self.state[p]
                h = state.get("history", torch.zeros_like(p)) + g * g
                state["history"] = h
                if lr != 0.0:
                    p.sub_(lr * (g / (torch.sqrt(h) + group["delta"])))
        return None


# -- inline end custom_CaffeAdaGrad


# -- inline begin custom_CaffeRMSProp
class CaffeRMSProp(torch.optim.Optimizer):
    """Caffe RMSProp: h = rms_decay * h + (1 - rms_decay) * g^2;
    w -= lr * g / (sqrt(h) + delta) (rmsprop_solver.cpp:13-51)."""

    def __init__(
        self,
        params: Any,
        lr: float,
        rms_decay: float = 0.99,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "rms_decay": rms_decay,
            "delta": delta,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            lr, wd, rho = group["lr"], group["weight_decay"], group["rms_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                state = self.state[p]
                h = state.get("history", torch.zeros_like(p))
                h = rho * h + (1.0 - rho) * (g * g)
                state["history"] = h
                if lr != 0.0:
                    p.sub_(lr * (g / (torch.sqrt(h) + group["delta"])))
        return None


# -- inline end custom_CaffeRMSProp


# -- inline begin custom_CaffeAdaDelta
class CaffeAdaDelta(torch.optim.Optimizer):
    """Caffe AdaDelta, rho = momentum: a = rho * a + (1 - rho) * g^2;
    d = g * sqrt((b + delta) / (a + delta)); b = rho * b + (1 - rho) * d^2; w -= lr * d
    (adadelta_solver.cpp:25-90)."""

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "delta": delta,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            lr, wd, rho, delta = (
                group["lr"],
                group["weight_decay"],
                group["momentum"],
                group["delta"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                state = self.state[p]
                a = state.get("history", torch.zeros_like(p))
                a = rho * a + (1.0 - rho) * (g * g)
                b = state.get("update_history", torch.zeros_like(p))
                d = g * torch.sqrt((b + delta) / (a + delta))
                state["history"] = a
                state["update_history"] = rho * b + (1.0 - rho) * (d * d)
                if lr != 0.0:
                    p.sub_(lr * d)
        return None


# -- inline end custom_CaffeAdaDelta


# -- inline begin custom_CaffeAdam
class CaffeAdam(torch.optim.Optimizer):
    """Caffe Adam, beta1 = momentum, beta2 = momentum2, t = update number (1, 2, ...):
    m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2;
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta) (adam_solver.cpp:25-74)."""

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        momentum2: float = 0.999,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "momentum2": momentum2,
            "delta": delta,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            b1, b2 = group["momentum"], group["momentum2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                state = self.state[p]
                t = state.get("step", 0) + 1
                m = b1 * state.get("m", torch.zeros_like(p)) + (1.0 - b1) * g
                v = b2 * state.get("v", torch.zeros_like(p)) + (1.0 - b2) * (g * g)
                state["step"], state["m"], state["v"] = t, m, v
                correction = math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
                if lr * correction != 0.0:
                    p.sub_((lr * correction) * (m / (torch.sqrt(v) + group["delta"])))
        return None


# -- inline end custom_CaffeAdam

__all__ = [
    "BlobRow",
    "CaffeAdaDelta",
    "CaffeAdaGrad",
    "CaffeAdam",
    "CaffeRMSProp",
    "CaffeSGD",
    "CaffeSolver",
    "caffe_adam_epsilon",
    "caffe_param_groups",
    "inv_factor",
    "sigmoid_factor",
]
