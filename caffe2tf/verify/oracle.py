"""The real Caffe 1.0 as oracle: a Debian bullseye root with ``python3-caffe`` run under chroot.

Host side only (standard library + numpy; never TensorFlow). The root is built once by
``scripts/build_caffe_root.sh`` (debootstrap, cached outside the repository, default
``/var/cache/caffe2tf/bullseye-root``, overridable with ``CAFFE2TF_CAFFE_ROOT``). Work is handed
to :mod:`caffe2tf.verify._caffe_harness`, which runs inside the root under its python3.9 and
numpy 1.19; many cases go to ONE chroot process (each case in a forked child, so a Caffe CHECK
failure fails that case alone, with Caffe's own message).

Conventions (same as ``caffe2tf replay``): a blob is named ``"{layer}/{blob_index}"`` and holds
Caffe's layout (InnerProduct weight ``(out, in)``); ``grads[k]`` is what Caffe's diff holds when
update k starts, i.e. the raw sum over the ``iter_size`` passes (``solver.cpp:229-267``,
``sgd_solver.cpp:108-127``); results are the weights after updates 1..N, float32. Only the
*owners* of shared params appear (``net.cpp:459-514``: a sharer aliases its owner's data and
diff).

Caffe build used: Debian ``caffe 1.0.0+git20180821.99bd997`` (CPU, ``Solver<float>``), whose
``Solver.apply_update`` increments ``iter_`` (checked by the harness at every step).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ROOT = Path("/var/cache/caffe2tf/bullseye-root")
ROOT_ENV = "CAFFE2TF_CAFFE_ROOT"
_CAFFE_PKG = Path("usr/lib/python3/dist-packages/caffe/__init__.py")
_REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = _REPO / "scripts" / "build_caffe_root.sh"
_HARNESS = Path(__file__).with_name("_caffe_harness.py")


class OracleError(RuntimeError):
    """The real Caffe could not be run, or it rejected/crashed on a case (message = its stderr)."""


class CaffeRootMissing(OracleError):
    """No usable Caffe root, and building one failed or was not possible."""


@dataclass(frozen=True)
class OracleCase:
    """One trajectory to run through the real solver.

    ``init`` maps every owner blob key ``"{layer}/{i}"`` to its initial value (Caffe layout);
    ``grads[k]`` maps owner keys to the diff at update k (missing key = zero diff). The number
    of updates is ``len(grads)``. ``solver_text`` must not rely on its own ``net``/``train_net``
    (they are replaced by ``net_text``); a solver with an inline ``net_param`` /
    ``train_net_param`` runs as written, on that net (``net_text`` is then not used).
    """

    name: str
    solver_text: str
    net_text: str
    init: Mapping[str, np.ndarray]
    grads: Sequence[Mapping[str, np.ndarray]] = field(default=())
    method: str | None = None  # overrides run_cases(method=...) for this case


@dataclass(frozen=True)
class SolverVerdict:
    """Caffe's own verdict on a solver: ``ok`` or the FATAL message (e.g. ``Check failed``)."""

    ok: bool
    message: str = ""
    solver_class: str = ""


# ------------------------------------------------------------------------------------ the root


