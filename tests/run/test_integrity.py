"""Nothing lost, nothing let in (issue 12): a crash between any two renames, two writers on one folder, a dead
writer's temp files, a full disk, a tampered sweep manifest, a planted symlink, signals outside the loop."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mlptrain.base import files
from mlptrain.base.config import Config, dump_yaml
from mlptrain.base.errors import ConfigError, WriteFailed
from mlptrain.base.files import LOCK_FILE, atomic_write_text, folder_lock, held_signals, remove_stale_temp_files
from mlptrain.cli.main import app
from mlptrain.run import trainer
from mlptrain.run.checkpoint import checkpoint_epoch, write_checkpoint
from mlptrain.run.interrupt import SignalStop, exit_on_sigterm
from mlptrain.run.runs import read_run

REPO = Path(__file__).resolve().parents[2]
ROW = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")  # the columns that do not time anything
# Five epochs whose validation accuracy does not rise every epoch (small data, a small validation set), so
# best.pt and last.pt part ways: the crash test meets both improving epochs and one that is not.
WOBBLY = {
    "name": "wobbly",
    "device": "cpu",
    "seed": 1,
    "data": {"dataset": "synthetic", "synthetic_size": 900, "val_size": 100},
    "model": {"hidden": [16]},
    "train": {"epochs": 5, "batch_size": 64, "lr": 0.3, "momentum": 0.0},
}


def wobbly(**train) -> Config:
    return Config.from_dict({**WOBBLY, "train": {**WOBBLY["train"], **train}})


def rows(run_dir: Path) -> list[tuple]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [tuple(r[c] for c in ROW) for r in csv.DictReader(f)]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class Crash(BaseException):
    """A kill -9 as far as the run can tell: nothing after it runs (no except Exception catches it)."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted run, and the names of the files it renamed into place, in order."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    renamed: list[str] = []
    real = os.replace

    def spy(src, dst):
        real(src, dst)
        renamed.append(Path(dst).name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files.os, "replace", spy)
        trainer.train(wobbly(), run_dir=run_dir)
    return run_dir, renamed


def test_the_reference_run_has_best_and_last_apart(reference):
    run_dir, renamed = reference
    history = read_run(run_dir).history
    assert history.best_epoch < len(history), "the crash test needs an epoch that is not the best"
    assert renamed.count("best.pt") >= 2, "and more than one improving epoch"


def test_a_crash_after_any_rename_then_resume_keeps_best_pt_the_best(reference, tmp_path, monkeypatch):
    ref_dir, renamed = reference
    expected = rows(ref_dir)
    real = os.replace
    for k in range(1, len(renamed) + 1):
        run_dir = tmp_path / f"crash-{k}"
        count = [0]

        def crash_after_k(src, dst, k=k, count=count):
            real(src, dst)
            count[0] += 1
            if count[0] == k:
                raise Crash(f"after renaming {Path(dst).name}")

        monkeypatch.setattr(files.os, "replace", crash_after_k)
        with pytest.raises(Crash):
            trainer.train(wobbly(), run_dir=run_dir)
        monkeypatch.setattr(files.os, "replace", real)
        if not (run_dir / "last.pt").exists():  # crashed before the first checkpoint: nothing to resume
            assert not run_dir.exists() or not (run_dir / "metrics.csv").exists() or not rows(run_dir)
            continue
        listed = read_run(run_dir)  # what `runs` shows before anyone resumes
        if listed.best_epoch:
            assert checkpoint_epoch(run_dir / "best.pt") >= listed.best_epoch, renamed[k - 1]

        result = trainer.resume(run_dir)
        where = f"crash after rename {k} ({renamed[k - 1]})"
        assert rows(run_dir) == expected, where
        assert result.best_epoch == read_run(run_dir).best_epoch == checkpoint_epoch(run_dir / "best.pt"), where
        best_weights = torch.load(run_dir / "best.pt", weights_only=True)["model"]
        ref_weights = torch.load(ref_dir / "best.pt", weights_only=True)["model"]
        assert all(torch.equal(best_weights[key], ref_weights[key]) for key in ref_weights), where


