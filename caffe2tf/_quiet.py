"""What the verifying commands set up before the backends are imported: TensorFlow's native
start-up chatter kept out of caffe2tf's reports, a lean TensorFlow, JAX's compilation cache.

TensorFlow 2.21 logs through absl *before* ``absl::InitializeLog()`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` does not silence the oneDNN / CUDA-probe lines printed while it is
imported and while it first places a tensor. Only redirecting file descriptor 2 does. The text
is kept and printed after all if the import fails, so a broken install is still explained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: where verify and check keep JAX's compiled programs (empty: nowhere); default below
CACHE_ENV = "CAFFE2TF_CACHE_DIR"
#: the compilation cache's size bound: the least recently used programs go beyond it
CACHE_MAX_BYTES = 2**30


@contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send fd 2 to a temporary file for the duration; replay it if the body raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))


def prefer_lean_tensorflow() -> None:
    """``TF_ENABLE_ONEDNN_OPTS=0`` unless the user set it; it works only before TensorFlow is
    imported. verify's mirror runs no convolution or matrix product, only elementwise optimizer
    arithmetic (Eigen's either way), and with oneDNN on TensorFlow allocates every CPU tensor
    from oneDNN's pool, a BFC allocator that keeps each region it grows for the life of the
    process: on VGG16 that pool held 4.4 GB next to 1.1 GB of variables
    (docs/verify.md#next-to-a-tensorflow-candidate)."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def import_keras_quietly() -> None:
    """Import Keras (and its backend) and place one tensor, with native logs captured; used by
    the verifying commands, so TensorFlow is set up lean first (:func:`prefer_lean_tensorflow`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    prefer_lean_tensorflow()
    with native_stderr_captured():
        import keras

        keras.ops.convert_to_tensor(0.0)  # device discovery logs happen here, not at import


def compile_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where JAX's compiled programs are kept between runs: ``$CAFFE2TF_CACHE_DIR/xla/HOST``,
    else ``$XDG_CACHE_HOME/caffe2tf/xla/HOST``, else ``~/.cache/caffe2tf/xla/HOST``; None when
    ``CAFFE2TF_CACHE_DIR`` is set empty (docs/verify.md#compiled-programs-kept-between-runs).
    ``HOST`` (:func:`host_tag`) keeps apart the programs of machines whose CPUs differ, which
    may share a home directory: XLA compiles for the CPU it runs on."""
    chosen = environ.get(CACHE_ENV)
    if chosen is not None:
        if not chosen.strip():
            return None
        base = Path(chosen).expanduser().absolute()  # a relative one: from where verify ran
    else:
        base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caffe2tf"
    return base / "xla" / host_tag()


def host_tag() -> str:
    """``MACHINE-HASH``: the architecture and a hash of the CPU's feature flags (Linux'
    ``/proc/cpuinfo``; elsewhere the processor's name)."""
    features = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.split(":")[0].strip() in ("flags", "Features"):
                    features = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    digest = hashlib.sha256(features.encode()).hexdigest()[:12]
    return f"{platform.machine() or 'cpu'}-{digest}"


def use_compile_cache() -> Path | None:
    """Keep JAX's compiled programs on disk (JAX's persistent compilation cache, at
    :func:`compile_cache_dir`, bounded to :data:`CACHE_MAX_BYTES`), so a second verify of
    the same recipe loads them instead of compiling; TensorFlow's beside them
    (:func:`keep_tensorflow_programs`). Set through JAX's environment variables,
    so it must run before JAX is imported; a user's own ``JAX_COMPILATION_CACHE_DIR`` wins.
    Nothing is kept where the directory cannot be written, or without the ``filelock``
    package, which JAX needs to bound the cache's size. Returns the directory in use."""
    where = compile_cache_dir()
    if where is not None:
        keep_tensorflow_programs(where.parent.parent / "xla-tensorflow" / where.name)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    if where is None or importlib.util.find_spec("filelock") is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(where, os.W_OK | os.X_OK):
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(where)
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES))
    # the small programs too (each a few tens of ms to compile, about 30 in a verify)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return where


def keep_tensorflow_programs(where: Path) -> None:
    """TensorFlow's XLA programs (``tf.function(jit_compile=True)``: the fused TensorFlow
    engine's loop, a few MB each) kept in ``where`` through TensorFlow's own persistent cache
    (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``, read when TensorFlow first compiles);
    a user's own setting of that flag wins. TensorFlow does not bound it: the oldest files go
    here once the directory holds more than :data:`CACHE_MAX_BYTES`."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        files = sorted(where.iterdir(), key=lambda f: f.stat().st_mtime, reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > CACHE_MAX_BYTES:
                f.unlink()
    except OSError:
        return
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={where}".strip()
