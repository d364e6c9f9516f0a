"""MLflow tracking of a run (output.mlflow): one MLflow run per run folder, in the experiment named after the config's
`name`, holding every config key as a param (dotted), every metrics.csv column per epoch (step = epoch), the best
epoch as tags and the run's files as artifacts. A sweep's trials are the children of one MLflow run per sweep.

mlflow (the `mlflow` extra) is imported only here, only when the key is on, and only by rank 0. The MLflow run's id
lives in the run folder (runs.MLFLOW_FILE), so --resume continues it. Each epoch is logged after its metrics.csv row,
and a resumed run first logs the rows MLflow lacks and skips those it has: no epoch is logged twice, none is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, Interrupted, RunFailed
from mlptrain.base.files import atomic_write_text, held_signals
from mlptrain.base.metrics import COLUMNS, EpochStats, History
from mlptrain.base.urls import scrub, shown_url
from mlptrain.core import distributed
from mlptrain.core.distributed import World
from mlptrain.run.callbacks import Callbacks, Relay, RunInfo
from mlptrain.run.runs import BEST_FILE, CONFIG_FILE, CURVES_FILE, LAST_FILE, METRICS_FILE, MLFLOW_FILE, flatten

PARENT_TAG = "mlflow.parentRunId"  # what makes a run another's child in MLflow (its UI nests it)
ARTIFACTS = (CONFIG_FILE, METRICS_FILE, CURVES_FILE, BEST_FILE)  # logged when the run ends, those that exist
ARTIFACT_DIR = "mlartifacts"  # beside a SQLite store: the artifacts of the experiments made here (MLflow: ./mlruns)
# While the store is opened: one try, and 10 s for an answer, so a tracking server that is not there fails the run at
# once rather than after MLflow's retries (7, with backoff: minutes). Later calls keep MLflow's retries.
_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_MARKER = COLUMNS[1]  # the metric whose steps say which epochs MLflow has (an epoch's columns go in one batch)
_BATCH = 100  # params per log_batch call: MLflow's limit


class Tracking:
    """A run folder's MLflow run, open: the client, the run's id, and the epochs MLflow already holds. As a context
    around the run, it marks the MLflow run killed or failed if the run stops so; one that never got a last.pt (so
    its folder goes) is deleted with it."""

    def __init__(self, client: Any, uri: str, run_dir: Path, run_id: str, created: bool):
        self.client, self.uri, self.run_dir, self.run_id, self.created = client, uri, run_dir, run_id, created
        self.logged: set[int] = set()  # epochs (steps) MLflow holds

    def record(self) -> None:
        """The run's id into its folder (atomically), for --resume and a sweep's other workers."""
        record = {"run_id": self.run_id, "tracking_uri": shown_url(self.uri, unknown=self.uri)}
        atomic_write_text(self.run_dir / MLFLOW_FILE, json.dumps(record, indent=1) + "\n")

    def catch_up(self, config: Config, history: History) -> None:
        """Mark the MLflow run running; log the params and the epochs of `history` that it lacks."""
        with self._logging("its params"):
            self.client.update_run(self.run_id, status="RUNNING")
            have = self.client.get_run(self.run_id).data.params
            self.logged = {m.step for m in self.client.get_metric_history(self.run_id, _MARKER)}
            params = [(key, value) for key, value in _params(config, self.uri).items() if key not in have]
            for start in range(0, len(params), _BATCH):
                self._params(params[start : start + _BATCH])
        for stats in history.epochs:
            self.log_epoch(stats)

    def log_epoch(self, stats: EpochStats) -> None:
        """One epoch's metrics.csv row, its columns in one batch, unless MLflow holds that epoch already."""
        if stats.epoch in self.logged:
            return
        from mlflow.entities import Metric

        now, values = int(time.time() * 1000), stats.as_dict()
        metrics = [Metric(column, float(values[column]), now, stats.epoch) for column in COLUMNS[1:]]
        with self._logging(f"epoch {stats.epoch}"):
            self.client.log_batch(self.run_id, metrics=metrics)
        self.logged.add(stats.epoch)

    def finish(self, history: History) -> None:
        """At the run's end: the best epoch and its monitored value as tags, the run's files as artifacts."""
        best = history.best
        with self._logging("the run's end"):
            if best is not None:
                self.client.set_tag(self.run_id, "best_epoch", str(best.epoch))
                self.client.set_tag(self.run_id, f"best_{history.monitor}", repr(history.best_value))
            for name in ARTIFACTS:
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self.client.set_terminated(self.run_id, "FINISHED")

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            return
        with _quiet(), contextlib.suppress(Exception):  # the run's own error is what the user needs to see
            if self.created and not (self.run_dir / LAST_FILE).exists():  # its folder goes: nothing to resume
                self.client.delete_run(self.run_id)
            else:
                stopped = issubclass(kind, (Interrupted, KeyboardInterrupt))
                self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")

    def _params(self, items: list[tuple[str, str]]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in items])

    @contextlib.contextmanager
    def _logging(self, what: str) -> Iterator[None]:
        """A call to MLflow during the run: what fails becomes one line (RunFailed, exit 1) that says how to carry on;
        the folder holds every epoch, and a --resume logs what MLflow lacks."""
        try:
            with _quiet():
                yield
        except Exception as e:
            raise RunFailed(
                f"output.mlflow: could not log {what} to {shown_url(self.uri, unknown=self.uri)}: {_said(e, self.uri)}"
                f"; the run folder has it all: `mlptrain train --resume {self.run_dir}` logs what MLflow lacks"
            ) from None


