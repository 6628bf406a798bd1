"""PyTorch target: plan (rule -> TorchPlan + notes) and render ``optimizer_torch.py``.

Nothing here imports torch except ``runtime.py`` (the source of the inlined blocks), which only
the tests and the verify harness import. Contract, mapping and sources: docs/torch-target.md.
"""
