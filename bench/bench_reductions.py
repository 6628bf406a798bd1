"""What one per-update comparison costs next to the update itself, on XLA (JAX).

Usage::

    python bench/bench_reductions.py [--elements N] [--updates K] [FORM ...]

Each form is one compiled loop of ``K`` iterations over two float32 arrays of ``N`` elements
(LeNet's size by default): every iteration updates both arrays elementwise (so nothing is
hoisted out of the loop) and then reduces them as the form says. ``none`` is the update alone;
``plain`` is verify's ``max|c - r|``; ``columns`` reduces a ``(N/128, 128)`` view over its rows
first; ``halving`` takes the elementwise maximum of the two halves until 4,096 are left;
``bits`` the maximum of the integer bit patterns with the sign cleared; ``squares`` a sum of
squares, which is not the measure but the cheapest reduction. Prints the fastest of 5 calls of
each, the forms alternating, in a Markdown table for ``bench/RESULTS.md``
("Session 9"). The figures say why verify's loop stays above 3x the optimizer's own loop
on a CPU (``bench_verify.py --ratio``).
"""

from __future__ import annotations

import argparse
import time

FORMS = ("none", "plain", "columns", "halving", "bits", "squares")


def make(form: str, updates: int):  # noqa: ANN201
    import jax
    import jax.numpy as jnp
    from jax import lax

    def reduce(c, r):  # noqa: ANN001, ANN202
        if form == "none":
            return jnp.float32(0)
        if form == "plain":
            return jnp.max(jnp.abs(c - r))
        if form == "columns":
            return jnp.max(jnp.max(jnp.abs(c - r).reshape(-1, 128), axis=0))
        if form == "halving":
            d = jnp.abs(c - r)
            while d.shape[0] > 4096 and d.shape[0] % 2 == 0:
                half = d.shape[0] // 2
                d = jnp.maximum(d[:half], d[half:])
            return jnp.max(d)
        if form == "bits":
            b = lax.bitcast_convert_type(c - r, jnp.int32) & 0x7FFFFFFF
            return lax.bitcast_convert_type(jnp.max(b), jnp.float32)
        if form == "squares":
            return jnp.sum(jnp.square(c - r))
        raise ValueError(form)

    def body(_, carry):  # noqa: ANN001, ANN202
        c, r, acc = carry
        c = c * jnp.float32(1.0000001) + jnp.float32(1e-7)
        r = r * jnp.float32(1.0000001) + jnp.float32(1e-7)
        return c, r, jnp.maximum(acc, reduce(c, r))

    return jax.jit(lambda c, r: lax.fori_loop(0, updates, body, (c, r, jnp.float32(0))))


def forms_parser(doc: str, forms: tuple[str, ...]) -> argparse.ArgumentParser:
    """The command line these microbenchmarks share: ``--elements``, ``--updates``, forms."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=409_600)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("forms", nargs="*", default=list(forms))
    return parser


def fastest(calls: dict, repeats: int = 5) -> dict[str, float]:
    """Per name, the fastest of ``repeats`` timed calls of its compiled function (a call
    first, which compiles it; then the names in turn, so a load that comes and goes is
    shared)."""
    import jax

    for call in calls.values():
        jax.block_until_ready(call())
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(call())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> int:
    parser = forms_parser(__doc__, FORMS)
    args = parser.parse_args()
    if args.elements % 128:
        parser.error("--elements must be a multiple of 128")
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    c, r = (jax.numpy.asarray(rng.standard_normal(args.elements, dtype=np.float32)) for _ in "cr")
    fns = {f: make(f, args.updates) for f in args.forms}
    best = fastest({f: (lambda fn=fn: fn(c, r)) for f, fn in fns.items()})
    base = best.get("none")
    print(f"{args.elements:,} float32 elements, {args.updates} iterations, {jax.devices()[0]}")
    print("| form | µs per iteration | above the update alone (µs) |")
    print("|---|---|---|")
    for f, s in best.items():
        per = s / args.updates * 1e6
        above = "" if base is None else f"{per - base / args.updates * 1e6:.0f}"
        print(f"| {f} | {per:.0f} | {above} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
