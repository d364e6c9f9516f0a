"""metrics.csv and the better rule: one owner, and every reader (runs, sweep, report, plot) agrees with it."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mlptrain.base import metrics
from mlptrain.base.config import Config
from mlptrain.base.metrics import (
    COLUMNS,
    EpochStats,
    History,
    best_index,
    improves,
    is_better,
    ranked,
    read_metrics,
    write_metrics,
)
from mlptrain.cli import report
from mlptrain.run import runs
from mlptrain.sweep import folder as sweep_folder
from mlptrain.sweep import start as sweep_start
from mlptrain.sweep import table as sweep_table

NAN, INF = math.nan, math.inf


def stats(epoch: int, val_acc: float, val_loss: float | None = None, train_loss: float = 0.5) -> EpochStats:
    val_loss = 1 - val_acc if val_loss is None else val_loss
    return EpochStats(epoch, train_loss, 0.5, val_loss, val_acc, 0.01, 1.25, 0.125, 1000.0)


# val_acc ties at 0.8 (epochs 2 and 4); epoch 3 diverged with the highest accuracy; val_loss ties at 0.15.
TRICKY = [
    stats(1, 0.5),
    stats(2, 0.8, val_loss=0.15),
    stats(3, 0.9, val_loss=NAN, train_loss=NAN),
    stats(4, 0.8, val_loss=0.15),
    stats(5, 0.7, val_loss=0.3),
]


# --- the rule ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitor", "value", "best", "expected"),
    [
        ("val_acc", 0.9, 0.8, True),
        ("val_acc", 0.8, 0.8, False),  # a tie keeps the earlier
        ("val_acc", 0.7, 0.8, False),
        ("val_loss", 0.1, 0.2, True),
        ("val_loss", 0.2, 0.2, False),
        ("val_loss", 0.3, 0.2, False),
        ("val_acc", 0.1, None, True),  # anything finite beats nothing
        ("val_acc", NAN, None, False),
        ("val_loss", NAN, 0.2, False),
        ("val_acc", INF, 0.8, False),
        ("val_loss", -INF, 0.2, False),
    ],
)
def test_is_better(monitor, value, best, expected):
    assert is_better(monitor, value, best) is expected


def test_the_best_epoch_is_the_first_of_equals_and_never_a_diverged_one():
    assert History("val_acc", TRICKY).best_epoch == 2
    assert History("val_loss", TRICKY).best_epoch == 2
    assert History("val_acc", []).best_epoch == 0 and History("val_acc", []).best is None
    only_diverged = [stats(1, 0.9, val_loss=NAN)]
    assert History("val_acc", only_diverged).best_epoch == 0


@pytest.mark.parametrize(
    ("monitor", "value", "reference", "min_delta", "expected"),
    [
        ("val_acc", 0.86, 0.8, 0.05, True),
        ("val_acc", 0.85, 0.8, 0.25, False),  # better, but not by more than min_delta
        ("val_acc", 0.8, 0.8, 0.0, False),
        ("val_loss", 0.1, 0.2, 0.05, True),
        ("val_loss", 0.17, 0.2, 0.05, False),
        ("val_loss", 0.9, None, 0.5, True),  # the first epoch always improves on nothing
        ("val_acc", NAN, None, 0.0, False),
    ],
)
def test_improves_by_more_than_min_delta(monitor, value, reference, min_delta, expected):
    assert improves(monitor, value, reference, min_delta) is expected
    if min_delta == 0:
        assert improves(monitor, value, reference) is is_better(monitor, value, reference)


def test_patience_counts_from_the_last_improvement_by_min_delta_while_best_pt_follows_any():
    creeping = [stats(1, 0.5), stats(2, 0.52), stats(3, 0.58), stats(4, 0.6), stats(5, 0.61)]
    history = History("val_acc", creeping)
    assert history.best_epoch == 5
    assert history.last_improvement() == 5  # min_delta 0: the best epoch
    # 0.52 is not 0.05 past 0.5, 0.58 is; 0.6 and 0.61 are not past 0.58 by 0.05 (the reference is 0.58, not 0.6)
    assert history.last_improvement(0.05) == 3
    assert history.last_improvement(0.5) == 1
    assert History("val_acc", TRICKY).last_improvement() == History("val_acc", TRICKY).best_epoch == 2
    assert History("val_loss", TRICKY).last_improvement(0.1) == 2
    assert History("val_acc", []).last_improvement(0.1) == 0


def test_best_index_and_ranking_agree():
    values = [0.5, None, 0.8, NAN, 0.8, 0.7]
    assert best_index(values, "val_acc") == 2
    order = ranked(list(range(len(values))), lambda i: values[i], "val_acc")
    assert order == [2, 4, 5, 0, 1, 3]  # equals keep their order; no value and NaN last, in order
    assert ranked([0, 1, 2], [0.3, 0.1, 0.1].__getitem__, "val_loss") == [1, 2, 0]


# --- the file --------------------------------------------------------------------------------------------------


def test_metrics_csv_round_trips_exactly(tmp_path):
    epochs = [stats(1, 1 / 3), stats(2, 0.1 + 0.2, val_loss=NAN, train_loss=INF)]
    write_metrics(tmp_path / "metrics.csv", epochs)
    back, problems = read_metrics(tmp_path / "metrics.csv")
    assert problems == [] and len(back) == 2
    assert back[0] == epochs[0]  # floats at full precision
    assert back[1].val_acc == 0.1 + 0.2 and math.isnan(back[1].val_loss) and back[1].train_loss == INF
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_a_bad_row_is_skipped_and_said_and_the_others_kept(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics(path, [stats(1, 0.5), stats(2, 0.6), stats(3, 0.7)])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("0.6", "oops", 1)
    lines.append("4,0.1")  # a row cut short, as a full disk leaves it
    path.write_text("\n".join(lines) + "\n")
    back, problems = read_metrics(path)
    assert [s.epoch for s in back] == [1, 3]
    assert problems == [f"{path}, line 3: skipped an unreadable row", f"{path}, line 5: skipped an unreadable row"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"epoch,loss\n1,0.5\n", "not a metrics file (no column train_loss"),
        (b"\xff\xfe\x00garbage", "unreadable (UnicodeDecodeError)"),
    ],
)
def test_a_file_that_is_not_metrics_is_said_not_raised(tmp_path, content, needle):
    path = tmp_path / "metrics.csv"
    path.write_bytes(content)
    back, problems = read_metrics(path)
    assert back == [] and len(problems) == 1 and needle in problems[0]


def test_a_missing_or_empty_file_is_no_epochs_and_no_problem(tmp_path):
    assert read_metrics(tmp_path / "none.csv") == ([], [])
    (tmp_path / "empty.csv").write_text("")
    assert read_metrics(tmp_path / "empty.csv") == ([], [])


def test_every_column_has_a_label_and_a_unit_the_report_shows():
    assert set(metrics.LABELS) == set(metrics.UNITS) == set(COLUMNS)
    for name in COLUMNS:
        assert report.metric_text(metrics.UNITS[name], 0.5)  # every unit is one the report knows


# --- everyone agrees -------------------------------------------------------------------------------------------


def write_run(folder: Path, epochs: list[EpochStats], monitor: str = "val_acc") -> Path:
    config = Config().to_dict()
    config["train"]["monitor"] = monitor
    folder.mkdir(parents=True)
    (folder / runs.CONFIG_FILE).write_text(yaml.safe_dump(config))
    write_metrics(folder / runs.METRICS_FILE, epochs)
    return folder


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_runs_report_and_plot_agree_with_the_rule_on_ties_and_nans(tmp_path, monkeypatch, monitor):
    expected = History(monitor, TRICKY).best_epoch
    run = runs.read_run(write_run(tmp_path / "run", TRICKY, monitor))
    assert run.best_epoch == expected

    from mlptrain.run.trainer import TrainResult

    console = report.make_console()
    with console.capture() as captured:
        console.print(report.epochs_table(TrainResult(tmp_path / "run", run.history)))
    marked = [line for line in captured.get().splitlines() if "★" in line]
    assert len(marked) == 1 and marked[0].split()[:2] == ["★", str(expected)]

    from matplotlib.figure import Figure

    from mlptrain.run.plot import plot_run

    titles = []
    original = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or original(self, t, **kw))
    plot_run(run)
    assert f"best epoch {expected} on {monitor}" in titles[0]


def test_runs_and_a_sweep_pick_the_first_of_equal_runs_and_skip_nans(tmp_path):
    # Best val_acc of each run: 0.8, NaN-diverged-only (none), 0.9, 0.9: the third run is the best, not the fourth.
    best_scores = [[stats(1, 0.8)], [stats(1, 0.95, val_loss=NAN)], [stats(1, 0.9)], [stats(1, 0.5), stats(2, 0.9)]]
    folder = tmp_path / "runs"
    found = [runs.read_run(write_run(folder / f"r{i}", epochs)) for i, epochs in enumerate(best_scores)]
    scores = runs.scores(found, ["train.lr"])
    assert [value for _, value in scores.points] == [0.8, 0.9, 0.9]
    assert scores.best == best_index([0.8, 0.9, 0.9], "val_acc") == 1

    spec = {"base": "base.yaml", "params": {"train.lr": [0.1, 0.2, 0.3, 0.4]}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"dataset": "synthetic"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    job = sweep_start.create(tmp_path / "sweep.yaml", folder=tmp_path / "sw")
    drawn = enumerate(job.spec.combinations(), 1)  # as if the sampler had drawn them in the order listed
    job.trials = [sweep_folder.Trial(i, sweep_folder.trial_name(i, v), v, number=i - 1) for i, v in drawn]
    for trial, epochs in zip(job.trials, best_scores, strict=True):
        write_run(job.folder / trial.dir, epochs)
        trial.state = "done"
    job.save()
    table = sweep_table.table(job.folder)
    assert [row.trial.index for row in table.rows] == [3, 4, 1, 2]  # ties in trial order, no score last
    assert [row.trial.index for row in table.rows if row.best] == [3]
    assert json.loads(json.dumps(table.to_json()))[0]["best"] is True
    assert table.scores().best == 0 and table.scores().points[0][1] == 0.9


def test_a_damaged_metrics_row_reaches_the_user_as_a_warning(tmp_path):
    from typer.testing import CliRunner

    from mlptrain.cli.main import app

    folder = write_run(tmp_path / "runs" / "a", [stats(1, 0.5), stats(2, 0.6)])
    path = folder / runs.METRICS_FILE
    path.write_text(path.read_text().replace("\n2,", "\nx,"))
    out = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert out.exit_code == 0
    assert out.stderr == f"mlptrain: warning: {path}, line 3: skipped an unreadable row\n"
    (listed,) = json.loads(out.stdout)
    assert listed["epochs"] == 1 and listed["best_val_acc"] == 0.5  # the other row still counts


def test_a_history_keeps_its_epochs_when_one_diverges():
    diverged = replace(TRICKY[0], train_loss=NAN)
    assert diverged.diverged and not TRICKY[0].diverged


@pytest.mark.parametrize("column", [c for c in COLUMNS if c not in ("epoch", "train_loss", "val_loss")])
def test_a_row_with_a_non_finite_number_outside_the_losses_is_skipped(tmp_path, column):
    """Only a diverged epoch's losses may be NaN or infinite; a NaN time or rate is a damaged row (it made `runs`
    fail with exit 1), skipped and said."""
    from typer.testing import CliRunner

    from mlptrain.cli.main import app

    folder = write_run(tmp_path / "runs" / "a", [stats(1, 0.5), replace(stats(2, 0.6), **{column: NAN})])
    back, problems = read_metrics(folder / runs.METRICS_FILE)
    assert [s.epoch for s in back] == [1] and problems == [
        f"{folder / runs.METRICS_FILE}, line 3: skipped an unreadable row"
    ]
    out = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert out.exit_code == 0 and out.stderr.count("\n") == 1 and "line 3" in out.stderr


def test_a_metrics_csv_from_before_clipped_steps_still_reads(tmp_path):
    old = [c for c in COLUMNS if c != "clipped_steps"]
    path = tmp_path / "metrics.csv"
    path.write_text(",".join(old) + "\n" + "1,0.5,0.8,0.4,0.85,0.1,2.0,0.1,3000.0\n")
    epochs, problems = read_metrics(path)
    assert problems == [] and epochs[0].clipped_steps == 0 and epochs[0].val_acc == 0.85
    write_metrics(path, [replace(epochs[0], clipped_steps=7)])
    assert read_metrics(path)[0][0].clipped_steps == 7
