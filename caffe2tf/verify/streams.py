"""Seeded gradient streams for differential tests (reference vs real Caffe vs Keras).

A stream is a list of ``{blob_key: float32 array}`` dicts, one per *update*, holding what
Caffe's diff holds when the update starts: the raw sum of the ``iter_size`` backward passes
(``solver.cpp:229-233``; param layers accumulate into the diff, e.g.
``inner_product_layer.cpp:108-124``). :func:`micro_batches` gives the per-pass gradients (what a
Keras user passes to ``apply_gradients`` once per pass) and :func:`accumulate` sums them in
Caffe's order (``((g1 + g2) + g3)`` in float32).

The numbers are shaped so that the things that differ between update rules are visible:

* each element has a persistent drift plus noise, so momentum builds up and the weights travel
  (the deviation measure divides by the distance travelled);
* the per-element magnitude (``scale``) is small, so with the matrix' weight decay the decay term
  is a sizeable share of the update, and L1's ``sign(w)`` differs from L2's ``w``;
* with probability ``spikes`` a whole update is multiplied by ``spike_factor``, so a global-norm
  clip threshold between the ordinary and the spiked norms triggers sometimes but not always
  (at least one spiked and one ordinary update whenever ``steps >= 2`` and ``spikes > 0``);
* a ``dead`` fraction of elements never receives a gradient (exact zeros); paired with zero
  initial weights (:func:`dead_mask`) they probe ``sign(0) = 0`` under L1 decay
  (``math_functions.hpp:113-116``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Shapes = Mapping[str, tuple[int, ...]]
Grads = dict[str, np.ndarray]

DEFAULT_SCALE = 0.1
DEFAULT_SPIKES = 0.1
DEFAULT_SPIKE_FACTOR = 8.0
DEFAULT_DEAD = 0.1


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, sum(map(ord, tag)) & 0xFFFF, len(tag)])


def dead_mask(shapes: Shapes, seed: int, fraction: float = DEFAULT_DEAD) -> dict[str, np.ndarray]:
    """Boolean masks of the elements that never get a gradient in the stream with this seed.

    Only blobs with at least 4 elements get dead elements (never all of them)."""
    rng = _rng(seed, "dead")
    masks = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        mask = np.array(rng.random(shape) < fraction)  # 0-d too (PReLU channel_shared)
        if mask.size < 4:
            mask[...] = False
        elif mask.all():
            mask.flat[0] = False
        masks[key] = mask
    return masks


def spike_steps(steps: int, seed: int, spikes: float = DEFAULT_SPIKES) -> np.ndarray:
    """Boolean (steps,): which updates are spiked. With ``steps >= 2`` and ``spikes > 0`` at
    least one is and at least one is not."""
    rng = _rng(seed, "spikes")
    spiked = rng.random(steps) < spikes
    if steps >= 2 and spikes > 0:
        if not spiked.any():
            spiked[int(rng.integers(1, steps))] = True
        if spiked.all():
            spiked[0] = False
    return spiked


def micro_batches(
    shapes: Shapes,
    steps: int,
    seed: int,
    *,
    iter_size: int = 1,
    scale: float = DEFAULT_SCALE,
    spikes: float = DEFAULT_SPIKES,
    spike_factor: float = DEFAULT_SPIKE_FACTOR,
    dead: float = DEFAULT_DEAD,
) -> list[Grads]:
    """Per-pass gradients: ``steps * iter_size`` dicts; passes ``k*S .. k*S+S-1`` make update k.

    Element e at pass j: ``drift_e + scale * N(0, 1)`` with ``drift_e ~ N(0, (scale/2)^2)``
    fixed per element, times ``spike_factor`` on spiked updates, zero on dead elements.
    """
    if steps < 0 or iter_size < 1:
        raise ValueError("steps must be >= 0 and iter_size >= 1")
    keys = sorted(shapes)
    masks = dead_mask(shapes, seed, dead)
    spiked = spike_steps(steps, seed, spikes)
    drift_rng = _rng(seed, "drift")
    drift = {key: np.array(drift_rng.normal(0.0, scale / 2, tuple(shapes[key]))) for key in keys}
    noise_rng = _rng(seed, "noise")
    out: list[Grads] = []
    for k in range(steps):
        factor = spike_factor if spiked[k] else 1.0
        for _ in range(iter_size):
            g = {}
            for key in keys:
                value = np.array(
                    (drift[key] + noise_rng.normal(0.0, scale, drift[key].shape)) * factor
                )
                value[masks[key]] = 0.0
                g[key] = value.astype(np.float32)
            out.append(g)
    return out


def accumulate(micro: Sequence[Mapping[str, np.ndarray]], iter_size: int) -> list[Grads]:
    """Caffe's diffs from per-pass gradients: float32 running sums over each group of
    ``iter_size`` passes, in pass order (the diff is zeroed, then each backward adds)."""
    if iter_size < 1 or len(micro) % iter_size:
        raise ValueError(f"{len(micro)} passes do not split into groups of {iter_size}")
    out: list[Grads] = []
    for start in range(0, len(micro), iter_size):
        group = micro[start : start + iter_size]
        total = {key: np.zeros_like(np.asarray(v, dtype=np.float32)) for key, v in group[0].items()}
        for g in group:
            for key in total:
                total[key] = (total[key] + np.asarray(g[key], dtype=np.float32)).astype(np.float32)
        out.append(total)
    return out


def gradient_stream(
    shapes: Shapes,
    steps: int,
    seed: int,
    *,
    iter_size: int = 1,
    scale: float = DEFAULT_SCALE,
    spikes: float = DEFAULT_SPIKES,
    spike_factor: float = DEFAULT_SPIKE_FACTOR,
    dead: float = DEFAULT_DEAD,
) -> list[Grads]:
    """What Caffe's diff holds at each of ``steps`` updates (see :func:`micro_batches`; for
    ``iter_size > 1`` the float32 sum of its passes)."""
    micro = micro_batches(
        shapes,
        steps,
        seed,
        iter_size=iter_size,
        scale=scale,
        spikes=spikes,
        spike_factor=spike_factor,
        dead=dead,
    )
    return accumulate(micro, iter_size)


def global_norms(grads: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Global L2 norm of each update's gradients (float64), as Caffe's clip computes it
    (``sgd_solver.cpp:87-106``: sqrt of the sum over all learnable blobs of sum of squares)."""
    return np.array(
        [
            np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in g.values()))
            for g in grads
        ]
    )


