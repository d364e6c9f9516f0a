"""`mlptrain sweep`: grid and random expansion, trial folders, the manifest, failing trials, resuming after a kill."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_in_fresh_python
from typer.testing import CliRunner

from mlptrain.base.errors import ConfigError
from mlptrain.sweep import folder as sweep_folder
from mlptrain.sweep import spec as sweep_spec
from mlptrain.sweep import start as sweep_start

REPO = Path(__file__).resolve().parents[2]
LOSS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
# Trials of a few hundred synthetic digits and a tiny layer: a second or two each.
BASE = {
    "name": "tiny",
    "device": "cpu",
    "seed": 3,
    "data": {"dataset": "synthetic", "synthetic_size": 600, "val_size": 100},
    "model": {"hidden": [16]},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.1},
}


def invoke(*args):
    from mlptrain.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


# The seed whose shuffle of the grids these tests use keeps them in the order listed (tests/sweep/test_study.py checks
# that a grid's seed orders it).
GRID_AS_LISTED = 5


def write_sweep(folder: Path, spec: dict, base: dict = BASE) -> Path:
    """A base config and a sweep file over it, side by side in `folder`; returns the sweep file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **spec}, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[tuple]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [tuple(row[c] for c in LOSS_COLUMNS) for row in csv.DictReader(f)]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


# --- expansion ---------------------------------------------------------------------------------------------------


def test_grid_expands_every_combination_first_key_slowest():
    spec = sweep_spec.parse_spec(
        {"base": "b.yaml", "params": {"train.lr": [0.01, 0.05, 0.1], "model.hidden": [[128, 64], [512, 256]]}}, "s"
    )
    assert spec.method == "grid" and spec.size == 6
    values = spec.combinations()  # what is validated before any runs, in this order (the sampler shuffles it)
    assert values == [
        {"train.lr": lr, "model.hidden": hidden} for lr in (0.01, 0.05, 0.1) for hidden in ([128, 64], [512, 256])
    ]
    names = [sweep_folder.trial_name(i, v) for i, v in enumerate(values, 1)]
    assert names[:3] == ["001-lr=0.01-hidden=128x64", "002-lr=0.01-hidden=512x256", "003-lr=0.05-hidden=128x64"]


def test_trial_names_are_safe_in_a_path_and_deterministic():
    values = {"data.root": "../data dir/x", "train.lr": 1 / 3, "model.bias": False, "model.hidden": []}
    name = sweep_folder.trial_name(12, values)
    assert name == "012-root=.._data_dir_x-lr=0.3333-bias=false-hidden=none"
    assert name == sweep_folder.trial_name(12, dict(values))
    assert len(sweep_folder.trial_name(1, {"data.root": "r" * 500})) == 120


def test_the_example_sweep_file_is_valid():
    job = sweep_start.plan(REPO / "configs" / "sweep.yaml")
    assert job.spec.method == "grid" and job.base["name"] == "smoke" and job.total == 6
    assert [sweep_folder.trial_name(i, v) for i, v in enumerate(job.spec.combinations(), 1)] == [
        f"{i:03d}-lr={lr}-hidden={h}" for i, (lr, h) in enumerate(((0.03, 64), (0.03, 256), (0.1, 64), (0.1, 256),
                                                                   (0.3, 64), (0.3, 256)), 1)
    ]  # fmt: skip
    trials = [sweep_folder.Trial(i, sweep_folder.trial_name(i, v), v) for i, v in enumerate(job.spec.combinations(), 1)]
    assert all(job.config(t).train.lr == t.values["train.lr"] for t in trials)


RANDOM = {
    "method": "random",
    "trials": 40,
    "seed": 7,
    "params": {
        "train.lr": {"low": 1e-4, "high": 1.0, "log": True},
        "train.momentum": {"low": 0.5, "high": 0.99},
        "train.batch_size": {"low": 16, "high": 256, "log": True},
        "model.hidden": [[16], [32, 16]],
    },
}


def draws(raw: dict, restart: int | None = None) -> list[dict]:
    """The values the sweep's sampler gives its trials, one after another in one study (in memory, nothing
    trained); `restart`: a fresh sampler from that trial on, as a resumed or another worker makes."""
    optuna = pytest.importorskip("optuna")
    from mlptrain.sweep import study

    spec = sweep_spec.parse_spec({"base": "b.yaml", **raw}, "s")
    dists, drawn = study.distributions(spec.params), []
    made = optuna.create_study(sampler=study._sampler(spec))
    for n in range(spec.size):
        if n == restart:
            made.sampler = study._sampler(spec)
        asked = made.ask()
        drawn.append(study.suggest(asked, dists))
        made.tell(asked, 0.0)
    return drawn


