"""Keras 3 target: plan (rule -> KerasPlan + notes), render YAML/Python, build a live optimizer.

TensorFlow/Keras are imported lazily: only ``build.py`` and ``runtime.py`` touch them.
"""