def split_micro_batches(
    total: Mapping[str, np.ndarray], iter_size: int, *, seed: int, step: int
) -> list[dict[str, np.ndarray]]:
    """S seeded parts of the raw sum ``total`` (one per Caffe forward/backward pass).

    Parts 1..S-1 are ``total/S + noise`` (noise ~ N(0, std(total)) per element, generator seeded
    by (seed, step)); part S is ``total`` minus their float64 sum, so the parts add up to
    ``total`` in exact arithmetic (float32 rounding of each part aside). ``iter_size`` 1 returns
    ``[total]`` unchanged."""
    if iter_size <= 1:
        return [{k: np.asarray(v, np.float32) for k, v in total.items()}]
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, int(step), 0x5EED])
    parts: list[dict[str, np.ndarray]] = [{} for _ in range(iter_size)]
    for key in sorted(total):
        g = np.asarray(total[key], np.float64)
        spread = float(np.std(g)) or float(np.max(np.abs(g), initial=0.0))
        acc = np.zeros_like(g)
        for j in range(iter_size - 1):
            p = g / iter_size + rng.normal(0.0, spread, size=g.shape)
            p32 = p.astype(np.float32)
            parts[j][key] = p32
            acc += p32
        parts[-1][key] = (g - acc).astype(np.float32)
    return parts
