"""The ``caffe2tf`` command line. Thin by design: parse flags, call the library, print the
report, map it to an exit code. Any :class:`~caffe2tf.errors.Caffe2TfError` becomes one line
``file:line:col: error: message`` on stderr and exit code 2 (no traceback).

Heavy modules (TensorFlow above all) are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from caffe2tf._quiet import use_compile_cache
from caffe2tf.app.report import EXIT_INVALID, EXIT_OK
from caffe2tf.errors import Caffe2TfError, SourceLocation


def _user_errors_exit_2(command: Callable[..., int | None]) -> Callable[..., None]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = command(*args, **kwargs)
        except Caffe2TfError as err:
            click.echo(
                f"{err.location}: error: {err.message}"
                if err.location
                else f"caffe2tf: error: {err.message}",
                err=True,
            )
            sys.exit(EXIT_INVALID)
        except RecursionError:  # the readers bound nesting; this is the last resort
            main_input = kwargs.get("solver") or kwargs.get("file")
            where = SourceLocation(str(main_input)) if main_input is not None else "caffe2tf"
            click.echo(f"{where}: error: input is nested too deeply to read", err=True)
            sys.exit(EXIT_INVALID)
        sys.exit(code or EXIT_OK)

    return wrapper


# Input paths are checked by the readers, not by click: a directory, a missing file or a net
# given as the solver must be one ``file: error: ...`` line (exit 2), not click's usage block.
_existing_file = click.Path(exists=False, dir_okay=True, path_type=Path)

net_option = click.option(
    "--net",
    "net_path",
    type=_existing_file,
    default=None,
    help="Train net prototxt (overrides the solver's net/train_net).",
)
params_option = click.option(
    "--params",
    "params_path",
    type=_existing_file,
    default=None,
    help="cuda-convnet layer parameter file (layer-params.cfg); the first argument is then "
    "its layer definition file (layers.cfg). docs/cuda-convnet.md.",
)
lenient_option = click.option(
    "--lenient",
    is_flag=True,
    default=False,
    help="Read fork dialects: skip unknown fields/messages and list "
    "each skipped item (and whether it can change training).",
)


def trajectory_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--steps/--seed/--tolerance/--against, shared by ``verify`` and ``check``."""
    for option in reversed(
        (
            click.option(
                "--steps",
                type=int,
                default=100,
                show_default=True,
                help="Caffe updates in the stream run (a schedule window runs at most 100).",
            ),
            click.option(
                "--seed",
                type=int,
                default=0,
                show_default=True,
                help="Seed of the initial weights and gradient streams.",
            ),
            click.option(
                "--tolerance",
                type=float,
                default=1e-3,
                show_default=True,
                help="Largest deviation accepted (max|dw| / distance travelled).",
            ),
            click.option(
                "--against",
                type=click.Choice(["reference", "caffe"]),
                default="reference",
                show_default=True,
                help="Reference executor, or the real Caffe 1.0 binary.",
            ),
        )
    ):
        command = option(command)
    return command


#: the values of ``convert --target`` (the keys of ``caffe2tf.app.targets.TARGETS``, which is
#: not imported here to keep ``--help`` fast; a test checks that they agree)
TARGET_NAMES = ("keras", "torch", "optax", "tf-compat-v1")

target_option = click.option(
    "--target",
    type=click.Choice(TARGET_NAMES),
    default="keras",
    show_default=True,
    help="Framework: keras (train_config.yaml, optimizer.py), torch (optimizer_torch.py), "
    "optax (optimizer_optax.py) or tf-compat-v1 (train_op_v1.py).",
)

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="TOP=N,C,H,W",
    help="The shape of a data top of the train net (repeatable); default: what the net says, "
    "else the conventional 3x224x224 images (a note names each assumed dimension).",
)


