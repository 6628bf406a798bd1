"""Train a Keras model that mirrors a Caffe net exactly per the emitted optimizer's contract.

The contract of ``optimizer.py`` (``caffe2tf convert``): call ``optimizer.apply_gradients`` once
per Caffe forward/backward pass (one micro-batch when ``iter_size`` = S > 1) on the gradients of
``loss + sum(model.losses)``; ``model.compile(optimizer=build_optimizer())`` + ``fit`` is the same.
Caffe layer name = Keras layer name; blob 0 = kernel, blob 1 = bias.

This module plays the user's side of that contract, with the data gradient prescribed instead of
computed from data:

* :func:`build_mirror_model` builds a Keras model whose layers carry the Caffe layer names and
  whose variables have the Caffe blobs' shapes in Keras layout (InnerProduct ``(out, in)`` ->
  ``Dense.kernel`` ``(in, out)``; Convolution ``(out, in, kh, kw)`` -> ``Conv2D.kernel``
  ``(kh, kw, in, out)``; Parameter -> :class:`CaffeParameter` with one weight). A Caffe
  BatchNorm and the Scale after it (paired by :func:`caffe2tf.rule.lower.scale_pairs`,
  as the plan pairs them) are one ``BatchNormalization`` named after the BatchNorm: gamma/beta
  hold the Scale's blobs 0/1, moving_mean/moving_variance the BatchNorm's statistics divided by
  its factor blob; a lone Scale is a layer with ``gamma``/``beta``; PReLU's slope is ``alpha``.
  Every mapped variable is checked against ``runtime.caffe_blob_key``, the lookup the emitted
  ``prepare_model`` uses (:func:`_check_binding`).
* For Caffe update k (diff G_k, the raw sum over the S passes, as Caffe's solver sees it when
  ``ApplyUpdate`` starts, ``solver.cpp:229-267``) :func:`split_micro_batches` draws S seeded parts
  g_k1..g_kS with sum G_k (up to float32 rounding; the parts differ from each other, so a port
  that mishandles accumulation shows).
* Micro-batch j uses the synthetic loss ``L_j(w) = sum_v sum(stop_gradient(g_kjv) * v)``, whose
  gradient w.r.t. v is exactly g_kjv. The gradient of ``L_j + sum(model.losses)`` comes from the
  backend's autodiff: ``tf.GradientTape`` on TensorFlow; on JAX ``jax.grad`` of a stateless
  function of the variable values (the regularizer losses are read inside a
  ``keras.StatelessScope`` mapping each variable to the traced value, the same mechanism
  ``Layer.stateless_call`` uses). Then ONE ``optimizer.apply_gradients`` per micro-batch.
* ``route="fit"``: ``model.compile(optimizer=..., loss=linear)`` + ``model.fit`` where each batch
  (batch size 1) *is* g_kj flattened; the model outputs ``sum(stop_gradient(x) * v)`` and the loss
  is that output, so fit differentiates ``L_j + sum(model.losses)`` itself (``trainer.py``
  ``compute_loss`` adds ``self.losses``) and calls the optimizer once per batch.

Weights are recorded after every S-th micro-batch (= after each Caffe update) in Caffe layout.
The pieces live in their own modules: :mod:`caffe2tf.verify.mirror` (the model),
:mod:`caffe2tf.verify.streams` (micro-batch splitting), :mod:`caffe2tf.verify.loops` (one loop
per backend, and ``fit``), :mod:`caffe2tf.verify.candidate` (loading the module under test);
this module runs them in order. Keras is imported lazily, inside the functions.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from caffe2tf.errors import InputError
from caffe2tf.verify.candidate import Candidate, candidate_from_module
from caffe2tf.verify.inputs import shapes_of
from caffe2tf.verify.loops import loop_for
from caffe2tf.verify.mirror import (
    CaffeWeightsView,
    MirrorLayer,
    Weights,
    build_mirror_model,
    get_caffe_weights,
    set_caffe_weights,
    trained_pairs,
)
from caffe2tf.verify.streams import split_micro_batches

#: from this many weights a run's model, traced step and temporaries are worth collecting
#: when it ends (``gc.collect``, then the C heap trimmed: VGG16's runs do not pile up); below
#: it they are small, and a collection next to TensorFlow's objects costs more than they hold
#: (0.26 s each, 3 s of a LeNet verify's 12)
COLLECT_MIN_ELEMENTS = 2**22


def worth_collecting(shapes: Iterable[Sequence[int]]) -> bool:
    """Whether blobs of these shapes reach :data:`COLLECT_MIN_ELEMENTS` weights in all."""
    return sum(int(np.prod(shape)) for shape in shapes) >= COLLECT_MIN_ELEMENTS


Progress = Callable[[int, int], None]


def run_contract(
    model: Any,
    optimizer: Any,
    grads: Sequence[Mapping[str, np.ndarray]],
    *,
    iter_size: int = 1,
    seed: int = 0,
    route: str = "loop",
    progress: Progress | None = None,
    jit: bool = True,
    micro_grads: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> list[Weights]:
    """Train ``model`` (already initialised and prepared) with ``optimizer`` on the Caffe update
    gradients ``grads[k]`` (raw sums over ``iter_size`` passes, Caffe layout); return the Caffe-
    layout weights after each update. ``route`` is ``"loop"`` (custom loop, one
    ``apply_gradients`` per micro-batch) or ``"fit"`` (``compile`` + ``fit``). ``jit``: on JAX
    run each micro-batch as one jitted ``grad`` + ``optimizer.stateless_apply``, on TensorFlow as a
    ``tf.function`` around tape + ``apply_gradients``, instead of eagerly (same arithmetic, far
    fewer dispatches). ``micro_grads``: the
    per-pass gradients (``len(grads) * iter_size`` of them, e.g. a matrix case's), used instead of
    :func:`split_micro_batches`."""
    import keras

    iter_size = max(1, int(iter_size))
    steps = len(grads)
    out: list[Weights] = []

    def on_update() -> None:
        out.append(get_caffe_weights(model))
        if progress is not None:
            progress(len(out), steps)

    if micro_grads is not None and len(micro_grads) != steps * iter_size:
        raise ValueError(
            f"{len(micro_grads)} micro-batch gradients for {steps} updates of {iter_size} passes"
        )

    def parts_iter() -> Any:
        if micro_grads is not None:
            yield from enumerate(micro_grads)
            return
        j = 0
        for k, total in enumerate(grads):
            for part in split_micro_batches(total, iter_size, seed=seed, step=k):
                yield j, part
                j += 1

    if route == "fit":
        from caffe2tf.verify.loops.fit import run as fit

        fit(model, optimizer, [p for _, p in parts_iter()], on_update, iter_size)
    elif route == "loop":
        loop = loop_for(keras.backend.backend())
        loop(model, optimizer, parts_iter(), on_update, iter_size, jit=jit)
    else:
        raise ValueError(f"route must be 'loop' or 'fit', not {route!r}")
    if len(out) != steps:
        raise RuntimeError(f"recorded {len(out)} updates, expected {steps}")
    return out


def optimizers_in(optimizer: Any) -> list[Any]:
    """The optimizer and every optimizer inside it (``MultiOptimizer.optimizers``)."""
    out = [optimizer]
    for inner in getattr(optimizer, "optimizers", None) or ():
        out += optimizers_in(inner)
    return out


def fast_forward(optimizer: Any, variables: Sequence[Any], calls: int) -> None:
    """Build ``optimizer`` for ``variables`` and set its step counter (and those of the
    optimizers inside it) to ``calls`` ``apply_gradients`` calls, with its state still fresh:
    a Keras schedule is evaluated at that counter, Adam's bias correction counts from it."""
    optimizer.build(list(variables))
    for opt in optimizers_in(optimizer):
        counter = getattr(opt, "_iterations", None)
        if counter is None:
            raise InputError(
                f"cannot enter the run at a later iteration: {type(opt).__name__} has no "
                "step counter (keras.optimizers.Optimizer.iterations)"
            )
        counter.assign(calls)


def build_candidate(
    candidate: Candidate | Any,
    layers: Sequence[MirrorLayer],
    init: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """The user's side of the contract up to training: the mirror model with ``init`` loaded,
    ``prepare_model(model)`` called, and a fresh ``build_optimizer()``."""
    if not isinstance(candidate, Candidate):
        candidate = candidate_from_module(candidate)
    try:
        model = build_mirror_model(layers, dtype=dtype)
    except (KeyError, ValueError, TypeError) as err:
        # e.g. Keras' torch backend refuses a '.' in layer names (torch parameter names)
        import keras

        raise InputError(
            f"Keras ({keras.backend.backend()} backend) cannot build a model with "
            f"the net's layer names: {type(err).__name__}: {err}"
        ) from None
    set_caffe_weights(model, init)
    candidate.prepare_model(model)  # binds in place (the emitted one returns a path map)
    return model, candidate.build_optimizer()


def run_candidate(
    candidate: Candidate | Any,
    layers: Sequence[MirrorLayer],
    init: Mapping[str, np.ndarray],
    grads: Sequence[Mapping[str, np.ndarray]],
    *,
    iter_size: int = 1,
    seed: int = 0,
    route: str = "loop",
    progress: Progress | None = None,
    jit: bool = True,
    micro_grads: Sequence[Mapping[str, np.ndarray]] | None = None,
    start: int = 0,
    dtype: str = "float32",
) -> list[Weights]:
    """Mirror model -> initial weights -> ``prepare_model`` -> train per the contract.

    ``start``: enter at Caffe iteration ``start`` with fresh optimizer state (the optimizer's
    step counters set as a run that got there would hold them, :func:`fast_forward`), as the
    reference does (:func:`caffe2tf.rule.reference.fast_forward`). ``dtype``: the mirror's
    variables (float64 for the probes; on JAX inside ``jax.enable_x64(True)``)."""
    if not isinstance(candidate, Candidate):
        candidate = candidate_from_module(candidate)
    if dtype == "float64":
        import keras

        if keras.backend.backend() == "jax":
            import jax

            with jax.enable_x64(True):
                return run_candidate(
                    candidate,
                    layers,
                    init,
                    grads,
                    iter_size=iter_size,
                    seed=seed,
                    route=route,
                    progress=progress,
                    jit=jit,
                    micro_grads=micro_grads,
                    start=start,
                    dtype="float64-x64",
                )
    model, optimizer = build_candidate(candidate, layers, init, dtype=dtype.split("-")[0])
    if start:
        fast_forward(optimizer, [v for _, v in trained_pairs(model)], start * max(1, iter_size))
    return run_contract(
        model,
        optimizer,
        grads,
        iter_size=iter_size,
        seed=seed,
        route=route,
        progress=progress,
        jit=jit,
        micro_grads=micro_grads,
    )


#: ``observe(k, diff, weights)``: update ``k`` (0-based) is done; ``diff`` is what Caffe's diff
#: held for it, ``weights`` the candidate's weights after it (Caffe layout)
Observer = Callable[[int, Mapping[str, np.ndarray], Weights], None]


class CandidateSession:
    """The mirror model and optimizer of one candidate, built once per precision and blob
    shapes and reset for each run (the weights loaded again, the optimizer's state made fresh),
    with the traced training step kept with them. One verify's runs of a kind (the stream and
    the schedule windows) then share one model, one optimizer and one trace: TensorFlow keeps
    what a traced step captured (the variables of a model built per run: two copies of the
    net's weights per run on CaffeNet) for as long as the process lives."""

    def __init__(self, candidate: Candidate | Any) -> None:
        self.candidate = (
            candidate if isinstance(candidate, Candidate) else candidate_from_module(candidate)
        )
        self.built: dict[tuple, tuple[Any, Any, list[tuple[Any, Any]], dict[str, Any]]] = {}

    @staticmethod
    def _key(init: Mapping[str, np.ndarray], dtype: str) -> tuple:
        return (dtype, tuple(sorted(shapes_of(init).items())))

    def built_model(self, init: Mapping[str, np.ndarray], dtype: str) -> tuple[Any, Any] | None:
        """``(model, optimizer)`` of ``init``'s shapes and ``dtype`` as they are (not reset),
        or None where :meth:`model_for` has not built them yet."""
        built = self.built.get(self._key(init, dtype))
        return None if built is None else built[:2]

    def model_for(
        self,
        layers: Sequence[MirrorLayer],
        init: Mapping[str, np.ndarray],
        dtype: str,
        *,
        reload: Callable[[Any], None] | None = None,
    ) -> tuple[Any, Any, dict[str, Any]]:
        """``(model, optimizer, loop cache)`` holding ``init`` and a fresh optimizer state.
        ``reload``: for a model already built, called with it instead of loading ``init``
        again (a caller that kept the loaded values, on a device, in Keras' layout)."""
        key = self._key(init, dtype)
        if key not in self.built:
            model, optimizer = build_candidate(self.candidate, layers, init, dtype=dtype)
            optimizer.build([v for _, v in trained_pairs(model)])
            # the state as built: zeros are remade per run, anything else (a step counter, a
            # rate, Keras Adagrad's 0.1) is kept as a copy; the dtype is kept too, since a run
            # on the JAX device engine consumes (donates) the variables' arrays
            fresh = []
            for v in optimizer.variables:
                value = _host_value(v)
                fresh.append((value.dtype, np.array(value) if np.any(value) else None))
            self.built[key] = (model, optimizer, fresh, {})
            return model, optimizer, self.built[key][3]
        model, optimizer, fresh, cache = self.built[key]
        if reload is None:
            set_caffe_weights(model, init)
        else:
            reload(model)
        import keras

        for var, (dtype, value) in zip(optimizer.variables, fresh, strict=True):
            # zeros made by the backend: a NumPy array would be one more copy per variable
            var.assign(keras.ops.zeros(tuple(var.shape), dtype) if value is None else value)
        return model, optimizer, cache


def _host_value(var: Any) -> np.ndarray:
    """A variable's value in NumPy (TensorFlow's own ``numpy()`` where it has one)."""
    value = var.value
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def run_candidate_lockstep(
    candidate: Candidate | Any,
    layers: Sequence[MirrorLayer],
    init: Mapping[str, np.ndarray],
    gradients: Any,
    updates: int,
    observe: Observer,
    *,
    iter_size: int = 1,
    start: int = 0,
    dtype: str = "float32",
    jit: bool = True,
    session: CandidateSession | None = None,
) -> None:
    """:func:`run_candidate` one update at a time: ``gradients.update(k)`` gives update k's
    micro-batches (one ``apply_gradients`` each, per the contract) and Caffe's diff; after
    the last micro-batch of the update ``observe(k, diff, weights)`` gets the candidate's
    weights, and nothing of the update is kept (a run's memory does not grow with its
    length). On JAX, float64 runs inside ``jax.enable_x64(True)``."""
    if not isinstance(candidate, Candidate):
        candidate = candidate_from_module(candidate)
    if dtype == "float64":
        import keras

        if keras.backend.backend() == "jax":
            import jax

            with jax.enable_x64(True):
                return run_candidate_lockstep(
                    candidate,
                    layers,
                    init,
                    gradients,
                    updates,
                    observe,
                    iter_size=iter_size,
                    start=start,
                    dtype="float64-x64",
                    jit=jit,
                    session=session,
                )
    import keras

    iter_size = max(1, int(iter_size))
    cache: dict[str, Any] = {}
    if session is not None:
        model, optimizer, cache = session.model_for(layers, init, dtype.split("-")[0])
    else:
        model, optimizer = build_candidate(candidate, layers, init, dtype=dtype.split("-")[0])
    if start:
        fast_forward(optimizer, [v for _, v in trained_pairs(model)], start * iter_size)
    current: dict[str, Any] = {}
    done = [0]

    def parts_iter() -> Any:
        # no local of this generator holds a gradient while it is suspended: once the update
        # is observed its arrays go (VGG16: 552 MB less at the comparison)
        j = 0
        for k in range(updates):
            micro, current["diff"] = gradients.update(k)
            micro = list(micro)
            while micro:
                yield j, micro.pop(0)
                j += 1

    def on_update() -> None:
        k = done[0]
        observe(k, current.pop("diff"), CaffeWeightsView(model))
        done[0] += 1

    loop = loop_for(keras.backend.backend())
    loop(model, optimizer, parts_iter(), on_update, iter_size, jit=jit, cache=cache)
    if done[0] != updates:
        raise RuntimeError(f"observed {done[0]} updates, expected {updates}")
    model = optimizer = cache = None  # noqa: F841 (the closure's cells)
    if worth_collecting(shapes_of(init).values()):
        gc.collect()  # a traced training step holds the model's variables until collected
    return None
