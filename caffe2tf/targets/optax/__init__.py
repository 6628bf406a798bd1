"""optax target: plan (rule -> OptaxPlan + notes) and render ``optimizer_optax.py``.

Nothing here imports JAX or optax except ``runtime.py`` (the source of the inlined blocks),
which only the tests and the verify harness import. Contract, mapping and sources:
docs/optax-target.md.
"""
