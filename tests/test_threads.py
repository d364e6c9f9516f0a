"""CPU threads: `threads: N` as given, `auto` by the work per step, and the cores shared between processes."""

from __future__ import annotations

import pytest
import torch

from mlptrain import threads, trainer
from mlptrain.config import Config
from mlptrain.distributed import World

TINY = {
    "device": "cpu",
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32, 16]},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
}


def tiny(train=None, **top) -> Config:
    return Config.from_dict({**TINY, **top, "train": {**TINY["train"], **(train or {})}})


@pytest.mark.parametrize(
    ("top", "train", "expected"),
    [
        ({"threads": 1}, {}, 1),
        ({"threads": 2}, {}, 2),
        ({}, {"batch_size": 64}, 1),  # the tutorial's work per step: one thread
    ],
)
def test_threads(tmp_path, top, train, expected):
    seen = []

    class Watch(trainer.Callbacks):
        def run_started(self, info):
            seen.append(info.threads)

    trainer.train(tiny(train={**train, "epochs": 1}, **top), run_dir=tmp_path / "t", callbacks=Watch())
    assert seen == [expected]


def test_auto_threads_uses_the_machine_for_big_steps():
    config = Config.from_dict({"model": {"hidden": [1024, 512]}, "train": {"batch_size": 512}})
    assert threads.configure_threads(config, torch.device("cpu")) == threads.DEFAULT_THREADS


def test_processes_share_the_cores():
    config = Config.from_dict({**TINY, "model": {"hidden": [2048, 2048]}, "train": {"batch_size": 4096}})
    cores, before = threads.cpu_cores(), torch.get_num_threads()
    try:
        assert threads.configure_threads(config, torch.device("cpu"), World(0, 2, 0, 2)) == max(1, cores // 2)
        fixed = Config.from_dict({**TINY, "threads": 3})
        assert threads.configure_threads(fixed, torch.device("cpu"), World(0, 2, 0, 2)) == 3
    finally:
        torch.set_num_threads(before)