def layer_map_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--layer-map YAML``, Caffe layer names to Keras ones; ``help_text`` says what the
    command reads it for."""
    return click.option(
        "--layer-map", "layer_map", type=_existing_file, default=None, help=help_text
    )


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="caffe2tf")
def cli() -> None:
    """Move Caffe solvers to Keras 3 without changing what the training does, and prove it."""


@cli.command()
@click.argument("file", type=_existing_file)
@net_option
@lenient_option
@format_option
@_user_errors_exit_2
def inspect(file: Path, net_path: Path | None, lenient: bool, fmt: str) -> int:
    """Show a solver's effective fields (defaults marked) and the train net's param table.

    FILE may be a solver or a net prototxt (decided by content).
    """
    from caffe2tf.app.inspect import inspect_file

    report = inspect_file(file, net_path=net_path, lenient=lenient)
    click.echo(report.render(fmt))
    return report.exit_code


@cli.command()
@click.argument("solver", type=_existing_file)
@net_option
@lenient_option
@params_option
@format_option
@_user_errors_exit_2
def explain(
    solver: Path, net_path: Path | None, lenient: bool, fmt: str, params_path: Path | None = None
) -> int:
    """Explain Caffe's update rule for SOLVER step by step, with the numbers filled in
    (or a cuda-convnet LAYERS.cfg's with --params)."""
    from caffe2tf.app.explain import explain_recipe
    from caffe2tf.app.report import TextReport

    report = TextReport(
        explain_recipe(solver, net_path=net_path, lenient=lenient, fmt=fmt, params_path=params_path)
    )
    click.echo(report.render(fmt))
    return report.exit_code


@cli.command()
@click.argument("solver", type=_existing_file)
@net_option
@lenient_option
@click.option(
    "--init",
    "init_path",
    type=_existing_file,
    required=True,
    help='Initial weights (.npz, keys "{layer}/{blob}").',
)
@click.option(
    "--grads",
    "grads_path",
    type=_existing_file,
    required=True,
    help='Gradients (.npz, keys "{step}/{layer}/{blob}", the iter_size sum).',
)
@click.option(
    "-o",
    "--output",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help='Weights after each update (.npz, keys "{step}/{layer}/{blob}").',
)
@click.option(
    "--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True
)
@click.option("--force", is_flag=True, default=False, help="Replace an existing OUT.npz.")
@_user_errors_exit_2
def replay(
    solver: Path,
    net_path: Path | None,
    lenient: bool,
    init_path: Path,
    grads_path: Path,
    out_path: Path,
    precision: str,
    force: bool,
) -> int:
    """Run Caffe's update rule on recorded gradients and write the weight trajectory."""
    from caffe2tf.app.replay import replay_files
    from caffe2tf.app.report import TextReport

    report = TextReport(
        replay_files(
            solver,
            net_path=net_path,
            lenient=lenient,
            init_path=init_path,
            grads_path=grads_path,
            out_path=out_path,
            precision=precision,
            force=force,
        )
    )
    click.echo(report.render())
    return report.exit_code


@cli.command()
@click.argument("solver", type=_existing_file)
@net_option
@lenient_option
@layer_map_option("YAML mapping Caffe layer names to Keras layer names.")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output directory (the files of --target).",
)
@click.option(
    "--allow-approx",
    is_flag=True,
    default=False,
    help="Write the artifacts even when a choice is only approximate.",
)
@click.option("--force", is_flag=True, default=False, help="Replace an existing output directory.")
@click.option(
    "--caffe-gpus",
    type=click.IntRange(min=1),
    default=None,
    help="How many GPUs Caffe trained with (caffe train -gpu 0,1,...): notes the global batch.",
)
@input_shape_option
@params_option
@target_option
@format_option
@_user_errors_exit_2
def convert(
    solver: Path,
    net_path: Path | None,
    lenient: bool,
    layer_map: Path | None,
    out_dir: Path,
    allow_approx: bool,
    force: bool,
    target: str,
    fmt: str,
    caffe_gpus: int | None = None,
    input_shapes: tuple[str, ...] = (),
    params_path: Path | None = None,
) -> int:
    """Write into OUT the optimizer module (and for keras train_config.yaml) that trains
    exactly like SOLVER (or like a cuda-convnet LAYERS.cfg with --params)."""
    from caffe2tf.app.convert import convert_solver

    report = convert_solver(
        solver,
        net_path=net_path,
        lenient=lenient,
        layer_map=layer_map,
        out_dir=out_dir,
        allow_approx=allow_approx,
        force=force,
        target=target,
        caffe_gpus=caffe_gpus,
        input_shapes=input_shapes or None,
        params_path=params_path,
    )
    click.echo(report.render(fmt))
    return report.exit_code


