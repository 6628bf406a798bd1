"""``caffe2tf explain``: Caffe's update rule as a person reads it, with the numbers filled in.

Reads only the :class:`UpdateRule` (plus the recipe, to know which values were defaults and which
multipliers were written). Sections: the steps in execution order, each with its equation and
values; the learning rate at milestones (start, every boundary, the last update
``max_iter - 1``); the per-blob multipliers with the effective lr and decay; the caffe.proto
defaults that were filled in (marked ``(default)``); the notes of the lowering. ``fmt="json"``
returns the same content as data. Never imports TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from caffe2tf.caffe.model import Recipe
from caffe2tf.rule.lower import lower
from caffe2tf.rule.model import (
    SOLVER_TABLES,
    SOLVERS,
    AdaDelta,
    AdaGrad,
    Adam,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    Momentum,
    NormalizeBy,
    NvidiaDecay,
    NvidiaSGD,
    RMSProp,
    ScaleByLr,
    Step,
    UpdateRule,
)
from caffe2tf.rule.schedules import POLICIES, boundaries, lr_at

MAX_BOUNDARY_ROWS = 12


def num(x: float | int) -> str:
    """Shortest text that reads back as the same float32 (``0.9``, not 0.8999999761581421)."""
    if isinstance(x, int | np.integer):
        return str(int(x))
    return str(np.float32(x))


def lr_fresh(schedule: LrSchedule, k: int, bounds: Sequence[int] | None = None) -> float:
    """The rate of update ``k`` on a fresh run (multistep counter = boundaries before k)."""
    cs = 0
    if schedule.policy == "multistep":
        bounds = boundaries(schedule, k + 1) if bounds is None else bounds
        cs = sum(1 for b in bounds if b < k)
    return lr_at(schedule, k, cs)[0]


def _horizon(rule: UpdateRule) -> tuple[int, bool]:
    if rule.max_iter > 0:
        return rule.max_iter, True
    s = rule.schedule
    guess = max([*s.stepvalue, s.stepsize * 4, 1000]) + 1
    return guess, False


def milestones(rule: UpdateRule) -> list[dict[str, Any]]:
    """``[{k, lr, why}]``: start, each boundary (capped), a few interior points for smooth
    policies, and the last update."""
    s = rule.schedule
    horizon, known = _horizon(rule)
    bounds = boundaries(s, horizon)
    ks: dict[int, str] = {0: "start"}
    if 0 < s.rampup_interval < horizon:
        ks[s.rampup_interval] = "end of the warm-up"
    shown = (
        list(bounds)
        if len(bounds) <= MAX_BOUNDARY_ROWS
        else (list(bounds[: MAX_BOUNDARY_ROWS - 2]) + list(bounds[-2:]))
    )
    for b in shown:
        ks.setdefault(b, "midpoint" if s.policy == "sigmoid" else "boundary")
    if s.policy in ("exp", "inv", "poly", "sigmoid") and horizon > 4:
        for frac in (0.25, 0.5, 0.75):
            ks.setdefault(int(horizon * frac), f"{int(frac * 100)}% of the run")
    last = horizon - 1
    ks[last] = "last update (max_iter - 1)" if known else "last shown (max_iter not set)"
    rows = []
    for k in sorted(ks):
        rows.append({"k": k, "lr": lr_fresh(s, k, bounds), "why": ks[k]})
    if len(bounds) > len(shown):  # the gap sits after the first shown boundaries
        gap_after = shown[MAX_BOUNDARY_ROWS - 3]
        at = next(i for i, r in enumerate(rows) if r["k"] == gap_after) + 1
        rows.insert(
            at,
            {"k": None, "lr": None, "why": f"{len(bounds) - len(shown)} more boundaries not shown"},
        )
    return rows


class _Values:
    """Formats solver fields, marking caffe.proto defaults."""

    def __init__(self, recipe: Recipe) -> None:
        self.spec = recipe.solver
        self.defaulted = recipe.solver.defaulted

    def __call__(self, field: str, value: Any = None) -> str:
        v = getattr(self.spec, field) if value is None else value
        text = (
            ", ".join(num(x) for x in v)
            if isinstance(v, tuple)
            else (v if isinstance(v, str) else num(v))
        )
        return f"{text} (default)" if field in self.defaulted else text


class _RuleValues(_Values):
    """The same for a rule read from no solver (cuda-convnet, docs/cuda-convnet.md): the
    fields' values as the lowering set them, none of them a default."""

    def __init__(self, rule: UpdateRule) -> None:
        s = rule.schedule
        decay = rule.step(AddDecay)
        step = rule.solver_step
        self.spec = SimpleNamespace(
            base_lr=s.base_lr,
            lr_policy=s.policy,
            weight_decay=decay.weight_decay if isinstance(decay, AddDecay) else 0.0,
            regularization_type=decay.kind if isinstance(decay, AddDecay) else "L2",
            iter_size=rule.iter_size,
            momentum=getattr(step, "momentum", 0.0),
        )
        self.defaulted = frozenset()


