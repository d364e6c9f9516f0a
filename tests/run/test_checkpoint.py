"""Checkpoints: atomic writes, weights_only reads, and a clear refusal for anything that is not ours."""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile

import pytest
import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import CheckpointError
from mlptrain.base.files import atomic_write
from mlptrain.base.metrics import EpochStats, History
from mlptrain.core.data import Split, TrainingData
from mlptrain.core.engine import FlatParameters, TrainState, build_optimizer, train_step
from mlptrain.core.nn import build_model
from mlptrain.core.rng import rng_state
from mlptrain.core.schedule import build_scheduler
from mlptrain.run.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    restore,
    save_checkpoint,
    write_checkpoint,
)


def fields(config: Config | None = None, **over):
    """A checkpoint's fields as the trainer writes them after one epoch of `config`, with `over` replacing some."""
    config = config or Config()
    model = build_model(config.model, 784, 10)
    optimizer = build_optimizer([FlatParameters(model).param], config.train)
    scheduler = build_scheduler(optimizer, config.train, 10 * config.train.epochs)
    row = EpochStats(1, 0.5, 0.5, 0.5, 0.5, 0.01, 1.0, 0.1, 100.0).as_dict()
    base = {
        "config": config.to_dict(),
        "data": {"in_features": 784, "num_classes": 10, "mean": 0.13, "std": 0.31},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": 1,
        "metrics": row,
        "best": {"epoch": 1, "monitor": "val_acc", "value": 0.5},
        "history": [row],
        "rng": rng_state(torch.device("cpu")),
        "progress": None,
    }
    base.update(over)
    return base


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    write_checkpoint(path, fields())
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["config"], Config) and ckpt["format_version"] == FORMAT_VERSION
    model = model_from_checkpoint(ckpt, path, torch.device("cpu"))
    assert model.sizes == [784, 128, 64, 10]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def good_bytes() -> bytes:
    return torch_bytes({"format": "mlptrain-checkpoint", "format_version": FORMAT_VERSION, "versions": {}, **fields()})


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a readable checkpoint"),
        (random.Random(0).randbytes(4096), "not a readable checkpoint"),
        (lambda: good_bytes()[:2000], "not a readable checkpoint"),
        (lambda: torch_bytes({"weights": torch.zeros(3)}), "not an mlptrain checkpoint"),
        (lambda: torch_bytes(torch.zeros(3)), "not an mlptrain checkpoint"),
        (lambda: torch_bytes({"format": "mlptrain-checkpoint", "format_version": 99}), "format version 99"),
        (lambda: torch_bytes({"format": "mlptrain-checkpoint", "format_version": 1}), "missing"),
        (
            lambda: torch_bytes(
                {**fields(), "format": "mlptrain-checkpoint", "format_version": 1, "config": {"train": {"lr": -1}}}
            ),
            "train.lr",
        ),
    ],
)
def test_refusals(tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    path.write_bytes(content() if callable(content) else content)
    with pytest.raises(CheckpointError, match=None) as info:
        load_checkpoint(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_arbitrary_objects_are_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(torch_bytes({"format": "mlptrain-checkpoint", "payload": Boom()}))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "p.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_layer_sizes_must_match_config(tmp_path):
    path = tmp_path / "c.pt"
    wrong = build_model(Config().model, 784, 10).state_dict()
    wrong["layers.1.weight"] = torch.zeros(32, 128)
    write_checkpoint(path, fields(model=wrong))
    with pytest.raises(CheckpointError, match=r"layers\.1\.weight"):  # refused on reading, before any use
        load_checkpoint(path)


def test_missing_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="did you mean"):
        load_checkpoint(tmp_path)


def test_zip_that_is_not_torch(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


# --- restoring a run's state ---------------------------------------------------------------------------------


def session_parts(epochs: int, steps: int = 10):
    """(config, data, state) as the trainer builds them for a tiny run of `epochs` epochs of `steps` steps."""
    config = Config.from_dict({"train": {"epochs": epochs, "scheduler": "onecycle", "momentum": 0.9}})
    torch.manual_seed(0)
    model = build_model(config.model, 20, 10)
    optimizer = build_optimizer([FlatParameters(model).param], config.train)
    scheduler = build_scheduler(optimizer, config.train, steps * epochs)
    x, y = torch.randn(8, 20), torch.randint(0, 10, (8,))
    data = TrainingData(Split(x, y), Split(x, y), mean=0.1, std=0.3)
    return config, data, TrainState(model, optimizer, scheduler)


def step(state: TrainState, data: TrainingData, times: int) -> None:
    for _ in range(times):
        train_step(state.model, state.optimizer, data.train.x, data.train.y)
        state.scheduler.step()


def test_save_then_restore_gives_back_every_piece_of_state(tmp_path):
    config, data, state = session_parts(epochs=3)
    step(state, data, 13)
    state.epoch = 1
    history = History("val_acc", [EpochStats(1, 0.5, 0.5, 0.5, 0.5, 0.01, 1.0, 0.1, 100.0)])
    save_checkpoint([tmp_path / "last.pt", tmp_path / "best.pt"], config, data, state, history)
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "best.pt").read_bytes()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["best"] == {"epoch": 1, "monitor": "val_acc", "value": 0.5}

    _, _, fresh = session_parts(epochs=3)
    assert restore(ckpt, fresh) == history.epochs and fresh.epoch == 1
    for a, b in zip(state.model.state_dict().values(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    step(state, data, 2)
    step(fresh, data, 2)  # optimizer momentum and schedule continue alike
    assert torch.equal(state.model.layers[0].weight, fresh.model.layers[0].weight)


def test_a_longer_schedule_continues_from_the_step_reached(tmp_path):
    config, data, state = session_parts(epochs=2)
    step(state, data, 13)
    save_checkpoint([tmp_path / "last.pt"], config, data, state, History("val_acc"))
    _, _, longer = session_parts(epochs=4)  # train.epochs extended from 2 to 4
    restore(load_checkpoint(tmp_path / "last.pt"), longer)
    _, _, reference = session_parts(epochs=4)
    step(reference, data, 13)  # the longer schedule, followed from the start
    assert longer.scheduler.last_epoch == 13
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])
    assert longer.optimizer.param_groups[0]["momentum"] == pytest.approx(
        reference.optimizer.param_groups[0]["momentum"]
    )


def test_a_run_records_its_split_and_resume_refuses_data_that_changed_size(tmp_path, mnist_root, mnist_digits):
    """data.val_size as a fraction resolves against the images there are: the checkpoint records the counts, so a
    resume on a dataset of another size (another split, other images) is refused instead of training on."""
    from conftest import copy_dataset, write_mnist_folder

    from mlptrain.run import trainer

    root = copy_dataset(mnist_root, tmp_path / "data")
    config = Config.from_dict({
        "device": "cpu", "data": {"dataset": "mnist", "root": str(root), "download": False, "val_size": 0.1},
        "model": {"hidden": [16]}, "train": {"epochs": 1, "batch_size": 256},
    })  # fmt: skip
    run = trainer.train(config, run_dir=tmp_path / "run").run_dir
    data = load_checkpoint(run / "last.pt")["data"]
    assert (data["train_images"], data["val_images"]) == (2700, 300)
    images, labels = mnist_digits["train"]
    write_mnist_folder(root / "MNIST" / "raw", {"train": (images[:2000], labels[:2000])})
    with pytest.raises(CheckpointError, match="trained on 2700 images, but its data now gives 1800"):
        trainer.resume(run, ["train.epochs=2"])
