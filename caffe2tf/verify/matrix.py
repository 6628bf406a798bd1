"""The update-rule test matrix as data (used by the reference and Keras oracle tests and the
goldens).

Factors (:data:`FACTORS`): solver type × lr policy × decay {none, L2, L1} × multipliers
{default, explicit, one_block} × clip {off, on} × iter_size {1, 3}. :func:`pairwise` picks a
small set of combinations that covers every value of every factor and every pair of values of
two factors (deterministic greedy: each pick is the first combination, in product order, that
covers the most uncovered pairs, ties broken towards the least used values). Each combination
becomes a :class:`MatrixCase`: a solver text, a net text (Input + two InnerProduct layers
``fc1`` 4→3 and ``fc2`` 3→2), seeded initial weights and a seeded gradient stream
(:mod:`caffe2tf.verify.streams`).

Hyper-parameters are solver-valid and chosen so that every factor shows in the trajectory:
schedules change the rate within the run (multistep boundaries at N/4, N/2, 3N/4; step every
N/3; sigmoid centred at N/2; poly with ``max_iter = N``), decay is a sizeable share of the update,
and the clip threshold is the 85th percentile of the case's own gradient norms (so it triggers on
some updates but not all). Solver-specific variants rotate across a solver's cases: Adam with and
without a ``momentum`` field (β1 = 0 when absent, ``caffe.proto`` momentum has no default), with
and without ``momentum2``; RMSProp with and without ``rms_decay``; AdaGrad/RMSProp with an explicit
``momentum: 0`` or none; SGD with and without momentum; L2 decay with and without an explicit
``regularization_type``.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2tf.verify import streams

SOLVERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
DECAYS = ("none", "L2", "L1")
MULTS = ("default", "explicit", "one_block")
CLIPS = ("off", "on")
ITER_SIZES = (1, 3)

FACTORS: dict[str, tuple] = {
    "solver": SOLVERS,
    "policy": POLICIES,
    "decay": DECAYS,
    "mults": MULTS,
    "clip": CLIPS,
    "iter_size": ITER_SIZES,
}

#: Learnable blobs of the matrix net (Caffe layout: InnerProduct weight (out, in), bias (out,)).
SHAPES: dict[str, tuple[int, ...]] = {
    "fc1/0": (3, 4),
    "fc1/1": (3,),
    "fc2/0": (2, 3),
    "fc2/1": (2,),
}

#: (lr_mult, decay_mult) per blob for each multiplier variant, as Caffe resolves them
#: (``net.cpp:141-156``: blobs without their own ``param{}`` get 1, 1).
MULTIPLIERS: dict[str, dict[str, tuple[float, float]]] = {
    "default": {k: (1.0, 1.0) for k in SHAPES},
    "explicit": {
        "fc1/0": (1.0, 1.0),
        "fc1/1": (2.0, 0.0),
        "fc2/0": (0.0, 1.0),
        "fc2/1": (0.5, 2.0),
    },
    "one_block": {
        "fc1/0": (2.0, 1.0),
        "fc1/1": (1.0, 1.0),
        "fc2/0": (1.0, 1.0),
        "fc2/1": (1.0, 1.0),
    },
}


#: the learnable layers of every matrix net (:func:`net_text`) and their Caffe types: the
#: Keras mirror is built from this table, not by reading the net text again
MATRIX_LAYER_TYPES: dict[str, str] = {"fc1": "InnerProduct", "fc2": "InnerProduct"}


@dataclass(frozen=True)
class MatrixCase:
    """One case of the matrix.

    ``grads[k]`` is Caffe's diff at update k (raw sum over ``iter_size`` passes, float32);
    ``micro_grads`` are the ``steps * iter_size`` per-pass gradients whose float32 running sums
    are ``grads`` (what a Keras user feeds to ``apply_gradients``). ``init`` holds every blob of
    the net (Caffe layout). ``factors`` names the factor values; ``multipliers`` maps each blob
    to (lr_mult, decay_mult) as Caffe resolves them; ``clip_threshold`` is None when off.
    """

    name: str
    solver_text: str
    net_text: str
    init: Mapping[str, np.ndarray]
    grads: Sequence[Mapping[str, np.ndarray]]
    steps: int
    iter_size: int = 1
    micro_grads: Sequence[Mapping[str, np.ndarray]] = ()
    factors: Mapping[str, object] = field(default_factory=dict)
    multipliers: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    clip_threshold: float | None = None
    seed: int = 0
    layer_types: Mapping[str, str] = field(default_factory=lambda: dict(MATRIX_LAYER_TYPES))

    def oracle_case(self):
        """This case as a :class:`caffe2tf.verify.oracle.OracleCase`."""
        from caffe2tf.verify.oracle import OracleCase

        return OracleCase(self.name, self.solver_text, self.net_text, self.init, self.grads)


# ---------------------------------------------------------------------------- pairwise design


def all_pairs(factors: Mapping[str, Sequence]) -> set[tuple[tuple[str, object], ...]]:
    """Every pair of values of two different factors, as ((f1, v1), (f2, v2)) with f1 < f2 in
    the factors' order."""
    names = list(factors)
    return {
        ((a, va), (b, vb))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        for va in factors[a]
        for vb in factors[b]
    }