def random_values(**changes) -> list[dict]:
    return draws({**RANDOM, **changes})


def test_random_is_reproducible_with_its_seed_and_differs_with_another():
    first = random_values()
    assert first == random_values()
    assert first != random_values(seed=8)
    assert random_values(trials=10) == first[:10]  # what lets --trials grow a sweep without changing its start
    assert draws(RANDOM, restart=13) == first  # a resumed worker, or another one, draws what one worker would
    lrs = [v["train.lr"] for v in first]
    assert all(1e-4 <= lr <= 1.0 for lr in lrs)
    # Log-uniform: about half below the geometric middle, 0.01; a uniform draw would put ~1% there.
    assert 10 <= sum(lr < 0.01 for lr in lrs) <= 30
    assert all(0.5 <= v["train.momentum"] <= 0.99 for v in first)
    sizes = [v["train.batch_size"] for v in first]
    assert all(isinstance(b, int) and 16 <= b <= 256 for b in sizes) and len(set(sizes)) > 5
    assert {json.dumps(v["model.hidden"]) for v in first} == {"[16]", "[32, 16]"}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"params": {"train.lr": [0.1]}, "trials": 3}, "trials: only a random sweep (or tpe) takes trials"),
        ({"params": {"train.lr": [0.1]}, "seed": 0.5}, "seed: must be an integer"),
        ({"params": {"train.lr": {"low": 0.1, "high": 1}}}, "expected a list of values to try, got a mapping"),
        ({"method": "random", "params": {"train.lr": [0.1]}}, "trials: a random sweep needs a number of trials"),
        ({"method": "random", "trials": 0, "params": {"train.lr": [0.1]}}, "got 0"),
        ({"method": "random", "trials": 2, "params": {"train.lr": {"low": 1, "hi": 2}}}, "did you mean 'high'"),
        ({"method": "random", "trials": 2, "params": {"train.lr": {"low": 2, "high": 1}}}, "low must be below high"),
        ({"method": "random", "trials": 2, "params": {"train.lr": {"low": 0, "high": 1, "log": True}}}, "low > 0"),
        ({"method": "random", "trials": 2, "params": {"train.lr": {"low": 0.1, "high": ".inf"}}}, "finite number"),
        ({"method": "random", "trials": 2, "seed": -1, "params": {"train.lr": [0.1]}}, "seed: must be an integer"),
        ({"method": "bayes", "params": {"train.lr": [0.1]}}, "'bayes' is not one of grid, random"),
        ({"params": {"train": [0.1]}}, "'train' is a section"),
        ({"params": {}}, "params: map each config key"),
    ],
)
def test_spec_problems_name_the_key(spec, needle):
    with pytest.raises(ConfigError, match=r"^s: ") as info:
        sweep_spec.parse_spec({"base": "b.yaml", **spec}, "s")
    assert needle in str(info.value)


# --- running -----------------------------------------------------------------------------------------------------


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # lr 1e6 makes the loss NaN in epoch 1 (RunFailed inside the trial); the trial after it still runs.
    path = write_sweep(tmp_path, {"params": {"train.lr": [0.1, 1e6, 0.05]}, "seed": GRID_AS_LISTED})
    out = invoke("sweep", path, "--dir", tmp_path / "sw")
    assert out.exit_code == 1, out.stderr
    assert (
        out.stderr.strip().splitlines()[-1] == "mlptrain: error: 1 of 3 trials failed; the others ran (see the table)"
    )
    trials = manifest(tmp_path / "sw")["trials"]
    assert [t["state"] for t in trials] == ["done", "failed", "done"]
    assert "diverged in epoch 1" in trials[1]["reason"] and trials[0]["reason"] == ""
    assert [t["dir"] for t in trials] == ["001-lr=0.1", "002-lr=1e+06", "003-lr=0.05"]
    assert (tmp_path / "sw" / "sweep.yaml").read_text() == path.read_text()
    for t in (trials[0], trials[2]):  # ordinary run folders
        assert {"config.yaml", "metrics.csv", "best.pt", "last.pt"} <= {
            p.name for p in (tmp_path / "sw" / t["dir"]).iterdir()
        }
    assert "trial 2/3 failed: the loss diverged" in out.stdout

    listed = invoke("runs", tmp_path / "sw", "--json")
    assert listed.exit_code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    accs = [r["value"] for r in rows if r["state"] == "done"]
    assert accs == sorted(accs, reverse=True) and len(accs) == 2  # best first on val_acc
    assert [r["best"] for r in rows] == [True, False, False]
    assert rows[-1]["state"] == "failed" and rows[-1]["value"] is None and "diverged" in rows[-1]["reason"]
    assert all(r["differs"] == {"train.lr": r["values"]["train.lr"]} for r in rows)

    # Resuming a sweep with nothing left to run skips done and failed trials alike: nothing is trained again.
    before = {t["dir"]: (tmp_path / "sw" / t["dir"] / "metrics.csv").read_bytes() for t in trials}
    again = invoke("sweep", "--resume", tmp_path / "sw")
    assert again.exit_code == 1 and "0 to run" in again.stdout
    assert {d: (tmp_path / "sw" / d / "metrics.csv").read_bytes() for d in before} == before


