"""One training loop per Keras backend, each following the emitted module's contract: one
``apply_gradients`` per Caffe forward/backward pass on the gradients of
``L_j + sum(model.losses)``, where ``L_j(w) = sum(stop_gradient(g_j) * w)`` has gradient g_j.
``fit.py`` does the same through ``model.compile`` + ``model.fit``.

Every loop has the signature
``run(model, optimizer, parts_iter, on_update, iter_size, jit, cache)`` (``cache``: what a loop
may keep for the next run on the same model and optimizer);
:func:`loop_for` gives a Keras backend's ``run``.
"""

from __future__ import annotations

from collections.abc import Callable

Loop = Callable[..., None]


def loop_for(backend: str) -> Loop:
    """The custom training loop of a Keras backend (imports only that backend's module)."""
    if backend == "tensorflow":
        from caffe2tf.verify.loops.tensorflow import run
    elif backend == "jax":
        from caffe2tf.verify.loops.jax import run
    elif backend == "torch":
        from caffe2tf.verify.loops.torch import run
    else:
        raise RuntimeError(f"no custom training loop for the {backend} backend")
    return run


__all__ = ["Loop", "loop_for"]
