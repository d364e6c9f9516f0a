"""mlptrain.base.config: typed defaults, YAML loading, ways a config or a --set override can be wrong, devices."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import make_config_file

from mlptrain.base.config import (
    Config,
    DataConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
    config_keys,
    load_config,
    parse_override,
)
from mlptrain.base.errors import ConfigError, MlptrainError
from mlptrain.core.device import resolve_device

REPO_ROOT = Path(__file__).resolve().parents[2]
# configs/sweep.yaml is a sweep file, not a config: tests/sweep/test_sweep.py checks it and every trial's config.
REPO_CONFIGS = sorted(p for p in (REPO_ROOT / "configs").glob("*.yaml") if p.name != "sweep.yaml")
ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()


# --- defaults and valid files -------------------------------------------------------------------------------


def test_defaults():
    config = Config()
    assert config.name == "mnist-mlp" and config.seed == 0 and config.device == "auto"
    assert config.data == DataConfig(dataset="mnist", root="data", download=True, val_size=5000, synthetic_size=12000)
    assert config.model.hidden == [128, 64]
    assert config.model.activation == "relu" and config.model.dropout == 0.0 and config.model.bias is True
    assert config.train.lr == 0.05
    assert config.train.epochs == 10 and config.train.batch_size == 128
    train = config.train
    assert (train.optimizer, train.scheduler, train.monitor) == ("sgd", "onecycle", "val_acc")
    assert config.train.momentum == 0.9 and config.train.weight_decay == 0.0
    assert config.output.dir == "runs"
    config.validate()


def test_defaults_do_not_share_mutable_lists():
    a, b = Config(), Config()
    a.model.hidden.append(10)
    assert b.model.hidden == [128, 64]


def test_minimal_file_gets_typed_defaults(tmp_path):
    text = "name: tiny\ntrain:\n  lr: 0.1\n  epochs: 2\nmodel:\n  hidden: [32, 16]\n"
    path = make_config_file(tmp_path, text)
    config = load_config(path)
    assert isinstance(config, Config)
    assert isinstance(config.data, DataConfig) and isinstance(config.model, ModelConfig)
    assert isinstance(config.train, TrainConfig) and isinstance(config.output, OutputConfig)
    assert config.name == "tiny"
    assert config.train.lr == 0.1 and config.train.epochs == 2
    assert config.model.hidden == [32, 16]
    assert config.train.batch_size == 128 and config.data.dataset == "mnist" and config.seed == 0


def test_int_accepted_for_float_and_stored_as_float(tmp_path):
    text = "train:\n  lr: 1\n  weight_decay: 0\nmodel:\n  dropout: 0\n"
    config = load_config(make_config_file(tmp_path, text))
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert type(config.train.weight_decay) is float and type(config.model.dropout) is float


@pytest.mark.parametrize(("text", "value"), [("500", 500), ("0.1", 0.1), ("1e-1", 0.1), ("1", 1)])
def test_val_size_is_a_count_or_a_fraction(tmp_path, text, value):
    config = load_config(make_config_file(tmp_path, f"data:\n  val_size: {text}\n"))
    assert config.data.val_size == value and type(config.data.val_size) is type(value)


def test_null_section_means_defaults(tmp_path):
    config = load_config(make_config_file(tmp_path, "name: x\ntrain:\nmodel: ~\n"))
    assert config.train == TrainConfig() and config.model == ModelConfig()


def test_every_field_settable(tmp_path):
    text = """
name: full.run_1-a
seed: 42
device: cpu
threads: 3
data: {dataset: fashion-mnist, root: /tmp/d, download: false, val_size: 10, synthetic_size: 600,
       augment: {kind: affine+elastic, rotation: 5, scale: 0.2, shear: 3, translate: 1.5, elastic_alpha: 30,
                 elastic_sigma: 5}}