def test_resume_rebuilds_a_best_pt_one_best_behind(tmp_path):
    # The state a kill -9 between last.pt and best.pt leaves, made by hand: best.pt holds an older best.
    run_dir = tmp_path / "run"
    trainer.train(wobbly(epochs=2), run_dir=run_dir)
    best = read_run(run_dir).best_epoch
    older = tmp_path / "older"
    trainer.train(wobbly(epochs=1), run_dir=older)
    (run_dir / "best.pt").write_bytes((older / "best.pt").read_bytes())
    assert checkpoint_epoch(run_dir / "best.pt") == 1
    assert best == 2  # so last.pt is the best epoch's checkpoint, which resume rebuilds best.pt from
    result = trainer.resume(run_dir, overrides=["train.epochs=2"])
    assert result.already_finished
    assert checkpoint_epoch(run_dir / "best.pt") == 2


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(tmp_path):
    # What a kill -9 while loading the data leaves: the folder and its config.yaml, no last.pt.
    reference = tmp_path / "reference"
    trainer.train(wobbly(epochs=2), run_dir=reference)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_yaml(wobbly(epochs=2)))
    (run_dir / "metrics.csv").write_text("epoch\n")
    out = invoke("train", "--resume", run_dir, "--json")
    assert out.exit_code == 0, out.stderr
    assert rows(run_dir) == rows(reference) and checkpoint_epoch(run_dir / "last.pt") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    out = invoke("train", "--resume", empty)
    assert out.exit_code == 2 and "holds no last.pt" in out.stderr


