"""`mlptrain sweep --timeout`: no trial starts after the deadline, every worker keeps it, and --resume goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_sweep import BASE, REPO
from typer.testing import CliRunner

from mlptrain.base.errors import ConfigError
from mlptrain.sweep import folder as sweep_folder
from mlptrain.sweep import start as sweep_start
from mlptrain.sweep import workers as sweep_workers
from mlptrain.sweep.start import Budget, budget_end

TPE = {"method": "tpe", "trials": 1000, "seed": 0, "params": {"train.lr": {"low": 0.01, "high": 0.5, "log": True}}}
GRID = {"params": {"train.lr": [0.1, 0.05]}}


def write_sweep(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **spec}, sort_keys=False))
    return path


def invoke(*args):
    from mlptrain.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def done(folder: Path) -> int:
    return sum(t.state in sweep_folder.FINISHED for t in sweep_folder.load(folder).trials)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), 1e12])
def test_a_budget_outside_its_range_is_refused_in_one_line(seconds):
    with pytest.raises(ConfigError, match=r"^--timeout \S+: must be above 0 and at most 2,592,000 seconds"):
        Budget.starting(seconds, time.time())


def test_no_trial_starts_once_the_deadline_has_passed_and_resume_goes_on(tmp_path):
    job = sweep_start.create(write_sweep(tmp_path, GRID), folder=tmp_path / "sw")
    spent = Budget(10.0, time.time() - 1)  # already over: a clock that needs no waiting
    trials = sweep_start.run(job, budget=spent)
    assert [t.state for t in trials] == []  # nothing drawn, nothing run
    end = budget_end(job, spent)
    assert (end.done, end.total) == (0, 2)
    assert end.to_json() == {"reason": "timeout", "seconds": 10.0, "trials_done": 0, "trials": 2,
                             "resume": f"mlptrain sweep --resume {tmp_path / 'sw'}"}  # fmt: skip
    ample = Budget(3600.0, time.time() + 3600)
    resumed = sweep_folder.load(tmp_path / "sw")
    assert [t.state for t in sweep_start.run(resumed, budget=ample)] == ["done", "done"]
    assert budget_end(resumed, ample) is None  # all its trials done: the budget did not end it
    assert budget_end(resumed, spent) is None


def test_a_worker_started_by_workers_keeps_its_parents_deadline(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(sweep_workers.subprocess, "Popen", lambda argv, **kw: started.append(kw["env"]))
    sweep_workers._start(tmp_path, [0], 1, 1234.5)
    sweep_workers._start(tmp_path, [0], 2, None)
    assert started[0][sweep_workers.DEADLINE_ENV] == "1234.5" and sweep_workers.DEADLINE_ENV not in started[1]
    # The worker's own `sweep --join` has no --timeout: its run takes the inherited deadline, and starts nothing.
    monkeypatch.setenv(sweep_workers.DEADLINE_ENV, repr(time.time() - 1))
    job = sweep_start.create(write_sweep(tmp_path, GRID), folder=tmp_path / "sw")
    assert sweep_start.run(job) == []
    monkeypatch.delenv(sweep_workers.DEADLINE_ENV)
    assert sweep_workers.inherited_deadline() is None


def test_timeout_ends_a_long_sweep_and_resume_adds_trials(tmp_path):
    path = write_sweep(tmp_path, TPE)
    first = invoke("sweep", path, "--dir", tmp_path / "sw", "--timeout", 3, "--json")
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    stopped = out["stopped"]
    assert stopped["reason"] == "timeout" and stopped["trials"] == 1000
    assert 1 <= stopped["trials_done"] < 1000 and stopped["trials_done"] == done(tmp_path / "sw")
    assert len(out["trials"]) == stopped["trials_done"]  # none left half-way: those under way finished

    again = invoke("sweep", "--resume", tmp_path / "sw", "--timeout", 3)
    assert again.exit_code == 0, again.output
    now = done(tmp_path / "sw")
    assert now > stopped["trials_done"]
    assert (
        f"stopped: time budget of 3 s reached, {now:,} of 1,000 trials done; "
        f"`mlptrain sweep --resume {tmp_path / 'sw'}` continues"
    ) in again.stdout


def test_timeout_in_a_real_process_with_workers(tmp_path):
    job = sweep_start.create(write_sweep(tmp_path, {**TPE, "trials": 100}), folder=tmp_path / "sw")
    sweep_start.run(job, budget=Budget(10.0, time.time() - 1))  # the folder, no trial yet
    out = subprocess.run(
        [sys.executable, "-m", "mlptrain", "sweep", "--resume", str(tmp_path / "sw"), "--timeout", "2", "--workers",
         "2"], capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    n = done(tmp_path / "sw")
    assert n < 100 and f"stopped: time budget of 2 s reached, {n} of 100 trials done" in out.stdout
    trials = sweep_folder.load(tmp_path / "sw").trials
    assert all(t.state in sweep_folder.FINISHED for t in trials)  # every worker finished what it had started