def _schedule_equation(s: LrSchedule, val: _Values) -> str:
    b = val("base_lr")
    p = s.policy
    if p == "fixed":
        return f"alpha(k) = {b}"
    if p == "step":
        return f"alpha(k) = {b} * {val('gamma')} ^ floor(k / {val('stepsize')})"
    if p == "exp":
        return f"alpha(k) = {b} * {val('gamma')} ^ k"
    if p == "inv":
        return f"alpha(k) = {b} * (1 + {val('gamma')} * k) ^ -{val('power')}"
    if p == "multistep":
        sv = val("stepvalue") if s.stepvalue else "(none)"
        return (
            f"alpha(k) = {b} * {val('gamma')} ^ s(k); s advances by ONE when "
            f"k >= stepvalue[s], stepvalue = [{sv}]"
        )
    if p == "poly":
        return f"alpha(k) = {b} * (1 - k / {val('max_iter')}) ^ {val('power')}"
    if p == "multifixed":
        stages = ", ".join(
            f"{num(r)} while k <= {i}" for r, i in zip(s.stagelr, s.stageiter, strict=True)
        )
        return (
            f"alpha(k) = stagelr[first s with k <= stageiter[s]]: {stages}; "
            f"past the last stageiter {num(s.stagelr[-1])} (the last stage's rate)"
        )
    return (
        f"alpha(k) = {b} / (1 + exp(-{val('gamma')} * (k - {val('stepsize')})))  "
        "(a ramp up: alpha = base_lr/2 at k = stepsize)"
    )


Row = tuple[str, dict[str, str], str]  # equation, values (field -> text), Caffe source


def _clip_row(step: ClipByGlobalNorm, rule: UpdateRule, val: _Values) -> Row:
    c = val("clip_gradients")
    eq = (
        f"n = sqrt(sum of G^2 over {len(rule.params) or 'the'} learnable blobs); if n > {c}: "
        f"G *= {num(step.threshold)} / n"
    )
    if step.threshold == 0:
        eq += "  (threshold 0: every non-zero gradient becomes 0)"
    return eq, {"clip_gradients": c}, "sgd_solver.cpp:87-106"


def _normalize_row(step: NormalizeBy, rule: UpdateRule, val: _Values) -> Row:
    eq = f"g = G * 1/{step.iter_size}  (G = sum over iter_size passes)"
    return eq, {"iter_size": val("iter_size")}, "sgd_solver.cpp:129-153"


def _decay_row(step: AddDecay, rule: UpdateRule, val: _Values) -> Row:
    term = "w" if step.kind == "L2" else "sign(w)"
    eq = f"g += {num(step.weight_decay)} * decay_mult * {term}  ({step.kind})"
    values = {
        "weight_decay": val("weight_decay"),
        "regularization_type": val("regularization_type"),
    }
    return eq, values, "sgd_solver.cpp:155-215"


