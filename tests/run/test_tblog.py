"""TensorBoard logging (output.tensorboard): the event files read back with tensorboard's own reader hold every
epoch's metrics.csv columns, the rate of every step, the hyper-parameters and the confusion-matrix image; a resumed
run writes no step twice; a sweep's trials log apart; no host sync is added; a missing package is one line."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import StopAt
from typer.testing import CliRunner

from mlptrain.base.config import Config
from mlptrain.base.metrics import COLUMNS, read_metrics
from mlptrain.cli.main import app
from mlptrain.core.data import steps_per_epoch
from mlptrain.run import trainer
from mlptrain.run.interrupt import StopRequest
from mlptrain.sweep import start as sweep_start

EPOCHS, TRAIN_IMAGES, BATCH = 3, 1000, 64
STEPS = steps_per_epoch(TRAIN_IMAGES, BATCH)
TINY = {
    "name": "tb",
    "device": "cpu",
    "seed": 5,
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32], "dropout": 0.1},
    "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.1},
    "output": {"tensorboard": True},
}


def tiny(**output) -> Config:
    return Config.from_dict({**TINY, "output": {**TINY["output"], **output}})


def events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], set[str], list]:
    """(scalar tag -> [(step, value)] over every event file, plugin tags, images), read by tensorboard's loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    plugins, images = set(), []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "hparams":
                    plugins.add(value.tag)
                elif plugin == "images" or value.HasField("image"):
                    images.append((value.tag, event.step, value))
                elif plugin == "scalars" or value.HasField("simple_value"):
                    number = value.simple_value if value.HasField("simple_value") else _tensor_value(value)
                    scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars, plugins, images


def _tensor_value(value) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(value.tensor))


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    trainer.train(tiny(), run_dir=run_dir)
    return run_dir


def test_every_epoch_every_column_every_step_the_hparams_and_the_image(logged):
    scalars, plugins, images = events(logged / "tensorboard")
    rows, _ = read_metrics(logged / "metrics.csv")
    for column in COLUMNS[1:]:
        assert [step for step, _ in scalars[f"epoch/{column}"]] == [1, 2, 3], column
        for (_, value), row in zip(scalars[f"epoch/{column}"], rows, strict=True):
            assert value == pytest.approx(getattr(row, column), rel=1e-6), column
    assert [step for step, _ in scalars["step/lr"]] == list(range(1, EPOCHS * STEPS + 1))
    rates = dict(scalars["step/lr"])
    for row in rows:  # metrics.csv's lr is the rate of the epoch's last step
        assert rates[row.epoch * STEPS] == pytest.approx(row.lr, rel=1e-6)
    assert rates[1] < rates[STEPS]  # onecycle warms up
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= plugins
    best = max(rows, key=lambda r: r.val_acc)
    assert scalars["best/val_acc"][-1] == (EPOCHS, pytest.approx(best.val_acc, rel=1e-6))
    [(tag, step, image)] = images
    assert tag == "confusion/val_best" and step == best.epoch
    width, height, png = image.tensor.string_val  # the loader's form of an image: a blob sequence
    assert int(width) > 300 and int(height) > 300 and png.startswith(b"\x89PNG")


def test_the_hparams_hold_the_config(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = EventAccumulator(str(logged / "tensorboard"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(0.1)
    assert hparams["model.hidden"].string_value == "[32]"
    assert hparams["data.dataset"].string_value == "synthetic"


@pytest.mark.parametrize(("epoch", "batch"), [(2, 5), (1, STEPS)])
def test_a_resumed_run_appends_without_a_step_twice(logged, tmp_path, epoch, batch):
    run_dir, stop = tmp_path / "run", StopRequest()
    with pytest.raises(trainer.Interrupted):
        trainer.train(tiny(), run_dir=run_dir, callbacks=StopAt(stop, epoch, batch), stop=stop)
    trainer.resume(run_dir)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # appended, not rewritten
    scalars, plugins, images = events(run_dir / "tensorboard")
    reference, _, _ = events(logged / "tensorboard")
    for tag, points in scalars.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice"
        assert sorted(steps) == [step for step, _ in reference[tag]], tag
    uninterrupted = dict(reference["step/lr"])
    assert all(value == uninterrupted[step] for step, value in scalars["step/lr"])
    assert len(images) == 1 and "_hparams_/session_start_info" in plugins


def test_a_killed_run_logs_on_resume_the_epochs_it_never_logged(tmp_path, monkeypatch):
    """As after a kill -9 between last.pt and the event file: the resumed run logs those epochs' rows."""
    run_dir = tmp_path / "run"
    trainer.train(tiny(), run_dir=run_dir)
    trainer.train(Config.from_dict({**TINY, "train": {**TINY["train"], "epochs": 2}}), run_dir=run_dir, force=True)
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        path.unlink()  # nothing logged survived
    trainer.resume(run_dir, ["train.epochs=3"])
    scalars, _, _ = events(run_dir / "tensorboard")
    assert [step for step, _ in scalars["epoch/val_acc"]] == [1, 2, 3]


def test_force_over_a_run_starts_its_log_afresh(logged, tmp_path):
    run_dir = Path(shutil.copytree(logged, tmp_path / "run"))
    trainer.train(Config.from_dict({**TINY, "train": {**TINY["train"], "epochs": 1}}), run_dir=run_dir, force=True)
    scalars, _, images = events(run_dir / "tensorboard")
    assert [step for step, _ in scalars["epoch/val_acc"]] == [1] and len(images) == 1
    assert [step for step, _ in scalars["step/lr"]] == list(range(1, STEPS + 1))


def test_logging_adds_no_host_sync(tmp_path, monkeypatch):
    """The same run with and without TensorBoard reads the same number of values back from tensors."""
    calls: Counter = Counter()
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    from mlptrain.run.tblog import TensorBoardLog

    monkeypatch.setattr(TensorBoardLog, "finish", lambda self: None)  # the end-of-run image reads its counts
    counts = []
    for on in (False, True):
        calls.clear()
        trainer.train(tiny(tensorboard=on), run_dir=tmp_path / f"run-{on}")
        counts.append(dict(calls))
    assert counts[0] == counts[1]


def test_a_sweeps_trials_each_log_into_their_own_folder(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "device: cpu\ndata: {dataset: synthetic, synthetic_size: 600, val_size: 100}\n"
        "train: {epochs: 1, batch_size: 64}\noutput: {tensorboard: true}\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text("base: base.yaml\nparams:\n  model.hidden: [[16], [32]]\n")
    job = sweep_start.start(spec, None, folder=tmp_path / "sweep")
    sweep_start.run(job)
    logs = sorted((tmp_path / "sweep").glob("*/tensorboard/events.out.tfevents.*"))
    assert len({path.parent.parent for path in logs}) == 2


def test_without_the_package_the_run_refuses_to_start_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    result = CliRunner().invoke(
        app, ["train", str(smoke), "--run-dir", str(tmp_path / "run"), "--set", "output.tensorboard=true"]
    )
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mlptrain[tensorboard]'" in lines[0]
    assert not (tmp_path / "run").exists()
    dry = CliRunner().invoke(app, ["train", str(smoke), "--dry-run", "--set", "output.tensorboard=true"])
    assert dry.exit_code == 2 and "mlptrain[tensorboard]" in dry.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: {smoke}\nparams:\n  output.tensorboard: [false, true]\n")
    swept = CliRunner().invoke(app, ["sweep", str(spec), "--dir", str(tmp_path / "sweep")])
    assert swept.exit_code == 2 and "mlptrain[tensorboard]" in swept.stderr
    assert not (tmp_path / "sweep").exists()  # refused before any trial ran
