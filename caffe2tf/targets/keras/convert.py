"""``caffe2tf convert``: solver prototxt -> OUT/train_config.yaml + OUT/optimizer.py.

Pipeline: :func:`caffe2tf.caffe.load.load_recipe` -> :func:`caffe2tf.rule.lower.lower` ->
:func:`caffe2tf.targets.keras.plan.plan` -> render YAML and Python. Nothing here imports Keras
or TensorFlow. Files are written to a temporary directory next to OUT and renamed into place,
so OUT is either complete or untouched. Anything not exact (unless ``--allow-approx``) or
unsupported -> exit code 2, notes printed, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Exactness, Note, Severity
from caffe2tf.targets.keras.plan import KerasPlan, plan
from caffe2tf.targets.keras.render_python import render_python
from caffe2tf.targets.keras.render_yaml import render_yaml

EXIT_OK = 0
EXIT_INVALID = 2


@dataclass(frozen=True)
class ConvertReport:
    """What ``convert`` did: the notes, the files written (empty when blocked), the exit code."""

    out_dir: str
    notes: tuple[Note, ...]
    written: tuple[str, ...] = ()
    blocked: str = ""
    route: str = ""
    exit_code: int = EXIT_OK
    blocking: tuple[Note, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "written": list(self.written),
            "route": self.route,
            "exact": not self.blocking,
            "blocked": self.blocked or None,
            "exit_code": self.exit_code,
            "notes": [n.to_dict() for n in self.notes],
        }

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        rows = []
        for n in self.notes:
            tag = n.exactness.value if n.exactness else n.severity.value
            where = f"{n.location}: " if n.location else ""
            rows.append(f"  {tag:<11} {where}{n.message}")
        lines = ["Translation notes:"] + (rows or ["  (none)"])
        if self.blocked:
            lines.append(f"error: {self.blocked}; nothing was written.")
        else:
            lines.append(f"Route: {self.route}. Wrote " + ", ".join(self.written) + ".")
        return "\n".join(lines)


def load_layer_map(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{caffe_layer: keras_layer}`` from a YAML mapping (Keras names cannot contain ``/``)."""
    if path is None:
        return {}
    loc = SourceLocation(os.fspath(path))
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read layer map: {err.strerror}", loc) from None
    except yaml.YAMLError as err:
        raise InputError(f"layer map is not valid YAML: {err}", loc) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("layer map must be a mapping {caffe_layer: keras_layer}", loc)
    out: dict[str, str] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, str) or not v:
            raise InputError(f"layer map entry {k!r}: {v!r} must map a name to a name", loc)
        if "/" in v:
            raise InputError(f"Keras layer names cannot contain '/': {v!r}", loc)
        out[k] = v
    return out


def _blocking(notes: tuple[Note, ...], allow_approx: bool) -> tuple[Note, ...]:
    """Notes that stop ``convert``: unsupported/error always; approximations (including a
    field skipped by ``--lenient`` that can change training) unless ``allow_approx``."""
    out = []
    for n in notes:
        if n.exactness is Exactness.UNSUPPORTED or n.severity is Severity.ERROR:
            out.append(n)
        elif not allow_approx and (
            n.exactness is Exactness.APPROX
            or (n.exactness is None and n.affects_training and n.code.startswith("lenient"))
        ):
            out.append(n)
    return tuple(out)


def make_plan(solver: str | os.PathLike[str], *, net_path: str | os.PathLike[str] | None = None,
              lenient: bool = False, layer_map: Mapping[str, str] | None = None
              ) -> tuple[KerasPlan, tuple[Note, ...]]:
    """The plan for a solver file and all notes (front end, lowering, plan)."""
    from caffe2tf.caffe.load import load_recipe
    from caffe2tf.rule.lower import lower

    recipe = load_recipe(solver, net_path=net_path, lenient=lenient)
    rule = lower(recipe)
    layer_map = dict(layer_map or {})
    if layer_map and recipe.net is not None:
        known = {layer.name for layer in recipe.net.layers}
        unknown = sorted(set(layer_map) - known)
        if unknown:
            raise InputError("layer map names layers the train net does not have: "
                             + ", ".join(repr(u) for u in unknown))
    source = {"solver": os.fspath(solver)}
    if recipe.solver.net_path:
        source["net"] = recipe.solver.net_path
    p = plan(rule, layer_map=layer_map, net=recipe.net, source=source)
    seen: set[Note] = set()
    notes: list[Note] = []
    for n in (*recipe.solver.notes, *(recipe.net.notes if recipe.net else ()), *recipe.notes,
              *rule.notes, *p.notes):
        if n not in seen:
            seen.add(n)
            notes.append(n)
    return p, tuple(notes)


def write_outputs(files: Mapping[str, str], out_dir: Path, *, force: bool) -> None:
    """Write ``files`` into ``out_dir`` atomically (temp dir in the same parent + rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise InputError(f"{out_dir} already exists (use --force to replace it)",
                         SourceLocation(os.fspath(out_dir)))
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory",
                         SourceLocation(os.fspath(out_dir)))
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if out_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, backup / "old")
            os.rename(tmp, out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_solver(solver: str | os.PathLike[str], *,
                   net_path: str | os.PathLike[str] | None = None, lenient: bool = False,
                   layer_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
                   out_dir: str | os.PathLike[str], allow_approx: bool = False,
                   force: bool = False) -> ConvertReport:
    """Convert ``solver`` and write OUT/train_config.yaml and OUT/optimizer.py (see module)."""
    mapping = dict(layer_map) if isinstance(layer_map, Mapping) else load_layer_map(layer_map)
    p, notes = make_plan(solver, net_path=net_path, lenient=lenient, layer_map=mapping)
    out = Path(out_dir)
    blocking = _blocking(notes, allow_approx)
    if blocking:
        why = ("the recipe uses something caffe2tf cannot translate"
               if any(n.exactness is Exactness.UNSUPPORTED or n.severity is Severity.ERROR
                      for n in blocking)
               else "the translation would not be exact (pass --allow-approx to accept it)")
        return ConvertReport(out_dir=os.fspath(out), notes=notes, blocked=why, route=p.route,
                             exit_code=EXIT_INVALID, blocking=blocking)
    files = {"train_config.yaml": render_yaml(p), "optimizer.py": render_python(p)}
    write_outputs(files, out, force=force)
    return ConvertReport(out_dir=os.fspath(out), notes=notes,
                         written=tuple(os.fspath(out / n) for n in files), route=p.route)
