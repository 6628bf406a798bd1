"""``caffe2tf convert``: solver prototxt -> OUT/train_config.yaml + OUT/optimizer.py.

Pipeline (:mod:`caffe2tf.app.pipeline`, once): read + lower -> the target's plan -> render
(``--target keras``, the default: YAML and Python; ``torch``: OUT/optimizer_torch.py;
``optax``: OUT/optimizer_optax.py; :mod:`caffe2tf.app.targets`). Nothing here imports Keras,
TensorFlow, torch or JAX. Files are written to a temporary directory next to OUT and
swapped into place (:mod:`caffe2tf.app.output`), so OUT is the complete old or the complete
new tree after any kill. Anything not exact (unless ``--allow-approx``) or unsupported ->
exit code 2, notes printed, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from caffe2tf.app.pipeline import load_pipeline
from caffe2tf.app.report import EXIT_INVALID, EXIT_OK
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.notes import Exactness, Note, Severity


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
            # Exact only when no note says otherwise: --allow-approx lets an approximate
            # translation be written, it does not make it exact.
            "exact": not any(n.inexact for n in self.notes),
            "blocked": self.blocked or None,
            "blocking": [n.to_dict() for n in self.blocking],
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
            lines.append(f"error: {self.blocked}; nothing was written. Blocked by:")
            for n in self.blocking:
                where = f"{n.location}: " if n.location else ""
                lines.append(f"  - {where}{n.message}")
        else:
            lines.append(f"Route: {self.route}. Wrote " + ", ".join(self.written) + ".")
        return "\n".join(lines)


class LayerMap(dict[str, str]):
    """``{caffe_layer: keras_layer}`` read from a file; ``locations`` holds where each Caffe
    name was written (for errors about it later, e.g. a layer the net does not have)."""

    def __init__(self, entries: dict[str, str], locations: dict[str, SourceLocation]) -> None:
        super().__init__(entries)
        self.locations = locations


_YAML_STR = "tag:yaml.org,2002:str"


def load_layer_map(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{caffe_layer: keras_layer}`` from a YAML mapping (Keras names cannot contain ``/``).

    Every problem is an :class:`InputError` at the place in the file where it was found. The
    map is read as YAML nodes, never built into Python values: anchors and aliases are refused
    (a flat map of names has no use for them, and they can make a tiny file expand without
    bound), messages quote at most a short prefix of a value, and two Caffe layers mapped to
    the same Keras name (one Keras layer cannot stand for two Caffe layers) or one Caffe layer
    written twice are errors at the second one."""
    from caffe2tf import user_yaml

    if path is None:
        return {}
    p = os.fspath(path)
    loc = SourceLocation(p)
    if os.path.isdir(p):
        raise InputError("is a directory, not a YAML layer map", loc)
    try:
        text = Path(p).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError("no such file", loc) from None
    except OSError as err:
        raise InputError(f"cannot read layer map: {err.strerror or err}", loc) from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        col = err.start - (err.object.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"layer map is not UTF-8 text (byte 0x{err.object[err.start]:02x})",
            SourceLocation(p, line, col),
        ) from None
    root = user_yaml.compose(text, p, "layer map", aliases=False)
    if root is None:
        return {}

    def at(node: yaml.Node) -> SourceLocation:
        return user_yaml.location(p, node.start_mark)

    def shown(node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode):
            return user_yaml.quote(node.value)
        return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"

    if not isinstance(root, yaml.MappingNode):
        raise InputError("layer map must be a mapping {caffe_layer: keras_layer}", at(root))
    out: dict[str, str] = {}
    locations: dict[str, SourceLocation] = {}
    owner_of: dict[str, str] = {}  # keras name -> the caffe layer mapped to it
    for knode, vnode in root.value:
        if not (isinstance(knode, yaml.ScalarNode) and knode.tag == _YAML_STR):
            raise InputError(
                f"layer map key {shown(knode)} must be a layer name (a string)", at(knode)
            )
        name = knode.value
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.tag == _YAML_STR and vnode.value):
            raise InputError(
                f"layer map entry {user_yaml.quote(name)}: {shown(vnode)} must map a name to "
                "a name",
                at(vnode),
            )
        keras = vnode.value
        if "/" in keras:
            raise InputError(
                f"Keras layer names cannot contain '/': {user_yaml.quote(keras)}", at(vnode)
            )
        if name in out:
            raise InputError(
                f"layer map names Caffe layer {user_yaml.quote(name)} twice (first at line "
                f"{locations[name].line})",
                at(knode),
            )
        if keras in owner_of:
            first = owner_of[keras]
            raise InputError(
                f"layer map sends Caffe layers {user_yaml.quote(first)} (line "
                f"{locations[first].line}) and {user_yaml.quote(name)} to the same Keras "
                f"layer {user_yaml.quote(keras)}: one Keras layer cannot stand for two "
                "Caffe layers (each has its own blobs, lr_mult and decay_mult)",
                at(vnode),
            )
        out[name] = keras
        locations[name] = at(knode)
        owner_of[keras] = name
    return LayerMap(out, locations)


