"""One engine for grid, random and tpe (Optuna's samplers, seeded), and workers that join a sweep by its database
URL from another machine: no file of the first machine's, trial counts kept, a dead worker's trial re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import BASE, REPO, invoke, manifest, write_sweep

from mlptrain.sweep import folder as sweep_folder
from mlptrain.sweep import spec as sweep_spec
from mlptrain.sweep import start as sweep_start

optuna = pytest.importorskip("optuna")
from mlptrain.sweep import internals, study  # noqa: E402 - needs optuna

GRID = {"params": {"train.lr": [0.1, 0.05, 0.02], "model.hidden": [[8], [16]]}, "seed": 3}
RANDOM = {"method": "random", "trials": 4, "seed": 11, "params": {"train.lr": {"low": 1e-3, "high": 0.5, "log": True},
          "train.batch_size": {"low": 20, "high": 60}, "model.hidden": [[8], [16]]}}  # fmt: skip
# Six trials slow enough (batches of 5) that two workers both get some.
SIX = {"method": "random", "trials": 6, "seed": 1, "params": {"train.lr": {"low": 0.01, "high": 0.2, "log": True}}}
SIX_BASE = {**BASE, "train": {**BASE["train"], "batch_size": 5}}


def values(folder: Path) -> list[tuple[int, dict]]:
    return [(t["index"], t["values"]) for t in manifest(folder)["trials"]]


@pytest.mark.parametrize("spec", [GRID, RANDOM], ids=["grid", "random"])
def test_the_same_file_gives_the_same_trials_in_one_worker(tmp_path, spec):
    path = write_sweep(tmp_path, spec)
    for folder in ("a", "b"):
        out = invoke("sweep", path, "--dir", tmp_path / folder, "-q")
        assert out.exit_code == 0, out.stderr
    assert values(tmp_path / "a") == values(tmp_path / "b")
    drawn = [v for _, v in values(tmp_path / "a")]
    assert [t["dir"] for t in manifest(tmp_path / "a")["trials"]] == [
        sweep_folder.trial_name(i, v) for i, v in enumerate(drawn, 1)
    ]
    if spec is GRID:  # every combination once, in an order the seed shuffles
        combinations = sweep_spec.parse_spec({"base": "b", **spec}, "s").combinations()
        assert sorted(map(json.dumps, drawn)) == sorted(map(json.dumps, combinations)) and len(drawn) == 6
        assert drawn != combinations
    else:  # ranges keep their meaning: integer ends give integers, every value inside its range
        assert len(drawn) == 4 and len({v["train.lr"] for v in drawn}) == 4
        assert all(isinstance(v["train.batch_size"], int) and 20 <= v["train.batch_size"] <= 60 for v in drawn)
        assert all(isinstance(v["train.lr"], float) and 1e-3 <= v["train.lr"] <= 0.5 for v in drawn)
        assert all(v["model.hidden"] in ([8], [16]) for v in drawn)
    frozen = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a' / 'study.db'}").trials
    assert [t.user_attrs[study.FOLDER] for t in frozen] == [
        str((tmp_path / "a" / t["dir"]).resolve()) for t in manifest(tmp_path / "a")["trials"]
    ]  # each Optuna trial names its run folder (and host); the folder's manifest entry names its trial number
    assert [t["number"] for t in manifest(tmp_path / "a")["trials"]] == [t.number for t in frozen]


def test_a_grid_s_seed_orders_it():
    orders = {
        seed: [json.dumps(v) for v in _draw_all({**GRID, "seed": seed})] for seed in range(4)
    }  # every seed runs every combination, not all in one order
    assert all(sorted(order) == sorted(orders[0]) for order in orders.values())
    assert len({tuple(order) for order in orders.values()}) > 1


def _draw_all(raw: dict) -> list[dict]:
    spec = sweep_spec.parse_spec({"base": "b", **raw}, "s")
    made, dists, out = optuna.create_study(sampler=study._sampler(spec)), study.distributions(spec.params), []
    for _ in range(spec.size):
        asked = made.ask()
        out.append(study.suggest(asked, dists))
        made.tell(asked, 0.0)
    return out


def join(url: str, cwd: Path, *args) -> subprocess.Popen:
    """`mlptrain sweep --join URL` started from `cwd`, as on another machine."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlptrain", "sweep", "--join", url, "-q", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
        cwd=cwd,
    )