def pairs_of(combo: Mapping[str, object], factors: Mapping[str, Sequence]):
    names = list(factors)
    return {((a, combo[a]), (b, combo[b])) for i, a in enumerate(names) for b in names[i + 1 :]}


def pairwise(factors: Mapping[str, Sequence]) -> list[dict[str, object]]:
    """A deterministic greedy covering array of strength 2 over ``factors``.

    Repeatedly takes, among all combinations in product order, the first one that covers the
    most still-uncovered pairs (ties: the one whose values were used least so far, which spreads
    the "free" slots evenly), until every pair is covered."""
    names = list(factors)
    candidates = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(factors[n] for n in names))
    ]
    cand_pairs = [pairs_of(c, factors) for c in candidates]
    uncovered = all_pairs(factors)
    usage = {(n, v): 0 for n in names for v in factors[n]}
    chosen: list[dict[str, object]] = []
    while uncovered:
        best, best_key = -1, (0, 0)
        for i, cp in enumerate(cand_pairs):
            gain = len(cp & uncovered)
            if gain == 0:
                continue
            key = (gain, -sum(usage[(n, candidates[i][n])] for n in names))
            if key > best_key:
                best, best_key = i, key
        chosen.append(candidates[best])
        uncovered -= cand_pairs[best]
        for n in names:
            usage[(n, candidates[best][n])] += 1
    return chosen


# --------------------------------------------------------------------------------- the texts


def _param_blocks(mults: str, layer: str) -> str:
    if mults == "default":
        return ""
    if mults == "one_block":
        # LeNet's idiom: lr_mult 2 with the default decay_mult 1 (decayed twice as fast).
        return "  param { lr_mult: 2 }\n" if layer == "fc1" else ""
    table = MULTIPLIERS["explicit"]
    lines = ""
    for i in range(2):
        lr, dm = table[f"{layer}/{i}"]
        lines += f"  param {{ lr_mult: {lr:g} decay_mult: {dm:g} }}\n"
    return lines


def net_text(mults: str = "default") -> str:
    """The matrix net: Input (2×4) → fc1 InnerProduct 4→3 → fc2 InnerProduct 3→2."""
    return (
        'name: "matrix"\n'
        'layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
        "  input_param { shape { dim: 2 dim: 4 } }\n}\n"
        'layer {\n  name: "fc1"\n  type: "InnerProduct"\n  bottom: "data"\n  top: "fc1"\n'
        f"{_param_blocks(mults, 'fc1')}"
        "  inner_product_param { num_output: 3 }\n}\n"
        'layer {\n  name: "fc2"\n  type: "InnerProduct"\n  bottom: "fc1"\n  top: "fc2"\n'
        f"{_param_blocks(mults, 'fc2')}"
        "  inner_product_param { num_output: 2 }\n}\n"
    )