def test_a_run_folder_has_one_writer(tmp_path):
    run_dir = tmp_path / "run"
    first = invoke("train", REPO / "configs/smoke.yaml", "--run-dir", run_dir, "--set", "train.epochs=1", "-q")
    assert first.exit_code == 0, first.stderr
    holder = hold(run_dir)
    try:
        for argv in (
            ["train", "--resume", run_dir, "--set", "train.epochs=3"],
            ["train", REPO / "configs/smoke.yaml", "--run-dir", run_dir, "--force"],
        ):
            out = invoke(*argv)
            assert out.exit_code == 2, out.stderr
            line = out.stderr.strip()
            assert line.count("\n") == 0 and str(run_dir) in line and f"PID {holder.pid}" in line, line
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 1  # untouched
        # Readers never wait for the writer.
        started = time.monotonic()
        assert invoke("runs", run_dir.parent, "--json").exit_code == 0
        assert invoke("eval", run_dir / "best.pt", "--split", "val", "--json").exit_code == 0
        assert invoke("plot", run_dir).exit_code == 0
        assert time.monotonic() - started < 60
    finally:
        holder.kill()  # kill -9: the OS lock dies with it, nothing is left stuck
        holder.wait()
    out = invoke("train", "--resume", run_dir, "--set", "train.epochs=2", "-q")
    assert out.exit_code == 0, out.stderr
    assert len(rows(run_dir)) == 2


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mlptrain.base.files import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_sweep_folder_has_one_writer(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**WOBBLY, "train": {**WOBBLY["train"], "epochs": 1}}))
    spec = tmp_path / "sweep.yaml"
    spec.write_text("base: base.yaml\nparams: {train.lr: [0.1, 0.2]}\n")
    sw = tmp_path / "sw"
    sw.mkdir()
    holder = hold(sw)
    try:
        out = invoke("sweep", spec, "--dir", sw)
        assert out.exit_code == 2, out.stderr
        assert f"{sw} is in use by another mlptrain (PID {holder.pid})" in out.stderr
        assert not (sw / "sweep.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert invoke("sweep", spec, "--dir", sw, "-q").exit_code == 0
    holder = hold(sw)
    try:
        out = invoke("sweep", "--resume", sw)
        assert out.exit_code == 2 and f"PID {holder.pid}" in out.stderr, out.stderr
        assert invoke("runs", sw, "--json").exit_code == 0  # a reader
    finally:
        holder.kill()
        holder.wait()
    assert invoke("sweep", "--resume", sw, "-q").exit_code == 0


def test_the_lock_is_reentrant_in_one_process_and_never_follows_a_symlink(tmp_path):
    with folder_lock(tmp_path), folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    other = tmp_path / "other"
    other.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (other / LOCK_FILE).symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link"), folder_lock(other):
        pass
    assert outside.read_text() == "keep me"


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid += 1


def test_the_next_writer_removes_a_dead_writers_temp_files(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = [tmp_path / f".last.pt.{dead}.tmp", tmp_path / f".best.pt.{dead}.abcd_123.tmp"]
    live = [tmp_path / f".last.pt.{alive}.zyxw_987.tmp", tmp_path / "notes.tmp"]
    for path in stale + live:
        path.write_bytes(b"x" * 100)
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in live) and not any(p.exists() for p in stale)


def test_resume_clears_the_temp_files_a_kill_left(tmp_path):
    run_dir = tmp_path / "run"
    trainer.train(wobbly(epochs=1), run_dir=run_dir)
    leftover = run_dir / f".last.pt.{_dead_pid()}.tmp"
    leftover.write_bytes(b"half a checkpoint")
    trainer.resume(run_dir, overrides=["train.epochs=2"])
    assert not leftover.exists()


def test_atomic_write_never_follows_a_planted_temp_name(tmp_path, monkeypatch):
    outside = tmp_path / "victim"
    outside.write_text("root's file")
    folder = tmp_path / "shared"
    folder.mkdir()
    for pid in (os.getpid(), 4242):  # the names a writer used to use: .<file>.<pid>.tmp
        (folder / f".last.pt.{pid}.tmp").symlink_to(outside)
    monkeypatch.setattr(files.os, "getpid", lambda: 4242)
    atomic_write_text(folder / "last.pt", "new")
    assert outside.read_text() == "root's file"
    assert (folder / "last.pt").read_text() == "new" and not (folder / "last.pt").is_symlink()
    assert oct((folder / "last.pt").stat().st_mode & 0o777) != oct(0o600)  # the usual mode, not mkstemp's own


# --- a full disk -------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (mounting needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_mid_run_names_the_file_and_resumes(small_disk, tmp_path):
    reference = tmp_path / "reference"
    trainer.train(wobbly(epochs=3), run_dir=reference)
    run_dir = small_disk / "run"

    class FillAfterEpoch2(trainer.Callbacks):
        def epoch_done(self, stats, is_best):
            if stats.epoch == 2:
                self.filler = fill(small_disk)

    cb = FillAfterEpoch2()
    with pytest.raises(WriteFailed) as e:
        trainer.train(wobbly(epochs=3), run_dir=run_dir, callbacks=cb)
    message = str(e.value)
    assert message.startswith(f"no space left on the device while writing {run_dir / 'last.pt'}"), message
    assert "carries on from the end of epoch 2" in message
    assert len(rows(run_dir)) == 2 and checkpoint_epoch(run_dir / "last.pt") == 2  # no row without its checkpoint
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    cb.filler.unlink()
    trainer.resume(run_dir)
    assert rows(run_dir) == rows(reference)


def test_a_disk_too_full_for_any_checkpoint_leaves_no_folder(small_disk):
    filler = fill(small_disk)
    filler.write_bytes(b"\0" * (2 * 2**20 - 64 * 1024))  # room for config.yaml and metrics.csv, not a checkpoint
    out = invoke("train", REPO / "configs/smoke.yaml", "--run-dir", small_disk / "run", "--set", "train.epochs=1")
    assert out.exit_code == 1, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and "no space left on the device while writing" in line and "nothing was saved" in line
    assert not (small_disk / "run").exists()
    filler.unlink()
    fill(small_disk)
    sweep = small_disk.parent / "sweep.yaml"
    sweep.write_text(f"base: {REPO / 'configs/smoke.yaml'}\nparams: {{train.lr: [0.1, 0.2]}}\n")
    out = invoke("sweep", sweep, "--dir", small_disk / "sw")
    assert out.exit_code == 1 and "no space left on the device" in out.stderr, out.stderr
    assert not (small_disk / "sw").exists()


def test_a_full_disk_mid_sweep_says_how_the_sweep_carries_on(small_disk):
    pytest.importorskip("optuna")
    from mlptrain.sweep import folder as sweep_folder
    from mlptrain.sweep import start as sweep_start

    spec = small_disk.parent / "sweep.yaml"
    base = small_disk.parent / "base.yaml"
    base.write_text(dump_yaml(wobbly(epochs=3)))
    spec.write_text("base: base.yaml\nparams: {train.lr: [0.1, 0.2]}\n")

    class FillInTrial2(sweep_folder.SweepCallbacks):
        def trial_started(self, trial, total, resuming):
            outer = self

            class Fill(trainer.Callbacks):
                def epoch_done(self, stats, is_best):
                    if trial.index == 2 and stats.epoch == 2:
                        outer.filler = fill(small_disk)

            return Fill()

    job = sweep_start.create(spec, folder=small_disk / "sw")
    cb = FillInTrial2()
    with pytest.raises(WriteFailed) as e:
        sweep_start.run(job, callbacks=cb)
    message = str(e.value)
    assert message.startswith("no space left on the device while writing"), message
    assert f"`mlptrain sweep --resume {small_disk / 'sw'}` carries on" in message and "train --resume" not in message
    cb.filler.unlink()
    trials = sweep_start.run(sweep_folder.load(small_disk / "sw"))
    assert [t.state for t in trials] == ["done", "done"]


# --- escapes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["../victim", "/tmp/victim", "..", "a/../../victim", "link"])
def test_a_tampered_sweep_manifest_cannot_write_outside_its_folder(tmp_path, planted):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**WOBBLY, "train": {**WOBBLY["train"], "epochs": 1}}))
    spec = tmp_path / "sweep.yaml"
    spec.write_text("base: base.yaml\nparams: {train.lr: [0.1, 0.2]}\n")
    sw = tmp_path / "sw"
    assert invoke("sweep", spec, "--dir", sw, "-q").exit_code == 0
    victim = tmp_path / "victim"
    trainer.train(wobbly(epochs=1), run_dir=victim)
    before = {p.name: p.read_bytes() for p in victim.iterdir() if p.is_file()}
    manifest = json.loads((sw / "sweep.json").read_text())
    if planted == "link":
        (sw / "link").symlink_to(victim)
    manifest["trials"][0].update(dir=planted, state="interrupted")
    (sw / "sweep.json").write_text(json.dumps(manifest))
    out = invoke("sweep", "--resume", sw)
    assert out.exit_code == 2, out.stderr
    assert "is not a folder inside" in out.stderr and out.stderr.strip().count("\n") == 0
    assert {p.name: p.read_bytes() for p in victim.iterdir() if p.is_file()} == before


