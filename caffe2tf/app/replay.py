"""``caffe2tf replay``: run Caffe's update rule (the NumPy reference) on recorded gradients.

Files (``.npz``, Caffe blob layout, float32):

* INIT  key ``"{layer}/{blob}"`` -> initial weights (``blob`` = index within the layer);
* GRADS key ``"{step}/{layer}/{blob}"``, step = 0..N-1 -> what Caffe's diff holds when update
  step+1 starts, i.e. the SUM over the ``iter_size`` forward/backward passes
  (``solver.cpp:229-267``); a blob without an entry at some step has a zero diff there;
* OUT   key ``"{step}/{layer}/{blob}"``, step = 1..N -> the weights after that many updates
  (float32; float64 with ``--precision float64``).

Keys of any other form are ignored (layer names may contain ``/``: the blob index is the last
component, the step the first). A sharer's key stands for its owner blob. Problems with the input
(a gap in the steps, a shape mismatch, a blob the net does not have) raise
:class:`~caffe2tf.errors.InputError` before anything is written; OUT is written atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from caffe2tf.app.pipeline import load_pipeline
from caffe2tf.errors import InputError, SourceLocation
from caffe2tf.rule.model import ClipByGlobalNorm, UpdateRule
from caffe2tf.rule.reference import owner_map, run_reference

_BLOB_KEY = re.compile(r"^(?P<layer>.+)/(?P<blob>\d+)$")
_STEP_KEY = re.compile(r"^(?P<step>\d+)/(?P<layer>.+)/(?P<blob>\d+)$")
_HUGE_STEP = 10**101  # stands for every step written with more than 100 digits


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of an ``.npz`` archive. Anything else (a directory, a single ``.npy``
    array, a pickle, an array of Python objects) is an :class:`InputError`; pickles are never
    unpickled (``allow_pickle=False``)."""
    where = SourceLocation(str(path))
    if path.is_dir():
        raise InputError("is a directory, not an .npz archive", where)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise InputError("file not found", where) from None
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror or err}", where) from None
    if magic != b"PK\x03\x04" and magic != b"PK\x05\x06":  # a zip (an empty one: 05 06)
        kind = "a single .npy array" if magic.startswith(b"\x93NUM") else "not a zip file"
        raise InputError(f"not an .npz archive ({kind}); save with numpy.savez", where)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise InputError("not an .npz archive (a single .npy array?)", where)
            out = {}
            for key in data.files:
                arr = data[key]
                if not (
                    np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                ):
                    if _BLOB_KEY.match(key):
                        raise InputError(f"{key!r} holds {arr.dtype} data, not numbers", where)
                    continue
                out[key] = arr
            return out
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("file not found", where) from None
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, EOFError) as err:
        # ValueError: "Object arrays cannot be loaded when allow_pickle=False" and bad headers
        raise InputError(f"cannot read .npz: {err}", where) from None


