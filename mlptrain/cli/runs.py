"""The commands that read run folders back: `mlptrain plot` (one run's curves) and `mlptrain runs` (a folder of
runs, or a sweep's trials). Parse, call one library function, render; neither loads torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlptrain.cli import completion, exits
from mlptrain.cli.app import command


@command(None, "mlptrain plot runs/<run> --out curves.svg")
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
        from mlptrain.base.files import check_output
        from mlptrain.cli import report
        from mlptrain.run.plot import plot_run
        from mlptrain.run.runs import read_run

        check_output(out, "--out")
        run = read_run(run_dir)
        path = plot_run(run, out)  # a run with nothing to plot is refused in one line that says why
        for problem in run.problems:
            report.warning(problem)
        report.saved(report.make_console(), "curves", path)


@command("runs", "mlptrain runs runs/ --out runs.png")
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
        from mlptrain.base.errors import ConfigError
        from mlptrain.base.files import check_output
        from mlptrain.cli import report
        from mlptrain.sweep.table import listing

        if out is not None and out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out}: give a file name ending in .png")
        check_output(out, "--out")
        found = listing(folder)
        for problem in found.problems:
            report.warning(problem)
        if json_out:
            typer.echo(json.dumps(found.to_json()))
        else:
            report.show_listing(report.make_console(), found)
        if out is not None:
            from mlptrain.run.plot import save_scores_plot
            from mlptrain.sweep.table import draw_study

            save_scores_plot(out, found.scores(), str(folder))
            drawn = [out, *draw_study(folder, out)]
            for path in [] if json_out else drawn:
                report.saved(report.make_console(), "plot", path)