class MLflowLog(Relay):
    """Passes every report on to `inner` (the CLI's reporter), and logs the run to its MLflow run: what it lacks as
    the run starts, then each epoch once its metrics.csv row is written."""

    def __init__(self, inner: Callbacks, tracking: Tracking, history: History):
        super().__init__(inner)
        self.tracking, self.history = tracking, history

    def run_started(self, info: RunInfo) -> None:
        super().run_started(info)
        self.tracking.catch_up(info.config, self.history)

    def epoch_saved(self, stats: EpochStats, is_best: bool) -> None:
        super().epoch_saved(stats, is_best)
        self.tracking.log_epoch(stats)


def open_run(config: Config, run_dir: Path, parent: str | None = None, fresh: bool = False) -> Tracking:
    """Reach the store at output.mlflow and pick the MLflow run of `run_dir`: the one its mlflow.json names (for a
    run started afresh in the folder, only while that one holds no epoch), or a new one named after the folder, in
    the experiment `config.name`, the child of `parent` (a sweep's run). A store that cannot be reached or opened is
    refused in one line (ConfigError, exit 2, as a sweep's study that cannot be opened): no run has started."""
    uri = config.output.mlflow
    assert isinstance(uri, str), "a resolved config names its store"
    with _opening(uri):
        client = _client(uri)
        run_id = _recorded(run_dir)
        if run_id is not None and _usable(client, run_id, fresh):
            return Tracking(client, uri, run_dir, run_id, created=False)
        tags = {PARENT_TAG: parent} if parent else {}
        run = client.create_run(_experiment(client, config.name, uri), run_name=run_dir.name, tags=tags)
    return Tracking(client, uri, run_dir, run.info.run_id, created=True)


def sweep_run(config: Config, folder: Path) -> str:
    """The id of the MLflow run of the sweep in `folder`, its trials' parent: the one the folder's mlflow.json names,
    or a new one named after the folder (call it under the sweep's lock: workers share it)."""
    tracking = open_run(config, folder)
    with tracking._logging("the sweep's run"):
        tracking.client.update_run(tracking.run_id, status="RUNNING")
    tracking.record()
    return tracking.run_id


def end_sweep_run(config: Config, folder: Path, run_id: str, tags: dict[str, str] | None = None) -> None:
    """The sweep has run every trial: its MLflow run gets `tags` (its best trial) and is finished (a --resume with
    more trials opens it again)."""
    tracking = Tracking(None, str(config.output.mlflow), folder, run_id, created=False)
    with tracking._logging("the sweep's end"):
        tracking.client = _client(tracking.uri)
        for key, value in (tags or {}).items():
            tracking.client.set_tag(run_id, key, value)
        tracking.client.set_terminated(run_id, "FINISHED")


