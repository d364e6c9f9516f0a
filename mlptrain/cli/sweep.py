"""`mlptrain sweep`: parse, call the sweep feature (mlptrain.sweep: start, then run), render its table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlptrain.cli import completion, exits
from mlptrain.cli.app import command

if TYPE_CHECKING:
    from mlptrain.sweep.start import BudgetEnd
    from mlptrain.sweep.table import SweepTable

SweepDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--dir",
        metavar="DIR",
        help="Write the sweep here, not in <output.dir>/<name>-<time> (--join URL: <output.dir>/<study>).",
    ),
]
Join = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--join",
        metavar="SWEEP_DIR|URL",
        help="One more worker on a sweep: its folder, or its study's database URL from any machine.",
    ),
]
Timeout = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Start no trial after SECONDS (from now; every worker); those under way finish. --resume goes on.",
    ),
]
StudyName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(metavar="NAME", help="With --join URL: the study, where the database holds several."),
]


@command(
    None,
    "mlptrain sweep my-sweep.yaml --workers 2",
    "mlptrain sweep --resume runs/<sweep>",
    "mlptrain sweep --join postgresql://user@dbhost/sweeps --study <name>",
)
def sweep(
    sweep_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(
            metavar="SWEEP",
            help="A sweep file, or the shipped one's name, sweep (not with --resume or --join).",
            autocompletion=completion.sweep_files,
        ),
    ] = None,
    dir_: SweepDir = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--resume", metavar="SWEEP_DIR", help="Carry on the sweep in SWEEP_DIR where it stopped."),
    ] = None,
    trials: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--trials", metavar="N", help="Random and tpe sweeps: run N trials (with --resume: grow to N)."),
    ] = None,
    storage: Annotated[Optional[str], typer.Option(metavar="URL", help="The study's database URL.")] = None,  # noqa: UP045
    workers: Annotated[int, typer.Option(metavar="N", help="Run N trials at a time here, CPU threads split.")] = 1,
    timeout: Timeout = None,
    join: Join = None,
    study: StudyName = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final table.")] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON list, an object per trial (with --timeout: an object, trials and stopped), only that.",
        ),
    ] = False,
) -> None:
    """Train one run per grid point, random draw or TPE sample, on Optuna; resumable; then the trials, best first."""
    began = time.time()
    with exits.errors():
        from mlptrain.cli import live, report
        from mlptrain.sweep import workers as workers_
        from mlptrain.sweep.start import Budget, budget_end, run, start
        from mlptrain.sweep.table import table

        workers_.check_count(workers)  # before the sweep's folder holds anything
        budget = Budget.starting(timeout, began)
        job = start(sweep_file, resume, folder=dir_, trials=trials, storage=storage, join=join, study=study)
        workers, note = workers_.capped(workers, job.total)
        if note:
            report.note(note)
        with exits.live(live.SweepReporter(report.make_console(), quiet=quiet or json_out)) as reporter:
            job.trials = run(job, callbacks=reporter, workers=workers, budget=budget)
        _show(table(job.folder), budget is not None, budget_end(job, budget), json_out)
        failed = sum(t.state == "failed" for t in job.trials)
        if failed:
            report.error(f"{failed} of {len(job.trials)} trials failed; the others ran (see the table)")
            raise SystemExit(1)


def _show(found: SweepTable, budgeted: bool, end: BudgetEnd | None, json_out: bool) -> None:
    """The closing table (or --json), and the line saying that --timeout ended the sweep if it did."""
    from mlptrain.cli import report

    if json_out:
        trials = found.to_json()
        typer.echo(json.dumps({"trials": trials, "stopped": end.to_json() if end else None} if budgeted else trials))
        return
    report.show_sweep(report.make_console(), found)
    if end is not None:
        report.show_budget_end(report.make_console(), end)
