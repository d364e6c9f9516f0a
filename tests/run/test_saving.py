"""An epoch's files written while the next epoch trains (mlptrain/run/saving.py): last.pt, best.pt (a copy of it)
and the metrics row off the training thread, in that order, from a snapshot whose file is the state's own, byte for
byte; epoch_saved once they are on disk; every end of a run waits for them; a failed write said at the next wait."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import pytest
import torch

from mlptrain.base import files
from mlptrain.base.config import Config
from mlptrain.base.errors import WriteFailed
from mlptrain.cli.live import TrainReporter
from mlptrain.run import checkpoint, saving, trainer
from mlptrain.run.checkpoint import Snapshot, checkpoint_epoch, checkpoint_fields, save_into
from mlptrain.run.runs import read_run

TINY = {
    "name": "saving",
    "device": "cpu",
    "seed": 0,
    "data": {"dataset": "synthetic", "synthetic_size": 400, "val_size": 100},
    "model": {"hidden": [16]},
    "train": {"epochs": 3, "batch_size": 50, "lr": 0.1, "ema": 0.9, "weight_decay": 1e-4},
}


def tiny() -> Config:
    return Config.from_dict(TINY)


def temp_files(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_the_next_epoch_trains_while_last_pt_is_written(tmp_path, monkeypatch):
    # Epoch 1's last.pt is held at its fsync until epoch 2 has started: on the training thread, that never happens
    # (the wait runs out, and the test fails), on the writer's thread it does at once.
    second_started, overlapped, writers = threading.Event(), [], set()
    real_fsync = os.fsync

    def fsync(fd):
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            writers.add(threading.current_thread().name.split("_")[0])
            if not overlapped:
                overlapped.append(second_started.wait(timeout=30))
        real_fsync(fd)

    class Started(trainer.Callbacks):
        def epoch_started(self, epoch, epochs, steps, done):
            if epoch == 2:
                second_started.set()

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name a file by its descriptor")
    monkeypatch.setattr(files.os, "fsync", fsync)
    run_dir = tmp_path / "run"
    trainer.train(tiny(), run_dir=run_dir, callbacks=Started())
    assert overlapped == [True]
    assert writers == {"mlptrain-checkpoint"}
    assert checkpoint_epoch(run_dir / "last.pt") == 3 and len(read_run(run_dir).history) == 3


def test_epoch_saved_comes_once_each_epoch_is_on_disk(tmp_path):
    run_dir = tmp_path / "run"
    seen = []

    class Saved(trainer.Callbacks):
        def epoch_saved(self, stats, is_best):
            rows = read_run(run_dir).history.epochs
            best = checkpoint_epoch(run_dir / "best.pt")
            seen.append((stats.epoch, checkpoint_epoch(run_dir / "last.pt"), len(rows), best == stats.epoch, is_best))

    result = trainer.train(tiny(), run_dir=run_dir, callbacks=Saved())
    assert [s[:3] for s in seen] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert all(written == is_best for *_, written, is_best in seen if is_best)
    assert result.best_epoch in [s[0] for s in seen if s[4]]


def test_best_pt_is_the_checkpoint_serialised_once_and_copied(tmp_path, monkeypatch):
    saved = []
    real_save = torch.save
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f, *a, **k: saved.append(1) or real_save(obj, f, *a, **k))
    run_dir = tmp_path / "run"
    result = trainer.train(tiny(), run_dir=run_dir)
    assert len(saved) == 3  # one serialisation an epoch, however many of them improved
    assert checkpoint_epoch(run_dir / "best.pt") == result.best_epoch
    if result.best_epoch == 3:
        assert (run_dir / "best.pt").read_bytes() == (run_dir / "last.pt").read_bytes()
    # A copy, not a hard link: writing into one name in place must leave the other as it was.
    assert os.stat(run_dir / "best.pt").st_ino != os.stat(run_dir / "last.pt").st_ino
    assert not temp_files(run_dir)


def test_a_snapshot_writes_the_states_own_file_and_keeps_its_buffers(tmp_path):
    # Trained weights (views into FlatParameters' one tensor), momentum, the EMA's copy, every RNG: the file from the
    # snapshot is the one written from the live state, and the next take reuses the same memory.
    run_dir = tmp_path / "run"
    captured = {}

    class Grab(trainer.Callbacks):
        def epoch_done(self, stats, is_best):
            session = captured["session"]
            fields = checkpoint_fields(session.config, session.data, session.state, session.history)
            live, copied, snapshot = io.BytesIO(), io.BytesIO(), Snapshot()
            save_into(live, fields)
            taken = snapshot.take(fields)
            save_into(copied, taken)
            first = [t.untyped_storage().data_ptr() for t in taken["model"].values()]
            again = [t.untyped_storage().data_ptr() for t in snapshot.take(fields)["model"].values()]
            for value in taken["model"].values():  # copies, not the live tensors
                value.add_(1)
            pairs = zip(fields["model"].values(), taken["model"].values(), strict=True)
            apart = all(not torch.equal(a, b) for a, b in pairs)
            captured.setdefault("checks", []).append((live.getvalue() == copied.getvalue(), first == again, apart))

    real = trainer._new_session

    def keep(*args, **kwargs):
        captured["session"] = real(*args, **kwargs)
        return captured["session"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_new_session", keep)
        trainer.train(tiny(), run_dir=run_dir, callbacks=Grab())
    assert captured["checks"] == [(True, True, True)] * 3  # same file, same buffers, apart from the live state


def test_a_run_that_fails_mid_epoch_waits_for_the_write_in_flight(tmp_path, monkeypatch):
    real_fit = trainer.fit

    def fit_that_fails(state, *args, **kwargs):
        for stats in real_fit(state, *args, **kwargs):
            yield stats
            raise RuntimeError("boom in epoch 2")

    monkeypatch.setattr(trainer, "fit", fit_that_fails)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(tiny(), run_dir=run_dir)
    assert checkpoint_epoch(run_dir / "last.pt") == 1 and len(read_run(run_dir).history) == 1
    assert not temp_files(run_dir)


def test_a_write_that_fails_off_the_thread_is_said_at_the_next_wait_and_resumes(tmp_path, monkeypatch):
    # Epoch 2's last.pt fails on the writer's thread (a disk that filled up where space cannot be reserved): the run
    # ends at the next boundary with the one-line message naming the file, and a --resume carries on from epoch 1.
    reference = tmp_path / "reference"
    trainer.train(tiny(), run_dir=reference)
    real_save, calls = saving.save_into, []

    def save_into_failing(f, fields):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(f, fields)

    monkeypatch.setattr(saving, "save_into", save_into_failing)
    run_dir = tmp_path / "run"
    with pytest.raises(WriteFailed) as e:
        trainer.train(tiny(), run_dir=run_dir)
    message = str(e.value)
    assert message.startswith(f"no space left on the device while writing {run_dir / 'last.pt'}"), message
    assert "carries on from the end of epoch 1" in message and "\n" not in message
    assert checkpoint_epoch(run_dir / "last.pt") == 1 and len(read_run(run_dir).history) == 1
    assert not temp_files(run_dir)
    monkeypatch.setattr(saving, "save_into", real_save)
    trainer.resume(run_dir)
    assert _same_losses(run_dir, reference) and checkpoint_epoch(run_dir / "last.pt") == 3


def _same_losses(a: Path, b: Path) -> bool:
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    rows = [[{k: getattr(s, k) for k in keys} for s in read_run(d).history.epochs] for d in (a, b)]
    return rows[0] == rows[1] and len(rows[0]) == 3


def test_the_reporter_shows_an_epoch_once_saved_and_what_followed_it_after(capsys):
    from rich.console import Console

    from mlptrain.base.metrics import EpochStats

    reporter = TrainReporter(Console(force_terminal=False, width=200))
    reporter.epochs = 3
    stats = EpochStats(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.1, train_seconds=1.0,
                       val_seconds=0.1, samples_per_second=100.0)  # fmt: skip
    reporter.epoch_done(stats, True)
    reporter.threads_changed(2, 1, "2 cores, 1 busy")
    assert capsys.readouterr().out == ""  # epoch 1's files are still being written
    reporter.epoch_saved(stats, True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["epoch", "threads"] and lines[0].startswith("epoch 1/3")
    reporter.threads_changed(3, 2, "2 cores, 0 busy")
    assert capsys.readouterr().out.startswith("threads 2")