def test_two_workers_join_by_url_from_another_folder_and_run_each_trial_once(tmp_path):
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    made = sweep_start.create(write_sweep(tmp_path / "a", SIX, SIX_BASE), folder=tmp_path / "a" / "sw", storage=url)
    assert made.study == "sw"
    (tmp_path / "a").rename(tmp_path / "gone")  # machine A's files: out of reach
    (tmp_path / "b").mkdir()
    workers = [join(url, tmp_path / "b"), join(url, tmp_path / "b", "--dir", tmp_path / "b" / "mine")]
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    folders = [tmp_path / "b" / "runs" / "sw", tmp_path / "b" / "mine"]  # <output.dir>/<study name>, or --dir
    ran = [manifest(folder)["trials"] for folder in folders]
    assert all(ran), "both workers ran trials"
    numbers = sorted(t["number"] for trials in ran for t in trials)
    assert numbers == list(range(6))  # no trial twice, no more than `trials` in all
    assert all(t["state"] == "done" for trials in ran for t in trials)
    trials = optuna.load_study(study_name="sw", storage=url).trials
    # Two workers asking for the last trial at once make one too many: marked surplus and failed, never run.
    surplus = [t for t in trials if t.user_attrs.get(study.SURPLUS)]
    assert all(t.state.name == "FAIL" and study.WORKERS not in t.user_attrs for t in surplus)
    frozen = [t for t in trials if not t.user_attrs.get(study.SURPLUS)]
    assert [t.number for t in frozen] == list(range(6))
    assert [t.state.name for t in frozen] == ["COMPLETE"] * 6
    assert all(len(t.user_attrs[study.WORKERS]) == 1 for t in frozen)
    for folder, trials in zip(folders, ran, strict=True):
        for t in trials:  # the Optuna trial and the local run folder point at each other
            assert frozen[t["number"]].user_attrs[study.FOLDER] == str((folder / t["dir"]).resolve())
            assert t["dir"] == sweep_folder.trial_name(t["number"] + 1, t["values"])
        assert manifest(folder)["study"] == {"storage": url, "name": "sw"}
        listed = invoke("runs", folder, "--json")
        assert listed.exit_code == 0 and {r["run"] for r in json.loads(listed.stdout)} == {t["dir"] for t in trials}
        again = invoke("sweep", "--resume", folder)  # rejoins the same storage: nothing left
        assert again.exit_code == 0 and "0 to run" in again.stdout, again.stderr
    run_dir = folders[0] / ran[0][0]["dir"]
    assert invoke("eval", run_dir / "best.pt").exit_code == 0
    assert invoke("plot", run_dir, "--out", tmp_path / "p.png").exit_code == 0


def test_join_by_url_problems_are_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    out = invoke("sweep", "--join", url)
    assert out.exit_code == 2 and out.stderr.strip().endswith(f"no such database file {tmp_path / 'study.db'}")
    assert not (tmp_path / "study.db").exists()  # not made empty by asking
    optuna.create_study(storage=url, study_name="not-ours")  # a database with a study that no sweep made
    out = invoke("sweep", "--join", url)
    assert out.exit_code == 2 and "holds no mlptrain sweep" in out.stderr
    for name in ("one", "two"):
        sweep_start.create(write_sweep(tmp_path / name, {"params": {"train.lr": [0.1]}}), folder=tmp_path / name / "sw",
                     storage=url)  # fmt: skip
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["not-ours", "sw", "sw-2"]  # made unique
    out = invoke("sweep", "--join", url)
    assert out.exit_code == 2
    assert out.stderr.strip() == f"mlptrain: error: {url} holds 2 sweeps (sw, sw-2); pick one with --study NAME"
    out = invoke("sweep", "--join", url, "--study", "sw-3")
    assert out.exit_code == 2 and "study 'sw-3' is not there (it holds: sw, sw-2)" in out.stderr
    out = invoke("sweep", "--resume", tmp_path / "one" / "sw", "--study", "sw")
    assert out.exit_code == 2 and "it goes with --join URL" in out.stderr
    out = invoke("sweep", "--join", url, "--study", "sw-2", "--dir", tmp_path / "one" / "sw")
    assert out.exit_code == 2 and "holds a sweep of study 'sw'" in out.stderr
    for bad in ("postgresql://mlp:secret@127.0.0.1:1/sweeps", "postgresql:/mlp:secret@host"):
        out = invoke("sweep", "--join", bad)
        assert out.exit_code == 2 and "cannot open the study at" in out.stderr, out.stderr
        assert "secret" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = invoke("sweep", "--join", url, "--study", "sw-2", "--dir", tmp_path / "joined", "-q")
    assert out.exit_code == 0, out.stderr  # and joining works


