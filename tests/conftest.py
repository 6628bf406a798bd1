"""Shared pytest fixtures. The ``oracle`` marker (declared in pyproject.toml) marks tests that
run the real Caffe 1.0 in the Debian bullseye root (see :mod:`caffe2tf.verify.oracle`).

Use the ``caffe_root`` fixture in every such test::

    @pytest.mark.oracle
    def test_something(caffe_root):
        result = oracle.run_cases(cases, root=caffe_root)

Behaviour when the root is absent:
* ``CI=true`` (any of true/1/yes): build it once with ``ensure_caffe_root()`` (debootstrap,
  ~75-120 s) and FAIL loudly, with the build output, if that is impossible;
* otherwise: skip, saying why and how to build it.

An oracle-marked test that does not request ``caffe_root`` still gets the same treatment
(the fixture is applied to it automatically).

The same rule holds for every other dependency CI installs (the dev extras: tensorflow, keras,
jax, matplotlib, ruff, grpcio-tools): use :func:`require` / :func:`need` instead of
``pytest.importorskip`` / ``pytest.skip`` so that CI exercises everything.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

_CI_TRUE = {"1", "true", "yes", "on"}

# verify and check keep JAX's compiled programs in a cache directory (caffe2tf/_quiet.py
# use_compile_cache): the suite's runs share one of their own, not the user's ~/.cache
if "CAFFE2TF_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="caffe2tf-test-cache-")
    os.environ["CAFFE2TF_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _CI_TRUE


def need(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds; otherwise skip saying ``reason`` -- or, under ``CI=true``,
    FAIL (CI installs every dependency, so a missing one there is a broken setup, not a skip)."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true but {reason} (this check is mandatory in CI)", pytrace=False)
    pytest.skip(reason)


def require(module_name: str) -> ModuleType:
    """``import module_name`` and return it; when it cannot be imported, :func:`need` decides
    (skip locally, fail under ``CI=true``). Replaces ``pytest.importorskip``."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        need(False, f"{module_name} is not importable ({err}); pip install -e '.[dev]'")
        raise  # unreachable: need() skipped or failed


@pytest.fixture(scope="session")
def caffe_root() -> Path:
    """Path of the Debian bullseye root with the real Caffe (skips/fails as described above)."""
    from caffe2tf.verify import oracle

    root = oracle.caffe_root()
    if root is not None:
        return root
    if in_ci():
        try:
            return oracle.ensure_caffe_root()
        except oracle.OracleError as err:
            pytest.fail(
                f"CI=true but the real-Caffe root could not be built:\n{err}", pytrace=False
            )
    where = os.environ.get(oracle.ROOT_ENV) or str(oracle.DEFAULT_ROOT)
    pytest.skip(
        f"no real-Caffe root at {where}; build it with "
        f"`sudo scripts/build_caffe_root.sh` (or set CI=true to build it and require it)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("oracle") is not None and "caffe_root" not in getattr(
            item, "fixturenames", ()
        ):
            item.fixturenames.insert(0, "caffe_root")
