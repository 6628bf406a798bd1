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


def import_keras_quietly() -> None:
    """Import Keras (and its backend) and place one tensor, with native logs captured."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_captured():
        import keras

        keras.ops.convert_to_tensor(0.0)  # device discovery logs happen here, not at import