model: {hidden: [7], activation: gelu, dropout: 0.25, bias: false, fused: false}
train: {epochs: 3, batch_size: 16, lr: 2.5e-3, optimizer: adamw, momentum: 0.0, weight_decay: 0.01,
        scheduler: cosine, warmup_epochs: 0.5, plateau_factor: 0.5, plateau_patience: 3, monitor: val_loss,
        patience: 2, min_delta: 0.01, precision: bf16, compile: true,
        label_smoothing: 0.1, grad_clip_norm: 2, ema: 0.99}
output: {dir: out, tensorboard: true, mlflow: 'sqlite:///m.db'}
"""
    config = load_config(make_config_file(tmp_path, text))
    assert config.to_dict() == {
        "name": "full.run_1-a",
        "seed": 42,
        "device": "cpu",
        "threads": 3,
        "data": {
            "dataset": "fashion-mnist",
            "root": "/tmp/d",
            "download": False,
            "val_size": 10,
            "synthetic_size": 600,
            "augment": {
                "kind": "affine+elastic",
                "rotation": 5.0,
                "scale": 0.2,
                "shear": 3.0,
                "translate": 1.5,
                "elastic_alpha": 30.0,
                "elastic_sigma": 5.0,
            },
        },
        "model": {"hidden": [7], "activation": "gelu", "dropout": 0.25, "bias": False, "fused": False},
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 0.0025,
            "optimizer": "adamw",
            "momentum": 0.0,
            "weight_decay": 0.01,
            "scheduler": "cosine",
            "warmup_epochs": 0.5,
            "plateau_factor": 0.5,
            "plateau_patience": 3,
            "monitor": "val_loss",
            "patience": 2,
            "min_delta": 0.01,
            "precision": "bf16",
            "compile": True,
            "label_smoothing": 0.1,
            "grad_clip_norm": 2.0,
            "ema": 0.99,
        },
        "output": {"dir": "out", "tensorboard": True, "mlflow": "sqlite:///m.db"},
    }


@pytest.mark.parametrize("text", ["data:\n  augment: affine\n", "data:\n  augment: {kind: affine}\n"])
def test_augment_takes_its_kind_as_shorthand(tmp_path, text):
    config = load_config(make_config_file(tmp_path, text))
    assert config.data.augment.kind == "affine" and config.data.augment.rotation == 10.0
    assert load_config(None, ["data.augment=elastic"]).data.augment.kind == "elastic"
    assert load_config(None).data.augment.kind == "none"


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.augment=elastic", "data.augment.elastic_sigma=2"],
        ["data.augment.elastic_sigma=2", "data.augment=elastic"],
    ],
)
def test_the_augment_shorthand_and_its_keys_combine_in_either_order(overrides):
    augment = load_config(None, overrides).data.augment
    assert (augment.kind, augment.elastic_sigma, augment.elastic_alpha) == ("elastic", 2.0, 34.0)


def test_a_file_shorthand_combines_with_a_set_key(tmp_path):
    path = make_config_file(tmp_path, "data:\n  augment: affine\n")
    augment = load_config(path, ["data.augment.rotation=5"]).data.augment
    assert (augment.kind, augment.rotation) == ("affine", 5.0)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.augment=wobble", "data.augment.kind: 'wobble' is not one of"),
        ("data.augment.scale=1.5", "data.augment.scale: must be in [0, 1)"),
        ("data.augment.elastic_sigma=0", "data.augment.elastic_sigma: must be > 0"),
        ("train.label_smoothing=1", "train.label_smoothing: must be in [0, 1)"),
        ("train.grad_clip_norm=-1", "train.grad_clip_norm: must be >= 0"),
        ("train.ema=1.0", "train.ema: must be in [0, 1)"),
    ],
)
def test_recipe_keys_are_validated(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, [override])


def test_output_tensorboard_is_a_boolean_off_by_default():
    assert load_config(None).output.tensorboard is False
    assert load_config(None, ["output.tensorboard=true"]).output.tensorboard is True
    with pytest.raises(ConfigError, match=r"output\.tensorboard"):
        load_config(None, ["output.tensorboard=often"])


def test_repo_has_configs():
    assert REPO_ROOT / "configs" / "smoke.yaml" in REPO_CONFIGS


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=[p.name for p in REPO_CONFIGS])
def test_repo_configs_load(path):
    config = load_config(path)
    config.validate()
    assert Config.from_dict(config.to_dict()) == config


def test_config_keys_lists_every_leaf():
    keys = config_keys()
    assert keys[:3] == ["name", "seed", "device"]
    assert {"data.dataset", "model.hidden", "train.lr", "train.monitor", "output.dir"} <= set(keys)
    assert not any(key in {"data", "model", "train", "output"} for key in keys)


# --- bad files ----------------------------------------------------------------------------------------------

# (id, file contents, substrings the ConfigError message must contain). "{path}" stands for the file's path.
BAD_CONFIGS = [
    ("unknown-key", "train:\n  lrr: 0.1\n", ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    ("unknown-top-key", "nmae: x\n", ["unknown key 'nmae'", "did you mean 'name'"]),
    ("unknown-section", "trian:\n  lr: 0.1\n", ["unknown key 'trian'", "did you mean 'train'"]),
    ("unknown-key-no-match", "zzzzzz: 1\n", ["unknown key 'zzzzzz'"]),
    ("string-for-int", "train:\n  epochs: ten\n", ["train.epochs", "expected an integer"]),
    ("quoted-int", "train:\n  batch_size: '128'\n", ["train.batch_size", "expected an integer"]),
    ("bool-for-int", "train:\n  batch_size: true\n", ["train.batch_size", "expected an integer"]),
    ("float-for-int", "train:\n  epochs: 2.5\n", ["train.epochs", "expected an integer"]),
    ("whole-float-for-int", "train:\n  epochs: 2.0\n", ["train.epochs", "expected an integer"]),
    ("bool-for-seed", "seed: false\n", ["seed", "expected an integer"]),
    ("list-for-scalar", "train:\n  lr: [0.1]\n", ["train.lr", "expected a finite number"]),
    ("mapping-for-scalar", "name: {a: 1}\n", ["name", "expected a string"]),
    ("scalar-for-section", "train: 5\n", ["train", "must be a mapping"]),
    ("list-for-section", "model:\n  - 128\n", ["model", "must be a mapping"]),
    ("scalar-for-list", "model:\n  hidden: 128\n", ["model.hidden", "expected a list"]),
    ("string-for-float", "train:\n  lr: fast\n", ["train.lr", "expected a finite number"]),
    ("bool-for-float", "train:\n  lr: true\n", ["train.lr", "expected a finite number"]),
    ("nan-lr", "train:\n  lr: .nan\n", ["train.lr", "finite"]),
    ("inf-lr", "train:\n  lr: .inf\n", ["train.lr", "finite"]),
    ("inf-string-lr", "train:\n  lr: 1e999\n", ["train.lr", "finite"]),
    ("huge-int-lr", f"train:\n  lr: {'9' * 400}\n", ["train.lr", "finite"]),
    ("string-for-bool", "data:\n  download: maybe\n", ["data.download", "expected true or false"]),
    ("int-for-bool", "model:\n  bias: 1\n", ["model.bias", "expected true or false"]),
    ("int-for-string", "output:\n  dir: 5\n", ["output.dir", "expected a string"]),
    ("zero-epochs", "train:\n  epochs: 0\n", ["train.epochs", "at least 1"]),
    ("negative-epochs", "train:\n  epochs: -3\n", ["train.epochs", "at least 1"]),
    ("zero-batch-size", "train:\n  batch_size: 0\n", ["train.batch_size", "at least 1"]),
    ("zero-lr", "train:\n  lr: 0\n", ["train.lr", "> 0"]),
    ("negative-lr", "train:\n  lr: -0.1\n", ["train.lr", "> 0"]),
    ("dropout-one", "model:\n  dropout: 1.0\n", ["model.dropout", "[0, 1)"]),
    ("negative-dropout", "model:\n  dropout: -0.1\n", ["model.dropout", "[0, 1)"]),
    ("momentum-one", "train:\n  momentum: 1.0\n", ["train.momentum", "[0, 1)"]),
    ("negative-weight-decay", "train:\n  weight_decay: -0.01\n", ["train.weight_decay", ">= 0"]),
    ("unknown-activation", "model:\n  activation: swish\n", ["model.activation", "'swish'", "relu"]),
    ("unknown-optimizer", "train:\n  optimizer: sgdd\n", ["train.optimizer", "did you mean 'sgd'"]),
    ("unknown-scheduler", "train:\n  scheduler: step\n", ["train.scheduler", "'step'"]),
    ("unknown-dataset", "data:\n  dataset: cifar10\n", ["data.dataset", "'cifar10'", "mnist"]),
    ("misspelt-dataset", "data:\n  dataset: fashion_mnist\n", ["did you mean 'fashion-mnist'"]),
    ("unknown-monitor", "train:\n  monitor: val_accuracy\n", ["train.monitor", "did you mean 'val_acc'"]),
    ("device-gpu", "device: gpu\n", ["device", "unknown device 'gpu'"]),
    ("device-cuda-x", "device: cuda:x\n", ["device", "'cuda:x'"]),
    ("device-upper", "device: CPU\n", ["device", "'CPU'"]),
    ("name-with-slash", "name: runs/a\n", ["name", "'runs/a'", "folder name"]),
    ("name-empty", "name: ''\n", ["name", "folder name"]),
    ("name-leading-dot", "name: ..\n", ["name", "folder name"]),
    ("negative-seed", "seed: -1\n", ["seed", "[0, 2**63)"]),
    ("negative-hidden", "model:\n  hidden: [64, -8]\n", ["model.hidden[1]", "positive"]),
    ("zero-hidden", "model:\n  hidden: [0]\n", ["model.hidden[0]", "positive"]),
    ("string-hidden", "model:\n  hidden: [64, big]\n", ["model.hidden[1]", "expected an integer"]),
    ("zero-val-size", "data:\n  val_size: 0\n", ["data.val_size", "at least 1"]),
    ("val-fraction-zero", "data:\n  val_size: 0.0\n", ["data.val_size", "fraction", "(0, 1)"]),
    ("val-fraction-above-one", "data:\n  val_size: 5000.0\n", ["data.val_size", "(0, 1)", "whole number"]),
    ("val-size-text", "data:\n  val_size: tenth\n", ["data.val_size", "'tenth'"]),
    ("tiny-synthetic", "data:\n  synthetic_size: 5\n", ["data.synthetic_size", "at least 6"]),
    ("empty-root", "data:\n  root: ''\n", ["data.root", "must not be empty"]),
    ("empty-output-dir", "output:\n  dir: ''\n", ["output.dir", "must not be empty"]),
    ("top-level-list", "- name: x\n- seed: 1\n", ["{path}", "top level must be a mapping", "a list"]),
    ("top-level-scalar", "hello\n", ["{path}", "top level must be a mapping", "a string"]),
    ("invalid-yaml", "train:\n  lr: [0.1\n", ["{path}", "not valid YAML", "line"]),
    ("tab-indent", "train:\n\tlr: 0.1\n", ["{path}", "not valid YAML"]),
    ("duplicate-key", "train:\n  lr: 0.1\n  lr: 0.2\n", ["{path}", "duplicate key 'lr'", "line 3"]),
    ("duplicate-section", "train: {}\nmodel: {}\ntrain: {}\n", ["{path}", "duplicate key 'train'"]),
    ("unhashable-key", "train:\n  ? [lr, epochs]\n  : 0.1\n", ["{path}"]),
    ("non-utf8", b"name: caf\xe9\n", ["{path}", "not UTF-8", "byte 9"]),
    ("warmup-negative", "train:\n  scheduler: cosine\n  warmup_epochs: -1\n", ["train.warmup_epochs", ">= 0"]),
    (
        "warmup-all-epochs",
        "train:\n  epochs: 3\n  scheduler: cosine\n  warmup_epochs: 3\n",
        ["train.warmup_epochs", "less than train.epochs (3)"],
    ),
    ("warmup-with-onecycle", "train:\n  warmup_epochs: 1\n", ["train.warmup_epochs", "onecycle warms up by itself"]),
    ("plateau-factor-one", "train:\n  plateau_factor: 1.0\n", ["train.plateau_factor", "(0, 1)"]),
    ("plateau-factor-zero", "train:\n  plateau_factor: 0\n", ["train.plateau_factor", "(0, 1)"]),
    ("plateau-patience-zero", "train:\n  plateau_patience: 0\n", ["train.plateau_patience", "at least 1"]),
    ("min-delta-negative", "train:\n  min_delta: -0.1\n", ["train.min_delta", ">= 0"]),
    # every number has an upper bound too, checked before any work
    ("huge-epochs", f"train:\n  epochs: {10**30}\n", ["train.epochs", "at most 100,000"]),
    ("huge-batch-size", "train:\n  batch_size: 1000000000000\n", ["train.batch_size", "at most 16,777,216"]),
    ("huge-lr", "train:\n  lr: 1.0e+300\n", ["train.lr", "at most 1,000,000"]),
    ("huge-weight-decay", "train:\n  weight_decay: 1.0e+9\n", ["train.weight_decay", "at most 10"]),
    ("huge-patience", "train:\n  patience: 1000000000\n", ["train.patience", "at most 100,000"]),
    ("huge-plateau-patience", "train:\n  plateau_patience: 1000000000\n", ["train.plateau_patience", "100,000"]),
    ("huge-min-delta", "train:\n  min_delta: 1.0e+9\n", ["train.min_delta", "at most 100"]),
    ("long-name", f"name: {'a' * 300}\n", ["name", "at most 200 characters"]),
    ("huge-translate", "data:\n  augment: {translate: 1.0e+9}\n", ["data.augment.translate", "at most 28"]),
    ("huge-elastic-sigma", "data:\n  augment: {elastic_sigma: 1.0e+9}\n", ["data.augment.elastic_sigma", "at most 28"]),
    (
        "huge-elastic-alpha",
        "data:\n  augment: {elastic_alpha: 1.0e+308}\n",
        ["data.augment.elastic_alpha", "at most 1000"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in BAD_CONFIGS], ids=[row[0] for row in BAD_CONFIGS])
def test_bad_config_file(tmp_path, text, expected):
    path = make_config_file(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    for part in expected:
        assert part.replace("{path}", str(path)) in message
    assert "\n" not in message.strip()
    assert excinfo.value.exit_code == 2


@pytest.mark.parametrize("text", ["", "# nothing here\n", "{}\n", "\n\n# only comments\n\n"])
def test_an_empty_config_file_means_every_default(tmp_path, text):
    """The README promises that `{}` is all defaults; a file with nothing in it (or only comments) says the same."""
    assert load_config(make_config_file(tmp_path, text)) == Config()


def test_resolved_makes_relative_folders_absolute_against_the_start_folder(tmp_path):
    config = Config.from_dict({"data": {"root": "../data"}, "output": {"dir": "runs"}}).resolved(tmp_path / "a")
    assert config.data.root == str(tmp_path / "data")
    assert config.output.dir == str(tmp_path / "a" / "runs")
    assert config.resolved(tmp_path / "elsewhere") == config  # absolute folders stay as they are


def test_file_errors_name_the_file(tmp_path):
    path = make_config_file(tmp_path, "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"train\.epochs") as excinfo:
        load_config(path)
    assert str(excinfo.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder") as excinfo:
        load_config(tmp_path)
    assert str(tmp_path) in str(excinfo.value)


def test_config_error_is_an_mlptrain_error():
    assert issubclass(ConfigError, MlptrainError)


# --- --set overrides ----------------------------------------------------------------------------------------


BASE_CONFIG = "name: base\ndevice: cpu\nmodel:\n  hidden: [64]\ntrain:\n  epochs: 3\n  lr: 0.05\n"


@pytest.fixture
def base_path(tmp_path):
    """A small valid config of our own, so these tests do not follow edits to the repo's configs."""
    return make_config_file(tmp_path, BASE_CONFIG, "base.yaml")