def privileged(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``cmd`` run with ``env`` as its whole environment, as root: directly when we are root,
    else through ``sudo -n`` (CI runners have password-less sudo; chroot and debootstrap need
    root). Without root or sudo the command is returned as is and fails with its own message.
    """
    full = ["env", "-i", *(f"{k}={v}" for k, v in (env or {}).items()), *cmd]
    if os.geteuid() != 0 and shutil.which("sudo"):
        return ["sudo", "-n", *full]
    return full


def caffe_root() -> Path | None:
    """The Caffe root to use (``$CAFFE2TF_CAFFE_ROOT`` or the default), or None if it does not
    contain the caffe python package."""
    root = Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    return root if (root / _CAFFE_PKG).is_file() else None


def ensure_caffe_root() -> Path:
    """Return the Caffe root, building it with ``scripts/build_caffe_root.sh`` when absent.

    Raises :class:`CaffeRootMissing` with the script's output when it cannot be built.
    """
    root = caffe_root()
    if root is not None:
        return root
    target = Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    if not BUILD_SCRIPT.is_file():
        raise CaffeRootMissing(f"no Caffe root at {target} and no build script at {BUILD_SCRIPT}")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(
        {
            k: v
            for k, v in os.environ.items()
            if k in ("CAFFE2TF_DEBIAN_MIRROR", "TMPDIR", "http_proxy", "https_proxy")
        }
    )
    proc = subprocess.run(
        privileged(["bash", str(BUILD_SCRIPT), str(target)], env),
        capture_output=True,
        text=True,
        check=False,
    )
    root = caffe_root()
    if proc.returncode != 0 or root is None:
        raise CaffeRootMissing(
            f"could not build the Caffe root at {target} with {BUILD_SCRIPT} "
            f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return root


def caffe_package_version(root: Path | None = None) -> str:
    """The Debian version of the ``caffe``/``libcaffe1``/``python3-caffe`` package in the root."""
    root = Path(root) if root is not None else _require_root(None)
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    versions = {}
    for block in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", block, re.M)
        ver = re.search(r"^Version: (\S+)$", block, re.M)
        if name and ver and name.group(1) in ("python3-caffe", "libcaffe1", "caffe"):
            versions[name.group(1)] = ver.group(1)
    for pkg in ("python3-caffe", "libcaffe1", "caffe"):
        if pkg in versions:
            return f"{pkg} {versions[pkg]}"
    raise OracleError(f"no caffe package recorded in {root}/var/lib/dpkg/status")


def _require_root(root: Path | str | None) -> Path:
    if root is not None:
        root = Path(root)
        if not (root / _CAFFE_PKG).is_file():
            raise CaffeRootMissing(f"{root} has no caffe python package ({_CAFFE_PKG})")
        return root
    found = caffe_root()
    if found is None:
        raise CaffeRootMissing(
            f"no Caffe root at {os.environ.get(ROOT_ENV) or DEFAULT_ROOT}; build it with "
            f"{BUILD_SCRIPT} (or call ensure_caffe_root())"
        )
    return found


# ------------------------------------------------------------------------------- batch runner

_NET_FIELD = re.compile(r"""^\s*(net|train_net)\s*:\s*("[^"]*"|'[^']*')\s*(#.*)?$""")
_INLINE_NET = re.compile(r"^\s*(net_param|train_net_param)\s*[:{]", re.M)


def has_inline_net(text: str) -> bool:
    """Whether a solver text carries its train net inline (``net_param``/``train_net_param``)."""
    return _INLINE_NET.search(text) is not None


def retarget_solver_text(text: str, net_path: str) -> str:
    """The solver text with its ``net``/``train_net`` lines removed and ``net: net_path`` added.

    Raises ValueError for inline ``net_param``/``train_net_param`` (there the net is part of
    the solver; give it separately instead).
    """
    if _INLINE_NET.search(text):
        raise ValueError(
            "solver has an inline net_param/train_net_param; pass the net as "
            "net_text and remove it from the solver"
        )
    kept = [line for line in text.splitlines() if not _NET_FIELD.match(line)]
    return "\n".join(kept) + f'\nnet: "{net_path}"\n'