def test_a_dead_worker_s_trial_on_another_host_is_run_again_from_its_start(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "GRACE", 1)  # seconds without a heartbeat before a trial is stale
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = {"method": "random", "trials": 3, "seed": 4, "params": {"train.lr": {"low": 0.01, "high": 0.2}}}
    sweep_start.create(write_sweep(tmp_path / "a", spec), folder=tmp_path / "a" / "sw", storage=url)
    there = optuna.load_study(
        study_name="sw", storage=url, sampler=study._sampler(sweep_folder.load(tmp_path / "a" / "sw").spec)
    )
    dists = study.distributions(spec["params"])
    remote, home = [], sweep_folder.load(tmp_path / "a" / "sw")
    for paused in (False, True):  # two trials a worker on machine A started, then died (or was stopped)
        asked = there.ask()
        drawn = study.suggest(asked, dists)
        asked.set_user_attr(study.HOST, "elsewhere")
        asked.set_user_attr(study.PAUSED, paused)
        internals.beat(there, internals.id_of(asked))
        remote.append(asked.number)
        n = asked.number
        home.record(sweep_folder.Trial(n + 1, sweep_folder.trial_name(n + 1, drawn), drawn, "running", number=n))
    (tmp_path / "a").rename(tmp_path / "gone")  # machine A is out of reach
    time.sleep(2.5)  # SQLite's clock counts whole seconds
    out = invoke("sweep", "--join", url, "--dir", tmp_path / "b")
    assert out.exit_code == 0, out.stderr
    frozen = optuna.load_study(study_name="sw", storage=url).trials
    dead, paused = frozen[remote[0]], frozen[remote[1]]
    assert dead.state.name == "FAIL" and dead.user_attrs[study.STALE]
    assert paused.state.name == "RUNNING"  # stopped on purpose: left for its own host's --resume
    again = [t for t in frozen if t.user_attrs.get(study.RERUN_OF) == dead.number]
    assert len(again) == 1 and again[0].state.name == "COMPLETE" and again[0].params == dead.params
    counted = [t for t in frozen if not t.user_attrs.get(study.STALE) and not t.user_attrs.get(study.SURPLUS)]
    assert len(counted) == 3  # the re-run took the dead trial's place in the count
    mine = manifest(tmp_path / "b")["trials"]
    assert again[0].number in {t["number"] for t in mine} and all(t["state"] == "done" for t in mine)
    assert remote[1] not in {t["number"] for t in mine}
    monkeypatch.setattr(study, "GRACE", 120)
    back = invoke("sweep", "--resume", tmp_path / "gone" / "sw", "-q")  # machine A back: its own --resume
    assert back.exit_code == 1, back.stderr  # the trial that ran again elsewhere counts as failed here
    home = manifest(tmp_path / "gone" / "sw")["trials"]
    assert [(t["number"], t["state"]) for t in home] == [(remote[0], "failed"), (remote[1], "done")]
    assert home[0]["reason"] == f"its worker stopped answering; trial {again[0].number + 1} ran it again"
    assert optuna.load_study(study_name="sw", storage=url).trials[remote[1]].state.name == "COMPLETE"
