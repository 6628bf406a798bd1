"""Runs INSIDE the Debian bullseye root (python3.9, numpy 1.19, pycaffe 1.0.0+git20180821).

Standalone: standard library, numpy and caffe only; never import caffe2tf here. The host side
(:mod:`caffe2tf.verify.oracle`) copies this file into ``ROOT/tmp/caffe2tf-XXXX/`` together
with a ``job.json`` and the data files, then runs
``chroot ROOT python3 /tmp/caffe2tf-XXXX/_caffe_harness.py /tmp/caffe2tf-XXXX``. Results go to
``result.json`` (and one ``.npz`` per trajectory) in that folder.

Every task runs in a forked child whose stderr goes to its own file, so a Caffe CHECK failure
(glog FATAL aborts the process) fails that task alone and its message reaches the caller.

Task kinds (fields in job.json, file names relative to the job folder):

``run``  {solver, net, init, grads, steps, method}
    ``init`` npz: owner key -> array; ``grads`` npz: owner key -> array of shape (steps, *shape)
    (a missing key means zero diffs, as after ``ClearParamDiffs``). Builds the solver with
    ``caffe.get_solver`` (so ``type`` and the ``solver_type`` upgrade are honoured, BVLC
    ``python/caffe/_caffe.cpp:199-203``), writes the initial weights into the
    *owner* blobs, then for step k = 0..steps-1 writes the diffs and applies one update:
    ``method="apply_update"`` calls ``Solver::ApplyUpdate`` (``sgd_solver.cpp:108-127``; in this
    build it increments ``iter_``, checked every step), ``method="step"`` overwrites the diffs in
    the ``on_gradients_ready`` callback during ``step(1)`` (``solver.cpp:229-267``),
    ``method="backward"`` runs ``step(1)`` untouched (the net's own forward/backward makes the
    gradients; ``grads`` must be empty). Writes
    ``out``: owner key -> array (steps, *shape); row k-1 = the weights after k updates.
    Streamed instead (flat in memory, whatever ``steps``): ``grads_raw`` names a file of
    float32 numbers, per update the diffs of ``keys`` one after the other (C order), read one
    update at a time; ``out_raw`` names a file the weights of every owner blob (owner order)
    are appended to after each update.
    With ``snapshot_at`` = k it also calls ``solver.snapshot()`` right after update k (the
    solver text's ``snapshot_prefix`` says where the .caffemodel and .solverstate go).
``params`` {net}
    Builds ``caffe.Net(net, TRAIN)`` and lists every blob of ``net.params`` (layer order, sharers
    included) with its shape and its owner (blobs that alias the same memory are one learnable
    param, ``net.cpp:459-514``). With ``probe=true`` it also measures each owner's effective
    lr_mult and decay_mult by running two SGD updates with base_lr 1 through a solver.
``solver_check`` {solver, net}
    Builds the solver and applies one update with zero diffs, so the checks in the constructor,
    ``GetLearningRate`` and ``Regularize`` run; reports Caffe's FATAL message if any.
``upgrade_net`` {net} / ``upgrade_solver`` {solver}
    Runs ``/usr/bin/upgrade_net_proto_text`` / ``upgrade_solver_proto_text``
    (``tools/upgrade_*_proto_text.cpp``) and returns the upgraded text.
"""

import json
import os
import re
import subprocess
import sys
import traceback

_FATAL = re.compile(r"^(?:[FE]\d{4} [\d:.]+\s+\d+ (\S+\] .*)|\[libprotobuf (?:ERROR|FATAL) (.*))$")


_PY_ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


def _fatal_message(text):
    """The glog FATAL/ERROR lines of ``text`` (without their time prefix), else its tail."""
    hits = [m.group(1) or m.group(2) for m in map(_FATAL.match, text.splitlines()) if m]
    if hits:
        return "\n".join(hits)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if _PY_ERROR.match(ln)]
    if errors:  # a Python exception raised by the harness: its message (may span lines)
        return "\n".join(lines[errors[-1] :])
    return "\n".join(lines[-15:])


def _blob_key(layer, index):
    return f"{layer}/{index}"


def _pointer(array):
    return array.__array_interface__["data"][0]


def _owners(net):
    """(all_blobs, owners): all_blobs lists (key, blob, owner_key) in net.params order."""
    seen = {}
    all_blobs = []
    owners = []
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            key = _blob_key(layer, i)
            ptr = _pointer(blob.data)
            owner = seen.setdefault(ptr, key)
            all_blobs.append((key, blob, owner))
            if owner == key:
                owners.append((key, blob))
    return all_blobs, owners