def _lr_row(step: ScaleByLr, rule: UpdateRule, val: _Values) -> Row:
    s = step.schedule
    fields = list(POLICIES[s.policy].reads)
    eq = f"eta = alpha(k) * lr_mult;  {_schedule_equation(s, val)}"
    if s.policy == "poly" and s.min_lr:  # NVIDIA's poly ends at min_lr (sgd_solver.cpp:59)
        m = val("min_lr")
        eq = (
            f"eta = alpha(k) * lr_mult;  alpha(k) = ({val('base_lr')} - {m}) * (1 - k / "
            f"{val('max_iter')}) ^ {val('power')} + {m}"
        )
    if s.rampup_interval > 0:
        eq += (
            f";  for k < {val('rampup_interval')}: alpha(k) = {val('rampup_lr')} + "
            f"({num(s.base_lr)} - {num(s.rampup_lr)}) * (k / {s.rampup_interval})^2 (warm-up)"
        )
        fields += ["rampup_interval", "rampup_lr"]
    if s.min_lr is not None:
        eq += f";  alpha(k) >= {val('min_lr')} (min_lr)"
        fields.append("min_lr")
    source = "sgd_solver.cpp:26-70" if s.min_lr is None else "NVIDIA sgd_solver.cpp:24-70"
    if s.policy == "multifixed":
        source = "the yolo fork's sgd_solver.cpp:32-40"
    return eq, {"lr_policy": val("lr_policy"), **{f: val(f) for f in fields}}, source


def _nvidia_decay_row(step: NvidiaDecay, rule: UpdateRule, val: _Values) -> Row:
    term = "w" if step.kind == "L2" else "sign(w)"
    eq = (
        f"g += lambda(k) * decay_mult * {term}  ({step.kind});  lambda(k) = "
        f"{num(step.weight_decay)} + ({num(step.max_weight_decay)} - {num(step.weight_decay)}) "
        f"* (k / {step.max_iter})^{num(step.power)}  (weight_decay_policy poly)"
    )
    values = {
        "weight_decay": val("weight_decay"),
        "max_weight_decay": val("max_weight_decay"),
        "weight_decay_power": val("weight_decay_power"),
        "regularization_type": val("regularization_type"),
    }
    return eq, values, "NVIDIA sgd_solver.cpp:98-118, <solver>_solver.cu"


def _nvidia_sgd_row(step: NvidiaSGD, rule: UpdateRule, val: _Values) -> Row:
    mu = num(step.momentum)
    parts = []
    if step.momentum_policy == "poly":
        parts.append(
            f"mu(k) = {mu} + ({num(step.max_momentum)} - {mu}) * (k / {step.max_iter})"
            f"^{num(step.momentum_power)}"
        )
    elif step.momentum_policy == "opt":
        cap = f", at most {num(step.max_momentum)}" if step.cap_momentum else ""
        parts.append(f"mu(k) = (1 - sqrt(alpha(k)) / 2)^2{cap}")
    else:
        parts.append(f"mu = {mu}")
    if step.larc:
        c = f"c = (1 - mu) * {num(step.larc_eta)} * ||w|| / ||g||"
        if step.larc_turbo:
            c += " - 0.9 * corr (corr = 0.95 corr + 0.05 cos(g, h))"
        r = "alpha(k) * c" if step.larc == "scale" else "min(alpha(k), c)"
        parts.append(f"LARC ({step.larc}): {c}; eta = {r} where lr_mult > 0")
    lam = (
        f"lambda(k) = {num(step.weight_decay)} + ({num(step.max_weight_decay)} - "
        f"{num(step.weight_decay)}) * (k / {step.max_iter})^{num(step.weight_decay_power)}"
        if step.decay_policy == "poly"
        else f"lambda = {num(step.weight_decay)}"
    )
    if step.sag:
        lam_name = lam.split(" = ")[0]
        if step.decay_kind == "WD":
            parts.append(f"h = mu * h + (1 - mu) * g;  w -= eta * (h + {lam_name} * d * w)")
        else:
            parts.append(f"h = mu * h + (1 - mu) * (g + {lam_name} * d * w);  w -= eta * h")
        parts.append(f"{lam}; d = decay_mult (SAG)")
        if step.larc:
            parts.append("SAG's LARC: c = eta_larc * ||w|| / ||h||, turbo from k = 2")
    elif step.decay_kind == "WD":
        parts.append(
            f"h = mu * h + eta * g;  w -= h + eta * {lam.split(' = ')[0]} * decay_mult * w"
        )
        parts.append(f"{lam} (decoupled, regularization_type WD)")
    elif step.decay_kind:
        term = "w" if step.decay_kind == "L2" else "sign(w)"
        parts.append(f"h = mu * h + eta * (g + lambda * decay_mult * {term});  w -= h;  {lam}")
    else:
        parts.append("h = mu * h + eta * g;  w -= h")
    source = "NVIDIA sag_solver.cpp, sag_solver.cu" if step.sag else "NVIDIA sgd_solver.cpp"
    return "; ".join(parts), {}, f"{source}; sgd_solver.cpp:72-118"


