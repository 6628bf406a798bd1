"""The per-target mapping tables of docs/torch-target.md, docs/optax-target.md and
docs/tf-compat-v1-target.md, generated from the registries (so the docs cannot drift from the
code; ``tests/test_doc_tables.py`` compares them and rewrites them with ``CAFFE2TF_REGEN=1``).

Each table is evaluated on a representative recipe per row: Caffe's default hyper-parameters
for the solver (``momentum`` 0.9 where it reads one) and, for the torch solvers, both a
constant and a changing rate, since ``torch.optim.SGD`` is exact only under the first.
"""

from __future__ import annotations

from caffe2tf.rule.model import SOLVERS, LrSchedule, SolverStep
from caffe2tf.rule.schedules import POLICIES

#: representative field values per solver (Caffe's defaults, momentum 0.9)
_FIELDS = {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "rms_decay": 0.99}
_SCHEDULE = LrSchedule("fixed", 0.01, gamma=0.5, power=0.75, stepsize=100, stepvalue=(100, 200))
_MAX_ITER = 1000


def _step(solver: str) -> SolverStep:
    entry = SOLVERS[solver]
    return entry.build(**{name: _FIELDS[name] for name in entry.reads})


def _schedule(policy: str) -> LrSchedule:
    return LrSchedule(
        policy,
        _SCHEDULE.base_lr,
        _SCHEDULE.gamma,
        _SCHEDULE.power,
        _SCHEDULE.stepsize,
        _SCHEDULE.stepvalue,
        _MAX_ITER,
        stagelr=(0.01, 0.001),
        stageiter=(100, 200),
    )


def _policy(policy: str) -> str:
    """The row's name: a fork's policy says whose it is."""
    fork = POLICIES[policy].dialect
    return f"{policy} ({fork} fork)" if fork else policy


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def torch_tables() -> str:
    """Markdown: one row per Caffe solver type, then one per lr_policy."""
    from caffe2tf.targets.torch.schedules import BUILTIN_SCHEDULES, FACTOR_POLICIES
    from caffe2tf.targets.torch.solvers import SOLVER_MAPPINGS, TorchContext

    lines = [
        _row("Caffe type", "constant rate", "changing rate", "inlined fallback"),
        _row("---", "---", "---", "---"),
    ]
    for solver in SOLVERS:
        step = _step(solver)
        mapping = SOLVER_MAPPINGS[type(step)]
        cells = []
        for constant in (True, False):
            found = mapping.builtin(step, TorchContext(constant_rate=constant, base_lr=0.01))
            custom = f"inlined `{mapping.custom(step).cls}`"
            cells.append(f"`{found[0].cls}`" if not isinstance(found, str) else custom)
        lines.append(_row(solver, *cells, f"`{mapping.custom(step).cls}`"))
    lines += ["", _row("lr_policy", "torch scheduler"), _row("---", "---")]
    for policy in POLICIES:
        mapped = BUILTIN_SCHEDULES[policy](_schedule(policy))
        if isinstance(mapped, str) and policy not in FACTOR_POLICIES:
            cell = f"not mapped: {mapped}"
        elif isinstance(mapped, str):
            cell = f"`LambdaLR` over the inlined `{policy}_factor` ({mapped})"
        elif mapped[0].cls == "constant":
            cell = "none (each group keeps base_lr x lr_mult)"
        else:
            cell = f"`torch.optim.lr_scheduler.{mapped[0].cls}`"
        lines.append(_row(_policy(policy), cell))
    return "\n".join(lines) + "\n"


def optax_tables() -> str:
    """Markdown: one row per Caffe solver type (the group chain), then one per lr_policy."""
    from caffe2tf.targets.optax.model import LEARNING_RATE
    from caffe2tf.targets.optax.schedules import BUILTIN_SCHEDULES, CUSTOM_POLICIES
    from caffe2tf.targets.optax.solvers import SOLVER_MAPPINGS

    lines = [_row("Caffe type", "group chain after the decay"), _row("---", "---")]
    for solver in SOLVERS:
        chain, _, _ = SOLVER_MAPPINGS[type(_step(solver))].chain(_step(solver))
        names = [
            "`optax.scale_by_learning_rate`" if c.cls == LEARNING_RATE else f"`{c.cls}`"
            for c in chain
        ]
        lines.append(_row(solver, " then ".join(names)))
    lines += ["", _row("lr_policy", "optax schedule"), _row("---", "---")]
    for policy in POLICIES:
        mapped = BUILTIN_SCHEDULES[policy](_schedule(policy))
        if isinstance(mapped, str) and policy not in CUSTOM_POLICIES:
            cell = f"not mapped: {mapped}"
        elif isinstance(mapped, str):
            cell = f"the inlined `caffe_{policy}_schedule` ({mapped})"
        elif mapped[0].cls == "constant":
            cell = "a constant: base_lr x lr_mult"
        else:
            cell = f"`{mapped[0].cls}`"
        lines.append(_row(_policy(policy), cell))
    return "\n".join(lines) + "\n"


def tf_v1_tables() -> str:
    """Markdown: one row per Caffe solver type (iter_size 1 / > 1), then one per lr_policy."""
    from caffe2tf.targets.tf_compat_v1.schedules import BUILTIN_SCHEDULES
    from caffe2tf.targets.tf_compat_v1.solvers import SOLVER_MAPPINGS, TfV1Context

    lines = [
        _row("Caffe type", "constant rate", "changing rate", "iter_size > 1"),
        _row("---", "---", "---", "---"),
    ]
    for solver in SOLVERS:
        step = _step(solver)
        mapping = SOLVER_MAPPINGS[type(step)]
        cells = []
        for constant, iter_size in ((True, 1), (False, 1), (True, 2)):
            found = mapping.builtin(step, TfV1Context(constant, iter_size))
            custom = f"inlined `{mapping.custom(step).cls}`"
            cells.append(f"`{found[0].cls}`" if not isinstance(found, str) else custom)
        lines.append(_row(solver, *cells))
    lines += ["", _row("lr_policy", "rate of global_step"), _row("---", "---")]
    for policy in POLICIES:
        mapped = BUILTIN_SCHEDULES[policy](_schedule(policy))
        if isinstance(mapped, str):
            cell = f"the inlined `caffe_{policy}_rate` ({mapped})"
        elif mapped[0].cls == "constant":
            cell = "a constant: base_lr"
        else:
            cell = f"`{mapped[0].cls}`"
        lines.append(_row(_policy(policy), cell))
    return "\n".join(lines) + "\n"


#: doc file -> generated block (between ``<!-- generated by caffe2tf/targets/doc_tables.py -->``
#: and ``<!-- end generated -->``)
TABLES = {
    "docs/torch-target.md": torch_tables,
    "docs/optax-target.md": optax_tables,
    "docs/tf-compat-v1-target.md": tf_v1_tables,
}
BEGIN = "<!-- generated by caffe2tf/targets/doc_tables.py -->"
END = "<!-- end generated -->"


def with_tables(path: str, text: str) -> str:
    """``text`` (the doc at ``path``) with its generated block replaced by today's tables."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{path} has no generated block")
    return f"{head}{BEGIN}\n{TABLES[path]()}{END}{tail}"