def test_the_table_shows_only_the_keys_that_vary_and_marks_the_best(tmp_path):
    path = write_sweep(tmp_path, {"params": {"model.hidden": [[16], [8]], "train.lr": [0.1]}})
    assert invoke("sweep", path, "--dir", tmp_path / "sw", "--quiet").exit_code == 0
    out = invoke("runs", tmp_path / "sw", "--out", tmp_path / "sw.png")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[1].split()
    assert header[:2] == ["#", "model.hidden"] and "train.lr" not in header
    best = [line for line in lines[2:4] if line.endswith("best")]
    assert len(best) == 1 and best[0] == lines[2]  # the best is the first row
    assert (tmp_path / "sw.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {tmp_path / 'sw.png'}" in out.stdout
    cli_in_fresh_python(["runs", tmp_path / "sw"])  # the manifest and small files only: no torch, so instant


def test_a_trial_whose_config_yaml_cannot_be_read_is_listed_without_scores_and_said(tmp_path):
    path = write_sweep(tmp_path, {"params": {"train.lr": [0.1, 0.05]}, "seed": GRID_AS_LISTED})
    assert invoke("sweep", path, "--dir", tmp_path / "sw", "--quiet").exit_code == 0
    broken = tmp_path / "sw" / manifest(tmp_path / "sw")["trials"][1]["dir"] / "config.yaml"
    broken.write_text("train: {lr: [\n")
    out = invoke("runs", tmp_path / "sw", "--json")
    assert out.exit_code == 0, out.stderr
    assert [r["value"] is None for r in json.loads(out.stdout)] == [False, True]
    first, count = out.stderr.strip().splitlines()
    assert str(broken) in first and "not valid YAML" in first and "1 run folder left out" in count


def test_the_table_shows_drawn_floats_to_four_digits_and_json_keeps_them_whole(tmp_path):
    spec = {"method": "random", "trials": 2, "seed": 5, "params": {"train.lr": {"low": 0.01, "high": 0.2}}}
    assert invoke("sweep", write_sweep(tmp_path, spec), "--dir", tmp_path / "sw", "-q").exit_code == 0
    drawn = [t["values"]["train.lr"] for t in json.loads(invoke("runs", tmp_path / "sw", "--json").stdout)]
    assert len(drawn) == 2 and all(len(repr(lr)) > 8 for lr in drawn)  # draws, not round numbers
    table = invoke("runs", tmp_path / "sw").stdout
    for lr in drawn:
        assert f" {lr:.4g} " in table and repr(lr) not in table


def test_a_trial_whose_thread_count_changes_between_epochs_runs_on(tmp_path, monkeypatch):
    # threads: auto re-checks the load after each epoch; a change is reported through the sweep's callbacks too.
    from mlptrain.core.threads import ThreadChoice
    from mlptrain.run import trainer

    def recheck(current, load=None):
        return ThreadChoice(current.threads % 2 + 1, "2 cores, as the test says")

    monkeypatch.setattr(trainer, "recheck", recheck)
    monkeypatch.setattr(trainer, "adapts", lambda *args: True)
    path = write_sweep(tmp_path, {"params": {"train.lr": [0.1, 0.05]}})
    out = invoke("sweep", path, "--dir", tmp_path / "sw")
    assert out.exit_code == 0, out.stderr
    assert [t["state"] for t in manifest(tmp_path / "sw")["trials"]] == ["done", "done"]
    assert "from epoch 2" in out.stdout  # the change, as a run's own output says it


def test_every_trial_is_validated_before_any_runs(tmp_path):
    path = write_sweep(tmp_path, {"params": {"model.hidden": [[16], [8]], "model.dropout": [0.1, 1.5]}})
    out = invoke("sweep", path, "--dir", tmp_path / "sw")
    assert out.exit_code == 2
    assert out.stderr.strip() == (
        f"mlptrain: error: {path}: combination 2 (model.hidden=[16], model.dropout=1.5): model.dropout: "
        "must be in [0, 1), got 1.5"
    )
    assert not (tmp_path / "sw").exists()


def test_dir_holding_a_sweep_is_refused_and_trials_extend_a_random_sweep(tmp_path):
    spec = {"method": "random", "trials": 1, "seed": 5, "params": {"train.lr": {"low": 0.01, "high": 0.2}}}
    path = write_sweep(tmp_path, spec)
    folder = tmp_path / "sw"
    assert invoke("sweep", path, "--dir", folder, "-q").exit_code == 0
    out = invoke("sweep", path, "--dir", folder)
    assert out.exit_code == 2 and f"continue it with --resume {folder}" in out.stderr
    first = manifest(folder)["trials"]
    assert invoke("sweep", "--resume", folder, "--trials", 2, "-q").exit_code == 0
    grown = manifest(folder)["trials"]
    assert grown[0] == first[0] and [t["state"] for t in grown] == ["done", "done"]
    assert grown[1]["values"] == draws({**spec, "trials": 2})[1]
    out = invoke("sweep", "--resume", folder, "--trials", 1)
    assert out.exit_code == 2 and "already has 2 trials; it can only grow" in out.stderr


# --- interrupted for real: a subprocess killed mid-trial ---------------------------------------------------------

# Slow enough (batches of 4) that a signal sent after trial 1's first epoch lands inside trial 1. One thread: at batch
# 4 and 16 units MKL's results depend on the thread count (README, Reproducibility) and auto's count follows the
# machine's load, so the uninterrupted reference and a trial continued elsewhere compare bit for bit only at one count.
SLOW = {**BASE, "threads": 1, "data": {**BASE["data"], "synthetic_size": 1200, "val_size": 200},
        "train": {**BASE["train"], "epochs": 3, "batch_size": 4}}  # fmt: skip
SLOW_SPEC = {"params": {"train.lr": [0.05, 0.02]}, "seed": GRID_AS_LISTED}


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory) -> Path:
    """The same sweep, never interrupted, run in this process."""
    tmp = tmp_path_factory.mktemp("ref")
    job = sweep_start.create(write_sweep(tmp, SLOW_SPEC, SLOW), folder=tmp / "sw")
    sweep_start.run(job)
    return tmp / "sw"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, -9), (signal.SIGINT, 130)])
