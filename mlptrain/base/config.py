"""Typed run configuration: YAML in, validated dataclasses out, with --set overrides checked the same way.

This is the one place that validates; everything downstream trusts a Config.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mlptrain.base.errors import ConfigError
from mlptrain.base.recipes import resolve
from mlptrain.base.urls import scrub, shown_url
from mlptrain.base.yamlfile import kind_of, parse_yaml, quote, read_yaml

DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # what `device` may say (core/device.py resolves it)
# The tracking URIs output.mlflow takes (MLflow's stores that are tried here): a file store, a SQLAlchemy database
# (postgresql+DRIVER too), a tracking server.
MLFLOW_URI_RE = re.compile(r"(file|sqlite|postgresql(\+\w+)?|https?):.")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LAYERS = 1000  # hidden layers
MAX_NAME = 200  # characters: a run folder's name adds a timestamp, and a file system takes 255 bytes
MAX_EPOCHS = 100_000  # train.epochs and the patiences: a month of the smallest epochs; more is a typo
MAX_MIN_DELTA = 100.0  # train.min_delta: losses start near ln 10 ≈ 2.3 and accuracies are fractions; more is a typo
MAX_BATCH = 2**24  # train.batch_size: beyond any split's size, and within torch's 32-bit index arithmetic
MAX_LR = 1e6  # train.lr: far past divergence (lr-find stops at 10), where tests still make a run diverge on purpose
MAX_WEIGHT_DECAY = 10.0  # train.weight_decay
MLFLOW_STORE = "mlflow.db"  # output.mlflow: true's SQLite store, in output.dir
IMAGE_SIDE = 28  # pixels: every dataset here has 28×28 images (a folder's are made so, as predict makes them)
MAX_ELASTIC_ALPHA = 1000.0  # pixels: far past the image's side, for the smoothest fields


class _Invalid(Exception):
    """A problem with one key; the loader adds where the key came from (file or --set)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class AugmentConfig:
    """Training-batch distortions (augment.py); `data.augment: <kind>` in a file stands for `{kind: <kind>}`."""

    kind: Literal["none", "affine", "elastic", "affine+elastic"] = "none"
    rotation: float = 10.0  # degrees, uniform in ±rotation
    scale: float = 0.1  # fraction: size times a factor uniform in [1 - scale, 1 + scale]
    shear: float = 10.0  # degrees, uniform in ±shear
    translate: float = 2.0  # pixels, uniform in ±translate along each axis
    elastic_alpha: float = 34.0  # pixels: the smoothed uniform(-1, 1) displacement field is scaled by this
    elastic_sigma: float = 4.0  # pixels: the Gaussian that smooths the field

    @classmethod
    def from_text(cls, kind: str) -> dict[str, Any]:
        return {"kind": kind}

    def validate(self) -> None:
        _check(0.0 <= self.rotation <= 180.0, "data.augment.rotation", f"must be in [0, 180], got {self.rotation}")
        _check(0.0 <= self.scale < 1.0, "data.augment.scale", f"must be in [0, 1), got {self.scale}")
        _check(0.0 <= self.shear < 90.0, "data.augment.shear", f"must be in [0, 90), got {self.shear}")
        side = f"pixels; the images are {IMAGE_SIDE}×{IMAGE_SIDE}"
        _check(0 <= self.translate <= IMAGE_SIDE, "data.augment.translate",
               f"must be >= 0 and at most {IMAGE_SIDE} ({side}), got {self.translate}")  # fmt: skip
        _check(0 <= self.elastic_alpha <= MAX_ELASTIC_ALPHA, "data.augment.elastic_alpha",
               f"must be >= 0 and at most {MAX_ELASTIC_ALPHA:g} (pixels), got {self.elastic_alpha}")  # fmt: skip
        _check(0 < self.elastic_sigma <= IMAGE_SIDE, "data.augment.elastic_sigma",
               f"must be > 0 and at most {IMAGE_SIDE} ({side}), got {self.elastic_sigma}")  # fmt: skip


