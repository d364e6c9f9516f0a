"""MLflow tracking (output.mlflow), read back with MLflow's own client: one MLflow run per run folder, with every config
key as a param, each metrics.csv column per epoch, the best epoch as tags and the run's files as artifacts; a run
stopped and resumed stays one MLflow run with each epoch once; a sweep is one parent with a child per trial; a store
that cannot be reached, or a missing package, is one line; MLflow stays quiet and unimported unless asked for."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import StopAt
from typer.testing import CliRunner

from mlptrain.base.config import Config, load_config
from mlptrain.base.metrics import COLUMNS
from mlptrain.cli.main import app
from mlptrain.core.data import steps_per_epoch
from mlptrain.run import trainer
from mlptrain.run.callbacks import Callbacks
from mlptrain.run.interrupt import StopRequest
from mlptrain.sweep import start as sweep_start

pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[2]
EPOCHS, TRAIN_IMAGES, BATCH = 3, 1000, 64
STEPS = steps_per_epoch(TRAIN_IMAGES, BATCH)
TINY = {
    "name": "mlf",
    "device": "cpu",
    "seed": 5,
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32]},
    "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.1},
}


def tiny(store: str, **train) -> Config:
    return Config.from_dict({**TINY, "train": {**TINY["train"], **train}, "output": {"mlflow": store}})


def client(store: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


def runs_in(store: str, experiment: str = "mlf") -> list:
    found = client(store).get_experiment_by_name(experiment)
    return [] if found is None else client(store).search_runs([found.experiment_id])


def history(store: str, run_id: str, key: str = "val_acc") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(store).get_metric_history(run_id, key))


def csv_column(run_dir: Path, key: str = "val_acc") -> list[tuple[int, float]]:
    """(epoch, value) of each metrics.csv row, as the file holds it."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [(int(row["epoch"]), float(row[key])) for row in csv.DictReader(f)]


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_run_is_read_back_with_mlflows_client(tmp_path, store):
    run_dir = tmp_path / "run"
    trainer.train(tiny(store), run_dir=run_dir)
    (run,) = runs_in(store)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    params = run.data.params
    assert params["train.lr"] == "0.1" and params["model.hidden"] == "[32]" and params["data.dataset"] == "synthetic"
    for column in COLUMNS[1:]:
        assert history(store, run.info.run_id, column) == csv_column(run_dir, column), column
    assert [step for step, _ in history(store, run.info.run_id)] == [1, 2, 3]
    artifacts = {a.path for a in client(store).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "curves.png", "best.pt"} <= artifacts
    best_epoch, best = max(csv_column(run_dir), key=lambda row: row[1])
    assert run.data.tags["best_epoch"] == str(best_epoch) and float(run.data.tags["best_val_acc"]) == best


def test_every_config_key_is_a_param_by_its_dotted_name(tmp_path, store):
    from mlptrain.base.config import config_keys

    trainer.train(tiny(store, epochs=1), run_dir=tmp_path / "run")
    (run,) = runs_in(store)
    assert set(run.data.params) == set(config_keys())
    assert run.data.params["output.mlflow"] == store


def test_true_is_a_sqlite_store_beside_the_runs_recorded_as_an_absolute_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config.from_dict(
        {**TINY, "train": {**TINY["train"], "epochs": 1}, "output": {"dir": "out", "mlflow": True}}
    )
    result = trainer.train(config)
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert load_config(result.run_dir / "config.yaml").output.mlflow == uri
    assert (tmp_path / "out" / "mlflow.db").is_file() and len(runs_in(uri)) == 1
    assert (tmp_path / "out" / "mlartifacts").is_dir()  # beside the store, not in the folder the run started in
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


@pytest.mark.parametrize(("epoch", "batch"), [(1, 0), (2, 5)])
def test_a_run_stopped_and_resumed_is_one_mlflow_run_with_each_epoch_once(tmp_path, store, epoch, batch):
    run_dir, stop = tmp_path / "run", StopRequest()
    with pytest.raises(trainer.Interrupted):
        trainer.train(tiny(store), run_dir=run_dir, callbacks=StopAt(stop, epoch, batch), stop=stop)
    (stopped,) = runs_in(store)
    assert stopped.info.status == "KILLED" and [s for s, _ in history(store, stopped.info.run_id)] == [1]
    trainer.resume(run_dir)
    (run,) = runs_in(store)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    for column in COLUMNS[1:]:
        assert history(store, run.info.run_id, column) == csv_column(run_dir, column), column
    assert [step for step, _ in history(store, run.info.run_id)] == [1, 2, 3]


class _Killed(BaseException):
    """A kill -9 at a chosen moment: nothing after it runs."""


class _KillBeforeLogging(Callbacks):
    def epoch_started(self, epoch, epochs, steps, done):
        if epoch == 3:
            raise _Killed