def _task_run(job_dir, task):
    import caffe
    import numpy as np

    caffe.set_mode_cpu()
    solver = caffe.get_solver(os.path.join(job_dir, task["solver"]))
    _, owners = _owners(solver.net)
    owner_keys = [k for k, _ in owners]
    with np.load(os.path.join(job_dir, task["init"])) as data:
        init = {k: data[k] for k in data.files}
    raw = task.get("grads_raw")  # streamed: one update's diffs at a time from a flat file
    if raw:
        grads = {}
        raw_keys = list(task["keys"])
        raw_file = open(os.path.join(job_dir, raw), "rb")
    else:
        with np.load(os.path.join(job_dir, task["grads"])) as data:
            grads = {k: data[k] for k in data.files}
    missing = [k for k in owner_keys if k not in init]
    extra = [k for k in init if k not in owner_keys]
    if missing or extra:
        raise ValueError(
            f"init keys do not match the net's learnable params "
            f"(owners {owner_keys}): missing {missing}, not owners {extra}"
        )
    for key, blob in owners:
        value = init[key]
        if tuple(value.shape) != tuple(blob.data.shape):
            raise ValueError(
                f"init {key} has shape {value.shape}, Caffe's blob is {blob.data.shape}"
            )
        blob.data[...] = value
    steps = int(task["steps"])
    if task.get("method") == "backward" and grads:
        raise ValueError("method 'backward' takes no grads (the net computes them)")
    for key in grads:
        if key not in owner_keys:
            raise ValueError(
                f"grads for {key!r}, which is not an owner blob of the net (owners {owner_keys})"
            )
        blob = dict(owners)[key]
        if tuple(grads[key].shape) != (steps,) + tuple(blob.diff.shape):
            raise ValueError(
                f"grads for {key} have shape {grads[key].shape}, "
                f"expected (steps,) + {blob.diff.shape}"
            )

    if raw:
        unknown = [k for k in raw_keys if k not in owner_keys]
        if unknown:
            raise ValueError(f"streamed grads for {unknown}, not owner blobs ({owner_keys})")
        sizes = [int(np.prod(dict(owners)[k].diff.shape)) for k in raw_keys]

    def write_diffs(step):
        if raw:
            flat = np.fromfile(raw_file, dtype=np.float32, count=sum(sizes))
            if flat.size != sum(sizes):
                raise ValueError(f"the streamed grads end before update {step}")
            ends = np.cumsum(sizes)  # Python 3.9 here: no zip(strict=)
            given = {key: flat[ends[i] - sizes[i] : ends[i]] for i, key in enumerate(raw_keys)}
            for key, blob in owners:
                if key in given:
                    blob.diff[...] = given[key].reshape(blob.diff.shape)
                else:
                    blob.diff[...] = 0
            return
        for key, blob in owners:
            if key in grads:
                blob.diff[...] = grads[key][step]
            else:
                blob.diff[...] = 0

    out_raw = task.get("out_raw")  # streamed: each update's weights appended to a flat file
    if out_raw:
        out_file = open(os.path.join(job_dir, out_raw), "wb")
        traj = None
    else:
        traj = {
            key: np.zeros((steps,) + tuple(blob.data.shape), dtype=np.float32)
            for key, blob in owners
        }
    method = task.get("method", "apply_update")
    if method == "step":
        current = [0]
        solver.add_callback(lambda: None, lambda: write_diffs(current[0]))
    for step in range(steps):
        before = solver.iter
        if method == "apply_update":
            write_diffs(step)
            solver.apply_update()
        elif method == "step":
            current[0] = step
            solver.step(1)
        elif method == "backward":  # the net computes its own gradients (needs data layers)
            solver.step(1)
        else:
            raise ValueError(f"unknown method {method!r}")
        if solver.iter != before + 1:
            raise RuntimeError(
                f"solver.iter went {before} -> {solver.iter} during update "
                f"{step} with method {method}"
            )
        for key, blob in owners:
            if traj is None:
                out_file.write(np.ascontiguousarray(blob.data, dtype=np.float32).tobytes())
            else:
                traj[key][step] = blob.data
        if task.get("snapshot_at") == step + 1:  # Solver::Snapshot, solver.cpp:420-435
            solver.snapshot()
    if traj is None:
        out_file.close()
    else:
        np.savez(os.path.join(job_dir, task["out"]), **traj)
    if raw:
        raw_file.close()
    shapes = {key: list(blob.data.shape) for key, blob in owners}
    return {"owners": owner_keys, "iter": int(solver.iter), "shapes": shapes}


