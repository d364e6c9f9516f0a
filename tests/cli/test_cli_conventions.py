"""The everyday conventions of the command line: -h, help text, `config`, `train --dry-run`, empty configs, the
first line before torch, a reader that leaves the pipe, hints for missing data, relative folders, folders of images,
and what a failed start leaves behind (nothing)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mlptrain.base.config import Config, config_keys, load_config
from mlptrain.base.errors import Interrupted
from mlptrain.cli import streams
from mlptrain.cli.main import app
from mlptrain.run import trainer
from mlptrain.run.interrupt import StopRequest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
COMMANDS = ["train", "eval", "export", "plot", "predict", "runs", "sweep", "bench", "config"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="mlptrain", env={"COLUMNS": "200"})


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["mlptrain", *COMMANDS])
def test_dash_h_is_help_and_free_of_metavar_artefacts(command):
    short, long = invoke(*command, "-h"), invoke(*command, "--help")
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    text = short.stdout
    for artefact in ("<bool>", "<path>", "[[", "{", "<list[", "(default:"):
        assert artefact not in text, f"{artefact!r} in the help of mlptrain {' '.join(command)}"
    tail = text.strip().splitlines()[-3:]
    assert any(line.strip().startswith("mlptrain ") for line in tail), "the help ends with an example"


def test_usage_lines_read_as_click_writes_them():
    assert "Usage: mlptrain train [OPTIONS] [CONFIG]" in invoke("train", "-h").stdout
    assert re.search(r"Usage: mlptrain eval \[OPTIONS\] CHECKPOINT *\n", invoke("eval", "-h").stdout)
    assert "Usage: mlptrain predict [OPTIONS] CHECKPOINT IMAGE..." in invoke("predict", "-h").stdout
    assert "Usage: mlptrain export [OPTIONS] CHECKPOINT OUT" in invoke("export", "-h").stdout


def test_mlptrain_alone_prints_the_help_and_exits_2():
    out = subprocess.run([sys.executable, "-m", "mlptrain"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2  # Click's convention: no command named is a usage error, with the help
    assert "Usage: mlptrain" in out.stdout and "train" in out.stdout and out.stderr == ""


def test_config_prints_what_loads_back_to_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("config", SMOKE, "--set", "train.lr=0.2", "--set", "model.hidden=[32, 16]")
    assert result.exit_code == 0, result.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout)
    expected = load_config(SMOKE, ["train.lr=0.2", "model.hidden=[32, 16]"]).resolved()
    assert load_config(printed) == expected
    assert set(yaml.safe_load(result.stdout)) == {
        "name",
        "seed",
        "device",
        "threads",
        "data",
        "model",
        "train",
        "output",
    }
    assert yaml.safe_load(result.stdout)["data"]["root"] == str(tmp_path / "data")  # as train would record it


def test_config_without_a_file_is_the_defaults_and_refuses_bad_input_like_train():
    assert Config.from_dict(yaml.safe_load(invoke("config").stdout)) == Config().resolved()
    bad = invoke("config", "--set", "train.lrr=1")
    assert bad.exit_code == 2 and "did you mean 'train.lr'" in bad.stderr


def test_config_keys_lists_every_key_with_type_default_and_meaning():
    result = invoke("config", "--keys")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "type", "default", "meaning"]
    assert [line.split()[0] for line in lines[1:]] == config_keys()
    assert any(line.startswith("train.lr ") and "0.05" in line and "float" in line for line in lines)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_means_all_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    result = invoke("config", path)
    assert result.exit_code == 0, result.stderr
    assert Config.from_dict(yaml.safe_load(result.stdout)) == Config().resolved()


def test_dry_run_checks_and_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", SMOKE, "--dry-run", "--set", "model.hidden=[100]")
    assert result.exit_code == 0, result.stderr
    assert "784-100-10" in result.stdout and "79,510" in result.stdout  # 784·100 + 100 + 100·10 + 10
    assert "device:" in result.stdout and "synthetic" in result.stdout and "MiB" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_dry_run_finds_the_data_files(tmp_path, mnist_root):
    ok = invoke("train", SMOKE, "--dry-run", "--set", "data.dataset=mnist", "--set", f"data.root={mnist_root}")
    assert ok.exit_code == 0 and str(mnist_root / "MNIST" / "raw") in ok.stdout
    missing = invoke(
        "train", SMOKE, "--dry-run", "--set", "data.dataset=mnist", "--set", f"data.root={tmp_path}",
        "--set", "data.download=false",
    )  # fmt: skip
    assert missing.exit_code == 2 and "--set data.root=DIR" in missing.stderr


def test_missing_mnist_hints_at_data_root_and_the_smoke_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", SMOKE, "--set", "data.dataset=mnist", "--set", "data.download=false")
    assert result.exit_code == 2
    assert "--set data.root=DIR" in result.stderr and "mlptrain train smoke" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no empty runs/ (nor data/) left behind


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self, *args, **kwargs):
        os.makedirs(self.raw_folder, exist_ok=True)  # as torchvision does before fetching
        raise RuntimeError("<urlopen error no network here>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    monkeypatch.chdir(tmp_path)
    result = invoke("train", SMOKE, "--set", "data.dataset=mnist")
    assert result.exit_code == 2 and "no network here" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_root) -> Path:
    """A run trained from the folder `start` on `start/data`, a relative data.root: the way a user works."""
    start = tmp_path_factory.mktemp("start")
    os.symlink(mnist_root, start / "data")
    config = start / "mnist.yaml"
    config.write_text("data: {dataset: mnist, root: data, download: false, val_size: 500}\ntrain: {epochs: 1}\n")
    here = Path.cwd()
    os.chdir(start)
    try:
        result = invoke("train", "mnist.yaml", "--set", "device=cpu", "-q")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.stderr
    (run,) = (start / "runs").iterdir()
    return run


def test_a_relative_data_root_is_recorded_absolute_and_found_from_elsewhere(mnist_run, tmp_path, monkeypatch):
    recorded = yaml.safe_load((mnist_run / "config.yaml").read_text())
    assert recorded["data"]["root"] == str(mnist_run.parent.parent / "data")
    assert recorded["output"]["dir"] == str(mnist_run.parent)
    monkeypatch.chdir(tmp_path)  # another folder, with no data/ in it
    result = invoke("eval", mnist_run / "best.pt", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr


def test_eval_of_missing_data_hints_at_data_root(mnist_run, tmp_path):
    result = invoke("eval", mnist_run / "best.pt", "--device", "cpu", "--data-root", tmp_path / "nowhere")
    assert result.exit_code == 2 and "--data-root DIR" in result.stderr


def _digit_png(path: Path) -> Path:
    image = Image.new("L", (40, 40), 255)
    for x in range(14, 26):
        image.putpixel((x, 20), 0)
        image.putpixel((20, x), 0)
    image.save(path)
    return path


def test_predict_a_folder_skips_what_is_not_an_image(trained_run, tmp_path):
    folder = tmp_path / "digits"
    (folder / "sub").mkdir(parents=True)
    b, a = _digit_png(folder / "b.png"), _digit_png(folder / "a.png")
    inner = _digit_png(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not a digit")
    table = tmp_path / "labels.csv"
    result = invoke("predict", trained_run / "best.pt", folder, "--csv", table)
    assert result.exit_code == 0, result.stderr
    assert "notes.txt: skipped, not an image file" in result.stderr and "error" not in result.stderr
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["file", "label", "confidence"]
    assert [row[0] for row in rows[1:]] == [str(a), str(b)]  # sorted; sub-folders only with --recursive
    assert all(0 <= int(row[1]) <= 9 and 0 <= float(row[2]) <= 1 for row in rows[1:])
    deep = invoke("predict", trained_run / "best.pt", folder, "--recursive", "--json")
    assert deep.exit_code == 0 and [str(a), str(b), str(inner)] == [o["file"] for o in json.loads(deep.stdout)]


def test_predict_a_folder_without_images_is_one_line(trained_run, tmp_path):
    result = invoke("predict", trained_run / "best.pt", tmp_path)
    assert result.exit_code == 2 and "no image files" in result.stderr


def test_the_stop_message_shows_accuracy_in_percent(tmp_path):
    config = Config.from_dict(
        {"device": "cpu", "data": {"dataset": "synthetic", "synthetic_size": 600, "val_size": 100},
         "model": {"hidden": [16]}, "train": {"epochs": 3, "batch_size": 50}}
    )  # fmt: skip
    stop = StopRequest()

    class StopInEpoch2(trainer.Callbacks):
        def epoch_started(self, epoch, epochs, steps, done):
            if epoch == 2:
                stop.request(signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        trainer.train(config, run_dir=tmp_path / "run", callbacks=StopInEpoch2(), stop=stop)
    message = str(info.value)
    assert "best so far: epoch 1 (val acc " in message and "%)" in message and "val_acc 0." not in message


def test_the_first_line_comes_before_torch_on_a_terminal_only(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    streams.announce("loading x.yaml")
    assert capsys.readouterr().err == "mlptrain: loading x.yaml...\n"
    streams.announce("loading x.yaml", quiet=True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    streams.announce("loading x.yaml")
    assert capsys.readouterr().err == ""


def test_a_reader_that_left_ends_the_command_quietly(tmp_path):
    """stdout is a pipe whose reader has gone: the command stops writing, says nothing, and exits 141."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mlptrain", "config", "--keys"], stdout=write, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == b""


def test_eval_piped_into_head_ends_quietly(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((trained_run / "best.pt").read_bytes())
    command = f"'{sys.executable}' -m mlptrain eval '{run / 'best.pt'}' --device cpu | head -1; exit ${{PIPESTATUS[0]}}"
    for _ in range(2):
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
        assert out.returncode in (0, 141) and out.stderr == "", (out.returncode, out.stderr)
        assert len(out.stdout.splitlines()) == 1