def test_epochs_a_killed_run_never_logged_are_logged_on_resume(tmp_path, store, monkeypatch):
    """Killed after epoch 2's metrics.csv row, before MLflow had it: the resumed run logs epoch 2, then 3."""
    from mlptrain.run.mlflowlog import Tracking

    real = Tracking.log_epoch
    monkeypatch.setattr(Tracking, "log_epoch", lambda self, stats: None if stats.epoch == 2 else real(self, stats))
    run_dir = tmp_path / "run"
    with pytest.raises(_Killed):
        trainer.train(tiny(store), run_dir=run_dir, callbacks=_KillBeforeLogging())
    (run,) = runs_in(store)
    assert [s for s, _ in history(store, run.info.run_id)] == [1] and len(csv_column(run_dir)) == 2
    monkeypatch.setattr(Tracking, "log_epoch", real)
    trainer.resume(run_dir)
    (run,) = runs_in(store)
    assert history(store, run.info.run_id) == csv_column(run_dir) and len(csv_column(run_dir)) == 3


def test_an_epoch_mlflow_already_holds_is_not_logged_again(tmp_path, store):
    """Killed after MLflow logged epoch 3 but with last.pt and metrics.csv of epoch 2 (their state put back): the
    resumed run trains epoch 3 again, and MLflow keeps one value for it."""
    run_dir = tmp_path / "run"
    saved = tmp_path / "epoch2"

    class Keep(Callbacks):
        def epoch_saved(self, stats, is_best):  # epoch 2's files are on disk (epoch_done comes before them)
            if stats.epoch == 2:
                saved.mkdir()
                for name in ("last.pt", "best.pt", "metrics.csv"):
                    shutil.copy2(run_dir / name, saved / name)

    trainer.train(tiny(store), run_dir=run_dir, callbacks=Keep())
    for path in saved.iterdir():
        shutil.copy2(path, run_dir / path.name)
    trainer.resume(run_dir)
    (run,) = runs_in(store)
    assert history(store, run.info.run_id) == csv_column(run_dir) and len(csv_column(run_dir)) == 3


def test_force_over_a_finished_run_starts_a_new_mlflow_run(tmp_path, store):
    run_dir = tmp_path / "run"
    trainer.train(tiny(store, epochs=1), run_dir=run_dir)
    trainer.train(tiny(store, epochs=2), run_dir=run_dir, force=True)
    runs = runs_in(store)
    assert len(runs) == 2
    newest = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert [s for s, _ in history(store, newest)] == [1, 2]