_BASE_LR = {
    "SGD": 0.05,
    "Nesterov": 0.05,
    "AdaGrad": 0.05,
    "RMSProp": 0.01,
    "AdaDelta": 1.0,
    "Adam": 0.01,
}


def _solver_lines(solver: str, variant: int) -> list[str]:
    lines = [f'type: "{solver}"', f"base_lr: {_BASE_LR[solver]:g}"]
    if solver == "SGD":
        if variant % 3 != 2:
            lines.append("momentum: 0.9")
    elif solver == "Nesterov":
        lines.append("momentum: 0.9" if variant % 2 == 0 else "momentum: 0.8")
    elif solver == "AdaGrad":
        if variant % 2 == 1:
            lines.append("momentum: 0")
        lines.append("delta: 1e-06" if variant % 3 == 0 else "delta: 0.001")
    elif solver == "RMSProp":
        if variant % 2 == 0:
            lines.append("rms_decay: 0.9")
        if variant % 3 == 1:
            lines.append("momentum: 0")
        if variant % 2 == 1:
            lines.append("delta: 1e-05")
    elif solver == "AdaDelta":
        lines.append("momentum: 0.95" if variant % 2 == 0 else "momentum: 0.9")
        lines.append("delta: 0.0001")
    elif solver == "Adam":
        if variant % 3 != 1:  # every third Adam case has no momentum field: beta1 = 0
            lines.append("momentum: 0.9")
        if variant % 2 == 1:
            lines.append("momentum2: 0.99")
    return lines


def _policy_lines(policy: str, steps: int) -> list[str]:
    lines = [f'lr_policy: "{policy}"']
    if policy == "step":
        lines += ["gamma: 0.5", f"stepsize: {max(1, steps // 3)}"]
    elif policy == "exp":
        lines += ["gamma: 0.99"]
    elif policy == "inv":
        lines += ["gamma: 0.05", "power: 0.75"]
    elif policy == "multistep":
        lines += ["gamma: 0.3"] + [f"stepvalue: {max(1, steps * q // 4)}" for q in (1, 2, 3)]
    elif policy == "poly":
        lines += ["power: 2"]
    elif policy == "sigmoid":
        lines += ["gamma: 0.1", f"stepsize: {max(1, steps // 2)}"]
    return lines


def _decay_lines(decay: str, variant: int) -> list[str]:
    if decay == "none":
        return ["weight_decay: 0", 'regularization_type: "L1"'] if variant % 3 == 2 else []
    if decay == "L2":
        lines = ["weight_decay: 0.05"]
        return lines + ['regularization_type: "L2"'] if variant % 2 == 0 else lines
    return ["weight_decay: 0.02", 'regularization_type: "L1"']


def _clip_threshold(grads: Sequence[Mapping[str, np.ndarray]]) -> float:
    """A threshold exceeded by some updates and not others: the 85th percentile of the norms,
    rounded to 4 significant digits (what the prototxt states)."""
    norms = streams.global_norms(grads)
    c = float(f"{np.percentile(norms, 85):.4g}")
    if not (norms > c).any() or (norms > c).all():
        c = float(f"{np.median(norms):.4g}")
    return c


