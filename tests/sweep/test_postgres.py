"""Workers on a real PostgreSQL study: a throw-away server from the system package (initdb + pg_ctl in a temp folder,
as the unprivileged user `nobody` when the tests run as root), two workers on one sweep (one joined by the URL
alone, from another folder), then the server stopped.
Skipped, not failed, where no server can start (no PostgreSQL installed, no driver)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_study import SHARED, start_sweep
from test_sweep import REPO, manifest, write_sweep

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.postgres


def server_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def sqlalchemy_version() -> tuple[int, ...]:
    import sqlalchemy

    return tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2] if p.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server's URL for as long as the test runs."""
    pytest.importorskip("psycopg2" if sqlalchemy_version() < (2, 1) else "psycopg")
    bindir = server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server installed (pg_ctl, initdb)")
    folder = Path(tempfile.mkdtemp(prefix="mlptrain-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    data, port = folder / "data", free_port()
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        init = [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "mlptrain", "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(init, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.skip(f"initdb failed: {done.stderr.strip()[-300:]}")
        options = f"-p {port} -h 127.0.0.1 -k {folder}"
        started = subprocess.run(
            [*pg_ctl, "-l", str(folder / "log"), "-o", options, "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if started.returncode != 0:
            pytest.skip(f"the PostgreSQL server did not start: {started.stdout.strip()[-300:]}")
        yield f"postgresql://mlptrain@127.0.0.1:{port}/postgres"  # the plain form the README shows
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def still_running(workers: list[subprocess.Popen], deadline: float) -> None:
    """Fail, never hang, where a worker has exited or `deadline` (time.monotonic()) has passed; else wait a moment."""
    for worker in workers:
        if worker.poll() is not None:
            pytest.fail(f"a worker exited ({worker.returncode}): {worker.stderr.read()}")
    if time.monotonic() > deadline:
        for worker in workers:
            worker.kill()
        pytest.fail("the workers took too long (a failure guard, not a timing the test relies on)")
    time.sleep(0.05)


def test_two_workers_share_a_study_in_postgresql_one_joined_by_url(tmp_path, postgres):
    # Both workers must get trials, though the first could run all six while the joined one (a fresh Python) starts.
    # So the test holds a gate: a SHARE lock on Optuna's trial_heartbeats table, taken before either worker starts.
    # A worker records its new trial's heartbeat right after it creates the trial (worker._ask), so each one waits
    # there, having made one trial and holding no lock the other needs (Optuna's study-row lock is held only while a
    # trial is created, and that transaction has committed). Two trials in the study are then one of each: the gate
    # opens and both run on together. (Stopping a worker with SIGSTOP instead could catch it inside that study-row
    # lock, and the other worker would wait on it for ever.)
    import sqlalchemy

    optuna.storages.RDBStorage(postgres).engine.dispose()  # the schema, so that the gate can be taken first
    engine = sqlalchemy.create_engine(postgres)
    path = write_sweep(tmp_path, SHARED["spec"], SHARED["base"])
    with engine.connect() as gate:
        gate.execute(sqlalchemy.text("LOCK TABLE trial_heartbeats IN SHARE MODE"))  # no heartbeat is written
        proc = start_sweep([path, "--dir", tmp_path / "sw", "--storage", postgres, "-q"])
        deadline = time.monotonic() + 120  # a failure guard only
        while not (tmp_path / "sw" / "sweep.json").exists():  # the study is made before the manifest is written
            still_running([proc], deadline)
        (tmp_path / "b").mkdir()  # another machine: the URL alone, none of the first one's files
        joined = subprocess.Popen(
            [sys.executable, "-m", "mlptrain", "sweep", "--join", postgres, "--dir", "here", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path / "b",
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        count = sqlalchemy.text("SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = 'sw'")
        deadline = time.monotonic() + 120
        while gate.execute(count).scalar_one() < 2:  # each worker waits at the gate once it has made one trial
            still_running([proc, joined], deadline)
        gate.commit()  # the gate opens
    engine.dispose()
    for worker in (proc, joined):
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    folders = (tmp_path / "sw", tmp_path / "b" / "here")
    assert all(manifest(folder)["study"] == {"storage": postgres, "name": "sw"} for folder in folders)
    assert not (tmp_path / "sw" / "study.db").exists()
    trials = [t for folder in folders for t in manifest(folder)["trials"]]
    assert sorted(t["number"] for t in trials) == list(range(6))  # each trial in one folder, six in all
    assert all(t["state"] == "done" for t in trials)
    study = optuna.load_study(study_name="sw", storage=postgres)
    # Two workers asking for the last trial at once make one too many: marked surplus and failed, never run.
    counted = [t for t in study.trials if not t.user_attrs.get("mlptrain_surplus")]
    surplus = [t for t in study.trials if t.user_attrs.get("mlptrain_surplus")]
    assert all(t.state.name == "FAIL" and "mlptrain_workers" not in t.user_attrs for t in surplus)
    assert [t.number for t in counted] == list(range(6))
    ran_by = [t.user_attrs["mlptrain_workers"] for t in counted]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 6
    assert all(len(workers) == 1 for workers in ran_by), ran_by  # no trial run twice
    assert len({workers[0] for workers in ran_by}) == 2
    assert all(manifest(folder)["trials"] for folder in folders)  # both workers ran trials
