"""caffe2tf: move Caffe training recipes to Keras 3 without changing what the training does.

The pipeline (see ``README.md``)::

    prototxt --caffe/--> SolverSpec, NetSpec --rule/--> UpdateRule --targets/keras/--> KerasPlan
                                                  \\--> reference executor (NumPy) <-- verify/

TensorFlow is imported lazily, only where a live optimizer is built or run.
"""

__version__ = "0.1.0"
