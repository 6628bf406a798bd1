"""Generated ``optimizer.py`` is formatted and lint-clean for every recipe, not only the cases:
a seeded property test over random rules (every solver step and policy, long stepvalue lists,
extreme floats such as 1e20 or 1e-38, clipping, iter_size, lr_mult groups). All modules go
through one ``ruff`` call each for ``format --check`` and ``check`` (default settings, and the
project's line length 100 for E501)."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from conftest import need

from caffe2tf.rule.model import (
    SOLVERS,
    AddDecay,
    ClipByGlobalNorm,
    LrSchedule,
    NormalizeBy,
    NvidiaDecay,
    NvidiaSGD,
    ParamGroup,
    ScaleByLr,
    UpdateRule,
)
from caffe2tf.rule.schedules import POLICIES
from caffe2tf.targets.keras.plan import plan
from caffe2tf.targets.keras.render_python import render_python

FLOATS = [0.0, 1e-38, 1e-8, 1e-5, 0.0005, 0.1, 0.9, 0.999, 1.0, 2.5, 123456.7, 1e20, 3.4e38]


def _rule(rng: random.Random) -> UpdateRule:
    solver = rng.choice(sorted(SOLVERS))
    entry = SOLVERS[solver]
    fields = {f: rng.choice([0.0, 0.5, 0.9, 0.95, 0.999]) for f in entry.reads}
    if "delta" in fields:
        fields["delta"] = rng.choice(FLOATS[1:])
    n_steps = rng.choice([0, 1, 3, 5, 40, 1000])
    stepvalue = tuple(sorted(rng.sample(range(1, 10**6), n_steps)))
    schedule = LrSchedule(
        policy=rng.choice(sorted(POLICIES)),  # type: ignore[arg-type]
        base_lr=rng.choice(FLOATS[1:]),
        gamma=rng.choice(FLOATS),
        power=rng.choice([0.5, 1.0, 2.0]),
        stepsize=rng.choice([1, 7, 100000]),
        stepvalue=stepvalue,
        max_iter=rng.choice([10, 450000, 2**25]),
    )
    if schedule.policy == "multifixed":  # the yolo fork's stages (at least one, as it checks)
        n_stages = rng.choice([1, 3, 40])
        schedule = replace(
            schedule,
            stagelr=tuple(rng.choice(FLOATS[1:]) for _ in range(n_stages)),
            stageiter=tuple(rng.sample(range(0, 10**6), n_stages)),
        )
    if rng.random() < 0.3:  # NVIDIA Caffe's warm-up and floor
        schedule = replace(
            schedule,
            rampup_interval=rng.choice([0, 5, 1000]),
            rampup_lr=rng.choice(FLOATS[:6]),
            min_lr=rng.choice(FLOATS[:6]),
        )
    steps: list = []
    if rng.random() < 0.3:
        steps.append(ClipByGlobalNorm(rng.choice(FLOATS)))
    iter_size = rng.choice([1, 1, 2, 5])
    if iter_size > 1:
        steps.append(NormalizeBy(iter_size))
    solver_step = entry.build(**fields)
    if rng.random() < 0.2:  # NVIDIA Caffe's SGD with its features
        solver = "SGD"
        solver_step = NvidiaSGD(
            momentum=rng.choice([0.0, 0.9]),
            momentum_policy=rng.choice(["fixed", "poly", "opt"]),
            max_momentum=rng.choice(FLOATS),
            momentum_power=rng.choice([0.5, 1.0, 2.0]),
            cap_momentum=rng.random() < 0.5,
            max_iter=schedule.max_iter,
            larc=rng.choice(["", "scale", "clip"]),
            larc_eta=rng.choice(FLOATS[1:]),
            larc_turbo=rng.random() < 0.5,
            decay_kind=rng.choice(["", "L2", "L1", "WD"]),
            weight_decay=rng.choice(FLOATS[1:]),
            decay_policy=rng.choice(["fixed", "poly"]),
            max_weight_decay=rng.choice(FLOATS),
            weight_decay_power=rng.choice([0.5, 1.0]),
            sag=rng.random() < 0.3,
        )
    elif rng.random() < 0.2:
        kind = rng.choice(["L2", "L1"])
        steps.append(
            NvidiaDecay(kind, rng.choice(FLOATS[1:]), rng.choice(FLOATS), 1.0, schedule.max_iter)  # type: ignore[arg-type]
        )
    elif rng.random() < 0.6:
        steps.append(AddDecay(rng.choice(["L2", "L1"]), rng.choice(FLOATS[1:])))  # type: ignore[arg-type]
    steps += [ScaleByLr(schedule), solver_step]
    params = tuple(
        ParamGroup(
            key=f"layer_{i // 2}/{i % 2}",
            lr_mult=rng.choice([0.0, 1.0, 2.0, 0.1, 1e20]),
            decay_mult=rng.choice([0.0, 1.0, 1e-38]),
            shape=(3, 4) if i % 2 == 0 else (3,),
            layer_type="InnerProduct",
        )
        for i in range(rng.choice([2, 6]))
    )
    return UpdateRule(
        solver=solver,  # type: ignore[arg-type]
        steps=tuple(steps),
        params=params,
        iter_size=iter_size,
        max_iter=schedule.max_iter,
        net_known=True,
        layers=tuple(sorted({p.layer for p in params})),
    )


def test_generated_modules_are_ruff_clean(tmp_path: Path) -> None:
    ruff = shutil.which("ruff")
    need(ruff is not None, "ruff is not on PATH (it is in the dev extras)")
    assert ruff is not None
    rng = random.Random(13)
    for i in range(80):
        (tmp_path / f"m{i:02d}.py").write_text(render_python(plan(_rule(rng))), encoding="utf-8")
    for cmd in (
        ["format", "--check", "--isolated"],
        ["check", "--isolated"],
        ["check", "--isolated", "--select", "E501", "--line-length", "100"],
    ):
        done = subprocess.run(
            [ruff, *cmd, "--no-cache", str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (cmd, done.stdout[-3000:])


def test_the_property_test_has_teeth(tmp_path: Path) -> None:
    """A float written as Python's repr (1e+20) is what ruff would rewrite: caught."""
    ruff = shutil.which("ruff")
    need(ruff is not None, "ruff is not on PATH (it is in the dev extras)")
    assert ruff is not None
    (tmp_path / "bad.py").write_text("x = 1e+20\n", encoding="utf-8")
    done = subprocess.run(
        [ruff, "format", "--check", "--isolated", "--no-cache", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
