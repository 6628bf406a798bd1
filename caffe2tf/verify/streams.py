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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------
# Counter-based gradients: verify's inputs, made one update at a time (docs/verify.md#streams)
#
# Every element of every gradient is a pure function of (seed, blob, update, micro-batch,
# element index): a 32-bit hash (the MurmurHash3 finalizer ``fmix32``) of those counters, so
# any update can be made without the ones before it, nothing is held between updates, and the
# same numbers come out of NumPy here and of JAX or TensorFlow on a device
# (:func:`caffe2tf.verify.stream_program.gradient_function`). A hash value h becomes a
# uniform number in [-1/2, 1/2) as ``(h >> 8) * 2^-24 - 1/2``, exact in float32; the
# stream's scales are powers of two, so every float32 operation but the one sum ``drift +
# noise`` is exact and that sum is rounded the same way everywhere. Two finalizers per
# element and micro-batch: the base hash of (element index, blob counter) gives the drift
# (bits 8-31) and the dead flag (bits 0-7), and the finalizer of the base XOR the (update,
# micro-batch) counter gives the noise.

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1
#: per-purpose constants (any distinct odd values): spikes, micro-batch counters
_SPIKE, _MICRO = 0xFD7046C5, 0xB55A4F09
#: the stream's shape (see the module docstring): drift U(-1/16, 1/16), noise U(-1/8, 1/8),
#: spiked updates x8 (one in ten, and always update 1 when there are two), 10% dead elements
STREAM_DRIFT = 2.0**-3
STREAM_NOISE = 2.0**-2
STREAM_SPIKE = 8.0
STREAM_SPIKE_RATE = 0.1
STREAM_DEAD_RATE = 0.1
#: an element is dead when the low byte of its base hash is below this (26/256: 10.2%)
STREAM_DEAD_BYTE = round(STREAM_DEAD_RATE * 256)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping arithmetic)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def fmix32_int(h: int) -> int:
    """:func:`fmix32` of one Python int (the scalar side of the counters)."""
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def mix(*values: int) -> int:
    """A 32-bit hash of a few integers."""
    h = 0x811C9DC5
    for v in values:
        h = fmix32_int(h ^ (int(v) & _M32))
        h = (h * 0x01000193 + 0x7F4A7C15) & _M32
    return fmix32_int(h)


def blob_salt(seed: int, key: str) -> int:
    """The counter of one blob of one stream: (seed, the blob's key)."""
    import zlib

    return mix(seed, zlib.crc32(key.encode("utf-8")))


def update_counter(k: int, j: int) -> int:
    """The counter of micro-batch ``j`` of update ``k`` (0-based, from the run's start)."""
    return mix(_MICRO, k, j)


def spiked(seed: int, k: int) -> bool:
    """Whether update ``k`` of a stream is spiked: update 1 always (so a clip threshold between
    the ordinary and the spiked norms is crossed in every run of two updates or more), update 0
    never, the others with probability :data:`STREAM_SPIKE_RATE`."""
    if k <= 1:
        return k == 1
    return mix(_SPIKE, seed, k) < int(STREAM_SPIKE_RATE * 2.0**32)


def _element_base(n: int, salt: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.uint32)
    return fmix32(idx * np.uint32(_GOLDEN) + np.uint32(salt))


