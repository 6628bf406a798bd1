"""cuda-convnet's weight update restated in float64 from its source, line by line, reading the
layer files with Python's own ``configparser`` (as cuda-convnet's ``layer.py`` reads them with
Python 2's ``ConfigParser``) -- independent of caffe2tf's front end and lowering.

Gradient convention (docs/cuda-convnet.md#gradient): ``g`` is the gradient of the MEAN over the
minibatch of the per-case loss (a Keras ``sum_over_batch_size`` loss). cuda-convnet's backward
pass writes the gradient of the *negated* cost (the logistic-regression kernel differentiates
``+coeff * log p_label``, ``layer_kernels.cu:260-276``) summed over the minibatch, times
1/numCases (cuda-convnet2 ``layer.cu:848-856`` ``getGradScale``; ``:870-873`` for biases), so
what its update reads as ``grad`` is ``-g``.

Per weight matrix / bias, one update (cuda-convnet2 ``weights.cu:325-340`` -> ``:277-311``):

* ``weights.cu:328``: nothing happens unless the base eps is > 0;
* ``weights.cu:286``: ``gradScale = eps`` (the schedule's value; only ``const`` here);
* ``weights.cu:289-293``: ``inc = mom*inc + gradScale*grad + (-wc*eps)*w``
  (``WeightedAdd(mom, gradScale, -wc*eps)`` applied to (inc, grad, w),
  ``nvmatrix_operators.cuh:472-480``), or ``inc = mom*inc + gradScale*grad`` when wc <= 0;
* ``weights.cu:311``: ``w += inc``.

Biases are built with ``wc = 0`` (``layer.cu:743``) and their own ``momB``/``epsB``; a weight
matrix ``i`` has ``momW[i]``, ``epsW[i]``, ``wc[i]`` (``layer.cu:740``), one value written
for all inputs being repeated (``layer.py:359-365``). The original cuda-convnet does the same
arithmetic in another order (``weights.cuh:150-162``: ``inc`` already holds
``mom*inc + eps/numCases * sum``, then ``inc -= wc*eps*w``, ``w += inc``).

``planted`` switches in one deliberate mistake, to show the comparisons catch it.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np

WEIGHT_TYPES = ("fc", "sfc", "conv", "local")


def blobs(layers_cfg: str | Path, params_cfg: str | Path) -> dict[str, tuple[float, float, float]]:
    """``{key: (eps, mom, wc)}``: weight matrix i of layer L is ``L/0`` (i = 0) or
    ``L.in<i>/0``, the bias ``L/1`` (docs/cuda-convnet.md#blob-keys)."""
    layers = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    layers.read(layers_cfg)
    params = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    params.read(params_cfg)
    out = {}
    for name in layers.sections():
        if layers.get(name, "type") not in WEIGHT_TYPES:
            continue
        n = len(layers.get(name, "inputs").split(","))

        def per_input(key: str, default: str | None = None, name: str = name, n: int = n) -> list:
            text = params.get(name, key, fallback=default)
            vals = [float(v) for v in text.split(",")]
            return vals * n if len(vals) == 1 else vals

        eps, mom, wc = per_input("epsW"), per_input("momW"), per_input("wc", "0")
        for i in range(n):
            key = f"{name}/0" if i == 0 else f"{name}.in{i}/0"
            out[key] = (eps[i], mom[i], wc[i])
        out[f"{name}/1"] = (float(params.get(name, "epsB")), float(params.get(name, "momB")), 0.0)
    return out


def run(
    table: dict[str, tuple[float, float, float]],
    init: dict[str, np.ndarray],
    grads: list[dict[str, np.ndarray]],
    planted: str = "",
) -> list[dict[str, np.ndarray]]:
    """Weights after each update (float64). ``planted``: ``"shared_momentum"`` (every blob
    uses the first blob's momentum) or ``"decay_unscaled"`` (``-wc*w`` without eps)."""
    w = {k: np.asarray(v, dtype=np.float64).copy() for k, v in init.items()}
    inc = {k: np.zeros_like(v) for k, v in w.items()}
    first_mom = next(iter(table.values()))[1]
    out = []
    for g in grads:
        for key, (eps, mom, wc) in table.items():
            if not eps > 0:  # weights.cu:328
                continue
            if planted == "shared_momentum":
                mom = first_mom
            grad = -np.asarray(g[key], dtype=np.float64)  # the negated cost (layer.cu:848-856)
            decay = -wc * (1.0 if planted == "decay_unscaled" else eps)
            if wc > 0:  # weights.cu:289-291
                inc[key] = mom * inc[key] + eps * grad + decay * w[key]
            else:  # weights.cu:293
                inc[key] = mom * inc[key] + eps * grad
            w[key] = w[key] + inc[key]  # weights.cu:311
        out.append({k: v.copy() for k, v in w.items()})
    return out
