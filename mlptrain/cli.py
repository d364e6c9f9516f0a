"""The `mlptrain` command: parse, call one library function, render. The only module that imports typer.

torch is imported inside the commands, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlptrain import __version__

if TYPE_CHECKING:
    from mlptrain.config import Config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train and evaluate multi-layer perceptrons on MNIST-style digits.",
)


class SplitChoice(str, Enum):
    """What `eval --split` accepts."""

    test = "test"
    val = "val"


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


def _rank() -> int:
    """This process's rank when torchrun started it (0 otherwise): only rank 0 prints."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def _errors():
    """Map library errors to one line and an exit code: 2 bad input, 1 failed run, 130 Ctrl-C.

    Under torchrun the other ranks stay quiet about what rank 0 says too (a bad config, a Ctrl-C); an
    unexpected failure of their own is printed with their rank.
    """
    from mlptrain import report
    from mlptrain.errors import MlptrainError

    rank = _rank()
    try:
        yield
    except typer.Exit:
        raise
    except MlptrainError as e:
        if rank == 0:
            report.error(_one_line(str(e)))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        if rank == 0:
            report.error("interrupted")
        raise typer.Exit(130) from None
    except Exception as e:
        if os.environ.get("MLPTRAIN_DEBUG"):
            raise
        where = f"rank {rank}: " if rank else ""
        report.error(
            f"{where}the run failed: {type(e).__name__}: {_one_line(str(e))} (set MLPTRAIN_DEBUG=1 for the traceback)"
        )
        raise typer.Exit(1) from None


MAX_ERROR_CHARS = 1000  # an error quotes paths and values; a huge one is cut, never printed whole


def _one_line(text: str) -> str:
    """An error's text as one line of bounded length."""
    text = " ".join(text.splitlines())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@contextlib.contextmanager
def _live(reporter):
    """Around training: the reporter's progress bar is closed whatever happens, and a run stopped by a signal
    prints where it stopped and the command that carries on, and exits 128 + the signal's number."""
    from mlptrain import report
    from mlptrain.errors import Interrupted

    try:
        yield reporter
    except Interrupted as e:
        reporter.close()
        if _rank() == 0:  # under torchrun, one message for all the ranks
            report.interrupted(str(e), e.resume_command)
        raise typer.Exit(e.exit_code) from None
    finally:
        reporter.close()


@app.command()
def train(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Argument(metavar="[CONFIG]", help="YAML config file, e.g. configs/mnist.yaml (not with --resume)."),
    ] = None,
    set_: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--set", metavar="KEY=VALUE", help="Override a config key (repeatable), e.g. train.lr=0.1."),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Continue the run in folder RUN (or of checkpoint RUN) exactly where it stopped.",
        ),
    ] = None,
    run_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--run-dir", help="Write the run exactly here instead of <output.dir>/<name>-<timestamp>."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --run-dir overwrite a folder that holds a run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every epoch's numbers, nothing else.")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, metavar="N", help="Train in N processes on this machine (data-parallel).")
    ] = 1,
) -> None:
    """Train an MLP as CONFIG describes, or resume a run; keep the best checkpoint (on validation) and the last."""
    with _errors():
        from mlptrain import live, report, trainer
        from mlptrain.config import load_config
        from mlptrain.errors import ConfigError

        if (config is None) == (resume is None):
            raise ConfigError("give a CONFIG file to start a run, or --resume RUN to continue one (not both)")
        if resume is not None and (run_dir is not None or force):
            raise ConfigError("--resume continues a run in its own folder; --run-dir and --force do not apply")
        cfg = load_config(config, set_ or []) if config is not None else None
        if nproc > 1:
            flags = [flag for flag, on in (("--force", force), ("--quiet", quiet), ("--json", json_out)) if on]
            raise typer.Exit(_launch(nproc, cfg, config, resume, set_ or [], run_dir, flags))
        rank = _rank()
        with _live(live.TrainReporter(report.make_console(), quiet=quiet or json_out or rank > 0)) as reporter:
            if cfg is not None:
                result = trainer.train(cfg, run_dir=run_dir, force=force, callbacks=reporter)
            else:
                result = trainer.resume(resume, set_ or [], callbacks=reporter)
        if rank == 0 and json_out:
            typer.echo(json.dumps(result.to_json()))
        elif rank == 0:
            reporter.summary(result)


