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


def test_two_workers_share_a_study_in_postgresql_one_joined_by_url(tmp_path, postgres):
    path = write_sweep(tmp_path, SHARED["spec"], SHARED["base"])
    proc = start_sweep([path, "--dir", tmp_path / "sw", "--storage", postgres, "-q"])
    deadline = time.monotonic() + 120
    while not (tmp_path / "sw" / "sweep.json").exists():  # the study is made before the manifest is written
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    (tmp_path / "b").mkdir()  # another machine: the URL alone, none of the first one's files
    joined = subprocess.Popen(
        [sys.executable, "-m", "mlptrain", "sweep", "--join", postgres, "--dir", "here", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path / "b",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
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
    ran_by = [t.user_attrs["mlptrain_workers"] for t in study.trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert all(len(workers) == 1 for workers in ran_by), ran_by  # no trial run twice
    assert len({workers[0] for workers in ran_by}) == 2
    assert all(manifest(folder)["trials"] for folder in folders)  # both workers ran trials