class _Job:
    """A temporary job folder inside the root (``ROOT/tmp/caffe2tf-XXXX``), removed afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(exist_ok=True)
        self.host_dir = Path(tempfile.mkdtemp(prefix="caffe2tf-", dir=root / "tmp"))
        self.chroot_dir = "/" + str(self.host_dir.relative_to(root))
        self.tasks: list[dict] = []

    def write_text(self, name: str, text: str) -> str:
        (self.host_dir / name).write_text(text)
        return name

    def write_npz(self, name: str, arrays: Mapping[str, np.ndarray]) -> str:
        with open(self.host_dir / name, "wb") as f:
            np.savez(f, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        return name

    def chroot_path(self, name: str) -> str:
        return f"{self.chroot_dir}/{name}"

    def run(self, workers: int | None = None, timeout: float | None = None) -> list[dict]:
        shutil.copyfile(_HARNESS, self.host_dir / "_caffe_harness.py")
        workers = workers or min(len(self.tasks), os.cpu_count() or 1) or 1
        (self.host_dir / "job.json").write_text(
            json.dumps({"tasks": self.tasks, "workers": workers})
        )
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "GLOG_minloglevel": "1",
            "GLOG_logtostderr": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        cmd = privileged(
            [
                "chroot",
                str(self.root),
                "/usr/bin/python3",
                self.chroot_path("_caffe_harness.py"),
                self.chroot_dir,
            ],
            env,
        )
        timeout = (
            timeout
            if timeout is not None
            else float(os.environ.get("CAFFE2TF_ORACLE_TIMEOUT", "900"))
        )
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise OracleError(
                f"the Caffe harness did not finish within {timeout:g} s ({len(self.tasks)} tasks)"
            ) from err
        except OSError as err:
            raise OracleError(f"could not start {' '.join(cmd)}: {err}") from err
        result_path = self.host_dir / "result.json"
        if proc.returncode != 0 or not result_path.exists():
            hint = (
                " (chroot needs root: run as root or with password-less sudo)"
                if os.geteuid() != 0
                else ""
            )
            raise OracleError(
                f"the Caffe harness failed{hint} (exit {proc.returncode}):\n"
                f"{proc.stderr[-6000:]}{proc.stdout[-2000:]}"
            )
        return json.loads(result_path.read_text())["results"]

    def close(self) -> None:
        shutil.rmtree(self.host_dir, ignore_errors=True)

    def __enter__(self) -> _Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _task_error(what: str, res: dict) -> OracleError:
    return OracleError(
        f"real Caffe failed on {what} ({res.get('how')}):\n{res.get('message')}"
        f"\n--- stderr tail ---\n{res.get('stderr', '')[-3000:]}"
    )


def _stack_grads(case: OracleCase) -> dict[str, np.ndarray]:
    """owner key -> (steps, *shape) float32; a key missing at some step is zero there."""
    keys = sorted({key for g in case.grads for key in g})
    stacked = {}
    for key in keys:
        shape = next(np.shape(g[key]) for g in case.grads if key in g)
        arr = np.zeros((len(case.grads), *shape), dtype=np.float32)
        for k, g in enumerate(case.grads):
            if key in g:
                arr[k] = g[key]
        stacked[key] = arr
    return stacked


def _case_files(job: _Job, i: int, case: OracleCase) -> dict[str, str]:
    """A ``run`` task's solver, net and initial weights, written into the job folder."""
    net = job.write_text(f"c{i}.net.prototxt", case.net_text)
    # An inline net is the one Caffe trains, used as written (solver.cpp:86-105): the solver
    # text then goes in unchanged and ``net_text`` is not read.
    solver = job.write_text(
        f"c{i}.solver.prototxt",
        case.solver_text
        if has_inline_net(case.solver_text)
        else retarget_solver_text(case.solver_text, job.chroot_path(net)),
    )
    init = job.write_npz(f"c{i}.init.npz", case.init)
    return {"kind": "run", "solver": solver, "net": net, "init": init}