def _client(uri: str) -> Any:
    if uri.startswith("file:"):  # MLflow 3 refuses its file store unless asked; output.mlflow asked for it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    _hush()  # after the import, which sets MLflow's loggers up at INFO
    with _one_at_a_time(uri):  # the client opens its store as it is made (a new database: its tables)
        return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _one_at_a_time(uri: str) -> Iterator[None]:
    """A SQLite store is opened by one process at a time, Ctrl-C held meanwhile: opening a new one makes its tables
    in some forty migration steps, and a Ctrl-C among them, or a second process making them too, leaves a store
    that no MLflow opens again ("table ... already exists"). The lock is flock on the database file itself, which
    SQLite's own locks (fcntl) do not see."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        yield
        return
    path = Path(uri[len("sqlite:///") :].split("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f, held_signals():  # an empty file is a new, empty SQLite database
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _recorded(folder: Path) -> str | None:
    """The MLflow run id that `folder`'s mlflow.json names; None if it has none (or one that cannot be read)."""
    try:
        run_id = json.loads((folder / MLFLOW_FILE).read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def _usable(client: Any, run_id: str, fresh: bool) -> bool:
    """Whether the MLflow run `run_id` goes on: it is there and not deleted, and (`fresh`: a run starting again from
    its first epoch) holds no epoch yet."""
    try:
        run = client.get_run(run_id)
    except Exception:  # deleted for good, or another store's: a new run
        return False
    return run.info.lifecycle_stage == "active" and not (fresh and run.data.metrics)


def _experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, made if missing (with its artifacts beside a SQLite store)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifacts(uri))
        except Exception:  # another worker made it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _artifacts(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store's file (MLflow's default, ./mlruns, would be
    wherever the run started); elsewhere the store's own default (a server's, a file store's)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return str(Path(uri[len("sqlite:///") :]).resolve().parent / ARTIFACT_DIR)


def _params(config: Config, uri: str) -> dict[str, str]:
    """Every config key by its dotted name, as text MLflow holds (lists as JSON); the store's URI never with its
    password."""
    settings = flatten(config.to_dict())
    settings["output.mlflow"] = shown_url(uri, unknown=uri)
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's own logging and warnings kept off the terminal (its INFO lines as it makes a database, "View run"
    links, deprecations): what a user sees is mlptrain's."""
    _hush()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _hush() -> None:
    for name, level in (("mlflow", logging.ERROR), ("alembic", logging.WARNING)):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _opening(uri: str) -> Iterator[None]:
    """Reaching the store: at once, and what fails as one line, never its password."""
    saved = {name: os.environ.get(name) for name in _PROBE}
    os.environ.update(_PROBE)
    try:
        with _quiet():
            yield
    except ConfigError:
        raise
    except Exception as e:
        shown = shown_url(uri, unknown=uri)
        raise ConfigError(f"output.mlflow: cannot open the MLflow store at {shown}: {_said(e, uri)}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _said(error: BaseException, uri: str) -> str:
    """What MLflow said, in one line, without the URI's password."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {scrub(lines[0], uri)}" if lines else type(error).__name__


def tracked(
    config: Config, run_dir: Path, world: World, stack: contextlib.ExitStack, parent: str | None, fresh: bool
) -> Tracking | None:
    """With output.mlflow, rank 0's MLflow run of `run_dir`, open in `stack` (every process fails alike if it cannot
    be reached), its id recorded unless `fresh` (a new run records it once the folder is cleared); None on the other
    processes, or with the key off."""
    if not config.output.mlflow:
        return None
    opened: list[Tracking] = []

    def open_() -> None:
        opened.append(stack.enter_context(open_run(config, run_dir, parent, fresh)))
        if not fresh:
            opened[0].record()

    distributed.run_on_main(world, open_)
    return opened[0] if opened else None