def _launch(
    nproc: int,
    cfg: Config | None,
    config: Path | None,
    resume: Path | None,
    overrides: list[str],
    run_dir: Path | None,
    flags: list[str],
) -> int:
    """`mlptrain train ...` in `nproc` processes through torchrun, once the config passed the checks a worker would
    make (so bad input is refused here, before any worker starts); returns the exit code to leave with."""
    from mlptrain import distributed, trainer
    from mlptrain.config import resolve_device
    from mlptrain.errors import ConfigError

    if distributed.World.from_env().distributed:
        raise ConfigError("--nproc: this process is already one of torchrun's; give torchrun the count")
    checked = cfg if cfg is not None else trainer.load_for_resume(resume, overrides)[1]
    distributed.check_world(checked, resolve_device(checked.device), nproc, nproc)
    argv = [str(config)] if config is not None else ["--resume", str(resume)]
    argv += [f"--set={item}" for item in overrides]
    argv += ["--run-dir", str(run_dir)] if run_dir is not None else []
    return distributed.launch(["train", *argv, *flags], nproc)


@app.command("eval")
def evaluate(
    checkpoint: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="A checkpoint written by `mlptrain train`, e.g. runs/<run>/best.pt."),
    ],
    split: Annotated[
        SplitChoice, typer.Option(help="test: the held-back test set; val: the run's validation images.")
    ] = SplitChoice.test,
    data_root: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--data-root", help="Where the dataset lives, if not where the run found it."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    errors: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--errors", metavar="FILE.png", help="Save a grid of the most confidently wrong images here."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Rebuild the model from CHECKPOINT alone and score it: accuracy, per class, and the confusion matrix."""
    with _errors():
        from mlptrain import report
        from mlptrain.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(
            checkpoint, split=split.value, data_root=data_root, device=device, errors_image=errors
        )
        if result.record_problem:
            report.warning(result.record_problem)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_eval(report.make_console(), result)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run folder, e.g. runs/<run>.")],
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.png", help="Where to save the figure (default RUN_DIR/curves.png)."),
    ] = None,
) -> None:
    """Draw a run's loss and accuracy per epoch, train and validation, with the best epoch marked."""
    with _errors():
        from mlptrain import report
        from mlptrain.plot import plot_run
        from mlptrain.runs import read_run

        run = read_run(run_dir)
        path = plot_run(run, out)  # a run with nothing to plot is refused in one line that says why
        for problem in run.problems:
            report.warning(problem)
        report.saved(report.make_console(), "curves", path)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint written by `mlptrain train`.")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="PNG or JPEG files, of any size.")],
    top: Annotated[int, typer.Option("--top", min=1, metavar="K", help="Show the K most probable classes.")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON list, an object per classified file.")
    ] = False,
) -> None:
    """Classify image files as MNIST would see them: grayscale, light ink on black, centred in 28×28."""
    with _errors():
        from mlptrain import report
        from mlptrain.predict import predict_files

        result = predict_files(checkpoint, images, device=device, top=top)
        for _, message in result.failures:
            report.error(message)
        if json_out:
            typer.echo(json.dumps([p.to_json() for p in result.predictions]))
        else:
            report.show_predictions(report.make_console(), result)
    if result.failures:  # the readable files were still classified; the exit code says not all were
        raise typer.Exit(2)