def run_streamed(
    case: OracleCase,
    grads: Iterable[Mapping[str, np.ndarray]],
    steps: int,
    *,
    root: Path | str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`run_cases` for one case (``method="apply_update"``) whose gradients come one
    update at a time from ``grads`` (``case.grads`` is not read) and whose weights are read
    back one update at a time: the weights after update 1, 2, ... ``steps``. Memory stays
    flat in ``steps``: the diffs go to a flat float32 file in the job folder as they are made,
    the harness reads one update's diffs at a time and appends each update's weights to
    another file, which is read back update by update (disk: twice ``steps`` times the
    weights). Keys are ``case.init``'s; a key a gradient lacks is zero. The job folder goes
    when the iterator is exhausted or closed."""
    root = _require_root(root)
    keys = sorted(case.init)
    shapes = {k: tuple(np.shape(case.init[k])) for k in keys}
    job = _Job(root)
    try:
        with open(job.host_dir / "c0.grads.f32", "wb") as f:
            made = 0
            for g in grads:
                if made == steps:
                    break
                for key in keys:
                    value = g.get(key)
                    value = np.zeros(shapes[key], np.float32) if value is None else value
                    f.write(np.ascontiguousarray(value, dtype=np.float32).tobytes())
                made += 1
        if made != steps:
            raise ValueError(f"{steps} updates asked for, the gradients gave {made}")
        task = {**_case_files(job, 0, case), "grads_raw": "c0.grads.f32", "keys": keys}
        job.tasks.append(
            {**task, "steps": steps, "method": "apply_update", "out_raw": "c0.out.f32"}
        )
        (res,) = job.run(1)
        if not res["ok"]:
            raise _task_error(f"case {case.name!r}", res)
        (job.host_dir / "c0.grads.f32").unlink()
        owners = res["result"]["owners"]
        out_shapes = {k: tuple(res["result"]["shapes"][k]) for k in owners}
        sizes = [int(np.prod(out_shapes[k], dtype=np.int64)) for k in owners]
    except BaseException:
        job.close()
        raise
    return _read_streamed(job, owners, out_shapes, sizes, steps)


def _read_streamed(
    job: _Job, owners: list[str], shapes: Mapping[str, tuple[int, ...]], sizes: list[int],
    steps: int,
) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    try:
        with open(job.host_dir / "c0.out.f32", "rb") as f:
            for _ in range(steps):
                flat = np.fromfile(f, dtype=np.float32, count=sum(sizes))
                out, offset = {}, 0
                for key, size in zip(owners, sizes, strict=True):
                    out[key] = flat[offset : offset + size].reshape(shapes[key])
                    offset += size
                yield out
    finally:
        job.close()


def run_cases(
    cases: Sequence[OracleCase],
    *,
    root: Path | str | None = None,
    method: str = "apply_update",
    workers: int | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run every case through the real Caffe solver in ONE chroot process.

    For each case: the harness builds ``caffe.get_solver`` on the case's solver (pointed at its
    net), writes ``init`` into the owner blobs, and for k = 0..N-1 writes ``grads[k]`` into the
    diffs and applies one update (``method="apply_update"``: ``Solver::ApplyUpdate``;
    ``"step"``: overwrite the diffs in ``on_gradients_ready`` during ``step(1)``;
    ``"backward"``: plain ``step(1)``, the net's own forward/backward makes the gradients —
    then ``grads`` must hold N empty dicts, which only set the number of updates).
    Returns ``{case.name: [weights after update 1, ..., after update N]}``, float32.
    Raises :class:`OracleError` with Caffe's message if any case fails.
    """
    root = _require_root(root)
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique")
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    if not cases:
        return out
    with _Job(root) as job:
        for i, case in enumerate(cases):
            grads = job.write_npz(f"c{i}.grads.npz", _stack_grads(case))
            job.tasks.append(
                {
                    **_case_files(job, i, case),
                    "grads": grads,
                    "steps": len(case.grads),
                    "method": case.method or method,
                    "out": f"c{i}.out.npz",
                }
            )
        results = job.run(workers)
        errors = [
            _task_error(f"case {case.name!r}", res)
            for case, res in zip(cases, results, strict=True)
            if not res["ok"]
        ]
        if errors:
            raise OracleError("\n\n".join(str(e) for e in errors))
        for i, (case, res) in enumerate(zip(cases, results, strict=True)):
            owners = res["result"]["owners"]
            with np.load(job.host_dir / f"c{i}.out.npz") as data:
                traj = {key: data[key] for key in owners}
            out[case.name] = [{key: traj[key][k] for key in owners} for k in range(len(case.grads))]
    return out


# ------------------------------------------------------------ a train net the binary can build


def needs_input_layers(net: Any) -> bool:
    """Whether a :class:`caffe2tf.caffe.model.NetSpec` has data layers Caffe cannot build here
    (it opens a Data layer's database, an ImageData layer's list, a Python layer's module when
    it builds them), or data shapes other than what its layers declare."""
    return any(f.type not in ("Input", "DummyData", "MemoryData") for f in net.feeds) or any(
        n.code in ("net.shape_assumed",) for n in net.notes
    )


def caffe_ready_net(net: Any, solver_message: Any | None = None) -> str:
    """The text of the TRAIN-phase net the real Caffe can build without the data: the layers
    the train state keeps (``Net::FilterNet``, ``net.cpp:260-353``), in order, their
    include/exclude rules dropped, and each layer that feeds the net an ``Input`` layer of the
    shapes caffe2tf inferred or assumed for its tops (``net.feeds``). A solver update
    (``ApplyUpdate``) never runs the forward pass, so the data themselves are not needed;
    the learnable blobs, their order and multipliers are the net's own."""
    from google.protobuf import text_format

    from caffe2tf.caffe import net as caffe_net
    from caffe2tf.caffe import shapes as shp

    message = net.message
    state = None
    if solver_message is not None and solver_message.HasField("train_state"):
        state = solver_message.train_state
    kept = caffe_net.filter_layers(
        message, caffe_net.train_state(message, state), getattr(net, "path", "<net>")
    )
    out = type(message)()
    out.CopyFrom(message)
    out.ClearField("layer")
    out.ClearField("state")
    feeds = list(net.feeds)
    for i in kept:
        layer = message.layer[i]
        if shp.feeds_the_net(layer):
            feed = feeds.pop(0) if feeds and feeds[0].layer == layer.name else None
            if feed is None or any(s is None for s in feed.shapes):
                raise OracleError(
                    f"the shapes of data layer {layer.name!r} are unknown: give "
                    "--input-shape TOP=N,C,H,W for its tops"
                )
            new = out.layer.add(name=layer.name, type="Input")
            new.top.extend(layer.top)
            for shape in feed.shapes:
                new.input_param.shape.add().dim.extend(int(d) for d in shape)
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        copy.ClearField("exclude")
    return text_format.MessageToString(out)


#: SolverParameter fields that name or build other nets, or write files; none changes an update
_SOLVER_FIELDS_DROPPED = (
    "net",
    "net_param",
    "train_net",
    "train_net_param",
    "test_net",
    "test_net_param",
    "test_state",
    "test_iter",
    "test_interval",
    "test_compute_loss",
    "test_initialization",
    "snapshot",
    "snapshot_prefix",
    "snapshot_diff",
    "snapshot_after_train",
    "train_state",
)


def caffe_ready_solver(solver_message: Any) -> str:
    """The text of a parsed (upgraded) solver without the fields that name nets, build test
    nets or write snapshots (:data:`_SOLVER_FIELDS_DROPPED`): the oracle points it at the net
    of :func:`caffe_ready_net`, whose layers are already those of the train state."""
    from google.protobuf import text_format

    out = type(solver_message)()
    out.CopyFrom(solver_message)
    names = {f.name for f in out.DESCRIPTOR.fields}
    for name in _SOLVER_FIELDS_DROPPED:
        if name in names:
            out.ClearField(name)
    return text_format.MessageToString(out)


# ------------------------------------------------------------------------ nets, upgrade, solver


@dataclass(frozen=True)
class CaffeBlob:
    """One entry of pycaffe's ``net.params`` (layer order, sharers included)."""

    layer: str
    index: int
    shape: tuple[int, ...]
    owner: str  # key of the owner blob; == key for an owner
    lr_mult: float | None = None  # measured (probe); None when not probed
    decay_mult: float | None = None  # measured; None when not probed or lr_mult == 0

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.index}"


