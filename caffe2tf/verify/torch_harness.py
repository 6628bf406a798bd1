"""Run an emitted ``optimizer_torch.py`` per its contract and record the weight trajectory.

The contract (docs/torch-target.md#contract): ``build_optimizer(model)`` on a module whose
submodules are named like the Caffe layers (blob 0 = ``.weight``, blob 1 = ``.bias``), then
per Caffe forward/backward pass ``loss.backward(); opt.step(); opt.zero_grad()``.

The mirror model is built from the plan's bindings (:class:`caffe2tf.targets.torch.model.
TorchBlob`): an ``nn.Linear`` for an InnerProduct layer with a 2-d weight and a bias, else a
plain ``nn.Module`` holding Parameters of the Caffe shapes (torch's layouts are Caffe's for
every layer type the contract names, and the update is elementwise). Dotted names become
nested submodules, as ``get_parameter`` walks them. A pass's gradients ``g`` reach the
parameters through ``loss = sum(g * p)``, whose gradient is exactly ``g``. Caffe blobs with
no torch parameter (BatchNorm statistics, buffers in torch) are reported unchanged.

torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.targets.torch.model import TorchBlob

Weights = dict[str, np.ndarray]


def mirror_model(blobs: Sequence[TorchBlob], shapes: Mapping[str, Sequence[int]]) -> Any:
    """A ``torch.nn.Module`` with one parameter per binding, shaped like its Caffe blob."""
    import torch

    root = torch.nn.Module()
    by_module: dict[str, dict[str, TorchBlob]] = {}
    for b in blobs:
        by_module.setdefault(b.module, {})[b.attr] = b
    for name, attrs in by_module.items():
        parts = name.split(".")
        parent = root
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        weight, bias = attrs.get("weight"), attrs.get("bias")
        leaf = getattr(parent, parts[-1], None)
        if leaf is None:
            w_shape = tuple(shapes[weight.caffe_key]) if weight else None
            if (
                weight is not None
                and bias is not None
                and weight.layer_type == "InnerProduct"
                and w_shape is not None
                and len(w_shape) == 2
                and tuple(shapes[bias.caffe_key]) == (w_shape[0],)
            ):
                leaf = torch.nn.Linear(w_shape[1], w_shape[0])
            else:
                leaf = torch.nn.Module()
            parent.add_module(parts[-1], leaf)
        for attr, b in attrs.items():
            if not isinstance(getattr(leaf, attr, None), torch.nn.Parameter):
                shape = tuple(int(d) for d in shapes[b.caffe_key])
                leaf.register_parameter(attr, torch.nn.Parameter(torch.zeros(shape)))
    return root


def run_torch(
    build_optimizer: Callable[[Any], Any],
    blobs: Sequence[TorchBlob],
    init: Mapping[str, np.ndarray],
    micro: Sequence[Mapping[str, np.ndarray]],
    *,
    iter_size: int = 1,
    device: str = "cpu",
) -> list[Weights]:
    """Train the mirror of ``blobs`` from ``init`` on the per-pass gradients ``micro``
    (``iter_size`` passes per Caffe update) with ``build_optimizer``; the weights after each
    Caffe update, keyed like ``init`` (Caffe layout, float32)."""
    import torch

    shapes = {k: np.shape(v) for k, v in init.items()}
    model = mirror_model(blobs, shapes).to(device)
    params = {b.caffe_key: model.get_parameter(b.parameter) for b in blobs}
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(init[key], np.float32)))
    optimizer = build_optimizer(model)
    fixed = {k: np.asarray(v, np.float32).copy() for k, v in init.items() if k not in params}
    out: list[Weights] = []
    for j, part in enumerate(micro):
        terms = [
            torch.sum(torch.as_tensor(np.asarray(part[key], np.float32), device=device) * p)
            for key, p in params.items()
            if key in part and p.requires_grad
        ]
        if terms:
            torch.stack(terms).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if (j + 1) % max(1, iter_size) == 0:
            snapshot = {k: p.detach().cpu().numpy().copy() for k, p in params.items()}
            snapshot.update({k: v.copy() for k, v in fixed.items()})
            out.append({k: snapshot[k] for k in init})
    return out