def _momentum_row(step: Momentum, rule: UpdateRule, val: _Values) -> Row:
    mu = "mu_p" if rule.per_blob_momentum else val("momentum")
    if step.nesterov:
        eq = f"h' = {mu} * h + eta * g;  w -= (1 + {mu}) * h' - {mu} * h;  h = h'"
        return eq, {}, "nesterov_solver.cpp:13-56"
    eq = f"h = {mu} * h + eta * g;  w -= h   (the lr is inside the velocity)"
    if rule.per_blob_momentum:
        eq += ";  mu_p = each blob's own momentum (table below)"
    return eq, {}, "sgd_solver.cpp:223-254"


def _adagrad_row(step: AdaGrad, rule: UpdateRule, val: _Values) -> Row:
    eq = f"h += g^2;  w -= eta * g / (sqrt(h) + {val('delta')})"
    return eq, {}, "adagrad_solver.cpp:13-64"


def _rmsprop_row(step: RMSProp, rule: UpdateRule, val: _Values) -> Row:
    eq = (
        f"h = {val('rms_decay')} * h + (1 - {num(step.rms_decay)}) * g^2;  "
        f"w -= eta * g / (sqrt(h) + {val('delta')})"
    )
    return eq, {}, "rmsprop_solver.cpp:13-65"


def _adadelta_row(step: AdaDelta, rule: UpdateRule, val: _Values) -> Row:
    r, d = val("momentum"), val("delta")
    eq = (
        f"a = {r} * a + (1 - rho) * g^2;  u = g * sqrt((b + {d}) / (a + {d}));  "
        f"b = rho * b + (1 - rho) * u^2;  w -= eta * u   (rho = momentum)"
    )
    return eq, {}, "adadelta_solver.cpp:25-107"


def _adam_row(step: Adam, rule: UpdateRule, val: _Values) -> Row:
    b1, b2, d = val("momentum"), val("momentum2"), val("delta")
    eq = (
        f"m = {b1} * m + (1 - beta1) * g;  v = {b2} * v + (1 - beta2) * g^2;  "
        f"w -= eta * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + {d}),  t = k + 1"
        "   (beta1 = momentum, beta2 = momentum2)"
    )
    return eq, {}, "adam_solver.cpp:25-89"


#: step type -> its row of the explanation (one entry per step type of rule/model.py)
STEP_ROWS: dict[type, Callable[[Any, UpdateRule, _Values], Row]] = {
    ClipByGlobalNorm: _clip_row,
    NormalizeBy: _normalize_row,
    AddDecay: _decay_row,
    ScaleByLr: _lr_row,
    Momentum: _momentum_row,
    AdaGrad: _adagrad_row,
    RMSProp: _rmsprop_row,
    AdaDelta: _adadelta_row,
    Adam: _adam_row,
    NvidiaDecay: _nvidia_decay_row,
    NvidiaSGD: _nvidia_sgd_row,
}


def _step_row(step: Step, rule: UpdateRule, val: _Values) -> dict[str, Any]:
    """One step: name, equation with numbers, the values it uses (field -> text); a solver
    step lists the solver's fields (:data:`caffe2tf.rule.model.SOLVERS`)."""
    eq, values, src = STEP_ROWS[type(step)](step, rule, val)
    entry = SOLVER_TABLES.get(rule.dialect, {}).get(rule.solver)  # cuda-convnet: none
    if step is rule.solver_step and entry is not None and not rule.per_blob_momentum:
        values = {f: val(f) for f in entry.reads}
    return {"name": step.name, "equation": eq, "values": values, "source": src}


