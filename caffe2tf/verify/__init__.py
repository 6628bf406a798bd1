"""Reference against candidate: streams, the Keras mirror and loops, compare, plot, the oracle.

The package is also the public call ``caffe2tf.verify(solver, ...)`` (:func:`caffe2tf.api.
verify`): once any ``caffe2tf.verify.<module>`` is imported, Python binds the name
``caffe2tf.verify`` to this package, so the package itself is made callable and forwards to
that function.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from caffe2tf.api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