def test_resume_after_a_trial_is_stopped_mid_way(tmp_path, reference_sweep, sig, code):
    path = write_sweep(tmp_path, SLOW_SPEC, SLOW)
    folder = tmp_path / "sw"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlptrain", "sweep", str(path), "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while not (line := proc.stdout.readline()).startswith("epoch 1/3"):  # trial 1's first epoch is in last.pt
        assert line or proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no 'epoch 1/3' line"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    trials = manifest(folder)["trials"]  # trial 2 is not drawn yet
    assert [t["state"] for t in trials] == ["running" if sig == signal.SIGKILL else "interrupted"]
    assert (folder / trials[0]["dir"] / "last.pt").is_file()
    assert [p.name for p in folder.glob("0*")] == [trials[0]["dir"]]
    if sig == signal.SIGINT:
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == f"resume with: mlptrain sweep --resume {folder}"

    out = invoke("sweep", "--resume", folder)
    assert out.exit_code == 0, out.stderr
    assert f"trial 1/2 {trials[0]['dir']} (resuming from its last.pt)" in out.stdout
    trials = manifest(folder)["trials"]
    assert [t["state"] for t in trials] == ["done", "done"]
    for t in trials:  # exactly the numbers of the sweep that was never stopped
        assert metrics(folder / t["dir"]) == metrics(reference_sweep / t["dir"])
    assert all(math.isfinite(float(row[1])) for row in metrics(folder / trials[1]["dir"]))