def test_overrides_apply_with_yaml_parsing(base_path):
    config = load_config(base_path, ["train.lr=0.1", "model.hidden=[32]"])
    assert config.train.lr == 0.1
    assert config.model.hidden == [32]
    assert config.train.epochs == 3 and config.name == "base"  # untouched keys keep the file's values


def test_overrides_apply_to_repo_config():
    config = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["train.lr=0.1", "model.hidden=[32]"])
    assert (config.train.lr, config.model.hidden) == (0.1, [32])


@pytest.mark.parametrize(
    ("item", "attr", "value"),
    [
        ("train.lr=1e-3", ("train", "lr"), 0.001),
        ("train.lr=5E-2", ("train", "lr"), 0.05),
        ("train.epochs=7", ("train", "epochs"), 7),
        ("data.download=false", ("data", "download"), False),
        ("model.activation=tanh", ("model", "activation"), "tanh"),
        ("model.hidden=[256, 128, 64]", ("model", "hidden"), [256, 128, 64]),
        ("name=my-run", ("name",), "my-run"),
        ("seed=123", ("seed",), 123),
        ("device=cpu", ("device",), "cpu"),
        ("data.root = /tmp/some where", ("data", "root"), "/tmp/some where"),
    ],
)
def test_override_values(base_path, item, attr, value):
    config = load_config(base_path, [item])
    node = config
    for part in attr:
        node = getattr(node, part)
    assert node == value
    assert type(node) is type(value)