def caffe_param_tables(
    net_texts: Sequence[str], *, probe: bool = True, root: Path | str | None = None
) -> list[list[CaffeBlob] | OracleError]:
    """For each net text, what Caffe builds in TRAIN phase: every blob of ``net.params`` with
    its shape and owner, and (``probe``) each owner's effective lr_mult/decay_mult measured by
    two SGD updates with base_lr 1 (``w=0,g=1 -> -lr_mult``; ``w=1,g=0,λ=1 -> 1-lr·decay``).

    One chroot process for all; a net Caffe rejects yields an :class:`OracleError` in its slot.
    """
    root = _require_root(root)
    tables: list[list[CaffeBlob] | OracleError] = []
    with _Job(root) as job:
        for i, text in enumerate(net_texts):
            job.tasks.append(
                {"kind": "params", "net": job.write_text(f"n{i}.prototxt", text), "probe": probe}
            )
        results = job.run() if job.tasks else []
    for i, res in enumerate(results):
        if not res["ok"]:
            tables.append(_task_error(f"net #{i}", res))
            continue
        mults = res["result"].get("multipliers", {})
        rows = []
        for row in res["result"]["blobs"]:
            m = mults.get(row["owner"], {}) if row["owner"] == row["key"] else {}
            rows.append(
                CaffeBlob(
                    row["layer"],
                    row["index"],
                    tuple(row["shape"]),
                    row["owner"],
                    m.get("lr_mult"),
                    m.get("decay_mult"),
                )
            )
        tables.append(rows)
    return tables