def _blob_rows(rule: UpdateRule, recipe: Recipe | None) -> list[dict[str, Any]]:
    lr0 = lr_fresh(rule.schedule, 0)
    decay = rule.step(AddDecay)
    wd = decay.weight_decay if isinstance(decay, AddDecay) else 0.0
    explicit = {
        p.key: (p.lr_mult_explicit, p.decay_mult_explicit)
        for p in (recipe.net.params if recipe is not None and recipe.net else ())
    }
    if recipe is None:  # cuda-convnet: every multiplier was written in the layer files
        explicit = {g.key: (True, True) for g in rule.params}
    step = rule.solver_step
    rows = []
    groups = rule.params or (rule.default_group,)
    for g in groups:
        lr_ex, dm_ex = explicit.get(g.key, (False, False))
        rows.append(
            {
                "key": g.key,
                "layer_type": g.layer_type or "?",
                "shape": list(g.shape) if g.shape is not None else None,
                "lr_mult": g.lr_mult,
                "lr_mult_default": not lr_ex,
                "decay_mult": g.decay_mult,
                "decay_mult_default": not dm_ex,
                "lr_at_start": float(np.float32(lr0) * np.float32(g.lr_mult)),
                "decay": float(np.float32(wd) * np.float32(g.decay_mult)),
                "sharers": list(g.sharers),
                "momentum": g.momentum_or(step.momentum) if isinstance(step, Momentum) else None,
            }
        )
    return rows


def _defaults(recipe: Recipe, rule: UpdateRule) -> list[dict[str, str]]:
    spec = recipe.solver
    used = {
        "type",
        "iter_size",
        "clip_gradients",
        "weight_decay",
        "lr_policy",
        *(POLICIES[spec.lr_policy].reads if spec.lr_policy in POLICIES else ()),
        *(SOLVER_TABLES[spec.dialect].get(spec.type, SOLVERS["SGD"]).reads),
    }
    if rule.step(AddDecay) is not None:
        used.add("regularization_type")
    meaning = {
        "clip_gradients": "off",
        "iter_size": "one pass per update",
        "weight_decay": "no decay",
        "type": "SGD",
    }
    out = []
    for f in sorted(used & set(spec.defaulted)):
        v = getattr(spec, f, None)
        text = (
            ", ".join(map(num, v)) if isinstance(v, tuple) else v if isinstance(v, str) else num(v)
        )
        out.append({"field": f, "value": text, "meaning": meaning.get(f, "")})
    return out


def explain_data(recipe: Recipe, rule: UpdateRule | None = None) -> dict[str, Any]:
    """Everything ``explain`` shows, as JSON-ready data."""
    rule = rule or lower(recipe)
    val = _Values(recipe)
    horizon, known = _horizon(rule)
    return {
        "solver_file": recipe.solver.path,
        "net_file": recipe.net.path if recipe.net else None,
        "solver": rule.solver,
        "iter_size": rule.iter_size,
        "max_iter": rule.max_iter,
        "steps": [_step_row(s, rule, val) for s in rule.steps],
        "schedule": {
            "policy": rule.schedule.policy,
            "horizon": horizon,
            "max_iter_known": known,
            "milestones": milestones(rule),
        },
        "blobs": _blob_rows(rule, recipe),
        "net_known": bool(rule.params) or recipe.net is not None,
        "defaults": _defaults(recipe, rule),
        "notes": [n.to_dict() for n in (*recipe.notes, *rule.notes)],
    }


