"""The sweep engine on Optuna: tpe, pruning, the study beside the manifest, workers sharing one study, a worker
killed mid-trial, a version-1 sweep folder, and a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_in_fresh_python
from test_sweep import BASE, REPO, SLOW, SLOW_SPEC, StopAfterTrial, invoke, manifest, metrics, write_sweep
from test_sweep import reference_sweep as reference_sweep

from mlptrain.base.errors import ConfigError, Interrupted
from mlptrain.base.files import LOCK_FILE
from mlptrain.sweep import spec as sweep_spec
from mlptrain.sweep import start as sweep_start

optuna = pytest.importorskip("optuna")  # the `sweep` extra

TPE = {"method": "tpe", "trials": 4, "seed": 2, "params": {"train.lr": {"low": 1e-3, "high": 0.5, "log": True},
       "model.hidden": [[8], [16]]}}  # fmt: skip


# Six trials slow enough (batches of 5) that a second worker, a second or two to start, gets some of them.
SHARED = {
    "spec": {"params": {"train.lr": [0.1, 0.05, 0.02, 0.01, 0.005, 0.002], "model.hidden": [[8]]}},
    "base": {**BASE, "train": {**BASE["train"], "batch_size": 5}},
}


def study_of(folder: Path, storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{folder / 'study.db'}"
    return optuna.load_study(study_name=manifest(folder)["study"]["name"], storage=url)


def states(folder: Path) -> list[str]:
    return [t["state"] for t in manifest(folder)["trials"]]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"pruner": "mean"}, "'mean' is not one of none, median, hyperband"),
        ({"pruner": {"name": "median", "warmup": 1}}, "median takes no 'warmup' (did you mean 'warmup_epochs'?)"),
        ({"pruner": {"name": "hyperband", "reduction_factor": 1}}, "reduction_factor: a whole number in [2,"),
        ({"method": "tpe", "params": {"train.lr": [0.1]}}, "trials: a tpe sweep needs a number of trials"),
    ],
)
def test_method_and_pruner_problems_name_the_key(changes, needle):
    with pytest.raises(ConfigError, match=r"^s: ") as info:
        sweep_spec.parse_spec({"base": "b.yaml", "params": {"train.lr": [0.1]}, **changes}, "s")
    assert needle in str(info.value)


def test_a_tpe_sweep_keeps_its_study_beside_the_trials_and_repeats_itself_in_one_worker(tmp_path):
    path = write_sweep(tmp_path, TPE)
    for folder in (tmp_path / "a", tmp_path / "b"):
        assert invoke("sweep", path, "--dir", folder, "-q").exit_code == 0
    assert [t["values"] for t in manifest(tmp_path / "a")["trials"]] == [
        t["values"] for t in manifest(tmp_path / "b")["trials"]
    ]
    trials = manifest(tmp_path / "a")["trials"]
    assert [(t["index"], t["number"], t["state"]) for t in trials] == [(i, i - 1, "done") for i in range(1, 5)]
    assert all(1e-3 <= t["values"]["train.lr"] <= 0.5 and t["values"]["model.hidden"] in ([8], [16]) for t in trials)
    study = study_of(tmp_path / "a")
    rows = {r["trial"]: r for r in json.loads(invoke("runs", tmp_path / "a", "--json").stdout)}
    for frozen in study.trials:  # the Optuna trial and the run folder point at each other
        assert frozen.state == optuna.trial.TrialState.COMPLETE
        assert frozen.value == rows[frozen.number + 1]["value"]
        assert frozen.params["train.lr"] == rows[frozen.number + 1]["values"]["train.lr"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # train.monitor: val_acc
    listed = invoke("runs", tmp_path / "a", "--out", tmp_path / "a.png")
    assert f"{tmp_path / 'a'} (tpe)" in listed.stdout
    assert f"plot: {tmp_path / 'a-study.png'}" in listed.stdout  # the history and each key's importance
    assert (tmp_path / "a-study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --trials grows a tpe sweep too
    assert invoke("sweep", "--resume", tmp_path / "a", "--trials", 5, "-q").exit_code == 0
    assert states(tmp_path / "a") == ["done"] * 5 and len(study_of(tmp_path / "a").trials) == 5


def test_median_pruning_stops_hopeless_trials_at_an_epoch_boundary(tmp_path):
    spec = {
        "params": {"train.lr": [0.1, 0.08, 1e-6, 2e-6]},
        "pruner": {"name": "median", "startup_trials": 2},
        "seed": 68,
    }  # fmt: skip  (a seed whose shuffle of the grid keeps it in the order listed)
    base = {**BASE, "train": {**BASE["train"], "epochs": 3}}
    folder = tmp_path / "sw"
    out = invoke("sweep", write_sweep(tmp_path, spec, base), "--dir", folder, "-q")
    assert out.exit_code == 0, out.stderr  # a pruned trial is not a failure
    trials = manifest(folder)["trials"]
    assert states(folder) == ["done", "done", "pruned", "pruned"]
    assert [t["reason"] for t in trials[2:]] == ["pruned at epoch 1"] * 2
    for t in trials[2:]:  # the run folder stays, with its checkpoints, as an ordinary run
        assert {"last.pt", "best.pt", "metrics.csv", "config.yaml"} <= {p.name for p in (folder / t["dir"]).iterdir()}
        assert len(metrics(folder / t["dir"])) == 1
    study = study_of(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert study.trials[0].intermediate_values.keys() == {1, 2, 3}  # each epoch's val_acc was reported
    rows = json.loads(invoke("runs", folder, "--json").stdout)
    assert [r["state"] for r in rows[-2:]] == ["pruned", "pruned"] and rows[0]["best"]
    again = invoke("sweep", "--resume", folder)
    assert again.exit_code == 0 and "0 to run" in again.stdout


def test_a_version_1_sweep_folder_lists_and_moves_into_a_study_on_resume(tmp_path):
    from mlptrain.run.interrupt import StopRequest

    folder = tmp_path / "sw"
    job = sweep_start.create(write_sweep(tmp_path, {"params": {"train.lr": [0.1, 0.05]}}), folder=folder)
    stop = StopRequest()
    with pytest.raises(Interrupted):
        sweep_start.run(job, StopAfterTrial(stop, 1), stop)
    old = manifest(folder)  # as the version before Optuna wrote it
    old["format_version"] = 1
    del old["study"]
    for t in old["trials"]:
        del t["number"]
    lr = ({0.1, 0.05} - {old["trials"][0]["values"]["train.lr"]}).pop()  # it listed every trial from the start
    pending = {"index": 2, "dir": f"002-lr={lr}", "values": {"train.lr": lr}, "state": "pending", "reason": ""}
    old["trials"].append(pending)
    (folder / "sweep.json").write_text(json.dumps(old))
    (folder / "study.db").unlink()
    listed = invoke("runs", folder, "--json")
    assert listed.exit_code == 0 and [r["state"] for r in json.loads(listed.stdout)] == ["done", "pending"]
    out = invoke("sweep", "--resume", folder, "-q")
    assert out.exit_code == 0, out.stderr
    moved = manifest(folder)
    assert moved["format_version"] == 2 and [t["number"] for t in moved["trials"]] == [0, 1]
    assert states(folder) == ["done", "done"]
    first = json.loads(invoke("runs", folder, "--json").stdout)
    study = study_of(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {t.number + 1: t.value for t in study.trials} == {r["trial"]: r["value"] for r in first}


def start_sweep(args: list, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlptrain", "sweep", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
    )


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path):
    path = write_sweep(tmp_path, SHARED["spec"], SHARED["base"])
    proc = start_sweep([path, "--dir", tmp_path / "sw", "--workers", 2, "-q"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert states(tmp_path / "sw") == ["done"] * 6
    study = study_of(tmp_path / "sw")
    ran_by = [t.user_attrs["mlptrain_workers"] for t in study.trials]
    assert all(len(workers) == 1 for workers in ran_by), ran_by  # no trial run twice
    assert len({workers[0] for workers in ran_by}) == 2  # both workers ran trials
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


def holder(folder: Path) -> int | None:
    try:
        text = (folder / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def test_a_worker_killed_mid_trial_leaves_a_trial_the_others_continue_exactly(tmp_path, reference_sweep):
    path = write_sweep(tmp_path, SLOW_SPEC, SLOW)
    folder = tmp_path / "sw"
    proc = start_sweep([path, "--dir", folder, "--workers", 2, "-q"])
    deadline, victim = time.monotonic() + 120, None
    while victim is None:  # the other worker (not this process's child) once its trial has a last.pt
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        for t in manifest(folder)["trials"] if (folder / "sweep.json").exists() else []:
            pid = holder(folder / t["dir"])
            if pid not in (None, proc.pid) and (folder / t["dir"] / "last.pt").exists():
                victim, killed = pid, t
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # the surviving worker continued the killed worker's trial
    if states(folder) != ["done", "done"]:  # or, had it finished its own first, --resume does
        assert invoke("sweep", "--resume", folder, "-q").exit_code == 0
    assert states(folder) == ["done", "done"]
    for t in manifest(folder)["trials"]:  # exactly the numbers of the sweep that was never stopped
        assert metrics(folder / t["dir"]) == metrics(reference_sweep / t["dir"])
    ran_by = study_of(folder).trials[killed["number"]].user_attrs["mlptrain_workers"]
    assert len(ran_by) == 2 and ran_by[0].endswith(f":{victim}")  # the killed worker, then the one that went on


def test_sigterm_to_a_sweep_with_workers_stops_them_all_at_a_batch_boundary(tmp_path):
    # Trials long enough (30 epochs, a few seconds) that both workers are inside one when the signal comes.
    spec = {"params": {"train.lr": [0.05, 0.02, 0.01, 0.005]}}
    path = write_sweep(tmp_path, spec, {**SLOW, "train": {**SLOW["train"], "epochs": 30}})
    folder = tmp_path / "sw"
    proc = start_sweep([path, "--dir", folder, "--workers", 2])
    deadline, running = time.monotonic() + 120, []
    while len(running) < 2:  # one trial per worker, each with an epoch saved
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
        trials = manifest(folder)["trials"] if (folder / "sweep.json").exists() else []
        running = [t for t in trials if t["state"] == "running" and (folder / t["dir"] / "last.pt").exists()]
    pids = {holder(folder / t["dir"]) for t in running} - {None}
    proc.send_signal(signal.SIGTERM)  # to the first worker only: it passes the stop on
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert [states(folder)[t["index"] - 1] for t in running] == ["interrupted", "interrupted"]
    assert "Traceback" not in err
    for pid in pids - {proc.pid}:  # the other worker is gone too
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    out = invoke("sweep", "--resume", folder)
    assert out.exit_code == 0, out.stderr
    assert "(resuming from its last.pt)" in out.stdout and states(folder) == ["done"] * 4


def test_help_and_listing_a_sweep_load_neither_torch_nor_optuna(tmp_path):
    folder = tmp_path / "sw"
    assert invoke("sweep", write_sweep(tmp_path, {"params": {"train.lr": [0.1]}}), "--dir", folder, "-q").exit_code == 0
    cli_in_fresh_python(["--help"], ["sweep", "--help"], ["runs", folder], forbid=("torch", "optuna"))


def test_a_hyperband_sweep_runs_with_its_settings(tmp_path):
    spec = {"method": "random", "trials": 4, "seed": 1, "pruner": {"name": "hyperband", "reduction_factor": 2},
            "params": {"train.lr": {"low": 1e-6, "high": 0.2, "log": True}}}  # fmt: skip
    folder = tmp_path / "sw"
    path = write_sweep(tmp_path, spec, {**BASE, "train": {**BASE["train"], "epochs": 4}})
    out = invoke("sweep", path, "--dir", folder)
    assert out.exit_code == 0, out.stderr
    assert manifest(folder)["spec"]["pruner"] == {"name": "hyperband", "min_epochs": 1, "reduction_factor": 2}
    assert set(states(folder)) <= {"done", "pruned"} and states(folder)[0] == "done"
    assert [t.state.name for t in study_of(folder).trials] == [
        {"done": "COMPLETE", "pruned": "PRUNED"}[s] for s in states(folder)
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:SECRETPW@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u@db/x?password=SECRETPW", "postgresql://u@db/x?password=***"),
        ("postgresql://u:p%40ss@db/x?sslpassword=SECRETPW&connect_timeout=3",
         "postgresql://u:***@db/x?sslpassword=***&connect_timeout=3"),
        ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ],
)  # fmt: skip
def test_a_url_is_shown_with_every_password_masked(url, shown):
    from mlptrain.base.urls import scrub, shown_url

    assert shown_url(url) == shown
    assert scrub(f"could not connect to {url}", url) == f"could not connect to {shown}"
    if shown != url:  # a driver that quotes the password alone, as written or unquoted
        assert scrub("password 'SECRETPW' or 'p@ss' refused", url) in (
            "password '***' or 'p@ss' refused",
            "password '***' or '***' refused",
        )
