"""The Python API: what the CLI does, as calls a notebook can make.

>>> import caffe2tf
>>> conv = caffe2tf.convert("solver.prototxt")            # read, lower, plan (no TensorFlow yet)
>>> conv.exact, [n.message for n in conv.notes]
>>> conv.write("out/lenet")                                # train_config.yaml + optimizer.py
>>> conv.prepare_model(model)                              # regularizers, frozen blobs
>>> model.compile(optimizer=conv.build_optimizer(), loss=...)
>>> report = caffe2tf.verify("solver.prototxt", module="out/lenet/optimizer.py")
>>> report.passed, report.component_verdicts()

Importing this module imports no framework; ``build_optimizer``/``prepare_model`` and
``verify`` import Keras when called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffe2tf.notes import Exactness, Note

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Conversion:
    """A converted recipe: the target's ``plan`` (data), every note, and the files that
    ``convert`` would write (``files``: name -> text). ``blocking`` holds the notes that make
    ``convert`` refuse (an unsupported item, or an approximation without ``allow_approx``)."""

    target: str
    plan: Any
    notes: tuple[Note, ...]
    files: dict[str, str] = field(repr=False)
    blocking: tuple[Note, ...] = ()

    @property
    def exact(self) -> bool:
        """No note says the translation is approximate or unsupported."""
        return not any(n.exactness in (Exactness.APPROX, Exactness.UNSUPPORTED) for n in self.notes)

    def write(self, out_dir: PathLike, *, force: bool = False) -> list[Path]:
        """Write the files into ``out_dir`` as ``caffe2tf convert -o`` does (atomically; an
        existing folder only with ``force``). Refuses when ``blocking`` is not empty."""
        from caffe2tf.app.convert import check_out_dir, write_outputs
        from caffe2tf.errors import InputError

        if self.blocking:
            raise InputError(
                "the translation is not exact: "
                + "; ".join(n.message for n in self.blocking)
                + " (convert(..., allow_approx=True) to accept approximations)"
            )
        check_out_dir(out_dir, force=force)
        write_outputs(self.files, Path(out_dir), force=force)
        return [Path(out_dir) / name for name in self.files]

    def build_optimizer(self) -> Any:
        """The live Keras optimizer (the same object the emitted ``build_optimizer()`` makes);
        Keras target only."""
        self._keras_only("build_optimizer")
        from caffe2tf.targets.keras.build import build_optimizer

        return build_optimizer(self.plan)

    def prepare_model(self, model: Any) -> dict[str, str]:
        """Bind Caffe's per-blob settings to ``model`` (as the emitted ``prepare_model``)."""
        self._keras_only("prepare_model")
        from caffe2tf.targets.keras.build import prepare_model

        return prepare_model(model, self.plan)

    def _keras_only(self, what: str) -> None:
        if self.target != "keras":
            raise ValueError(
                f"{what}() builds Keras objects; for --target {self.target} write the module "
                "and import it"
            )


def convert(
    solver: PathLike,
    net: PathLike | None = None,
    *,
    lenient: bool = False,
    layer_map: PathLike | Mapping[str, str] | None = None,
    target: str = "keras",
    allow_approx: bool = False,
    params: PathLike | None = None,
) -> Conversion:
    """Read ``solver`` (and its train net, or ``net``), lower it and plan ``target``; nothing
    is written (see :meth:`Conversion.write`). Invalid input raises
    :class:`caffe2tf.errors.InputError` with the file, line and column. ``params``: a
    cuda-convnet layer parameter file, ``solver`` then being its layers.cfg
    (docs/cuda-convnet.md)."""
    from caffe2tf.app.convert import blocking_notes, load_layer_map
    from caffe2tf.app.pipeline import load_pipeline
    from caffe2tf.app.targets import get_target

    chosen = get_target(target)
    mapping = dict(layer_map) if isinstance(layer_map, Mapping) else load_layer_map(layer_map)
    pipeline = load_pipeline(solver, net_path=net, lenient=lenient, params_path=params)
    plan, notes = chosen.plan(pipeline, mapping)
    return Conversion(
        target=target,
        plan=plan,
        notes=notes,
        files=chosen.render(plan),
        blocking=blocking_notes(notes, allow_approx),
    )


def verify(
    solver: PathLike,
    net: PathLike | None = None,
    *,
    module: PathLike | None = None,
    steps: int = 100,
    seed: int = 0,
    tolerance: float = 1e-3,
    against: str = "reference",
    plot: PathLike | None = None,
    lenient: bool = False,
) -> Any:
    """``caffe2tf verify`` as a call: the :class:`caffe2tf.app.verify.VerifyReport` (``passed``,
    ``component_verdicts()``, ``render()``, ``to_dict()``). ``module`` defaults to what
    ``convert`` writes for ``solver``."""
    from caffe2tf.app.verify import verify_solver

    return verify_solver(
        Path(solver),
        net_path=Path(net) if net is not None else None,
        lenient=lenient,
        module_path=Path(module) if module is not None else None,
        steps=steps,
        seed=seed,
        tolerance=tolerance,
        against=against,
        plot_path=Path(plot) if plot is not None else None,
    )


def import_caffe_snapshot(
    solver: PathLike,
    model: Any,
    optimizer: Any,
    caffemodel: PathLike,
    solverstate: PathLike,
    *,
    net: PathLike | None = None,
    layer_map: Mapping[str, str] | None = None,
) -> int:
    """Continue a Caffe run in Keras: load Caffe's ``.caffemodel`` + ``.solverstate`` into a
    model prepared by the emitted ``prepare_model`` and the optimizer its ``build_optimizer()``
    made (weights, solver history, step counters); returns Caffe's ``iter``. See
    :mod:`caffe2tf.app.resume`."""
    from caffe2tf.app.resume import import_caffe_snapshot as load

    return load(solver, model, optimizer, caffemodel, solverstate, net=net, layer_map=layer_map)


__all__ = ["Conversion", "convert", "import_caffe_snapshot", "verify"]
