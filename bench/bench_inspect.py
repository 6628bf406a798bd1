"""Cold ``caffe2tf inspect`` wall time on the largest net of the corpus.

Usage::

    python bench/bench_inspect.py [--runs N] [--corpus DIR] [FILE]

Each run is a fresh interpreter (the ``caffe2tf`` console script next to ``sys.executable``
when installed -- not a pyenv shim --, else ``python -m caffe2tf``) running
``inspect FILE --lenient`` (the largest corpus net is a fork file), so imports are included:
that is what a user waits for. The same number of runs of ``python -c pass`` gives the
interpreter's own start-up on this machine, so the figure can be read on a loaded machine too.
Prints a Markdown table row for ``bench/RESULTS.md``. Target: <= 0.2 s wall.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"


def largest_net(corpus: Path) -> Path:
    """The biggest corpus file that reads as a net (decided by content, as inspect does)."""
    sys.path.insert(0, str(ROOT))
    from caffe2tf.caffe.load import sniff_kind
    from caffe2tf.errors import InputError

    best: tuple[int, Path] | None = None
    for path in corpus.rglob("*"):
        if not path.is_file() or path.suffix in (".tsv", ".md"):
            continue
        try:
            if sniff_kind(path) != "net":
                continue
        except InputError:
            continue
        size = path.stat().st_size
        if best is None or size > best[0]:
            best = (size, path)
    if best is None:
        raise SystemExit(f"no net found under {corpus}")
    return best[1]


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT, check=False
        )
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(
                f"{' '.join(cmd)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')[-500:]}"
            )
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()
    target = args.file or largest_net(args.corpus)
    script = Path(sys.executable).parent / "caffe2tf"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "caffe2tf"]
    inspect_cmd = [*launcher, "inspect", str(target), "--lenient"]
    wall(inspect_cmd, 1)  # warm the page cache and the .pyc files
    base = wall([sys.executable, "-c", "pass"], args.runs)
    times = wall(inspect_cmd, args.runs)
    med, best = statistics.median(times), min(times)
    bmed, bbest = statistics.median(base), min(base)
    size_kib = target.stat().st_size / 1024
    print(f"file: {target} ({size_kib:.0f} KiB)")
    print(
        f"runs: {args.runs}; python: {platform.python_version()}; machine: {platform.machine()}"
        f", {os.cpu_count()} CPUs; load average: {os.getloadavg()[0]:.2f}"
    )
    print(f"command: {' '.join(inspect_cmd)}")
    print(f"caffe2tf inspect   min {best:.3f} s  median {med:.3f} s")
    print(f"python -c pass     min {bbest:.3f} s  median {bmed:.3f} s")
    print(f"inspect - baseline min {best - bbest:.3f} s  median {med - bmed:.3f} s")
    print()
    print("| file | KiB | inspect min / median (s) | `python -c pass` min / median (s) |")
    print(f"| {target.name} | {size_kib:.0f} | {best:.3f} / {med:.3f} | {bbest:.3f} / {bmed:.3f} |")


if __name__ == "__main__":
    main()