def explain_rule_data(rule: UpdateRule, path: str, sources: dict[str, str]) -> dict[str, Any]:
    """:func:`explain_data` for a rule read from no Caffe solver (cuda-convnet's layer files,
    docs/cuda-convnet.md): ``path`` is the first file, ``sources`` every file read."""
    val = _RuleValues(rule)
    horizon, known = _horizon(rule)
    return {
        "kind": "cuda-convnet",
        "solver_file": path,
        "net_file": sources.get("params"),
        "solver": rule.solver,
        "iter_size": rule.iter_size,
        "max_iter": rule.max_iter,
        "steps": [_step_row(s, rule, val) for s in rule.steps],
        "schedule": {
            "policy": rule.schedule.policy,
            "horizon": horizon,
            "max_iter_known": known,
            "milestones": milestones(rule),
        },
        "blobs": _blob_rows(rule, None),
        "net_known": True,
        "defaults": [],
        "notes": [n.to_dict() for n in rule.notes],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def render_text(data: dict[str, Any]) -> str:
    convnet = data.get("kind") == "cuda-convnet"
    lines = [
        (
            f"cuda-convnet update rule of {data['solver_file']} (params {data['net_file']}), "
            "as Caffe's SGD (docs/cuda-convnet.md); G = the gradient of the MEAN loss"
            if convnet
            else f"Caffe update rule of {data['solver_file']}"
            + (f" (net {data['net_file']})" if data["net_file"] else " (net unknown)")
        ),
        f"solver {data['solver']}, iter_size {data['iter_size']}, "
        f"max_iter {data['max_iter'] or 'not set'}",
        "",
        "Each update k = 0, 1, ... (k = updates already applied); G = the gradient summed "
        "over the iter_size passes:",
    ]
    for i, s in enumerate(data["steps"], 1):
        lines.append(f"  {i}. {s['name']:<10} {s['equation']}")
        vals = ", ".join(f"{k} = {v}" for k, v in s["values"].items())
        if vals:
            lines.append(f"     {'':<10} [{vals}]  ({s['source']})")
    sch = data["schedule"]
    lines += ["", f"Learning rate alpha(k) ({sch['policy']}):"]
    rows = [["k", "alpha(k)", ""]]
    for m in sch["milestones"]:
        if m["k"] is None:
            rows.append(["...", "", m["why"]])
        else:
            rows.append([str(m["k"]), num(m["lr"]), m["why"]])
    lines += _table(rows)
    lines += [
        "",
        "Per-blob multipliers (eta = alpha(k) * lr_mult, decay = weight_decay * decay_mult):",
    ]
    own = len({b.get("momentum") for b in data["blobs"]}) > 1  # a momentum per blob
    rows = [["blob", "type", "shape", "lr_mult", "decay_mult", "lr at k=0", "decay", "sharers"]]
    if own:
        rows[0].append("momentum")
    for b in data["blobs"]:
        shape = "x".join(map(str, b["shape"])) if b["shape"] is not None else "?"
        rows.append(
            [
                b["key"],
                b["layer_type"],
                shape,
                num(b["lr_mult"]) + (" (default)" if b["lr_mult_default"] else ""),
                num(b["decay_mult"]) + (" (default)" if b["decay_mult_default"] else ""),
                num(b["lr_at_start"]),
                num(b["decay"]),
                ", ".join(b["sharers"]),
            ]
            + ([num(b["momentum"])] if own else [])
        )
    lines += _table(rows)
    if not data["net_known"]:
        lines.append("  (net unknown: every blob is assumed to use Caffe's defaults)")
    if data["defaults"]:
        lines += ["", "Caffe defaults filled in (not written in the solver):"]
        for d in data["defaults"]:
            extra = f"  ({d['meaning']})" if d["meaning"] else ""
            lines.append(f"  {d['field']} = {d['value']} (default){extra}")
    if data["notes"]:
        lines += ["", "Notes:"]
        for n in data["notes"]:
            lines.append(f"  {n['severity']}: {n['message']}")
    return "\n".join(lines)


def explain_recipe(
    solver: Path | str,
    *,
    net_path: Path | str | None = None,
    lenient: bool = False,
    fmt: str = "table",
    params_path: Path | str | None = None,
) -> str:
    """``caffe2tf explain``: load, lower and describe; ``fmt`` is ``"table"`` or ``"json"``.
    ``params_path``: a cuda-convnet layer parameter file (``solver`` is then its layers.cfg)."""
    from caffe2tf.app.pipeline import load_pipeline

    pipeline = load_pipeline(solver, net_path=net_path, lenient=lenient, params_path=params_path)
    if pipeline.recipe is None:
        data = explain_rule_data(pipeline.rule, pipeline.solver_path, dict(pipeline.sources))
        data["notes"] = [n.to_dict() for n in pipeline.notes]
    else:
        data = explain_data(pipeline.recipe, pipeline.rule)
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    from caffe2tf.errors import escape_controls  # names print as escapes, never raw controls

    return "\n".join(escape_controls(line) for line in render_text(data).split("\n"))
