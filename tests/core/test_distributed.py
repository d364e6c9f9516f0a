"""Data-parallel training: 2 CPU processes on gloo, through torchrun and --nproc, against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from typer.testing import CliRunner

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, RunFailed
from mlptrain.cli.launch import launch
from mlptrain.cli.main import app
from mlptrain.core.data import Split, batches, shard_order, steps_per_epoch, trained_samples
from mlptrain.core.distributed import check_world
from mlptrain.run import trainer
from mlptrain.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="this torch has no torch.distributed with gloo"
)

REPO = Path(__file__).resolve().parents[2]
# 1000 training images in batches of 64: 15 full ones and a last of 40, which two processes split 20 + 20.
TINY = {
    "name": "ddp",
    "device": "cpu",
    "seed": 3,
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32], "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.1, "scheduler": "onecycle"},
}


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def worker_env() -> dict[str, str]:
    # The workers must import this checkout's mlptrain, whatever is installed.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def mlptrain(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlptrain", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(), cwd=REPO, **popen,
    )  # fmt: skip


# --- sharding, without processes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size", "world_size"), [(1000, 64, 2), (1001, 64, 2), (1003, 12, 4), (30, 6, 3)])
def test_shards_rebuild_every_global_batch(n, batch_size, world_size):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    kept = order[: trained_samples(n, world_size)]
    assert len(order) - len(kept) == n % world_size  # at most world_size - 1 images sit the epoch out
    split = Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))
    per_rank = []
    for rank in range(world_size):
        part, local = shard_order(order, batch_size, rank, world_size)
        assert local == batch_size // world_size
        per_rank.append([y for _, y in batches(split, part, local)])
    steps = steps_per_epoch(n, batch_size, world_size)
    assert all(len(b) == steps for b in per_rank)
    for step in range(steps):
        shares = [b[step] for b in per_rank]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) > 0  # equal shares, none empty
        assert torch.equal(torch.cat(shares), kept[step * batch_size : (step + 1) * batch_size])


def test_one_process_keeps_the_order_as_is():
    order = torch.randperm(10)
    assert shard_order(order, 4, 0, 1) == (order, 4)
    assert steps_per_epoch(10, 4) == 3


def test_batch_size_must_divide_over_the_processes():
    with pytest.raises(ConfigError, match=r"train\.batch_size \(63\).*2 processes"):
        check_world(Config.from_dict({**TINY, "train": {"batch_size": 63}}), torch.device("cpu"), 2, 2)
    check_world(Config.from_dict(TINY), torch.device("cpu"), 2, 2)


# --- two real processes ------------------------------------------------------------------------------------


def torchrun_train(config: Path) -> subprocess.CompletedProcess:
    """`mlptrain train CONFIG --json` in 2 processes through torchrun itself; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "mlptrain", "train", str(config), "--json"],
        capture_output=True, text=True, env=worker_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, dict]:
    """TINY in 2 processes through torchrun itself: (its run folder, its --json output)."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp / "c.yaml", {**TINY, "output": {"dir": str(tmp / "runs")}})
    out = torchrun_train(config)
    folders = list((tmp / "runs").iterdir())
    assert len(folders) == 1, folders  # rank 0 alone made one
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # rank 0 alone printed
    return folders[0], json.loads(lines[0])


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    trainer.train(Config.from_dict(TINY), run_dir=run_dir)
    return run_dir


def test_one_run_folder_with_everything_in_it(ddp_run):
    run_dir, result = ddp_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt",
        "config.yaml",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]


def test_weights_and_metrics_match_one_process_with_the_same_global_batch(ddp_run, single_run):
    run_dir, result = ddp_run
    for name in ("last.pt", "best.pt"):
        ddp, single = load_checkpoint(run_dir / name), load_checkpoint(single_run / name)
        assert ddp["model"].keys() == single["model"].keys()
        for key in ddp["model"]:  # the same maths, summed in another order: float32 rounding apart
            torch.testing.assert_close(ddp["model"][key], single["model"][key], rtol=1e-4, atol=1e-5)
    single_epochs = load_checkpoint(single_run / "last.pt")["history"]
    for ours, theirs in zip(result["epochs"], single_epochs, strict=True):
        for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert ours[column] == pytest.approx(theirs[column], rel=1e-4, abs=1e-6), column


def test_accuracy_is_as_good_as_one_process(ddp_run, single_run):
    _, result = ddp_run
    single = load_checkpoint(single_run / "best.pt")["metrics"]
    assert result["best"]["val_acc"] >= single["val_acc"] - 0.01


def test_checkpoint_evaluates_without_a_process_group(ddp_run):
    run_dir, result = ddp_run
    out = CliRunner().invoke(app, ["eval", str(run_dir / "best.pt"), "--split", "val", "--json"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] == result["best"]["val_acc"]


@pytest.mark.parametrize(
    ("exitcodes", "expected"), [({0: 2, 1: 2}, 2), ({0: -15, 1: 2}, 2), ({0: 1, 1: -15}, 1), ({0: -9, 1: -15}, None)]
)
def test_nproc_exits_with_the_workers_own_code(monkeypatch, exitcodes, expected):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failing_run(args):
        failures = {rank: ProcessFailure(rank, 100 + rank, code, "<N/A>") for rank, code in exitcodes.items()}
        raise ChildFailedError("mlptrain", failures)

    monkeypatch.setattr("torch.distributed.run.run", failing_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what launch would set for its workers, undone after the test
    if expected is None:  # killed by a signal before it could say why: the launcher says so
        with pytest.raises(RunFailed, match="worker rank 0 was killed by SIGKILL"):
            launch(["train", "c.yaml"], 2)
    else:
        assert launch(["train", "c.yaml"], 2) == expected


def test_nproc_refuses_a_batch_that_does_not_divide_before_starting_workers(tmp_path):
    config = write_config(tmp_path / "c.yaml", {**TINY, "output": {"dir": str(tmp_path / "runs")}})
    out = CliRunner().invoke(app, ["train", str(config), "--nproc", "2", "--set", "train.batch_size=63"])
    assert out.exit_code == 2
    assert out.stderr.count("\n") == 1 and "train.batch_size (63)" in out.stderr and "2 processes" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_nproc_ctrl_c_stops_every_rank_and_resume_finishes(tmp_path):
    # Batches of 8: an epoch is a few hundred steps, so the signal lands inside one.
    # Dropout on: each rank draws its own masks, and the resumed ranks draw theirs afresh.
    raw = {
        **TINY,
        "data": {**TINY["data"], "synthetic_size": 2400},
        "model": {"hidden": [32], "dropout": 0.2},
        "train": {**TINY["train"], "batch_size": 8},
    }
    config = write_config(tmp_path / "c.yaml", raw)
    run_dir = tmp_path / "run"
    proc = mlptrain("train", str(config), "--nproc", "2", "--run-dir", str(run_dir))
    deadline = time.monotonic() + 120
    while not (line := proc.stdout.readline()).startswith("epoch 1/"):
        assert line or proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no epoch line within 120 s"
    proc.send_signal(signal.SIGINT)  # to the launcher, as Ctrl-C would: torchrun passes it to both workers
    started = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 15, "the ranks did not stop together within seconds"
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"resume with: mlptrain train --resume {run_dir} --nproc 2" in err
    assert err.count("resume with") == 1  # rank 0 alone said so
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["progress"] is not None or ckpt["epoch"] >= 1

    resumed = mlptrain("train", "--resume", str(run_dir), "--nproc", "2", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert [e["epoch"] for e in json.loads(out)["epochs"]] == [1, 2]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_nproc_is_bounded_by_the_cores_before_any_worker_starts():
    """--nproc 100000 on a CPU would start a hundred thousand processes; it is refused by check_world, which
    `mlptrain train --nproc N` calls before launching."""
    from mlptrain.base.config import Config
    from mlptrain.base.errors import ConfigError
    from mlptrain.core import distributed
    from mlptrain.core.threads import THREADS_PER_CORE, cpu_cores

    config = Config.from_dict({"device": "cpu", "train": {"batch_size": 100_000}})
    limit = THREADS_PER_CORE * cpu_cores()
    distributed.check_world(config, torch.device("cpu"), 2, 2)
    with pytest.raises(ConfigError, match=r"--nproc 100000: .* cores; start at most"):
        distributed.check_world(config, torch.device("cpu"), 100_000, 100_000)
    with pytest.raises(ConfigError, match="--nproc"):
        distributed.check_world(config, torch.device("cpu"), limit + 1, limit + 1)


def test_each_process_augments_its_own_share_deterministically(tmp_path):
    """The whole recipe in 2 processes, twice: the same numbers both times, and the averaged weights evaluate."""
    raw = {
        **TINY,
        "data": {**TINY["data"], "augment": "affine+elastic"},
        "train": {**TINY["train"], "label_smoothing": 0.1, "grad_clip_norm": 1.0, "ema": 0.99, "weight_decay": 1e-3},
    }
    results = []
    for attempt in ("a", "b"):
        config = write_config(tmp_path / f"{attempt}.yaml", {**raw, "output": {"dir": str(tmp_path / attempt)}})
        out = torchrun_train(config)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    drop = ("train_seconds", "val_seconds", "samples_per_second")
    a, b = ([{k: v for k, v in e.items() if k not in drop} for e in r["epochs"]] for r in results)
    assert a == b
    ckpt = load_checkpoint(Path(results[0]["best_checkpoint"]))
    assert "ema" in ckpt and ckpt["ema"]["updates"] > 0
    out = CliRunner().invoke(app, ["eval", results[0]["best_checkpoint"], "--split", "val", "--json"])
    assert json.loads(out.stdout)["accuracy"] == results[0]["best"]["val_acc"]
