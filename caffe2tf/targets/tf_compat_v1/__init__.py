"""TF1-style graph target (``tf.compat.v1``): plan (rule -> TfV1Plan + notes) and render
``train_op_v1.py``.

Nothing here imports TensorFlow except ``runtime.py`` (the source of the inlined blocks), which
only the tests and the verify harness import. Contract, mapping and sources:
docs/tf-compat-v1-target.md.
"""