@cli.command()
@click.argument("solver", type=_existing_file)
@net_option
@lenient_option
@click.option(
    "--module",
    "module_path",
    type=_existing_file,
    default=None,
    help="An emitted optimizer.py to check (default: convert SOLVER in a temp dir).",
)
@layer_map_option(
    "The YAML layer map the module was written for (default: the names its blob table "
    "lists, else convert's automatic renames)."
)
@input_shape_option
@trajectory_options
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Where Caffe's compiled rule and the comparison run, on the candidate's backend "
    "(TensorFlow or JAX; on JAX the candidate too): auto is that library's default device.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG of the deviation per step.",
)
@target_option
@format_option
@_user_errors_exit_2
def verify(
    solver: Path,
    net_path: Path | None,
    lenient: bool,
    module_path: Path | None,
    steps: int,
    seed: int,
    tolerance: float,
    against: str,
    plot_path: Path | None,
    target: str,
    fmt: str,
    layer_map: Path | None = None,
    input_shapes: tuple[str, ...] = (),
    device: str = "auto",
) -> int:
    """Run the emitted optimizer against Caffe's rule for N steps on seeded gradients."""
    use_compile_cache()
    from caffe2tf.app.verify import verify_solver

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
        target=target,
        layer_map=layer_map,
        input_shapes=input_shapes or None,
        device=device,
        fmt=fmt,
    )
    click.echo(report.render(fmt))
    return report.exit_code


@cli.command()
@click.argument("pairs", nargs=-1, type=click.Path(path_type=Path), metavar="[SOLVER OUT]...")
@net_option
@lenient_option
@layer_map_option("The YAML layer map that was given to convert, if any.")
@click.option(
    "--manifest",
    type=_existing_file,
    default=None,
    help="A caffe2tf-check.yaml listing entries (solver, out, net, layer_map, steps...).",
)
@click.option("--jobs", type=int, default=1, show_default=True, help="Entries checked in parallel.")
@input_shape_option
@click.option(
    "--junit",
    type=click.Path(path_type=Path),
    default=None,
    help="Write JUnit XML: one testcase per entry and verdict.",
)
@trajectory_options
@target_option
@format_option
@_user_errors_exit_2
def check(
    pairs: tuple[Path, ...],
    net_path: Path | None,
    lenient: bool,
    layer_map: Path | None,
    steps: int,
    seed: int,
    tolerance: float,
    against: str,
    target: str,
    fmt: str,
    manifest: Path | None = None,
    jobs: int = 1,
    junit: Path | None = None,
    input_shapes: tuple[str, ...] = (),
) -> int:
    """CI check: does OUT (written by convert) still match its Caffe original SOLVER?

    Fails (exit 1) when OUT/train_config.yaml differs from today's conversion or when
    OUT/optimizer.py, run per its contract, leaves Caffe's trajectory (another --target: its
    module in OUT, which has no config file beside it). Several SOLVER OUT pairs,
    or --manifest, check a whole migration (--jobs in parallel, --junit XML, GitHub
    annotations when GITHUB_ACTIONS=true).
    """
    if len(pairs) % 2:
        raise click.UsageError("give SOLVER OUT pairs (an even number of paths)")
    use_compile_cache()
    if manifest is not None or len(pairs) != 2 or jobs != 1 or junit is not None:
        if input_shapes:
            raise click.UsageError("--input-shape checks one SOLVER OUT pair (no --manifest)")
        from caffe2tf.app.check_many import check_many

        many = check_many(
            [(str(pairs[i]), str(pairs[i + 1])) for i in range(0, len(pairs), 2)],
            manifest=manifest,
            jobs=jobs,
            junit=junit,
            defaults=dict(
                net=str(net_path) if net_path else None,
                layer_map=str(layer_map) if layer_map else None,
                steps=steps,
                seed=seed,
                tolerance=tolerance,
                target=target,
            ),
        )
        click.echo(many.render(fmt))
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for line in many.github_annotations():
                click.echo(line)
        return many.exit_code
    from caffe2tf.app.check import check_migration

    solver, out_dir = pairs
    report = check_migration(
        solver,
        out_dir,
        net_path=net_path,
        lenient=lenient,
        layer_map=layer_map,
        steps=steps,
        seed=seed,
        tolerance=tolerance,
        against=against,
        target=target,
        input_shapes=input_shapes or None,
    )
    click.echo(report.render(fmt))
    return report.exit_code


@cli.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The PNG to write.",
)
@click.option("--labels", default=None, help="Comma-separated run names (default: file names).")
@_user_errors_exit_2
def norms(logs: tuple[Path, ...], out_path: Path, labels: str | None) -> int:
    """Plot weight norms over training from WeightNormTracker logs (LOG.npz ...), one panel per
    weight, the runs overlaid (e.g. weight_decay 2e-4 vs 2e-3)."""
    from caffe2tf.app.norms import norms_command

    report = norms_command([str(p) for p in logs], out_path, labels.split(",") if labels else None)
    click.echo(report.render())
    return report.exit_code


def main() -> None:
    cli(prog_name="caffe2tf")


if __name__ == "__main__":
    main()
