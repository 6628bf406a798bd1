"""Keras 3 target: plan (rule -> KerasPlan + notes), render YAML/Python, build a live optimizer.

TensorFlow/Keras are imported lazily: only ``build.py`` and ``runtime.py`` touch them.

Public API: :func:`load_optimizer` and :func:`prepare_model` read a ``train_config.yaml``
written by ``caffe2tf convert`` back into live Keras objects.
"""

from caffe2tf.targets.keras.config import load_optimizer, load_train_config, prepare_model

__all__ = ["load_optimizer", "load_train_config", "prepare_model"]