def caffe_net_blobs(
    net_text: str, *, root: Path | str | None = None
) -> list[tuple[str, int, tuple[int, ...]]]:
    """``[(layer, blob_index, shape)]`` of ``net.params`` as Caffe builds the net in TRAIN
    phase (layer order, sharers included). Raises :class:`OracleError` if Caffe rejects it."""
    (table,) = caffe_param_tables([net_text], probe=False, root=root)
    if isinstance(table, OracleError):
        raise table
    return [(b.layer, b.index, b.shape) for b in table]


def caffe_upgrade_net_texts(
    texts: Sequence[str], *, root: Path | str | None = None
) -> list[str | OracleError]:
    """Each net text after Caffe's own upgrade (``/usr/bin/upgrade_net_proto_text`` in the root:
    V0 -> V1 -> V2, ``upgrade_proto.cpp``); an :class:`OracleError` in the slot of a failure."""
    root = _require_root(root)
    with _Job(root) as job:
        for i, text in enumerate(texts):
            job.tasks.append({"kind": "upgrade_net", "net": job.write_text(f"u{i}.prototxt", text)})
        results = job.run() if job.tasks else []
    return [
        res["result"]["text"] if res["ok"] else _task_error(f"net #{i}", res)
        for i, res in enumerate(results)
    ]


def caffe_upgrade_solver_texts(
    texts: Sequence[str], *, root: Path | str | None = None
) -> list[str | OracleError]:
    """Each solver text after Caffe's own upgrade (``/usr/bin/upgrade_solver_proto_text``:
    ``solver_type`` enum -> ``type`` string, ``upgrade_proto.cpp:1034-1098``); an
    :class:`OracleError` in the slot of a failure (e.g. both fields set)."""
    root = _require_root(root)
    with _Job(root) as job:
        for i, text in enumerate(texts):
            job.tasks.append(
                {"kind": "upgrade_solver", "solver": job.write_text(f"s{i}.prototxt", text)}
            )
        results = job.run() if job.tasks else []
    return [
        res["result"]["text"] if res["ok"] else _task_error(f"solver #{i}", res)
        for i, res in enumerate(results)
    ]


def caffe_upgrade_net_text(text: str, *, root: Path | str | None = None) -> str:
    """One net text after Caffe's own upgrade. Raises :class:`OracleError` on failure."""
    (res,) = caffe_upgrade_net_texts([text], root=root)
    if isinstance(res, OracleError):
        raise res
    return res


_PROBE_NET = """name: "probe"
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
"""


def caffe_read_solvers(
    texts: Sequence[str], *, net_text: str | None = None, root: Path | str | None = None
) -> list[SolverVerdict]:
    """Caffe's own validity verdict on each solver text.

    Each solver is read with ``caffe.get_solver`` (text parse, ``solver_type`` upgrade,
    constructor CHECKs such as momentum == 0 for AdaGrad/RMSProp) and one update is applied
    with zero diffs (``GetLearningRate`` CHECKs on gamma/stepsize, unknown lr_policy,
    ``Regularize``'s unknown regularization_type when weight_decay != 0). Solvers with their own
    ``net``/``train_net`` are pointed at ``net_text`` (default: one Parameter layer); a solver
    with an inline ``net_param``/``train_net_param`` is used as is.
    """
    root = _require_root(root)
    with _Job(root) as job:
        net = job.write_text("net.prototxt", net_text if net_text is not None else _PROBE_NET)
        for i, text in enumerate(texts):
            try:
                body = retarget_solver_text(text, job.chroot_path(net))
            except ValueError:
                body = text
            job.tasks.append(
                {"kind": "solver_check", "solver": job.write_text(f"s{i}.prototxt", body)}
            )
        results = job.run() if job.tasks else []
    return [
        SolverVerdict(True, "", res["result"]["type"])
        if res["ok"]
        else SolverVerdict(False, res.get("message", ""))
        for res in results
    ]


def caffe_read_solver(
    text: str, *, net_text: str | None = None, root: Path | str | None = None
) -> SolverVerdict:
    """Caffe's verdict on one solver text (see :func:`caffe_read_solvers`)."""
    return caffe_read_solvers([text], net_text=net_text, root=root)[0]