def _check_init(rule: UpdateRule, init: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    where = SourceLocation(str(path))
    blobs = {k: v for k, v in init.items() if _BLOB_KEY.match(k)}
    if not blobs:
        raise InputError('no weights: expected keys "{layer}/{blob}" (e.g. "conv1/0")', where)
    if not rule.params:
        return blobs
    omap = owner_map(rule)
    unknown = sorted(k for k in blobs if k not in omap)
    if unknown:
        known = ", ".join(g.key for g in rule.params[:12])
        raise InputError(
            f"{', '.join(unknown[:5])} not learnable blob(s) of the net "
            f"(it has: {known}{' ...' if len(rule.params) > 12 else ''})",
            where,
        )
    groups = {g.key: g for g in rule.params}
    for k, v in blobs.items():
        shape = groups[omap[k]].shape
        if shape is not None and tuple(v.shape) != tuple(shape):
            raise InputError(
                f"{k!r} has shape {tuple(v.shape)}, the net says {tuple(shape)}", where
            )
    present = {omap[k] for k in blobs}
    missing = [g.key for g in rule.params if g.key not in present]
    if missing and rule.step(ClipByGlobalNorm) is not None:
        raise InputError(
            f"clip_gradients uses the norm over every learnable blob, but "
            f"{', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} "
            f"missing",
            where,
        )
    return blobs


def _split_grads(
    rule: UpdateRule, grads: dict[str, np.ndarray], init: dict[str, np.ndarray], path: Path
) -> list[dict[str, np.ndarray]]:
    where = SourceLocation(str(path))
    omap = owner_map(rule) if rule.params else None
    by_step: dict[int, dict[str, np.ndarray]] = {}
    for key, value in grads.items():
        m = _STEP_KEY.match(key)
        if not m:
            continue
        blob = key.split("/", 1)[1]
        digits = m.group("step").lstrip("0") or "0"
        # int() refuses > 4300 digits; any such step is a gap anyway (all that matters below)
        step = int(digits) if len(digits) <= 100 else _HUGE_STEP
        if omap is not None and blob not in omap:
            raise InputError(f"{key!r}: {blob!r} is not a learnable blob of the net", where)
        ref = init.get(blob)
        if ref is None and omap is not None:  # the owner (or another alias) in init
            ref = next((init[k] for k in init if omap.get(k) == omap[blob]), None)
        if ref is not None and tuple(value.shape) != tuple(ref.shape):
            raise InputError(
                f"{key!r} has shape {tuple(value.shape)}, the weights have {tuple(ref.shape)}",
                where,
            )
        by_step.setdefault(step, {})[blob] = value
    if not by_step:
        raise InputError(
            'no gradients: expected keys "{step}/{layer}/{blob}" with step 0..N-1', where
        )
    # Steps must be exactly 0..N-1, so N is the number of distinct steps; a larger step is a
    # gap. Walk the sorted steps (never range(max + 1): a key "99999999999999999999/..." would
    # ask for that many list slots).
    steps = sorted(by_step)
    n = len(steps)
    if steps[-1] != n - 1:
        missing: list[int] = []
        expected = 0
        for s in steps:
            while expected < s and len(missing) < 9:
                missing.append(expected)
                expected += 1
            if len(missing) >= 9:
                break
            expected = s + 1
        listed = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        largest = str(steps[-1]) if steps[-1] < _HUGE_STEP else "a number of over 100 digits"
        raise InputError(
            f"gradients for step(s) {listed} are missing (steps must be "
            f"0..N-1 without gaps; the largest step given is {largest})",
            where,
        )
    return [by_step[s] for s in steps]


def _check_output(out_path: Path, *, force: bool) -> None:
    """Refuse an -o that cannot be written, before any work: a folder, a missing folder, or an
    existing file without ``--force``."""
    where = SourceLocation(str(out_path))
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if out_path.is_dir():
        raise InputError("is a directory; -o names the .npz file to write", where)
    if not parent.is_dir():
        raise InputError("output directory does not exist", where)
    if os.path.lexists(out_path) and not force:
        raise InputError("already exists (use --force to replace it)", where)


def _write_atomic(out_path: Path, arrays: dict[str, np.ndarray], *, force: bool = True) -> None:
    """Write the archive under a temporary name next to ``out_path`` (permissions from the
    umask), ``fsync`` it, and rename it into place: the old file or the new one after any
    kill; temporary files of an earlier, killed write are removed first."""
    from caffe2tf.app.output import fsync_dir, remove_stale_files, umask

    out_path = Path(out_path)
    where = SourceLocation(str(out_path))
    parent = out_path.parent if str(out_path.parent) else Path(".")
    _check_output(out_path, force=force)
    remove_stale_files(out_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise InputError(f"cannot write here: {err.strerror or err}", where) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~umask())  # mkstemp makes it private
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
        fsync_dir(parent)
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", where) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replay_arrays(
    rule: UpdateRule,
    init: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    *,
    precision: str = "float32",
    init_path: Path = Path("INIT"),
    grads_path: Path = Path("GRADS"),
) -> dict[str, np.ndarray]:
    """The OUT arrays for flat INIT/GRADS dicts (validated as described in the module doc)."""
    blobs = _check_init(rule, init, init_path)
    steps = _split_grads(rule, grads, blobs, grads_path)
    w0 = {k: np.asarray(v, dtype=np.float32) for k, v in blobs.items()}
    g = [{k: np.asarray(v, dtype=np.float32) for k, v in s.items()} for s in steps]
    traj = run_reference(rule, w0, g, precision=precision)
    return {f"{t}/{k}": v for t, ws in enumerate(traj, 1) for k, v in ws.items()}


def replay_files(
    solver: Path,
    *,
    net_path: Path | None,
    lenient: bool,
    init_path: Path,
    grads_path: Path,
    out_path: Path,
    precision: str = "float32",
    force: bool = False,
) -> str:
    """Implement ``caffe2tf replay``; returns the one-line summary the CLI prints. An existing
    OUT is replaced only with ``force`` (checked before any work)."""
    _check_output(Path(out_path), force=force)
    rule = load_pipeline(solver, net_path=net_path, lenient=lenient).rule
    init = _load_npz(Path(init_path))
    grads = _load_npz(Path(grads_path))
    out = replay_arrays(
        rule,
        init,
        grads,
        precision=precision,
        init_path=Path(init_path),
        grads_path=Path(grads_path),
    )
    _write_atomic(Path(out_path), out, force=force)
    n_blobs = len({k.split("/", 1)[1] for k in out})
    n_steps = len({k.split("/", 1)[0] for k in out})
    net = "" if rule.params else " (net unknown: default multipliers)"
    return (
        f"replayed {n_steps} update(s) of {rule.solver} on {n_blobs} blob(s) in {precision}"
        f"{net} -> {out_path}"
    )
