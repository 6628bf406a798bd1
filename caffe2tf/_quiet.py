"""Keep TensorFlow's native start-up chatter out of caffe2tf's reports.

TensorFlow 2.21 logs through absl *before* ``absl::InitializeLog()`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` does not silence the oneDNN / CUDA-probe lines printed while it is
imported and while it first places a tensor. Only redirecting file descriptor 2 does. The text
is kept and printed after all if the import fails, so a broken install is still explained.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


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
