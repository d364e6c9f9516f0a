"""The bench's threads section: its models, its busy process (always stopped), its rows and its table. Never how
fast: the ratios are judged by the bench, not here."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlptrain.base.config import load_config
from mlptrain.bench import harness
from mlptrain.bench import threads as section
from mlptrain.bench.tables import threads_table

ROOT = Path(__file__).resolve().parents[2]
TINY_MODELS = (("smoke", (16,), 8), ("mnist", (32, 16), 8), ("wide", (64, 64), 16))


def test_the_models_are_the_configs_and_the_wide_one():
    smoke, mnist = (load_config(ROOT / "configs" / f"{name}.yaml") for name in ("smoke", "mnist"))
    assert (
        ("smoke", tuple(smoke.model.hidden), smoke.train.batch_size),
        ("mnist", tuple(mnist.model.hidden), mnist.train.batch_size),
        ("wide", (2048, 2048), 512),
    ) == section.THREAD_MODELS


@pytest.mark.parametrize("raised", [None, RuntimeError, KeyboardInterrupt])
def test_the_busy_process_is_stopped_however_the_block_ends(raised):
    seen = []
    with pytest.raises(raised) if raised else contextlib.nullcontext(), section.busy_process() as child:
        seen.append(child.poll())
        if raised:
            raise raised()
    assert seen == [None]  # it ran in the block
    assert child.poll() is not None  # and was waited for after it


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaps has left all the same
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_busy_process_leaves_when_the_bench_is_killed():
    code = (
        "import os, subprocess, sys\n"
        "busy = [sys.executable, '-c', sys.argv[1], str(os.getpid())]\n"
        "print(subprocess.Popen(busy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
    )
    out = subprocess.run([sys.executable, "-c", code, section.BUSY], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    deadline = time.monotonic() + 30  # a deadline, not a timing: it leaves within a moment of its parent
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(pid):
        os.kill(pid, 9)
        pytest.fail("the busy process outlived the process that started it")


def test_rows_for_each_model_as_the_machine_is_then_beside_a_busy_process(monkeypatch):
    monkeypatch.setattr(section, "THREAD_MODELS", TINY_MODELS)
    monkeypatch.setattr(section, "LOOK_SECONDS", 0.01)
    monkeypatch.setattr(section, "MIN_SECONDS", 0.001)
    started = []
    real = section.busy_process

    def watched():
        cm = real()
        started.append(cm)
        return cm

    monkeypatch.setattr(section, "busy_process", watched)
    before = torch.get_num_threads()
    plan = dataclasses.replace(harness.QUICK, repeats=1, min_seconds=0.001)
    result = section.bench_threads(plan)
    assert torch.get_num_threads() == before
    assert len(started) == 1
    assert [(r.model, r.competing) for r in result.rows] == [(m, c) for c in (False, True) for m, _, _ in TINY_MODELS]
    for row, (_, hidden, batch) in zip(result.rows, TINY_MODELS * 2, strict=True):
        assert row.sizes == [784, *hidden, 10] and row.batch_size == batch
        assert 1 <= row.auto_threads <= result.cores
        assert re.fullmatch(r"\d+ cores?, (\d+ busy|load unknown)", row.auto_why), row.auto_why
        best = max(row.samples_per_second_1_thread, row.samples_per_second_all)
        assert row.ratio == row.samples_per_second_auto / best
    json = result.to_json()
    assert json["goal"] == section.THREADS_GOAL == 0.8 and json["cores"] == result.cores
    assert set(json["rows"][0]) >= {"model", "competing", "auto_threads", "auto_why", "ratio"}


def test_the_table_judges_auto_against_the_faster_fixed_count():
    def row(one, every, auto, competing=False):
        return section.ThreadsRow("smoke", [784, 256, 10], 128, competing, one, every, auto, 1, "2 cores, 1 busy")

    result = section.ThreadsResult(cores=2, rows=[row(100, 50, 80), row(50, 100, 79, True), row(100, 10, 200)])
    table = threads_table(result)
    assert table.columns[4:6] == ["1 thread", "2 threads"]
    assert [r[3] for r in table.rows] == ["none added", "1 busy process", "none added"]
    assert [r[-1] for r in table.rows] == [("0.80", True), ("0.79", False), ("2.00", True)]
    assert [r[-2] for r in table.rows] == ["1 (2 cores, 1 busy)"] * 3