# --- signals outside the loop ------------------------------------------------------------------------------


@pytest.fixture
def sigterm_raises():
    previous = signal.getsignal(signal.SIGTERM)
    exit_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "SIGTERM: stopped"),
                                                   (signal.SIGINT, 130, "interrupted")])  # fmt: skip
def test_a_signal_while_starting_up_stops_with_a_line_and_leaves_no_folder(
    tmp_path, monkeypatch, sigterm_raises, sig, code, line
):
    def slow_load(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(30)

    monkeypatch.setattr(trainer, "load_training_data", slow_load)
    started = time.monotonic()
    out = invoke("train", REPO / "configs/smoke.yaml", "--run-dir", tmp_path / "run")
    assert time.monotonic() - started < 20
    assert out.exit_code == code and out.stderr.strip() == f"mlptrain: error: {line}", out.stderr
    assert not (tmp_path / "run").exists()  # nothing to resume, nothing left


def test_a_second_ctrl_c_during_a_save_waits_for_the_file(tmp_path, monkeypatch):
    real_save = torch.save

    def save_with_two_ctrl_cs(obj, f):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    path = tmp_path / "last.pt"
    run_dir = tmp_path / "run"
    trainer.train(wobbly(epochs=1), run_dir=run_dir)
    fields = torch.load(run_dir / "last.pt", weights_only=True)
    fields = {k: v for k, v in fields.items() if k not in ("format", "format_version", "versions")}
    monkeypatch.setattr(torch, "save", save_with_two_ctrl_cs)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, fields)
    assert checkpoint_epoch(path) == 1  # whole: the Ctrl-Cs arrived once it was written


def test_held_signals_deliver_them_afterwards_in_order(sigterm_raises):
    with pytest.raises(SignalStop), held_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        reached = True
    assert reached
