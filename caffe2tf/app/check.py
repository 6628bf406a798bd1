"""``caffe2tf check SOLVER OUT``: does a migrated config still match its Caffe original?

Meant for a project's CI after a migration: the Caffe solver (and net) stay in the repository
next to the Keras artifacts ``convert`` wrote, and ``check`` fails when either drifts.

1. **Config drift**: ``OUT/train_config.yaml`` is compared, key by key, with the config that
   ``convert`` would write for SOLVER today (the ``source`` block, which only records paths, is
   left out). Any difference, e.g. a hand-edited learning rate or a changed ``stepvalue``, is
   listed with both values.
2. **Behaviour**: ``OUT/optimizer.py`` itself is imported and run per its contract against
   Caffe's rule for N updates (:func:`caffe2tf.app.verify.verify_solver` with ``module_path``),
   so a hand-edited module is judged by what it does, not by its text.

Exit code 0 when both hold, 1 when either fails, 2 on invalid input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from caffe2tf import user_yaml
from caffe2tf.errors import InputError, SourceLocation

IGNORED_TOP_LEVEL_KEYS = frozenset({"source"})


@dataclass(frozen=True)
class ConfigDifference:
    """One place where the checked config and today's conversion disagree."""

    path: str
    expected: Any
    found: Any

    def __str__(self) -> str:
        from caffe2tf.errors import escape_controls
        from caffe2tf.user_yaml import quote  # the file may hold anything: a short prefix

        return escape_controls(
            f"{self.path}: convert now gives {quote(self.expected)}, the file has "
            f"{quote(self.found)}"
        )


def config_differences(expected: Any, found: Any, path: str = "") -> Iterator[ConfigDifference]:
    """Walk two YAML values in step and yield every leaf (or shape) that differs."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found), key=str):
            if not path and key in IGNORED_TOP_LEVEL_KEYS:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in found:
                yield ConfigDifference(where, expected[key], "<missing>")
            elif key not in expected:
                yield ConfigDifference(where, "<absent>", found[key])
            else:
                yield from config_differences(expected[key], found[key], where)
    elif isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        for i, (e, f) in enumerate(zip(expected, found, strict=True)):
            yield from config_differences(e, f, f"{path}[{i}]")
    elif expected != found:
        yield ConfigDifference(path or "<root>", expected, found)


@dataclass(frozen=True)
class CheckReport:
    out_dir: str
    differences: tuple[ConfigDifference, ...]
    verify: Any  # caffe2tf.app.verify.VerifyReport
    target: str = "keras"

    @property
    def passed(self) -> bool:
        return not self.differences and self.verify.passed

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "passed": self.passed,
            "config_differences": [
                {"path": d.path, "expected": d.expected, "found": d.found} for d in self.differences
            ],
            "verify": self.verify.to_dict(),
        }

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2, default=str)
        lines = [f"check {self.out_dir}"]
        if self.target != "keras":
            lines.append(
                f"  --target {self.target}: no config file; the module is judged by what it does"
            )
        elif self.differences:
            lines.append(
                f"  train_config.yaml: {len(self.differences)} difference(s) from what "
                "convert writes for the Caffe original now:"
            )
            lines.extend(f"    {d}" for d in self.differences)
        else:
            lines.append("  train_config.yaml: same as what convert writes for the Caffe original")
        lines.append("")
        lines.append(self.verify.render("table"))
        lines.append("")
        lines.append("check " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(lines)


def check_migration(
    solver: Path,
    out_dir: Path,
    *,
    net_path: Path | None = None,
    lenient: bool = False,
    layer_map: Path | None = None,
    steps: int = 100,
    seed: int = 0,
    tolerance: float = 1e-3,
    against: str = "reference",
    plot_path: Path | None = None,
    target: str = "keras",
    input_shapes: Any = None,
) -> CheckReport:
    """Compare OUT/train_config.yaml with today's conversion and run OUT/optimizer.py (for
    ``target`` torch/optax: run OUT/optimizer_<target>.py; they have no config file).
    ``input_shapes``: ``--input-shape`` (see :func:`caffe2tf.app.pipeline.load_pipeline`)."""
    from caffe2tf.app.convert import load_layer_map
    from caffe2tf.app.pipeline import keras_plan, load_pipeline
    from caffe2tf.app.verify import verify_solver
    from caffe2tf.targets.keras.render_yaml import plan_to_config

    # SOLVER (and --net/--layer-map) first: arguments are judged in the order they were given.
    # The recipe is read and lowered once; verify runs on the same pipeline.
    pipeline = load_pipeline(solver, net_path=net_path, lenient=lenient, input_shapes=input_shapes)
    if target != "keras":
        return _check_module_only(
            solver,
            out_dir,
            pipeline,
            target=target,
            layer_map=load_layer_map(layer_map),
            verify=dict(steps=steps, seed=seed, tolerance=tolerance, against=against),
            plot_path=plot_path,
        )
    plan, _notes = keras_plan(pipeline, load_layer_map(layer_map))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(
            "not a directory: check expects the folder written by caffe2tf convert",
            SourceLocation(str(out_dir)),
        )
    config_path, module_path = out_dir / "train_config.yaml", out_dir / "optimizer.py"
    for required in (config_path, module_path):
        if not required.is_file():
            raise InputError(
                f"{required} is missing: check expects a directory written by caffe2tf convert",
                SourceLocation(str(required)),
            )
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(
            f"cannot read: {err.strerror or err}", SourceLocation(str(config_path))
        ) from None
    except UnicodeDecodeError as err:
        raise InputError(f"cannot read YAML: {err}", SourceLocation(str(config_path))) from None
    # aliases bounded, errors positioned and short (caffe2tf.user_yaml)
    found = user_yaml.load(text, str(config_path), "train_config.yaml")
    if not isinstance(found, dict):
        raise InputError(
            "not a caffe2tf train config (expected a mapping)", SourceLocation(str(config_path))
        )

    expected = yaml.safe_load(yaml.safe_dump(plan_to_config(plan)))  # same scalar types as read
    differences = tuple(config_differences(expected, found))
    report = verify_solver(
        solver,
        net_path=net_path,
        lenient=lenient,
        module_path=module_path,
        steps=steps,
        seed=seed,
        tolerance=tolerance,
        against=against,
        plot_path=plot_path,
        pipeline=pipeline,
    )
    return CheckReport(out_dir=str(out_dir), differences=differences, verify=report)


def _check_module_only(
    solver: Path,
    out_dir: Path,
    pipeline: Any,
    *,
    target: str,
    layer_map: Any,
    verify: dict[str, Any],
    plot_path: Path | None,
) -> CheckReport:
    """``check`` for a target other than keras: OUT holds only the module, judged by what it
    does."""
    from caffe2tf.app.targets import get_target
    from caffe2tf.app.verify import verify_solver

    chosen = get_target(target)
    chosen.plan(pipeline, layer_map)  # the layer map is checked against the net as convert does
    out_dir = Path(out_dir)
    module_path = out_dir / chosen.module
    if not module_path.is_file():
        raise InputError(
            f"{module_path} is missing: check expects a directory written by caffe2tf convert "
            f"--target {target}",
            SourceLocation(str(module_path)),
        )
    report = verify_solver(
        solver,
        module_path=module_path,
        plot_path=plot_path,
        pipeline=pipeline,
        target=target,
        **verify,
    )
    return CheckReport(out_dir=str(out_dir), differences=(), verify=report, target=target)
