"""The per-update figures of the fused JAX program (caffe2tf/verify/device.py
``fused_figures``), checked against the host's comparison on the same arrays: the largest
``|c - r|`` and ``|r - w0|`` exactly, and, for a NaN or inf on either side of a big or a small
blob, the same "not finite" message. XLA:CPU's reductions of big arrays drop a NaN from a
maximum, so the program reads finiteness off the squared norms' sums; a planted check that
reads only the maxima misses such a NaN."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

jax = require("jax")

import jax.numpy as jnp  # noqa: E402

from caffe2tf.verify import device  # noqa: E402
from caffe2tf.verify.compare import StreamingComparison  # noqa: E402

#: LeNet's ip1 size (409,600 weights: XLA:CPU reduces it with YNNPACK), a bias, an empty blob
SHAPES = {"big/0": (640, 640), "small/0": (10,), "empty/0": (0, 3)}
CASES = [
    (side, value, key)
    for side in ("reference", "candidate", "both")
    for value in (np.nan, np.inf, -np.inf)
    for key in ("big/0", "small/0")
]


def arrays(seed: int = 0) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(seed)
    w0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    r = {k: (v + np.float32(0.01) * rng.standard_normal(v.shape)).astype(np.float32)
         for k, v in w0.items()}  # fmt: skip
    c = {k: (v + np.float32(1e-6) * rng.standard_normal(v.shape)).astype(np.float32)
         for k, v in r.items()}  # fmt: skip
    return w0, r, c


def on_device(w0: dict, r: dict, c: dict) -> tuple[np.ndarray, ...]:
    keys = list(SHAPES)

    def figures(w0, r, c):  # noqa: ANN001, ANN202
        return device.fused_figures([(k, r[k], c[k]) for k in keys], w0, jnp.float32)

    return tuple(np.asarray(x) for x in jax.jit(figures)(w0, r, c))


def messages(w0: dict, r: dict, c: dict) -> tuple[str, str]:
    """The "not finite" message of the host's comparison of the arrays, and of the same
    comparison fed the device's figures."""
    keys = list(SHAPES)
    host = StreamingComparison(w0, keys=keys)
    host.observe(r, c)
    fed = StreamingComparison(w0, keys=keys)
    diffs, moved, flags, _ = on_device(w0, r, c)
    fed.observe_block(diffs[None], moved[None], flags[None])
    return host.nonfinite, fed.nonfinite


def test_finite_figures_are_the_hosts_exactly():
    w0, r, c = arrays()
    diffs, moved, flags, norms = on_device(w0, r, c)
    for i, k in enumerate(SHAPES):
        if not w0[k].size:
            assert diffs[i] == moved[i] == 0 and not flags[i].any()
            continue
        assert diffs[i] == np.max(np.abs(c[k] - r[k]))
        assert moved[i] == np.max(np.abs(r[k] - w0[k]))
        assert not flags[i].any()
        want = [np.sqrt(np.sum(np.square(x[k], dtype=np.float64))) for x in (r, c)]
        assert norms[i] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(("side", "value", "key"), CASES)
def test_a_non_finite_weight_gives_the_hosts_message(side, value, key):
    w0, r, c = arrays()
    at = (123, 456) if key == "big/0" else (7,)
    for name, weights in (("reference", r), ("candidate", c)):
        if side in (name, "both"):
            weights[key][at] = value
    host, fed = messages(w0, r, c)
    assert host.startswith(f"the {side}" if side != "both" else "the reference"), host
    assert fed == host


def test_a_check_on_the_maxima_alone_misses_a_nan_in_a_big_blob(monkeypatch):
    def maxima_only(figures):  # noqa: ANN001, ANN202 (the squared norms' sums left out)
        return jnp.all(jnp.isfinite(jnp.stack([f for f in figures if f.ndim == 0])))

    monkeypatch.setattr(device, "update_is_finite", maxima_only)
    missed = []
    for side, value, key in CASES:
        if not np.isnan(value):
            continue
        w0, r, c = arrays()
        for name, weights in (("reference", r), ("candidate", c)):
            if side in (name, "both"):
                weights[key][(123, 456) if key == "big/0" else (7,)] = value
        host, fed = messages(w0, r, c)
        if fed != host:
            missed.append((side, key))
    assert ("candidate", "big/0") in missed, missed
