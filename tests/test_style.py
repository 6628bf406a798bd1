"""The tree's own style and layering rules, checked as CI would run them.

* ``ruff check`` and ``ruff format --check`` are clean on the whole repository (the generated
  ``caffe2tf/caffe/_proto`` is excluded in pyproject.toml);
* the layers of docs/architecture.md hold: ``caffe2tf.targets`` never imports
  ``caffe2tf.caffe``; under ``caffe2tf.verify`` only the real-Caffe oracle driver does; no private
  name (``_x``) is imported from another package of caffe2tf.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import need

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "caffe2tf"


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff")
    need(exe is not None, "ruff is not on PATH (it is in the dev extras)")
    assert exe is not None
    return subprocess.run(
        [exe, *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_check_is_clean() -> None:
    done = _ruff("check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean() -> None:
    done = _ruff("format", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, list[str], int]]:
    """``(module imported, names imported from it, line)`` for every import in ``path``,
    function-level (lazy) imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import: resolve against this package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((module, [alias.name for alias in node.names], node.lineno))
    return out


def _sources(*parts: str) -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.joinpath(*parts).rglob("*.py")
        if "_proto" not in p.relative_to(ROOT).parts
    )


#: the only modules below the app layer that may read the Caffe front end
CAFFE_READERS = {"caffe2tf/rule/lower.py", "caffe2tf/verify/oracle.py"}


@pytest.mark.parametrize("layer", ["targets", "verify", "rule"])
def test_only_lowering_and_the_oracle_driver_import_the_caffe_front_end(layer: str) -> None:
    bad = []
    for path in _sources(layer):
        rel = path.relative_to(ROOT).as_posix()
        for module, _, line in _imports(path):
            if (module == "caffe2tf.caffe" or module.startswith("caffe2tf.caffe.")) and (
                rel not in CAFFE_READERS
            ):
                bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_lower_layers_never_import_the_app_layer_or_the_cli() -> None:
    bad = []
    for layer in ("caffe", "rule", "targets", "verify"):
        for path in _sources(layer):
            for module, _, line in _imports(path):
                if module.startswith(("caffe2tf.app", "caffe2tf.cli")):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_across_packages() -> None:
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        own = ".".join(rel.with_suffix("").parts[:2])  # e.g. caffe2tf.rule
        for module, names, line in _imports(path):
            if not module.startswith("caffe2tf") or ".".join(module.split(".")[:2]) == own:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") for part in module.split(".")[1:-1]):
                bad.append(f"{rel}:{line} imports {', '.join(private) or module} from {module}")
    assert not bad, "\n".join(bad)


def test_the_layer_checks_have_teeth(tmp_path: Path) -> None:
    """Each check above flags a planted violation."""
    planted = tmp_path / "caffe2tf" / "targets" / "x.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(
        "def f():\n    from caffe2tf.caffe.load import load_recipe\n"
        "    from caffe2tf.caffe.parse import _Lexer\n"
    )
    imports = _imports(planted, tmp_path)
    assert ("caffe2tf.caffe.load", ["load_recipe"], 2) in imports
    assert any("_Lexer" in names for _, names, _ in imports)
