"""Whether another layout of the two rules' arrays lets XLA:CPU fuse verify's loop, on JAX.

Usage::

    python bench/bench_layouts.py [--elements N] [--updates K]

Each form is one compiled ``lax.scan`` of ``K`` updates of one blob of ``N`` float32 weights
(LeNet's ``ip1`` by default) by SGD with momentum, the gradient an argument read each update:

- ``alone``: the candidate's rule only (Keras' ``m = mu m - lr g``, ``w = w + m``), the loop the
  ratio of ``bench_verify.py --ratio`` divides by;
- ``separate``: the candidate's and Caffe's rule (``h = mu h + lr g``, ``w = w - h``) on four
  arrays, then ``max|c - r|``, as verify's fused loop holds them;
- ``separate-nomax``: the same without the maximum;
- ``stacked``: the four arrays as the rows of one ``(4, N)`` array, rewritten whole each update
  (one output: XLA:CPU has no multi-output fusion, so this is the one way to ask for a single
  pass), then the maximum;
- ``interleaved``: the same as ``(N, 4)``, each weight's four values side by side;
- ``paired``: the two weights as one ``(2, N)`` array and the two states as another, both rules
  one elementwise formula with a sign per row.

Prints the fastest of 5 calls of each (the forms alternating: ``bench_reductions.fastest``)
and its ratio to ``alone``, in a Markdown table for bench/RESULTS.md ("Session 14").
"""

from __future__ import annotations

from bench_reductions import fastest, forms_parser

FORMS = ("alone", "separate", "separate-nomax", "stacked", "interleaved", "paired")


def make(form: str, updates: int):  # noqa: ANN201
    import jax
    import jax.numpy as jnp
    from jax import lax

    mu, lr = jnp.float32(0.9), jnp.float32(0.01)

    def candidate(w, m, g):  # noqa: ANN001, ANN202
        m = mu * m - lr * g
        return w + m, m

    def caffe(w, h, g):  # noqa: ANN001, ANN202
        h = mu * h + lr * g
        return w - h, h

    def scan(body, carry):  # noqa: ANN001, ANN202
        return lax.scan(lambda c, _: (body(c), None), carry, None, length=updates)[0]

    if form == "alone":
        return jax.jit(lambda w, m, g: scan(lambda c: candidate(*c, g), (w, m)))
    if form in ("separate", "separate-nomax"):

        def body(c, g):  # noqa: ANN001, ANN202
            w, m, rw, rh, worst = c
            w, m = candidate(w, m, g)
            rw, rh = caffe(rw, rh, g)
            if form == "separate":
                worst = jnp.maximum(worst, jnp.max(jnp.abs(w - rw)))
            return w, m, rw, rh, worst

        return jax.jit(lambda x, g: scan(lambda c: body(c, g), (*x, jnp.float32(0))))
    if form in ("stacked", "interleaved"):
        axis = 0 if form == "stacked" else -1

        def body(c, g):  # noqa: ANN001, ANN202
            x, worst = c
            rows = [jnp.take(x, i, axis=axis) for i in range(4)]
            w, m = candidate(rows[0], rows[1], g)
            rw, rh = caffe(rows[2], rows[3], g)
            x = jnp.stack([w, m, rw, rh], axis=axis)
            return x, jnp.maximum(worst, jnp.max(jnp.abs(w - rw)))

        return jax.jit(lambda x, g: scan(lambda c: body(c, g), (x, jnp.float32(0))))
    if form == "paired":
        sign = jnp.array([-1.0, 1.0], jnp.float32)[:, None]  # row 0 Keras, row 1 Caffe

        def body(c, g):  # noqa: ANN001, ANN202
            w, s, worst = c
            s = mu * s + sign * lr * g
            w = w - sign * s
            return w, s, jnp.maximum(worst, jnp.max(jnp.abs(w[0] - w[1])))

        return jax.jit(lambda x, g: scan(lambda c: body(c, g), (*x, jnp.float32(0))))
    raise ValueError(form)


def arguments(form: str, arrays: list) -> tuple:
    """The form's arguments from the four arrays ``w, m, rw, rh`` and the gradient."""
    import jax.numpy as jnp

    w, m, rw, rh, g = arrays
    if form == "alone":
        return (w, m, g)
    if form.startswith("separate"):
        return ((w, m, rw, rh), g)
    if form == "stacked":
        return (jnp.stack([w, m, rw, rh]), g)
    if form == "interleaved":
        return (jnp.stack([w, m, rw, rh], axis=-1), g)
    return ((jnp.stack([w, rw]), jnp.stack([m, rh])), g)


def main() -> int:
    args = forms_parser(__doc__, FORMS).parse_args()
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [jax.numpy.asarray(rng.standard_normal(args.elements, dtype=np.float32))
              for _ in range(5)]  # fmt: skip
    fns = {f: (make(f, args.updates), arguments(f, arrays)) for f in args.forms}
    best = fastest({f: (lambda fn=fn, xs=xs: fn(*xs)) for f, (fn, xs) in fns.items()})
    base = best.get("alone")
    print(f"{args.elements:,} float32 weights, {args.updates} updates, {jax.devices()[0]}")
    print("| form | µs per update | ratio to `alone` |")
    print("|---|---|---|")
    for f, s in best.items():
        ratio = "" if base is None else f"{s / base:.2f}"
        print(f"| {f} | {s / args.updates * 1e6:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
