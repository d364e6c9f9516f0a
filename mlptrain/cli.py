"""The `mlptrain` command: parse, call one library function, render. With cliparts.py (the help's form, shared
parameters), the only module that imports typer.

torch is imported inside the commands, so `--help`, `--version`, `config` and shell completion answer at once.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlptrain import __version__, completion, exits, streams
from mlptrain.cliparts import (
    Checkpoint,
    Command,
    ConfigFile,
    DataRoot,
    Device,
    Group,
    Overrides,
    bare_means,
    examples,
)
from mlptrain.interrupt import exit_on_sigterm, signal_exit

if TYPE_CHECKING:
    from mlptrain.config import Config


def _command(name: str | None = None, *lines: str, cls: type[Command] = Command):
    """app.command with Click-style help, and `examples` (command lines) closing it."""
    return app.command(name, cls=cls, epilog=examples(*lines))


app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train and evaluate multi-layer perceptrons on MNIST-style digits.",
    epilog=examples("mlptrain train configs/smoke.yaml", "mlptrain eval runs/<run>/best.pt"),
)


class SplitChoice(str, Enum):
    """What `eval --split` accepts."""

    test = "test"
    val = "val"


class ExportFormat(str, Enum):
    """What `export --format` accepts."""

    onnx = "onnx"
    pt2 = "pt2"
    safetensors = "safetensors"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mlptrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train and evaluate multi-layer perceptrons on MNIST-style digits."""


@_command(None, "mlptrain train configs/mnist.yaml --set train.lr=0.1", "mlptrain train --resume runs/<run>")
def train(
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Continue the run in folder RUN (or of checkpoint RUN) exactly where it stopped.",
            autocompletion=completion.checkpoints,
        ),
    ] = None,
    run_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--run-dir", metavar="DIR", help="Write the run exactly here instead of <output.dir>/<name>-<timestamp>."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --run-dir overwrite a folder that holds a run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every epoch's numbers, nothing else.")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, metavar="N", help="Train in N processes on this machine (data-parallel).")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the config, data files and device, show the model, and stop.")
    ] = False,
) -> None:
    """Train an MLP as CONFIG describes, or resume a run; keep the best checkpoint (on validation) and the last."""
    with exits.errors():
        streams.announce(f"loading {config or resume}", quiet=quiet or json_out)
        from mlptrain.config import load_config
        from mlptrain.errors import ConfigError

        if (config is None) == (resume is None):
            raise ConfigError("give a CONFIG file to start a run, or --resume RUN to continue one (not both)")
        if resume is not None and (run_dir is not None or force):
            raise ConfigError("--resume continues a run in its own folder; --run-dir and --force do not apply")
        cfg = load_config(config, set_ or []) if config is not None else None  # a bad config is said before torch
        from mlptrain import distributed, live, report, trainer

        if dry_run:
            return _dry_run(cfg, resume, set_ or [])
        if nproc > 1:
            flags = [flag for flag, on in (("--force", force), ("--quiet", quiet), ("--json", json_out)) if on]
            raise SystemExit(distributed.launch_train(nproc, cfg, config, resume, set_ or [], run_dir, flags))
        rank = streams.rank()
        reporter = live.TrainReporter(report.make_console(), quiet=quiet or json_out or rank > 0)
        with exits.hint(exits.TRAIN_DATA_HINT), exits.live(reporter):
            if cfg is not None:
                result = trainer.train(cfg, run_dir=run_dir, force=force, callbacks=reporter)
            else:
                result = trainer.resume(resume, set_ or [], callbacks=reporter)
        if rank == 0 and json_out:
            typer.echo(json.dumps(result.to_json()))
        elif rank == 0:
            reporter.summary(result)


def _dry_run(cfg: Config | None, resume: Path | None, overrides: list[str]) -> None:
    """`train --dry-run`: what the run would use (device, data files, model), checked; nothing trained or written."""
    from mlptrain import report, trainer
    from mlptrain.plan import plan_run

    cfg = cfg if cfg is not None else trainer.load_for_resume(resume, overrides)[1]
    with exits.hint(exits.TRAIN_DATA_HINT):
        report.show_plan(report.make_console(), plan_run(cfg.resolved()))


@_command("config", "mlptrain config configs/mnist.yaml --set train.lr=0.1", "mlptrain config --keys")
def config_(
    config: ConfigFile = None,
    set_: Overrides = None,
    keys: Annotated[bool, typer.Option("--keys", help="List every key: its type, default and meaning.")] = False,
) -> None:
    """Print the resolved config as YAML (file + overrides + defaults): what `train` would write to config.yaml."""
    with exits.errors():
        from mlptrain import keys as keys_
        from mlptrain import report
        from mlptrain.config import dump_yaml, load_config

        if keys:
            return report.show_keys(report.make_console(), keys_.key_docs())
        typer.echo(dump_yaml(load_config(config, set_ or []).resolved()), nl=False)


