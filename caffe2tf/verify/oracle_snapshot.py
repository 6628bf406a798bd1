"""The real Caffe 1.0 writing a snapshot mid-run (``.caffemodel`` + ``.solverstate``): the
ground truth for continuing a Caffe run in Keras (:mod:`caffe2tf.app.resume`).

The harness runs the case as :func:`caffe2tf.verify.oracle.run_cases` does and calls
``solver.snapshot()`` right after update ``at`` (``Solver::Snapshot``, ``solver.cpp:420-435``:
the net to ``<prefix>_iter_<at>.caffemodel``, then ``SnapshotSolverStateToBinaryProto``,
``sgd_solver.cpp:271-287``: ``iter``, ``current_step`` and every history blob).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe2tf.verify.oracle import (
    OracleCase,
    OracleError,
    _Job,
    _require_root,
    _stack_grads,
    _task_error,
    retarget_solver_text,
)


@dataclass(frozen=True)
class SnapshotRun:
    """The whole trajectory (weights after updates 1..N) and the snapshot files' bytes."""

    trajectory: list[dict[str, np.ndarray]]
    caffemodel: bytes
    solverstate: bytes


def run_with_snapshot(case: OracleCase, at: int, *, root: Path | str | None = None) -> SnapshotRun:
    """Run ``case`` through the real solver, snapshotting right after update ``at``."""
    root = _require_root(root)
    if not 0 < at <= len(case.grads):
        raise ValueError(f"snapshot at update {at}: the case has {len(case.grads)} updates")
    with _Job(root) as job:
        net = job.write_text("c.net.prototxt", case.net_text)
        text = retarget_solver_text(case.solver_text, job.chroot_path(net))
        text += f'\nsnapshot_prefix: "{job.chroot_path("snap")}"\n'
        solver = job.write_text("c.solver.prototxt", text)
        job.tasks.append(
            {
                "kind": "run",
                "solver": solver,
                "net": net,
                "init": job.write_npz("c.init.npz", case.init),
                "grads": job.write_npz("c.grads.npz", _stack_grads(case)),
                "steps": len(case.grads),
                "method": case.method or "apply_update",
                "out": "c.out.npz",
                "snapshot_at": at,
            }
        )
        (result,) = job.run(1)
        if not result["ok"]:
            raise OracleError(str(_task_error(f"case {case.name!r}", result)))
        owners = result["result"]["owners"]
        with np.load(job.host_dir / "c.out.npz") as data:
            traj = {key: data[key] for key in owners}
        trajectory = [{k: traj[k][i] for k in owners} for i in range(len(case.grads))]
        return SnapshotRun(
            trajectory,
            (job.host_dir / f"snap_iter_{at}.caffemodel").read_bytes(),
            (job.host_dir / f"snap_iter_{at}.solverstate").read_bytes(),
        )
