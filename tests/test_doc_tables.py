"""The mapping tables of docs/torch-target.md and docs/optax-target.md are generated from the
targets' registries (:mod:`caffe2tf.targets.doc_tables`): the docs hold today's tables
(rewrite them with ``CAFFE2TF_REGEN=1 pytest tests/test_doc_tables.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from caffe2tf.targets.doc_tables import TABLES, with_tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", sorted(TABLES))
def test_doc_tables_are_generated_from_the_registries(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    fresh = with_tables(doc, text)
    if os.environ.get("CAFFE2TF_REGEN") == "1":
        path.write_text(fresh, encoding="utf-8")
    assert text == fresh or os.environ.get("CAFFE2TF_REGEN") == "1", (
        f"{doc}'s mapping tables are stale; run CAFFE2TF_REGEN=1 pytest {__file__}"
    )


def test_a_changed_registry_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    from caffe2tf.targets.torch import schedules

    monkeypatch.setitem(schedules.BUILTIN_SCHEDULES, "exp", lambda s: "planted")
    doc = "docs/torch-target.md"
    assert with_tables(doc, (ROOT / doc).read_text()) != (ROOT / doc).read_text()