def blocking_notes(notes: tuple[Note, ...], allow_approx: bool) -> tuple[Note, ...]:
    """Notes that stop ``convert``: unsupported/error always; approximations (including a
    field skipped by ``--lenient`` that can change training) unless ``allow_approx``."""
    out = []
    for n in notes:
        if n.exactness is Exactness.UNSUPPORTED or n.severity is Severity.ERROR:
            out.append(n)
        elif not allow_approx and n.inexact:
            out.append(n)
    return tuple(out)


def check_out_dir(
    out_dir: str | os.PathLike[str],
    *,
    force: bool,
    inputs: tuple[str | os.PathLike[str] | None, ...] = (),
) -> None:
    """Refuse an OUT that cannot be replaced safely, before any work is done: one that exists
    without ``--force``, one that is not a directory, and (even with ``--force``) the working
    directory, one of its ancestors, or a folder holding one of the ``inputs`` -- replacing
    those would delete what the user is standing in or the recipe being converted.

    What a killed earlier run left next to OUT is dealt with first
    (:func:`caffe2tf.app.output.recover_interrupted`): an old tree whose replacement was
    interrupted is put back as OUT (so it again needs ``--force``), stale temporary folders go."""
    from caffe2tf.app.output import recover_interrupted

    out = Path(out_dir)
    where = SourceLocation(os.fspath(out))
    try:
        recover_interrupted(out)
    except OSError as err:
        raise InputError(
            f"cannot restore the output folder an interrupted run moved aside: "
            f"{err.strerror or err}",
            where,
        ) from None
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", where)
    if not out.exists():
        return
    if not force:
        raise InputError("already exists (use --force to replace it)", where)
    try:
        real = out.resolve()
        cwd = Path.cwd().resolve()
    except OSError as err:
        raise InputError(f"cannot resolve path: {err.strerror or err}", where) from None
    if real == cwd or real in cwd.parents:
        raise InputError(
            "is the working directory or one of its parents; --force would "
            "delete it: give a new folder",
            where,
        )
    if real.parent == real:
        raise InputError("is a filesystem root; give a new folder", where)
    for p in inputs:
        if p is None:
            continue
        try:
            inp = Path(p).resolve()
        except OSError:
            continue
        if real in inp.parents:
            raise InputError(
                f"holds the input {os.fspath(p)}; --force would delete it: give a new folder", where
            )


def write_outputs(files: Mapping[str, str], out_dir: Path, *, force: bool) -> None:
    """Write ``files`` into ``out_dir`` so that OUT is the complete old or the complete new
    tree after a kill at any moment (see :mod:`caffe2tf.app.output`).

    The new tree is written and ``fsync``'d in a temporary folder next to OUT (with the
    permissions the umask gives), then swapped with the old one in one atomic exchange where
    the system has it, else by two renames (a kill between them is undone by the next run).
    Failures put the old tree back and remove the temporary folders; they are InputErrors."""
    from caffe2tf.app.output import exchange, fsync_dir, umask, write_durably

    out_dir = Path(out_dir)
    where = SourceLocation(os.fspath(out_dir))
    check_out_dir(out_dir, force=force)
    parent = out_dir.parent
    tmp: Path | None = None
    backup: Path | None = None
    moved_aside = False
    replaced = False
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private
        write_durably(tmp, files)
        if not out_dir.exists():
            os.rename(tmp, out_dir)
            replaced = True
        elif exchange(tmp, out_dir):  # tmp now holds the old tree
            replaced = True
        else:
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, backup / "old")
            moved_aside = True
            os.rename(tmp, out_dir)
            replaced = True
        fsync_dir(parent)
    except OSError as err:
        raise InputError(f"cannot write the output folder: {err.strerror or err}", where) from None
    finally:
        if moved_aside and not replaced and backup is not None:
            try:
                os.rename(backup / "old", out_dir)
            except OSError:
                pass  # leave the backup in place (the next run puts it back)
            else:
                moved_aside = False
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if backup is not None and not (moved_aside and not replaced):
            shutil.rmtree(backup, ignore_errors=True)


