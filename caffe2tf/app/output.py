"""Writing outputs so that a kill at any moment leaves either the old or the new output.

``convert`` writes a folder, ``replay`` a file. Both write the new output completely under a
temporary name next to it (same filesystem), ``fsync`` its data and its folder, and only then
move it into place with a rename, which is atomic:

* a file: ``os.replace`` over the old one;
* a folder that already exists: exchanged with the new one in one ``renameat2(RENAME_EXCHANGE)``
  call (Linux), so OUT always names a complete tree; where that call is not available, the old
  tree is first renamed into a backup folder ``.OUT.old-*`` and the new one renamed to OUT,
  which leaves a moment when OUT does not exist -- a kill there leaves the old tree in the
  backup, and the next run puts it back (:func:`recover_interrupted`).

Temporary folders and files left by an earlier kill (``.OUT.tmp-*``, ``.OUT.old-*``,
``.NAME.*.tmp``) are removed by the next run for the same output. New outputs get the
permissions the umask gives (``mkdtemp``/``mkstemp`` would make them private).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "exchange",
    "fsync_dir",
    "recover_interrupted",
    "remove_stale_files",
    "umask",
    "write_durably",
]


def umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new names, renames) durable; a no-op where a
    folder cannot be opened for that (not POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durably(folder: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` (name -> UTF-8 text) into ``folder`` and ``fsync`` each and the folder."""
    for name, text in files.items():
        with open(folder / name, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_dir(folder)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``).
    False when the system or filesystem cannot do it (the caller falls back to two renames);
    other failures raise :class:`OSError`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    prefix = f".{out_dir.name}.{kind}-"
    parent = out_dir.parent
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]


def recover_interrupted(out_dir: Path) -> bool:
    """Undo what a killed run left next to ``out_dir``: when OUT is missing and a backup of
    the old tree exists (a kill between the two renames), put the newest backup back as OUT;
    then remove every temporary (``.OUT.tmp-*``) and backup (``.OUT.old-*``) folder. Returns
    True when the old tree was put back."""
    out_dir = Path(out_dir)
    restored = False
    backups = sorted(
        (p for p in _leftovers(out_dir, "old") if (p / "old").is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if backups and not os.path.lexists(out_dir):
        os.rename(backups[0] / "old", out_dir)
        fsync_dir(out_dir.parent)
        restored = True
    for leftover in _leftovers(out_dir, "tmp") + _leftovers(out_dir, "old"):
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def remove_stale_files(out_path: Path) -> None:
    """Remove the temporary files (``.NAME.*.tmp``) an earlier, killed write of ``out_path``
    left next to it."""
    parent = out_path.parent if str(out_path.parent) else Path(".")
    prefix = f".{out_path.name}."
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith(prefix) and p.name.endswith(".tmp") and p.is_file():
            try:
                p.unlink()
            except OSError:
                pass