class StopAfterTrial(sweep_folder.SweepCallbacks):
    """Asks for a stop as trial `index` finishes, as a Ctrl-C between two trials would."""

    def __init__(self, stop, index: int):
        self.stop, self.index = stop, index

    def trial_done(self, trial, total):
        if trial.index == self.index:
            self.stop.request(signal.SIGINT)


def test_a_stop_between_trials_leaves_the_next_one_to_run(tmp_path):
    from mlptrain.base.errors import Interrupted
    from mlptrain.run.interrupt import StopRequest

    job = sweep_start.create(write_sweep(tmp_path, {"params": {"train.lr": [0.1, 0.05]}}), folder=tmp_path / "sw")
    stop = StopRequest()
    with pytest.raises(Interrupted) as info:
        sweep_start.run(job, StopAfterTrial(stop, 1), stop)
    assert info.value.exit_code == 130
    assert str(info.value) == "SIGINT: the sweep stopped before trial 2/2 (1 of 2 trials done)"
    assert info.value.resume_command == f"mlptrain sweep --resume {tmp_path / 'sw'}"
    assert [t["state"] for t in manifest(tmp_path / "sw")["trials"]] == ["done"]  # the next is drawn when run
    assert [t.state for t in sweep_start.run(sweep_folder.load(tmp_path / "sw"))] == ["done", "done"]


def test_a_crashing_trial_is_failed_and_bad_data_stops_the_sweep(tmp_path, monkeypatch):
    from mlptrain.run import trainer

    real_train = trainer.train

    def train_that_crashes(config, **kwargs):
        if config.train.lr == 0.05:
            raise RuntimeError("out of memory")
        return real_train(config, **kwargs)

    monkeypatch.setattr(trainer, "train", train_that_crashes)
    spec = {"params": {"train.lr": [0.05, 0.1]}, "seed": GRID_AS_LISTED}
    job = sweep_start.create(write_sweep(tmp_path, spec), folder=tmp_path / "sw")
    trials = sweep_start.run(job)
    assert [(t.state, t.reason) for t in trials] == [("failed", "RuntimeError: out of memory"), ("done", "")]

    # A dataset that is not there fails every trial alike: the sweep stops (exit 2), the trial stays to be run.
    base = {**BASE, "data": {"dataset": "mnist", "root": str(tmp_path / "none"), "download": False}}
    out = invoke("sweep", write_sweep(tmp_path / "bad", {"params": {"train.lr": [0.1]}}, base), "--dir", tmp_path / "b")
    assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1 and "train-images" in out.stderr
    assert [t["state"] for t in manifest(tmp_path / "b")["trials"]] == ["pending"]
    assert not (tmp_path / "b" / "001-lr=0.1").exists()


@pytest.mark.parametrize(
    ("asked", "trials", "cores", "expected"),
    [
        (64, 2, 16, (2, "--workers 64: starting 2, one per trial (2 trials)")),
        (8, 100, 2, (2, "--workers 8: starting 2, one per core (2 cores here)")),
        (2, 10, 4, (2, None)),
        (1, 1, 1, (1, None)),
    ],
)
def test_workers_are_capped_at_the_trials_and_the_cores(monkeypatch, asked, trials, cores, expected):
    from mlptrain.sweep import workers

    monkeypatch.setattr(workers, "_cores", lambda: list(range(cores)))
    assert workers.capped(asked, trials) == expected


def test_trials_leave_their_curves_to_mlptrain_plot(tmp_path):
    # Drawing curves.png cost a 1-epoch smoke trial more than its training (0.3 s): a trial does not draw it, and
    # `mlptrain plot` draws it on demand from the trial's metrics.csv.
    path = write_sweep(tmp_path, {"params": {"train.lr": [0.1, 0.05]}, "seed": GRID_AS_LISTED})
    out = invoke("sweep", path, "--dir", tmp_path / "sw")
    assert out.exit_code == 0, out.stderr
    trials = [tmp_path / "sw" / t["dir"] for t in manifest(tmp_path / "sw")["trials"]]
    assert [(d / "best.pt").is_file() and not (d / "curves.png").exists() for d in trials] == [True, True]
    drawn = invoke("plot", trials[0])
    assert drawn.exit_code == 0, drawn.stderr
    assert (trials[0] / "curves.png").is_file()