def _unit(h: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """A uniform number in [-1/2, 1/2) from each hash (exact in float32 and float64)."""
    return (h >> np.uint32(8)).astype(dtype) * dtype(2.0**-24) - dtype(0.5)


@dataclass(frozen=True)
class GradientSpec:
    """What one run feeds both rules, update by update (no arrays: the device engine builds
    the same gradients from it on the device).

    ``kind``:
      ``stream``  per element a fixed drift plus fresh noise per micro-batch, some updates
                  spiked, some elements dead (float32); Caffe's diff is the float32 running
                  sum of the ``iter_size`` micro-batches, in pass order;
      ``zeros``   nothing: only the weight decay moves the weights;
      ``impulse`` one uniform gradient of standard deviation ``scale`` at update 0, then zeros;
      ``uniform`` a fresh uniform gradient of standard deviation ``scale`` every update;
      ``norm``    ``uniform`` rescaled to the global norm ``norm`` (over every blob);
      ``cancel``  an update's diff uniform (std ``scale``), its micro-batches 1..S-1 uniform
                  with std 3 and the last one the diff minus their sum.
    For every kind but ``stream`` and ``cancel`` the first micro-batch of an update carries
    the whole diff and the others are zero. ``frozen`` blobs get zero everywhere."""

    kind: str
    seed: int
    iter_size: int = 1
    dtype: str = "float32"
    scale: float = 1.0
    norm: float = 0.0
    frozen: tuple[str, ...] = ()


#: the standard deviation of a uniform number in [-1/2, 1/2)
_UNIT_STD = 1.0 / math.sqrt(12.0)


class NumpyGradients:
    """A :class:`GradientSpec` made with NumPy: :meth:`update` gives the micro-batches of one
    update and their sum (Caffe's diff), nothing else is kept."""

    def __init__(self, spec: GradientSpec, shapes: Shapes) -> None:
        self.spec = spec
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self.keys = sorted(self.shapes)
        self.dtype = np.float32 if spec.dtype == "float32" else np.float64
        self.salts = {k: blob_salt(spec.seed, k) for k in self.keys}

    def _uniform(self, key: str, counter: int, std: float) -> np.ndarray:
        shape = self.shapes[key]
        n = int(np.prod(shape, dtype=np.int64))
        h = fmix32(_element_base(n, self.salts[key]) ^ np.uint32(counter))
        return (_unit(h, self.dtype) * self.dtype(std / _UNIT_STD)).reshape(shape)

    def _stream(self, key: str, k: int, j: int) -> np.ndarray:
        shape = self.shapes[key]
        n = int(np.prod(shape, dtype=np.int64))
        base = _element_base(n, self.salts[key])
        f32 = np.float32
        drift = _unit(base) * f32(STREAM_DRIFT)
        noise = _unit(fmix32(base ^ np.uint32(update_counter(k, j)))) * f32(STREAM_NOISE)
        value = drift + noise
        if spiked(self.spec.seed, k):
            value = value * f32(STREAM_SPIKE)
        if n >= 4:  # small blobs (a scalar slope) keep every element
            value[(base & np.uint32(0xFF)) < np.uint32(STREAM_DEAD_BYTE)] = 0.0
        return value.reshape(shape)

    def update(self, k: int) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """``(micro-batches, Caffe's diff)`` of update ``k`` (0-based from the run's start)."""
        spec, s = self.spec, max(1, self.spec.iter_size)
        zeros = {key: np.zeros(self.shapes[key], self.dtype) for key in self.keys}
        live = [key for key in self.keys if key not in spec.frozen]
        if spec.kind == "stream":
            micro = [dict(zeros) for _ in range(s)]
            total = dict(zeros)
            for key in live:
                acc = np.zeros(self.shapes[key], self.dtype)
                for j in range(s):
                    part = self._stream(key, k, j).astype(self.dtype)
                    micro[j][key] = part
                    acc = (acc + part).astype(self.dtype)
                total[key] = acc
            return micro, total
        if spec.kind == "cancel":
            micro = [dict(zeros) for _ in range(s)]
            total = dict(zeros)
            for key in live:
                diff = self._uniform(key, update_counter(k, s), spec.scale)
                rest = diff.astype(np.float64)
                for j in range(s - 1):
                    part = self._uniform(key, update_counter(k, j), 3.0)
                    micro[j][key] = part
                    rest = rest - part
                micro[s - 1][key] = rest.astype(self.dtype)
                total[key] = sum((micro[j][key] for j in range(s)), np.zeros_like(diff))
            return micro, total
        total = dict(zeros)
        if (spec.kind == "impulse" and k == 0) or spec.kind in ("uniform", "norm"):
            for key in live:
                total[key] = self._uniform(key, update_counter(k, 0), spec.scale)
        if spec.kind == "norm":
            norm = math.sqrt(
                sum(float(np.sum(np.square(v, dtype=np.float64))) for v in total.values())
            )
            if norm > 0:
                total = {
                    key: (v * (spec.norm / norm)).astype(self.dtype) for key, v in total.items()
                }
        elif spec.kind not in ("zeros", "impulse", "uniform"):
            raise ValueError(f"unknown gradient kind {spec.kind!r}")
        return [total] + [dict(zeros) for _ in range(s - 1)], total