def test_override_adds_missing_sections(tmp_path):
    path = make_config_file(tmp_path, "name: x\nmodel:\n")
    config = load_config(path, ["train.lr=0.2", "model.dropout=0.1"])
    assert config.train.lr == 0.2 and config.model.dropout == 0.1


def test_later_override_wins(base_path):
    assert load_config(base_path, ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


def test_override_does_not_hide_a_bad_section_in_the_file(tmp_path):
    # `train: 5` is invalid whatever --set says; an override must not silently replace the file's value.
    path = make_config_file(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(path, ["train.lr=0.1"])


def test_file_error_keeps_file_prefix_when_overrides_given(tmp_path):
    path = make_config_file(tmp_path, "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, ["train.lr=0.1"])
    assert str(excinfo.value).startswith(f"{path}: train.epochs")


def test_override_can_fix_a_bad_file_value(tmp_path):
    path = make_config_file(tmp_path, "train:\n  epochs: 0\n")
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


BAD_OVERRIDES = [
    ("no-equals", "train.lr", ["--set train.lr", "KEY=VALUE"]),
    ("empty-key", "=0.1", ["--set =0.1", "KEY=VALUE"]),
    ("unknown-key", "train.lrr=0.1", ["--set train.lrr=0.1", "key 'train.lrr'", "did you mean 'train.lr'"]),
    ("unknown-section", "trian.lr=0.1", ["--set trian.lr=0.1", "did you mean 'train.lr'"]),
    ("section", "train=0.1", ["--set train=0.1", "is a section", "train.epochs"]),
    ("sub-key-of-leaf", "train.lr.max=1", ["--set train.lr.max=1", "'train.lr' has no sub-keys"]),
    ("bad-yaml", "model.hidden=[32", ["--set model.hidden=[32", "not valid YAML"]),
    ("bad-type", "train.epochs=ten", ["--set train.epochs=ten", "train.epochs", "expected an integer"]),
    ("bad-range", "train.lr=0", ["--set train.lr=0", "train.lr", "> 0"]),
    ("bad-float-string", "train.lr=fast", ["--set train.lr=fast", "train.lr", "finite"]),
    ("two-equals", "train.lr=0.1=x", ["--set train.lr=0.1=x", "train.lr", "'0.1=x'"]),  # first '=' splits
    ("bad-list-item", "model.hidden=[32, -1]", ["--set model.hidden=[32, -1]", "model.hidden[1]"]),
    ("bad-choice", "train.optimizer=adan", ["--set train.optimizer=adan", "did you mean 'adam'"]),
    ("bad-device", "device=gpu", ["--set device=gpu", "unknown device 'gpu'"]),
    ("empty-value", "name=", ["--set name=", "name"]),
]


@pytest.mark.parametrize(
    ("item", "expected"), [row[1:] for row in BAD_OVERRIDES], ids=[row[0] for row in BAD_OVERRIDES]
)
def test_bad_override(base_path, item, expected):
    with pytest.raises(ConfigError) as excinfo:
        load_config(base_path, [item])
    message = str(excinfo.value)
    assert message.startswith("--set ")
    for part in expected:
        assert part in message


def test_parse_override_returns_parsed_value():
    assert parse_override("train.lr=0.1") == ("train.lr", 0.1)
    assert parse_override(" model.hidden = [1, 2] ") == ("model.hidden", [1, 2])
    assert parse_override("output.dir=") == ("output.dir", "")


# --- devices ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_refused_without_gpu(spec):
    with pytest.raises(ConfigError, match="no usable CUDA GPU"):
        resolve_device(spec)


@pytest.mark.skipif(ACCELERATOR, reason="'auto' picks the accelerator here")
def test_auto_is_cpu_without_accelerator():
    assert resolve_device("auto") == torch.device("cpu")


def test_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CPU", "", "cpu:0"])
def test_unknown_device_spec(spec):
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(spec)


def test_out_of_range_cuda_index_is_a_config_error():
    # The config's device pattern accepts any digits after 'cuda:'; a huge index must still be a ConfigError.
    with pytest.raises(ConfigError, match="cuda:99999999999999999999"):
        resolve_device("cuda:99999999999999999999")


# --- dict round trip ----------------------------------------------------------------------------------------


def test_to_dict_round_trips():
    config = Config(name="rt", seed=5, device="cpu")
    config.model.hidden = [10, 20]
    config.train.lr = 0.125
    config.data.dataset = "synthetic"
    raw = config.to_dict()
    assert isinstance(raw, dict) and isinstance(raw["train"], dict)
    back = Config.from_dict(raw)
    assert back == config
    assert back.to_dict() == raw
    assert dataclasses.asdict(Config.from_dict(Config().to_dict())) == Config().to_dict()


def test_from_dict_validates_and_names_its_source():
    raw = Config().to_dict()
    raw["train"]["lr"] = -1
    with pytest.raises(ConfigError, match=r"^checkpoint x\.pt: train\.lr: must be > 0"):
        Config.from_dict(raw, source="checkpoint x.pt")
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        Config.from_dict({"extra": 1})
    with pytest.raises(ConfigError, match="must be a mapping"):
        Config.from_dict([1, 2])


def test_an_alias_that_stays_small_is_fine(tmp_path):
    """Aliases are refused only when they would expand past the limit; reusing a value is ordinary YAML."""
    path = make_config_file(tmp_path, "seed: &s 7\ndata: {val_size: *s}\nmodel: {hidden: &h [32, 16]}\n")
    config = load_config(path)
    assert config.seed == 7 and config.data.val_size == 7 and config.model.hidden == [32, 16]


def test_errors_quote_values_in_part(tmp_path):
    path = make_config_file(tmp_path, "name: " + "x" * 100_000 + "/\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "name" in str(caught.value) and len(str(caught.value)) < 300 + len(str(path))


def test_output_mlflow_is_off_true_or_a_tracking_uri_and_true_names_a_store_beside_the_runs(tmp_path):
    assert load_config(None).output.mlflow is False
    for uri in ("sqlite:///m.db", "postgresql://u@db/x", "postgresql+psycopg2://u@db/x", "http://h:5000", "file:/m"):
        assert load_config(None, [f"output.mlflow={uri}"]).output.mlflow == uri
    on = load_config(None, ["output.mlflow=true", "output.dir=out"]).resolved(tmp_path)
    assert on.output.mlflow == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    for bad in ("mysql://u:SECRETPW@db/x", "runs/mlflow.db", "", "3"):
        with pytest.raises(ConfigError, match=r"output\.mlflow") as refused:
            load_config(None, [f"output.mlflow={bad}"])
        assert "SECRETPW" not in str(refused.value) and "\n" not in str(refused.value)