def _task_params(job_dir, task):
    import caffe
    import numpy as np

    caffe.set_mode_cpu()
    net_path = os.path.join(job_dir, task["net"])
    net = caffe.Net(net_path, caffe.TRAIN)
    all_blobs, owners = _owners(net)
    rows = [
        {
            "key": key,
            "layer": key.rsplit("/", 1)[0],
            "index": int(key.rsplit("/", 1)[1]),
            "shape": [int(d) for d in blob.data.shape],
            "owner": owner,
        }
        for key, blob, owner in all_blobs
    ]
    result = {
        "blobs": rows,
        "layers": [str(n) for n in net._layer_names],
        "layer_types": [str(layer.type) for layer in net.layers],
    }
    if not task.get("probe"):
        return result
    # Probe the effective multipliers: SGD, momentum 0, base_lr 1, fixed, L2 decay 1.
    # Update 1: w=0, g=1 -> w1 = -lr_mult (decay term is 0 because w=0).
    # Update 2: w=1, g=0 -> w2 = 1 - lr_mult*decay_mult.
    probe_solver = os.path.join(job_dir, task["net"] + ".probe_solver.prototxt")
    with open(probe_solver, "w") as f:
        f.write(
            f'net: "{net_path}"\ntype: "SGD"\nbase_lr: 1\nlr_policy: "fixed"\nmomentum: 0\n'
            'weight_decay: 1\nregularization_type: "L2"\nmax_iter: 2\n'
        )
    solver = caffe.get_solver(probe_solver)
    _, owners = _owners(solver.net)
    for _, blob in owners:
        blob.data[...] = 0
        blob.diff[...] = 1
    solver.apply_update()
    lr = {}
    for key, blob in owners:
        lr[key] = float(-np.mean(blob.data)) + 0.0
        blob.data[...] = 1
        blob.diff[...] = 0
    solver.apply_update()
    mults = {}
    for key, blob in owners:
        step = float(1 - np.mean(blob.data))
        mults[key] = {"lr_mult": lr[key], "decay_mult": (step / lr[key]) if lr[key] != 0 else None}
    result["multipliers"] = mults
    return result


def _task_solver_check(job_dir, task):
    import caffe

    caffe.set_mode_cpu()
    solver = caffe.get_solver(os.path.join(job_dir, task["solver"]))
    _, owners = _owners(solver.net)
    for _, blob in owners:
        blob.diff[...] = 0
    solver.apply_update()
    return {"type": type(solver).__name__, "iter": int(solver.iter)}


def _task_upgrade_net(job_dir, task):
    return _upgrade("/usr/bin/upgrade_net_proto_text", os.path.join(job_dir, task["net"]))


def _task_upgrade_solver(job_dir, task):
    return _upgrade("/usr/bin/upgrade_solver_proto_text", os.path.join(job_dir, task["solver"]))


def _upgrade(tool, src):
    dst = src + ".upgraded.prototxt"
    proc = subprocess.run(
        [tool, src, dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode != 0 or not os.path.exists(dst):
        raise RuntimeError(
            f"{os.path.basename(tool)} failed ({proc.returncode}): {_fatal_message(proc.stdout)}"
        )
    with open(dst) as f:
        return {"text": f.read(), "log": proc.stdout}


_KINDS = {
    "run": _task_run,
    "params": _task_params,
    "solver_check": _task_solver_check,
    "upgrade_net": _task_upgrade_net,
    "upgrade_solver": _task_upgrade_solver,
}


def _child(job_dir, index, task):
    err_path = os.path.join(job_dir, f"task-{index}.err")
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        result = _KINDS[task["kind"]](job_dir, task)
        with open(os.path.join(job_dir, f"task-{index}.json"), "w") as f:
            json.dump(result, f)
        code = 0
    except BaseException:  # report everything, the parent decides
        traceback.print_exc()
        code = 3
    sys.stderr.flush()
    os._exit(code)


def main(job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    tasks = job["tasks"]
    workers = max(1, int(job.get("workers", 1)))
    import caffe  # noqa: F401  (import once in the parent; children inherit it)

    results = [None] * len(tasks)
    running = {}
    pending = list(range(len(tasks)))
    while pending or running:
        while pending and len(running) < workers:
            index = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job_dir, index, tasks[index])
            running[pid] = index
        pid, status = os.wait()
        index = running.pop(pid)
        err_path = os.path.join(job_dir, f"task-{index}.err")
        with open(err_path, errors="replace") as f:
            err = f.read()
        res_path = os.path.join(job_dir, f"task-{index}.json")
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and os.path.exists(res_path):
            with open(res_path) as f:
                results[index] = {"ok": True, "result": json.load(f), "stderr": err[-4000:]}
        else:
            how = (
                f"exit status {os.WEXITSTATUS(status)}"
                if os.WIFEXITED(status)
                else f"signal {os.WTERMSIG(status)}"
            )
            results[index] = {
                "ok": False,
                "how": how,
                "message": _fatal_message(err),
                "stderr": err[-8000:],
            }
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main(sys.argv[1])
