"""caffe2tf: move Caffe training recipes to Keras 3 without changing what the training does.

The pipeline (see ``README.md``)::

    prototxt --caffe/--> SolverSpec, NetSpec --rule/--> UpdateRule --targets/keras/--> KerasPlan
                                                  \\--> reference executor (NumPy) <-- verify/

TensorFlow is imported lazily, only where a live optimizer is built or run. The Python API
(:mod:`caffe2tf.api`): ``caffe2tf.convert(...)`` and ``caffe2tf.verify(...)``.
"""

from caffe2tf import verify  # the package, callable as caffe2tf.verify(...) (see its docstring)
from caffe2tf.api import Conversion, convert, import_caffe_snapshot

__version__ = "0.1.0"
__all__ = ["Conversion", "__version__", "convert", "import_caffe_snapshot", "verify"]
