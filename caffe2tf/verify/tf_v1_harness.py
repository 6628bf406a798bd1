"""Run an emitted ``train_op_v1.py`` per its contract and record the weight trajectory.

The contract (docs/tf-compat-v1-target.md#contract): in a ``tf.compat.v1`` graph whose
variables are named ``<caffe layer>/weights`` (blob 0) and ``<caffe layer>/biases`` (blob 1),
``train_op, global_step = build_train_op(loss)``, then one ``session.run(train_op)`` per Caffe
forward/backward pass. Here the loss is ``sum(g * w)`` over the blobs, with ``g`` fed per pass,
so its gradient is exactly the pass's ``g``. Caffe blobs the plan does not bind (BatchNorm
statistics) are reported unchanged.

TensorFlow is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.targets.tf_compat_v1.model import TfV1Blob

Weights = dict[str, np.ndarray]
_NAMES = {0: "weights", 1: "biases"}


def run_tf_v1(
    build_train_op: Callable[..., Any],
    blobs: Sequence[TfV1Blob],
    init: Mapping[str, np.ndarray],
    micro: Sequence[Mapping[str, np.ndarray]],
    *,
    iter_size: int = 1,
) -> list[Weights]:
    """Train variables ``<layer>/weights|biases`` from ``init`` on the per-pass gradients
    ``micro`` with the module's ``build_train_op``; the weights after each Caffe update."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        variables, feeds = {}, {}
        for b in blobs:
            shape = np.shape(init[b.caffe_key])
            variables[b.caffe_key] = v1.get_variable(
                f"{b.layer}/{_NAMES[b.blob]}",
                initializer=tf.constant(np.asarray(init[b.caffe_key], np.float32)),
            )
            feeds[b.caffe_key] = v1.placeholder(tf.float32, shape, name=f"g{len(feeds)}")
        loss = tf.add_n([tf.reduce_sum(feeds[k] * v) for k, v in variables.items()])
        train_op, _ = build_train_op(loss)
        init_op = v1.global_variables_initializer()
    fixed = {k: np.asarray(v, np.float32).copy() for k, v in init.items() if k not in variables}
    out: list[Weights] = []
    with v1.Session(graph=graph) as session:
        session.run(init_op)
        for j, part in enumerate(micro):
            feed = {
                feeds[k]: np.asarray(part.get(k, np.zeros_like(init[k])), np.float32)
                for k in variables
            }
            session.run(train_op, feed_dict=feed)
            if (j + 1) % max(1, iter_size) == 0:
                values = session.run(variables)
                snapshot = {k: np.asarray(v, np.float32) for k, v in values.items()}
                snapshot.update({k: v.copy() for k, v in fixed.items()})
                out.append({k: snapshot[k] for k in init})
    return out
