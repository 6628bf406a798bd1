"""The custom loop on the TensorFlow backend: tape gradient, ``apply_gradients``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from caffe2tf.rule.tf_executor import shared_tensor
from caffe2tf.verify.mirror import caffe_layout_perm, keras_grads, trained_pairs

#: trained weights (elements, all variables) from which the traced step is compiled with XLA
#: (``tf.function(jit_compile=True)``, as Keras' own ``fit`` does by default where it can):
#: TensorFlow's graph executor runs every variable's update at once, holding each one's
#: temporaries together (on VGG16 the step then rose 2.4 GB above its arrays, with XLA 0.4 GB),
#: while XLA assigns buffers for the whole step and updates the variables in place. Below it
#: compiling costs more than it saves.
XLA_MIN_ELEMENTS = 2**24


def tape_apply(model: Any, optimizer: Any, tvars: list[Any]) -> Callable[[list[Any]], None]:
    """``apply(grads)``: one ``apply_gradients`` on the tape gradient of ``sum(g * w) +
    sum(model.losses)``, so the candidate's own regularizers (an ``L2`` the module put on a
    layer) add their terms as they do in training; ``grads`` in Keras' layout."""
    import tensorflow as tf

    def apply(grads_in: list[Any]) -> None:
        with tf.GradientTape() as tape:
            terms = [
                tf.reduce_sum(tf.stop_gradient(g) * v.value)
                for g, v in zip(grads_in, tvars, strict=True)
            ]
            loss = tf.add_n(terms) if terms else tf.constant(0.0)
            reg = model.losses
            if reg:
                loss = loss + tf.add_n([tf.cast(tf.reduce_sum(r), loss.dtype) for r in reg])
        grads = tape.gradient(loss, [v.value for v in tvars])
        grads = [
            tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, tvars, strict=True)
        ]
        optimizer.apply_gradients(zip(grads, tvars, strict=True))

    return apply


def run(
    model: Any,
    optimizer: Any,
    parts_iter: Any,
    on_update: Callable[[], None],
    iter_size: int,
    jit: bool = True,
    cache: dict[str, Any] | None = None,
) -> None:
    """One ``apply_gradients`` per micro-batch on the tape gradient of ``L_j + sum(losses)``;
    with ``jit`` the step runs as a ``tf.function`` (the optimizer is built first, so no
    variable is created inside the traced function; Keras' own ``fit`` traces the same way).
    It is traced without AutoGraph: its Python branches read only static values (which blobs
    a micro-batch carries, dtypes), and AutoGraph does not convert what Keras calls in turn
    (``apply_gradients``, the optimizer's own steps), so the traced graph is the same; converting
    the step's source cost about 0.5 s of every verify (bench/RESULTS.md, "Session 13").

    With ``jit`` the micro-batch enters in Caffe layout and is put in Keras layout inside the
    traced step (TensorFlow's own transpose, one blob at a time), and a blob the micro-batch
    does not carry is a zero made there: the host never holds a converted copy. ``cache``
    (kept by :class:`caffe2tf.verify.keras_harness.CandidateSession` with the model it was
    traced for) holds the traced step for the next run on the same model and optimizer."""
    import tensorflow as tf

    pairs = trained_pairs(model)
    tvars = [v for _, v in pairs]
    keys = [k for k, _ in pairs]
    blobs = model.blob_variables()
    perms = {k: caffe_layout_perm(blobs[k][1], blobs[k][2]) for k in keys}

    apply = tape_apply(model, optimizer, tvars)

    if not (jit and tvars):
        for j, part in parts_iter:
            kg = keras_grads(model, part)
            apply([tf.constant(kg[k]) for k in keys])
            if (j + 1) % iter_size == 0:
                on_update()
        return

    def step(caffe_grads: list[Any], present: tuple[bool, ...]) -> None:
        gs = []
        for g, v, k, there in zip(caffe_grads, tvars, keys, present, strict=True):
            if not there:
                gs.append(tf.zeros_like(v.value))
                continue
            g = tf.cast(g, v.dtype) if g.dtype != v.dtype else g
            gs.append(tf.transpose(g, perms[k]) if perms[k] is not None else g)
        apply(gs)

    optimizer.build(tvars)
    cache = cache if cache is not None else {}
    if "tensorflow_step" not in cache:
        big = sum(int(np.prod(v.shape)) for v in tvars) >= XLA_MIN_ELEMENTS
        cache["tensorflow_step"] = tf.function(step, jit_compile=big, autograph=False)
        cache["tensorflow_step_xla"] = big
    for j, part in parts_iter:
        present = tuple(part.get(k) is not None for k in keys)
        # a placeholder scalar where the part has no gradient (made as zeros in the trace)
        # a gradient on the host is shared where TensorFlow can (VGG16's fc6 alone is 411 MB)
        args = [shared_tensor(part[k], part[k].dtype) if there else tf.constant(0.0)
                for k, there in zip(keys, present, strict=True)]  # fmt: skip
        try:
            cache["tensorflow_step"](args, present)
        except tf.errors.InvalidArgumentError:
            # an op XLA cannot compile (refused before anything ran): trace it plainly
            if not cache.pop("tensorflow_step_xla", False):
                raise
            cache["tensorflow_step"] = tf.function(step, autograph=False)
            cache["tensorflow_step"](args, present)
        args = part = None  # the gradient goes once the update is observed
        if (j + 1) % iter_size == 0:
            on_update()