def test_a_sweep_is_one_parent_run_with_a_child_per_trial(tmp_path, store):
    base = tmp_path / "base.yaml"
    base.write_text(
        "name: mlf\ndevice: cpu\ndata: {dataset: synthetic, synthetic_size: 600, val_size: 100}\n"
        f"train: {{epochs: 2, batch_size: 64}}\noutput: {{mlflow: '{store}'}}\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text("base: base.yaml\nparams:\n  model.hidden: [[16], [32], [8]]\n")
    folder = tmp_path / "sweep"
    sweep_start.run(sweep_start.start(spec, None, folder=folder))
    sweep_start.run(sweep_start.start(None, folder))  # --resume of a finished sweep: no second parent
    runs = runs_in(store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    (parent,) = parents
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    assert json.loads((folder / "mlflow.json").read_text())["run_id"] == parent.info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in children) == sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert all([s for s, _ in history(store, r.info.run_id)] == [1, 2] for r in children)
    best = max(children, key=lambda r: float(r.data.tags["best_val_acc"]))  # the table's rule: ties to the first
    best = min((r for r in children if r.data.tags["best_val_acc"] == best.data.tags["best_val_acc"]),
               key=lambda r: r.info.run_name)  # fmt: skip
    assert parent.data.tags["best_run"] == best.info.run_name  # the sweep's summary: its best trial
    assert parent.data.tags["best_val_acc"] == best.data.tags["best_val_acc"]
    assert parent.data.tags["best_trial"] == str(int(best.info.run_name.split("-")[0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_not_there_fails_the_run_at_once_in_one_line_without_its_password(tmp_path):
    uri = f"http://alice:SECRETPW@127.0.0.1:{free_port()}"  # nothing listens there
    smoke = REPO / "configs" / "smoke.yaml"
    result = CliRunner().invoke(
        app, ["train", str(smoke), "--run-dir", str(tmp_path / "run"), "--set", f"output.mlflow={uri}"]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "output.mlflow" in lines[0] and "alice:***@127.0.0.1" in lines[0], lines
    assert "SECRETPW" not in result.output + result.stderr and "epoch" not in result.stdout
    assert not (tmp_path / "run").exists()  # before the data, before any epoch


def test_without_the_package_the_run_refuses_to_start_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    smoke = REPO / "configs" / "smoke.yaml"
    result = CliRunner().invoke(
        app, ["train", str(smoke), "--run-dir", str(tmp_path / "run"), "--set", "output.mlflow=true"]
    )
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "output.mlflow" in lines[0] and "pip install 'mlptrain[mlflow]'" in lines[0]
    assert not (tmp_path / "run").exists()


def _train(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "mlptrain", "train", "smoke", "--set", "train.epochs=1"]
    command += [item for key in sets for item in ("--set", key)]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_mlflow_says_nothing_on_the_terminal(tmp_path):
    """A new store (MLflow logs as it makes its tables), piped: the same lines as the run without MLflow."""
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off, on = _train(tmp_path / "off"), _train(tmp_path / "on", "output.mlflow=true")
    assert on.returncode == 0 and off.returncode == 0, on.stderr
    assert on.stderr == off.stderr == ""

    def shape(out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines()]  # the first word: times and folder names differ

    assert shape(on.stdout) == shape(off.stdout)
    assert (tmp_path / "on" / "runs" / "mlflow.db").is_file()


def test_a_run_without_the_key_does_not_import_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-X", "importtime", "-m", "mlptrain", "train", "smoke", "--set", "train.epochs=1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "mlptrain.run.trainer" in imported  # the run was traced
    assert not [name for name in imported if name.split(".")[0] == "mlflow"]


SERVER_PACKAGES = ("flask", "flask_cors", "aiohttp", "pandas")  # what `mlflow server` needs beyond mlflow-skinny


def _server_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in SERVER_PACKAGES)


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on a SQLite store, on 127.0.0.1 at a free port: its URL (stopped, with its workers, after)."""
    if not _server_installed():
        pytest.skip(f"mlflow server needs {', '.join(SERVER_PACKAGES)} (the test extra installs them)")
    port, log = free_port(), (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 5 minutes on a loaded machine; it answers in seconds
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def rest(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_tracking_server_shows_the_run_through_its_rest_api(tmp_path, server):
    """What a user sees in `mlflow server`'s UI, read through the REST API it serves: the run logged over HTTP."""
    run_dir = tmp_path / "run"
    trainer.train(tiny(server), run_dir=run_dir)
    experiment = rest(server, "experiments/get-by-name?experiment_name=mlf")["experiment"]
    found = rest(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(found) == 1
    run = rest(server, f"runs/get?run_id={found[0]['info']['run_id']}")["run"]
    assert run["info"]["run_name"] == "run" and run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.lr"] == "0.1"
    metric = rest(server, f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_acc")["metrics"]
    assert sorted((m["step"], m["value"]) for m in metric) == csv_column(run_dir)
    listed = rest(server, f"artifacts/list?run_id={run['info']['run_id']}")["files"]
    assert {"config.yaml", "metrics.csv", "curves.png", "best.pt"} <= {f["path"] for f in listed}


def test_a_ctrl_c_while_a_new_store_is_made_waits_for_it(tmp_path, monkeypatch):
    """MLflow makes a new SQLite store's tables in some forty steps; a Ctrl-C among them left a store that no MLflow
    opened again ("table budget_policies already exists"). The Ctrl-C now arrives once the store is made."""
    import mlflow.tracking

    from mlptrain.run import mlflowlog

    steps = []

    class Making:
        def __init__(self, tracking_uri):
            signal.raise_signal(signal.SIGINT)  # pressed in the middle of making the tables
            steps.append("made")

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Making)
    with pytest.raises(KeyboardInterrupt):
        mlflowlog._client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert steps == ["made"]


def test_two_runs_into_one_new_store_at_once_both_log(tmp_path):
    """Two processes making the same new SQLite store at once: one of them failed in MLflow's migrations (alembic:
    "expected to match one row ... 0 found", or "table ... already exists"). They now take turns."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    small = ["--set", "train.epochs=1", "--set", "data.synthetic_size=600", "--set", "data.val_size=100"]
    train = [sys.executable, "-m", "mlptrain", "train", str(REPO / "configs/smoke.yaml"), *small]
    runs = []
    for name in ("a", "b"):
        argv = [*train, "--run-dir", str(tmp_path / name), "--set", f"output.mlflow={store}"]
        runs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert len(runs_in(store, "smoke")) == 2


def test_two_processes_log_one_run_from_rank_0(tmp_path):
    """--nproc 2 (torchrun, gloo on CPU): only rank 0 opens the store and logs, so one MLflow run, each epoch once."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, "-m", "mlptrain", "train", str(REPO / "configs/smoke.yaml"), "--nproc", "2"]
    argv += ["--run-dir", str(tmp_path / "run"), "--set", "train.epochs=2", "--set", f"output.mlflow={store}"]
    argv += ["--set", "data.synthetic_size=600", "--set", "data.val_size=100"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr
    (run,) = runs_in(store, "smoke")
    assert history(store, run.info.run_id) == csv_column(tmp_path / "run") and len(csv_column(tmp_path / "run")) == 2