def multi_gpu_note(gpus: int) -> Note:
    """What a Caffe run on ``gpus`` GPUs means for the port: every GPU runs the net's
    ``batch_size`` and Caffe averages the gradients of the GPUs (an all-reduce sum, then a
    scale by 1/solver_count, BVLC ``parallel.cpp:238-254``) before one
    update with the solver's lr, unchanged."""
    if gpus == 1:
        text = "Caffe trained on 1 GPU: one Keras batch = the net's batch_size."
    else:
        text = (
            f"Caffe trained on {gpus} GPUs: each ran the net's batch_size and Caffe averaged "
            f"their gradients before one update with the same lr, so train the port with a "
            f"global batch of {gpus} x batch_size (one device, or tf.distribute."
            f"MirroredStrategy / keras.distribution.DataParallel over {gpus} devices) and "
            "do not scale the lr."
        )
    return Note("convert.multi_gpu", text, Severity.INFO)


def convert_solver(
    solver: str | os.PathLike[str],
    *,
    net_path: str | os.PathLike[str] | None = None,
    lenient: bool = False,
    layer_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    out_dir: str | os.PathLike[str],
    allow_approx: bool = False,
    force: bool = False,
    target: str = "keras",
    caffe_gpus: int | None = None,
    input_shapes: Any = None,
    params_path: str | os.PathLike[str] | None = None,
) -> ConvertReport:
    """Convert ``solver`` and write the ``target``'s files into OUT (see module).
    ``caffe_gpus``: how many GPUs the Caffe run used (:func:`multi_gpu_note`).
    ``input_shapes``: ``--input-shape`` (only the shape notes depend on it).
    ``params_path``: a cuda-convnet layer parameter file; ``solver`` is then its layer
    definition file (docs/cuda-convnet.md)."""
    from caffe2tf.app.targets import get_target

    chosen = get_target(target)
    check_out_dir(
        out_dir,
        force=force,
        inputs=(
            solver,
            net_path,
            None if isinstance(layer_map, Mapping) else layer_map,
            params_path,
        ),
    )
    mapping = dict(layer_map) if isinstance(layer_map, Mapping) else load_layer_map(layer_map)
    pipeline = load_pipeline(
        solver,
        net_path=net_path,
        lenient=lenient,
        input_shapes=input_shapes,
        params_path=params_path,
    )
    p, notes = chosen.plan(pipeline, mapping)
    if caffe_gpus is not None:
        notes = (*notes, multi_gpu_note(caffe_gpus))
    out = Path(out_dir)
    blocking = blocking_notes(notes, allow_approx)
    if blocking:
        why = (
            "the recipe uses something caffe2tf cannot translate"
            if any(
                n.exactness is Exactness.UNSUPPORTED or n.severity is Severity.ERROR
                for n in blocking
            )
            else "the translation would not be exact (pass --allow-approx to accept it)"
        )
        return ConvertReport(
            out_dir=os.fspath(out),
            notes=notes,
            blocked=why,
            route=p.route,
            exit_code=EXIT_INVALID,
            blocking=blocking,
        )
    files = chosen.render(p)
    write_outputs(files, out, force=force)
    return ConvertReport(
        out_dir=os.fspath(out),
        notes=notes,
        written=tuple(os.fspath(out / n) for n in files),
        route=p.route,
    )
