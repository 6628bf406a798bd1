"""The candidate under test: an emitted module (or a wrong port) as two guarded callables.

:func:`load_module` imports a user's ``optimizer.py`` from its path; any error in that user code
(a syntax error, an exception while importing it or inside ``build_optimizer``/``prepare_model``)
becomes one :class:`~caffe2tf.errors.InputError` at its ``file:line``, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffe2tf.errors import InputError, SourceLocation


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text[:200] + ("..." if len(text) > 200 else "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_module(path: str | os.PathLike[str], name: str | None = None) -> Any:
    """Import an emitted ``optimizer.py`` from its path (a fresh module object each call).

    The module is user input: a syntax error is an :class:`InputError` at its ``file:line:col``,
    any other exception while importing it is an :class:`InputError` naming the module."""
    path = Path(path)
    where = SourceLocation(str(path))
    if path.is_dir():
        raise InputError("is a directory, not a Python module", where)
    if not path.is_file():
        raise InputError("no such file", where)
    modname = name or f"caffe2tf_candidate_{abs(hash(str(path.resolve()))) & 0xFFFFFF:x}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise InputError("cannot import this file as a Python module", where)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:  # includes IndentationError/TabError
        shown = err.filename or str(path)
        if os.path.realpath(shown) == os.path.realpath(path):
            shown = str(path)  # as the user wrote it
        raise InputError(
            f"{type(err).__name__}: {err.msg}", SourceLocation(shown, err.lineno, err.offset)
        ) from None
    except InputError:
        raise
    except (Exception, SystemExit) as err:  # its own code failed while being imported
        raise InputError(
            f"importing the module failed: {_one_line(err)}", _raised_at(err, str(path))
        ) from None
    finally:
        sys.modules.pop(modname, None)
    for fn in ("build_optimizer", "prepare_model"):
        if not callable(getattr(module, fn, None)):
            raise InputError(f"defines no {fn}()", where)
    module.__caffe2tf_path__ = str(path)  # as the user wrote it, for error messages
    return module


def _raised_at(err: BaseException, path: str) -> SourceLocation:
    """The deepest line of ``path`` in ``err``'s traceback (else just the file)."""
    import traceback

    line = None
    try:
        target = os.path.realpath(path)
        for frame in traceback.extract_tb(err.__traceback__):
            if os.path.realpath(frame.filename) == target:
                line = frame.lineno
    except (OSError, ValueError):
        pass
    return SourceLocation(path, line)


@contextlib.contextmanager
def blame_module(path: str | None) -> Iterator[None]:
    """Within it, an exception raised through the user's module ``path`` (its optimizer's own
    steps, called while verify trains the mirror: ``update_step`` traced by TensorFlow or JAX,
    a schedule's ``__call__``) becomes an :class:`InputError` at the deepest line of ``path``
    it passed, not a traceback. An exception that never entered ``path`` is left as it is (it
    is not the module's doing), and so is everything when ``path`` is None (a module verify
    converted itself)."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        where = _raised_at(err, path) if path is not None else None
        if where is None or where.line is None:
            raise
        raise InputError(
            f"the optimizer failed while verify trained with it: {_one_line(err)}", where
        ) from None


def _guarded(fn: Callable[..., Any], label: str, path: str) -> Callable[..., Any]:
    """``fn`` (user code) with any exception turned into an InputError at the line of
    ``path`` it came from, naming the call."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError:
            raise
        except (Exception, SystemExit) as err:
            raise InputError(f"{label} raised {_one_line(err)}", _raised_at(err, path)) from None

    return call


@dataclass(frozen=True)
class Candidate:
    """Something that can train the mirror: ``build_optimizer()`` and ``prepare_model(model)``
    (an emitted module, or one of :mod:`caffe2tf.verify.wrong_ports`)."""

    name: str
    build_optimizer: Callable[[], Any]
    prepare_model: Callable[[Any], Any]


def candidate_from_module(module: Any, name: str = "optimizer.py") -> Candidate:
    """A module's two functions; an exception in either (user code) becomes an InputError
    that names the module, so the CLI prints one line instead of a traceback."""
    where = getattr(module, "__caffe2tf_path__", None) or getattr(module, "__file__", None) or name
    return Candidate(
        name=name,
        build_optimizer=_guarded(module.build_optimizer, "build_optimizer()", where),
        prepare_model=_guarded(module.prepare_model, "prepare_model()", where),
    )


def declared_layer_map(module: Any, pairs: dict[str, str]) -> dict[str, str]:
    """``{caffe_layer: keras_layer}`` from an emitted module's blob table (``CAFFE_BLOBS``
    rows: Keras layer first, Caffe layer last, see caffe2tf/targets/keras/render_python.py),
    the names its ``prepare_model`` looks for: convert's automatic renames and any
    ``--layer-map`` it was given. A paired BatchNorm (``pairs``: ``{Scale: BatchNorm}``) takes
    its Scale's Keras layer. Empty when the module lists nothing (a hand-written port)."""
    rows = getattr(module, "CAFFE_BLOBS", None)
    out: dict[str, str] = {}
    try:
        for row in rows or ():
            keras_layer, caffe_layer = str(row[0]), str(row[-1])
            if keras_layer != caffe_layer:
                out[caffe_layer] = keras_layer
    except (TypeError, IndexError):
        return {}
    for scale, bn in pairs.items():
        if scale in out and bn not in out:
            out[bn] = out.pop(scale)
    return out