@_command("eval", "mlptrain eval runs/<run>/best.pt --errors errors.png")
def evaluate(
    checkpoint: Checkpoint,
    split: Annotated[
        SplitChoice,
        typer.Option(metavar="test|val", help="test: the held-back test set; val: the run's validation images."),
    ] = SplitChoice.test,
    data_root: DataRoot = None,
    device: Device = "auto",
    errors: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--errors", metavar="FILE.png", help="Save a grid of the most confidently wrong images here."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Rebuild the model from CHECKPOINT alone and score it: accuracy, per class, and the confusion matrix."""
    with exits.errors():
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain import report
        from mlptrain.evaluate import evaluate_checkpoint

        with exits.hint("or give --data-root DIR, the folder that holds MNIST/ or FashionMNIST/"):
            result = evaluate_checkpoint(
                checkpoint, split=split.value, data_root=data_root, device=device, errors_image=errors
            )
        if result.record_problem:
            report.warning(result.record_problem)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_eval(report.make_console(), result)


@_command(
    None,
    "mlptrain export runs/<run>/best.pt model.onnx",
    "mlptrain export runs/<run>/best.pt model.safetensors --raw-pixels",
    cls=bare_means("--raw-pixels", "1", ("1", "255")),
)
def export(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The file to write: .onnx, .pt2 or .safetensors.")],
    format_: Annotated[
        Optional[ExportFormat],  # noqa: UP045
        typer.Option("--format", metavar="onnx|pt2|safetensors", help="The format, if not the one OUT's suffix names."),
    ] = None,
    raw_pixels: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--raw-pixels",
            metavar="[=255]",
            help="Fold the normalisation into the first layer: the model takes pixels in [0, 1] (=255: 0-255).",
        ),
    ] = None,
    batch: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--batch", min=1, metavar="N", help="A fixed batch size N instead of any (onnx, pt2)."),
    ] = None,
    data_root: DataRoot = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
) -> None:
    """Write CHECKPOINT's model to OUT for other tools (ONNX, torch.export, safetensors), checked by loading it back."""
    with exits.errors():
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain import report
        from mlptrain.export import export_checkpoint, pixel_scale

        scale = pixel_scale(raw_pixels)
        with exits.hint("or give --data-root DIR, the folder that holds MNIST/ or FashionMNIST/"):
            result = export_checkpoint(
                checkpoint, out, format_.value if format_ else None, scale, batch=batch, data_root=data_root
            )
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_export(report.make_console(), result)


@_command(None, "mlptrain plot runs/<run> --out curves.svg")
def plot(
    run_dir: Annotated[
        Path,
        typer.Argument(metavar="RUN_DIR", help="A run folder, e.g. runs/<run>.", autocompletion=completion.checkpoints),
    ],
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.png", help="Where to save the figure (default RUN_DIR/curves.png)."),
    ] = None,
) -> None:
    """Draw a run's loss, accuracy and learning rate per epoch, train and validation, with the best epoch marked."""
    with exits.errors():
        from mlptrain import report
        from mlptrain.plot import plot_run
        from mlptrain.runs import read_run

        run = read_run(run_dir)
        path = plot_run(run, out)  # a run with nothing to plot is refused in one line that says why
        for problem in run.problems:
            report.warning(problem)
        report.saved(report.make_console(), "curves", path)


@_command(None, "mlptrain predict runs/<run>/best.pt digits/ --csv labels.csv")
def predict(
    checkpoint: Checkpoint,
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="PNG or JPEG files of any size, or folders of them."),
    ],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also classify the images in the folders' sub-folders.")
    ] = False,
    csv: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--csv", metavar="FILE", help="Also write file,label,confidence there, a row per image."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, metavar="K", help="Show the K most probable classes.")] = 3,
    device: Device = "auto",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON list, an object per classified file.")
    ] = False,
) -> None:
    """Classify image files as MNIST would see them: grayscale, light ink on black, centred in 28×28.

    A folder gives its image files, sorted; other files in it are skipped with a note.
    """
    with exits.errors():
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain import predict as predict_
        from mlptrain import report
        from mlptrain.errors import DataError

        files, notes = predict_.image_files(images, recursive=recursive)
        for note in notes:
            report.note(note)
        if not files:
            raise DataError("no image files to classify")
        result = predict_.predict_files(checkpoint, files, device=device, top=top)
        for _, message in result.failures:
            report.error(message)
        if csv is not None:
            predict_.write_csv(csv, result.predictions)
        if json_out:
            typer.echo(json.dumps([p.to_json() for p in result.predictions]))
        else:
            report.show_predictions(report.make_console(), result)
    if result.failures:  # the readable files were still classified; the exit code says not all were
        raise typer.Exit(2)