@dataclass
class DataConfig:
    dataset: Literal["mnist", "fashion-mnist", "synthetic", "folder"] = "mnist"  # folder: core/folder.py
    root: str = "data"
    download: bool = True
    val_size: int | float = 5000  # held-out images: a count, or a fraction in (0, 1) of the training split
    synthetic_size: int = 12000
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        _check(self.root != "", "data.root", "must not be empty")
        if isinstance(self.val_size, float):
            _check(0 < self.val_size < 1, "data.val_size", f"a fraction must be in (0, 1), got {self.val_size}; "
                   "a count of images is a whole number such as 5000")  # fmt: skip
        _check(self.val_size >= 1 or isinstance(self.val_size, float), "data.val_size",
               f"must be at least 1, got {self.val_size}")  # fmt: skip
        _check(self.synthetic_size >= 6, "data.synthetic_size", f"must be at least 6, got {self.synthetic_size}")
        self.augment.validate()


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: float = 0.0
    bias: bool = True
    fused: bool = True  # the whole network as one node, gradients by hand in fp32; false: one node per layer

    def validate(self) -> None:
        _check(len(self.hidden) <= MAX_LAYERS, "model.hidden", f"at most {MAX_LAYERS} layers, got {len(self.hidden)}")
        for i, size in enumerate(self.hidden):
            _check(size >= 1, f"model.hidden[{i}]", f"layer sizes must be positive, got {size}")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine", "onecycle", "plateau"] = "onecycle"
    warmup_epochs: float = 0.0  # the rate climbs linearly to lr over these (fractional) epochs first; not onecycle
    plateau_factor: float = 0.1  # plateau: the rate is multiplied by this when `monitor` stalls
    plateau_patience: int = 2  # plateau: the rate is cut after this many epochs in a row without improvement
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    patience: int = 0  # stop after this many epochs without improvement on `monitor`; 0 = never
    min_delta: float = 0.0  # an improvement (for patience and plateau) beats the last one by more than this
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype for the matmuls
    compile: bool = False  # torch.compile the model (forward and backward); falls back to eager if it can't
    label_smoothing: float = 0.0  # ε: targets (1 - ε) on the label plus ε/classes on every class
    grad_clip_norm: float = 0.0  # clip the global gradient norm to this before each step; 0 = off
    ema: float = 0.0  # decay of the weights' moving average (e.g. 0.999); 0 = off

    def validate(self) -> None:
        _check(
            1 <= self.epochs <= MAX_EPOCHS,
            "train.epochs",
            f"must be at least 1 and at most {MAX_EPOCHS:,}, got {self.epochs}",
        )
        _check(
            1 <= self.batch_size <= MAX_BATCH,
            "train.batch_size",
            f"must be at least 1 and at most {MAX_BATCH:,}, got {self.batch_size}",
        )
        _check(0 < self.lr <= MAX_LR, "train.lr", f"must be > 0 and at most {MAX_LR:,.0f}, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, "train.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(
            0 <= self.weight_decay <= MAX_WEIGHT_DECAY,
            "train.weight_decay",
            f"must be >= 0 and at most {MAX_WEIGHT_DECAY:g}, got {self.weight_decay}",
        )
        _check(
            0 <= self.patience <= MAX_EPOCHS,
            "train.patience",
            f"must be >= 0 (0 turns early stopping off) and at most {MAX_EPOCHS:,}, got {self.patience}",
        )
        self._validate_schedule()
        _check(
            0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"
        )
        _check(self.grad_clip_norm >= 0, "train.grad_clip_norm", f"must be >= 0 (0 = off), got {self.grad_clip_norm}")
        _check(0.0 <= self.ema < 1.0, "train.ema", f"must be in [0, 1) (0 = off), got {self.ema}")

    def _validate_schedule(self) -> None:
        """warmup_epochs, the plateau settings and min_delta."""
        _check(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs",
               f"must be >= 0 and less than train.epochs ({self.epochs}), got {self.warmup_epochs}")  # fmt: skip
        _check(self.warmup_epochs == 0 or self.scheduler != "onecycle", "train.warmup_epochs",
               f"onecycle warms up by itself, got {self.warmup_epochs}; use 0, or another scheduler")  # fmt: skip
        _check(0 < self.plateau_factor < 1, "train.plateau_factor", f"must be in (0, 1), got {self.plateau_factor}")
        _check(1 <= self.plateau_patience <= MAX_EPOCHS, "train.plateau_patience",
               f"must be at least 1 and at most {MAX_EPOCHS:,}, got {self.plateau_patience}")  # fmt: skip
        _check(0 <= self.min_delta <= MAX_MIN_DELTA, "train.min_delta",
               f"must be >= 0 and at most {MAX_MIN_DELTA:g}, got {self.min_delta}")  # fmt: skip


@dataclass
class OutputConfig:
    dir: str = "runs"
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard/ (the tensorboard extra)
    # MLflow tracking (the mlflow extra): false; true, a SQLite store <output.dir>/mlflow.db (resolved() records it
    # as that URI); or a tracking URI, used as given.
    mlflow: bool | str = False

    def validate(self) -> None:
        _check(self.dir != "", "output.dir", "must not be empty")
        if isinstance(self.mlflow, str) and MLFLOW_URI_RE.match(self.mlflow) is None:
            shown = shown_url(self.mlflow, unknown="" if "@" in self.mlflow else self.mlflow)  # never a password
            raise _Invalid(
                "output.mlflow",
                f"{quote(shown) + ' is not' if shown else 'not'} a tracking URI this takes; give true (a SQLite "
                "store beside the runs), or a file:, sqlite:, postgresql:, http: or https: URI",
            )


@dataclass
class Config:
    name: str = "mnist-mlp"
    seed: int = 0
    device: str = "auto"
    threads: int | Literal["auto"] = "auto"  # CPU threads for torch; auto picks by the size of the work
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        _check(
            _NAME_RE.fullmatch(self.name) is not None,
            "name",
            f"{quote(self.name)} is not usable in a folder name (letters, digits, '.', '_', '-')",
        )
        _check(len(self.name) <= MAX_NAME, "name", f"at most {MAX_NAME} characters, got {len(self.name):,}")
        _check(0 <= self.seed < 2**63, "seed", f"must be in [0, 2**63), got {self.seed}")
        _check(
            DEVICE_RE.fullmatch(self.device) is not None,
            "device",
            f"unknown device {quote(self.device)}; use auto, cpu, cuda, cuda:N or mps",
        )
        if self.threads != "auto":
            _check(self.threads >= 1, "threads", f"must be auto or at least 1, got {self.threads}")
        for section in (self.data, self.model, self.train, self.output):
            section.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self, cwd: Path | None = None) -> Config:
        """A copy whose relative data.root and output.dir are made absolute against `cwd` (default: the current
        folder): a run records where it found its data, so eval and resume find it from anywhere."""

        def absolute(folder: str) -> str:
            return os.path.normpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(folder)))

        data = dataclasses.replace(self.data, root=absolute(self.data.root))
        output = dataclasses.replace(self.output, dir=absolute(self.output.dir))
        if output.mlflow is True:  # the run's config.yaml names the store, so a resume from anywhere finds it
            output = dataclasses.replace(output, mlflow=f"sqlite:///{Path(output.dir) / MLFLOW_STORE}")
        return dataclasses.replace(self, data=data, output=output)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> Config:
        """Build and validate a Config from plain data (a parsed YAML file or a checkpoint's copy)."""
        try:
            config = _build(cls, raw, "")
            config.validate()
        except _Invalid as e:
            raise ConfigError(f"{source}: {_where(e.key)}{e}") from None
        return config


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config file or shipped recipe (None, an empty file: all defaults), apply `key=value` overrides,
    and validate."""
    path = resolve(path) if path is not None else None
    raw = read_yaml(path, empty={}) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {kind_of(raw)}")
    set_keys: dict[str, str] = {}
    try:
        for item in overrides:
            key, value = parse_override(item)
            _assign(raw, key, value)
            set_keys[key] = item
        config = _build(Config, raw, "")
        config.validate()
    except _Invalid as e:
        origin = next((item for key, item in set_keys.items() if e.key == key or e.key.startswith(key + "[")), None)
        prefix = f"--set {_masked(origin)}" if origin else str(path)
        raise ConfigError(f"{prefix}: {_where(e.key)}{e}") from None
    return config


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=0.1' -> ('train.lr', 0.1); the value is parsed as YAML, the key checked against the schema."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train.lr=0.1")
    value = parse_yaml(text, f"--set {item}: the value") if text.strip() else ""
    problem = key_problem(key)
    if problem:
        raise ConfigError(f"--set {item}: {problem}")
    return key, value


def key_problem(key: str) -> str | None:
    """Why dotted `key` names no single config value ('unknown key ... (did you mean ...)'), or None if it does."""
    cls: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        hints = _fields(cls)
        if part not in hints:
            return f"unknown key {quote(key)}{did_you_mean(key, config_keys())}"
        cls = hints[part]
        if depth < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            return f"{'.'.join(parts[: depth + 1])!r} has no sub-keys"
    if dataclasses.is_dataclass(cls) and not hasattr(cls, "from_text"):
        return f"{key!r} is a section; set one of its keys, e.g. {key}.{next(iter(_fields(cls)))}"
    return None


def with_values(config: Config, values: dict[str, Any], source: str) -> Config:
    """A copy of `config` with dotted keys set ({'train.lr': 0.1}), validated whole; errors name `source`."""
    raw = config.to_dict()
    for key, value in values.items():
        _assign(raw, key, copy.deepcopy(value))
    return Config.from_dict(raw, source=source)


def config_keys(cls: Any = Config, section: str = "") -> list[str]:
    """Every leaf key of the schema, dotted: ['name', 'seed', ..., 'data.dataset', ...]."""
    keys = []
    for name, tp in _fields(cls).items():
        path = f"{section}.{name}" if section else name
        keys += config_keys(tp, path) if dataclasses.is_dataclass(tp) else [path]
    return keys


# --- internals ---------------------------------------------------------------------------------------------


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _Invalid(key, message)


def _masked(item: str) -> str:
    """A --set KEY=VALUE as a message shows it: a URL's password masked (output.mlflow's)."""
    value = item.partition("=")[2]
    return scrub(item, value) if "://" in value else item


def _where(key: str) -> str:
    return f"{key}: " if key else ""


def _fields(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _build(cls: Any, raw: Any, section: str) -> Any:
    """Turn a mapping into dataclass `cls`, checking every key and value type; ranges are checked by validate()."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Invalid(section, f"must be a mapping of keys to values, got {kind_of(raw)}")
    hints = _fields(cls)
    values = {}
    for key, value in raw.items():
        path = f"{section}.{key}" if section else str(key)
        if not isinstance(key, str) or key not in hints:
            known = [f"{section}.{name}" if section else name for name in hints]
            raise _Invalid("", f"unknown key {quote(path)}{did_you_mean(path, known)}")
        values[key] = _coerce(value, hints[key], path)
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "from_text"):  # a section's shorthand: `data.augment: none`
            value = tp.from_text(value)
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            try:
                return _coerce(value, option, key)
            except _Invalid:
                continue
        words = [" or ".join(map(repr, typing.get_args(o))) if typing.get_origin(o) is Literal else f"a {o.__name__}"
                 for o in options]  # fmt: skip
        raise _Invalid(key, f"expected {' or '.join(words)}, got {kind_of(value)} {quote(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
            raise _Invalid(key, f"{quote(value)} is not one of {', '.join(choices)}{hint}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list, got {kind_of(value)} {quote(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {quote(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, f"expected an integer, got {kind_of(value)} {quote(value)}")
        return value
    if tp is float:
        # PyYAML reads `1e-3` (no dot) as a string; accept any string that is plainly a number.
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        try:
            ok = not isinstance(number, bool) and isinstance(number, (int, float)) and math.isfinite(float(number))
        except OverflowError:  # an int too large for a float
            ok = False
        if not ok:
            raise _Invalid(key, f"expected a finite number, got {kind_of(value)} {quote(value)}")
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"expected a string, got {kind_of(value)} {quote(value)}")
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in the schema, not user input


def _assign(raw: dict, key: str, value: Any) -> None:
    """raw[key] = value for a dotted key. A section's shorthand and its keys combine, in either order:
    `data.augment: elastic` and `data.augment.elastic_sigma: 2` set both kind and sigma."""
    *sections, last = key.split(".")
    node, path, cls = raw, "", Config
    for part in sections:
        path = f"{path}.{part}" if path else part
        cls = _fields(cls).get(part) if dataclasses.is_dataclass(cls) else None
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and hasattr(cls, "from_text"):
            child = node[part] = cls.from_text(child)
        elif not isinstance(child, dict):
            raise _Invalid(path, f"must be a mapping of keys to values, got {kind_of(child)}")
        node = child
    section = _fields(cls).get(last) if dataclasses.is_dataclass(cls) else None
    if isinstance(value, str) and isinstance(node.get(last), dict) and hasattr(section, "from_text"):
        value = {**node[last], **section.from_text(value)}
    node[last] = value


def dump_yaml(config: Config) -> str:
    """The config as a run's config.yaml holds it: every key, in the schema's order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
