"""The compiled executors of Caffe's rule, by backend, called alike in tests:
``EXECUTORS[name](rule, init, grads, precision=..., registry=..., start=...)`` gives the
weights after each update (as :func:`caffe2tf.rule.reference.run_reference`). JAX's float64
runs are made inside ``jax.enable_x64``; a backend that is not importable is skipped locally
and fails under CI (:func:`conftest.require`)."""

from __future__ import annotations

from typing import Any

from conftest import require


def _jax(rule: Any, init: Any, grads: Any, *, precision: str = "float32", **kw: Any) -> Any:
    jax = require("jax")
    from caffe2tf.rule.jax_executor import run_jax

    with jax.enable_x64(precision == "float64"):
        return run_jax(rule, init, grads, precision=precision, **kw)


def _tf(rule: Any, init: Any, grads: Any, **kw: Any) -> Any:
    require("tensorflow")
    from caffe2tf.rule.tf_executor import run_tf

    return run_tf(rule, init, grads, **kw)


EXECUTORS = {"jax": _jax, "tensorflow": _tf}