def _init(seed: int, mults: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    init = {k: rng.normal(0.0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}
    # Dead elements (never a gradient) start at exactly 0: probes sign(0) = 0 under L1.
    for key, mask in streams.dead_mask(SHAPES, seed).items():
        init[key][mask] = 0.0
    return init


def build_case(combo: Mapping[str, object], steps: int = 100, variant: int = 0) -> MatrixCase:
    """The :class:`MatrixCase` for one combination of factor values."""
    solver, policy, decay = str(combo["solver"]), str(combo["policy"]), str(combo["decay"])
    mults, clip, iter_size = str(combo["mults"]), str(combo["clip"]), int(combo["iter_size"])
    name = (
        f"{solver.lower()}-{policy}-{decay.lower()}-{mults.replace('_', '')}"
        f"-clip{clip}-is{iter_size}"
    )
    seed = zlib.crc32(name.encode())
    micro = streams.micro_batches(SHAPES, steps, seed, iter_size=iter_size)
    grads = streams.accumulate(micro, iter_size)
    lines = _solver_lines(solver, variant) + _policy_lines(policy, steps)
    lines += _decay_lines(decay, variant)
    threshold = None
    if clip == "on":
        threshold = _clip_threshold(grads)
        lines.append(f"clip_gradients: {threshold:g}")
    if iter_size != 1:
        lines.append(f"iter_size: {iter_size}")
    lines.append(f"max_iter: {steps}")
    return MatrixCase(
        name=name,
        solver_text="\n".join(lines) + "\n",
        net_text=net_text(mults),
        init=_init(seed, mults),
        grads=tuple(grads),
        steps=steps,
        iter_size=iter_size,
        micro_grads=tuple(micro),
        factors=dict(combo),
        multipliers=dict(MULTIPLIERS[mults]),
        clip_threshold=threshold,
        seed=seed,
    )


def matrix_combos() -> list[dict[str, object]]:
    """The factor combinations of the matrix (pairwise over :data:`FACTORS`)."""
    return pairwise(FACTORS)


def matrix_cases(steps: int = 100) -> list[MatrixCase]:
    """Every case of the update-rule matrix with ``steps`` updates each (≥ 100 for the
    bar). Deterministic: same names, texts and numbers on every call and machine."""
    cases = []
    seen: dict[str, int] = {}
    for combo in matrix_combos():
        variant = seen.get(str(combo["solver"]), 0)
        seen[str(combo["solver"])] = variant + 1
        cases.append(build_case(combo, steps, variant))
    return cases


# ---------------------------------------------------------------------------- golden traces

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "golden"


@dataclass(frozen=True)
class GoldenCase:
    """A committed trace of the real Caffe: the case (texts, inputs) and ``weights[k-1]`` =
    Caffe's weights after k updates (float32). Written by ``scripts/regen_goldens.py``."""

    case: MatrixCase
    weights: Sequence[Mapping[str, np.ndarray]]
    caffe: str = ""


def golden_cases(directory: Path | str | None = None) -> list[GoldenCase]:
    """Load every golden trace listed in ``directory/MANIFEST.json`` (default
    ``fixtures/golden`` of the repository). Needs no Caffe root."""
    directory = Path(directory) if directory is not None else GOLDEN_DIR
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    out = []
    for entry in manifest["cases"]:
        name = entry["name"]
        steps, iter_size = int(entry["steps"]), int(entry["iter_size"])
        with np.load(directory / f"{name}.npz") as data:
            arrays = {k: data[k] for k in data.files}
        keys = list(entry["blobs"])
        if iter_size > 1:
            micro = tuple(
                {k: arrays[f"micro/{k}"][i] for k in keys} for i in range(steps * iter_size)
            )
            grads = tuple(streams.accumulate(micro, iter_size))
        else:
            grads = micro = tuple({k: arrays[f"grads/{k}"][i] for k in keys} for i in range(steps))
        factors = dict(entry["factors"])
        case = MatrixCase(
            name=name,
            solver_text=(directory / f"{name}.solver.prototxt").read_text(),
            net_text=(directory / f"{name}.net.prototxt").read_text(),
            init={k: arrays[f"init/{k}"] for k in keys},
            grads=grads,
            steps=steps,
            iter_size=iter_size,
            micro_grads=micro,
            factors=factors,
            multipliers=dict(MULTIPLIERS.get(str(factors.get("mults")), {})),
            clip_threshold=entry.get("clip_threshold"),
            seed=int(entry.get("seed", 0)),
        )
        weights = tuple({k: arrays[f"weights/{k}"][i] for k in keys} for i in range(steps))
        out.append(GoldenCase(case, weights, manifest.get("caffe", "")))
    return out