@app.command("runs")
def runs(
    folder: Annotated[Path, typer.Argument(metavar="[DIR]", help="The folder of runs (default: runs).")] = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list, an object per run.")] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.png", help="Also draw each run's best score against each differing key."),
    ] = None,
) -> None:
    """List the runs in DIR, newest first, with their scores and the config keys that differ between them.

    A sweep folder lists its trials instead, best first on the monitored metric.
    """
    with _errors():
        from mlptrain import report
        from mlptrain import runs as run_folders
        from mlptrain import sweep as sweep_
        from mlptrain.errors import ConfigError

        if out is not None and out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out}: give a file name ending in .png")
        console = report.make_console()
        sweep_folder = sweep_.is_sweep(folder)
        if sweep_folder:
            table = sweep_.table(folder)
            problems, listing, scores = table.problems, table.to_json(), table.scores()
        else:
            found = run_folders.list_runs(folder)
            keys = run_folders.differing_keys(found)
            problems, listing = [p for run in found for p in run.problems], [run.to_json(keys) for run in found]
            scores = run_folders.scores(found, keys)
        for problem in problems:
            report.warning(problem)
        if json_out:
            typer.echo(json.dumps(listing))
        elif sweep_folder:
            report.show_sweep(console, table)
        else:
            report.show_runs(console, folder, found, keys)
        if out is not None:
            from mlptrain.plot import save_metric_plot

            title = f"{folder}: the best {scores.metric.replace('_', ' ')} of {len(scores.points)} {scores.what}"
            save_metric_plot(out, scores.points, scores.keys, scores.metric, title, scores.best)
            if not json_out:
                report.saved(console, "plot", out)


@app.command()
def sweep(
    sweep_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(metavar="[SWEEP]", help="A sweep file, e.g. configs/sweep.yaml (not with --resume)."),
    ] = None,
    dir_: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--dir", metavar="DIR", help="Write the sweep exactly here instead of <output.dir>/<name>-<time>."
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--resume", metavar="SWEEP_DIR", help="Carry on the sweep in SWEEP_DIR where it stopped."),
    ] = None,
    trials: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--trials", metavar="N", help="Random sweeps: run N trials (with --resume: grow to N)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final table.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON list, an object per trial, and nothing else.")
    ] = False,
) -> None:
    """Train one run per combination of values (grid) or per random draw; resumable; then the trials, best first."""
    with _errors():
        from mlptrain import live, report
        from mlptrain import sweep as sweep_
        from mlptrain.errors import ConfigError

        if (sweep_file is None) == (resume is None):
            raise ConfigError("give a SWEEP file to start a sweep, or --resume SWEEP_DIR to continue one (not both)")
        if resume is not None and dir_ is not None:
            raise ConfigError("--resume continues a sweep in its own folder; --dir does not apply")
        if trials is not None and trials < 1:
            raise ConfigError(f"--trials {trials}: must be at least 1")
        if sweep_file is not None:
            job = sweep_.create(sweep_file, folder=dir_, trials=trials)
        else:
            job = sweep_.load(resume, trials=trials)
        with _live(live.SweepReporter(report.make_console(), quiet=quiet or json_out)) as reporter:
            sweep_.run(job, callbacks=reporter)
        table = sweep_.table(job.folder)
        if json_out:
            typer.echo(json.dumps(table.to_json()))
        else:
            report.show_sweep(report.make_console(), table)
        failed = sum(t.state == "failed" for t in job.trials)
        if failed:
            report.error(f"{failed} of {len(job.trials)} trials failed; the others ran (see the table)")
            raise typer.Exit(1)


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
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
) -> None:
    """Measure training speed here: our layer against torch.nn.Linear, whole epochs, roofline, cost growth."""
    with _errors():
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

        with live.BenchProgress(report.make_console(stderr=True)) as progress:
            result = suite.run(target, quick=quick, on_stage=progress)
        document = bench_document(result)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_document(report.make_console(), document)
        if out is not None:
            png = out.with_suffix(".png")
            plot.save_bench_plot(png, result)
            atomic_write_text(out, report.markdown(document, figure=png.name))
            if not json_out:
                report.make_console().print(f"wrote {out} and {png}")


def main() -> None:
    """Entry point: run the command and exit with its code.

    A worker that torchrun started leaves with os._exit, skipping the interpreter's teardown, as multiprocessing's
    own workers do: a gloo thread may still be releasing the last collective's tensors when Python finalizes, and
    taking the GIL then aborts the process ("terminate called without an active exception", seen in about one
    resumed --nproc 2 run in ten here). Every file the run writes is fsynced before this point.
    """
    code = _run()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


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
    except (typer.Abort, KeyboardInterrupt):
        report.error("interrupted")
        return 130