@_command("runs", "mlptrain runs runs/ --out runs.png")
def runs(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="The folder of runs.")] = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list, an object per run.")] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.png", help="Also draw each run's best score against each differing key."),
    ] = None,
) -> None:
    """List the runs in DIR, newest first, with their scores and the config keys that differ between them.

    A sweep folder lists its trials instead, best first on the monitored metric.
    """
    with exits.errors():
        from mlptrain import report
        from mlptrain import runs as run_folders
        from mlptrain.errors import ConfigError

        if out is not None and out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out}: give a file name ending in .png")
        found = run_folders.listing(folder)
        for problem in found.problems:
            report.warning(problem)
        if json_out:
            typer.echo(json.dumps(found.to_json()))
        else:
            report.show_listing(report.make_console(), found)
        if out is not None:
            from mlptrain.plot import save_scores_plot
            from mlptrain.sweep import draw_study

            save_scores_plot(out, found.scores(), str(folder))
            drawn = [out, *draw_study(folder, out)]
            for path in [] if json_out else drawn:
                report.saved(report.make_console(), "plot", path)


from mlptrain import cli_sweep  # noqa: E402, F401 - registers sweep on `app`, here, so that it is listed after runs


@_command(None, "mlptrain bench --quick --out bench.md")
def bench(
    device: Device = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer sizes, repeats and samples: under a minute on a CPU.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every number, nothing else.")
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.md", help="Also write a markdown report there, and its plot as FILE.png."),
    ] = None,
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--only",
            metavar="SECTION",
            help="Run only this section (again for more): layer, epoch, roofline, growth, threads, startup.",
        ),
    ] = None,
) -> None:
    """Measure training speed here: our layer against torch.nn.Linear, whole epochs, roofline, cost growth, threads
    under load, whole-command start-up."""
    with exits.errors():
        from mlptrain import live, plot, report
        from mlptrain.config import resolve_device
        from mlptrain.errors import ConfigError
        from mlptrain.files import atomic_write_text, make_dirs

        if out is not None:
            if out.suffix.lower() != ".md":
                raise ConfigError(f"--out {out}: give a markdown file name ending in .md (the plot goes beside it)")
            make_dirs(out.parent)  # refused now, not after minutes of measuring
        target = resolve_device(device)
        from mlptrain.bench import suite
        from mlptrain.bench.tables import bench_document

        for name in only or []:
            if name not in suite.SECTIONS:
                raise ConfigError(f"--only {name}: no such section; the sections are {', '.join(suite.SECTIONS)}")
        with live.BenchProgress(report.make_console(stderr=True)) as progress:
            result = suite.run(target, quick=quick, on_stage=progress, sections=only or suite.SECTIONS)
        document = bench_document(result)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_document(report.make_console(), document)
        if out is not None:
            png = out.with_suffix(".png") if result.growth is not None else None  # the plot is the growth section's
            if png is not None:
                plot.save_bench_plot(png, result)
            atomic_write_text(out, report.markdown(document, figure=png.name if png else None))
            if not json_out:
                report.make_console().print(f"wrote {out}" + (f" and {png}" if png else ""))


from mlptrain import cli_recipe  # noqa: E402, F401 - registers augment and lr-find on `app`


def main() -> None:
    """Entry point: run the command and exit with its code (exits.leave: at once, once torch is loaded)."""
    exit_on_sigterm()
    exits.leave(_run())


def _run() -> int:
    """The command's exit code. Typer's own usage errors become one line too, like the library's."""
    from mlptrain import report

    try:
        return app(prog_name="mlptrain", standalone_mode=False) or 0
    except typer.TyperException as e:  # usage errors (exit 2) and the like
        if not e.format_message():  # `mlptrain` alone: the help was printed, nothing went wrong
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        report.error(e.format_message() + hint)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        code, line = signal_exit(e) if isinstance(e, KeyboardInterrupt) else (130, "interrupted")
        report.error(line)
        return code
    except BrokenPipeError:
        return streams.reader_left()
    except SystemExit as e:  # how exits.errors() ends a command
        return e.code if isinstance(e.code, int) else 1
