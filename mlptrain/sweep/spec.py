"""A sweep file, read and validated: the base config, the method (grid, random, tpe), the values to try of each
swept key (a list, or a range {low, high, log}), the trial count and seed, and the pruner with its settings."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlptrain.base.config import did_you_mean, key_problem, kind_of, quote
from mlptrain.base.errors import ConfigError

METHODS = ("grid", "random", "tpe")
DRAWN = ("random", "tpe")  # the methods that take trials, and ranges (every method takes seed)
SPEC_KEYS = ("base", "method", "params", "trials", "seed", "pruner")
RANGE_KEYS = ("low", "high", "log")
# The pruners and their settings (each a whole number; the defaults here).
PRUNERS = {
    "none": {},
    "median": {"startup_trials": 5, "warmup_epochs": 0},
    "hyperband": {"min_epochs": 1, "reduction_factor": 3},
}
MAX_TRIALS = 10_000  # trials in one sweep


@dataclass
class Spec:
    """A sweep file, validated: which base config, and how to pick the values of each swept key."""

    base: str  # as the sweep file names it, relative to the sweep file
    method: str
    params: dict[str, list | dict]  # dotted key -> values to try, or (random, tpe) a range {low, high, log}
    trials: int | None = None  # random and tpe
    seed: int = 0  # seeds the sampler: the grid's order, the random draws, the TPE sampler
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})  # name and settings, all filled in

    def combinations(self) -> list[dict[str, Any]]:
        """A grid's every combination, the first key varying slowest (checked before any runs; the study's
        GridSampler runs them, in an order its seed shuffles). Values listed twice count once."""
        choices = [list({json.dumps(v): v for v in values}.values()) for values in self.params.values()]
        return [dict(zip(self.params, combo, strict=True)) for combo in itertools.product(*choices)]

    @property
    def size(self) -> int:
        """How many trials the sweep runs in all: a grid's combinations, else `trials`."""
        if self.method != "grid":
            return self.trials
        return math.prod(len({json.dumps(v) for v in values}) for values in self.params.values())

    def to_dict(self) -> dict[str, Any]:
        """As a sweep file would say it (parse_spec reads it back)."""
        extra = {"trials": self.trials, "seed": self.seed} if self.method in DRAWN else {"seed": self.seed}
        if self.pruner["name"] != "none":
            extra["pruner"] = self.pruner
        return {"base": self.base, "method": self.method, "params": self.params, **extra}


def parse_spec(raw: Any, source: str, trials: int | None = None) -> Spec:
    """Validate a sweep file's content (everything but the trials' configs); `trials` is --trials N."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (base, method, params...), got {kind_of(raw)}")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{source}: unknown key {quote(key)}{did_you_mean(str(key), SPEC_KEYS)}")
    base = raw.get("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{source}: base: name the base config file (relative to the sweep file), got {quote(base)}")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"{source}: method: {quote(method)} is not one of {', '.join(METHODS)}")
    spec = Spec(base=base, method=method, params=_params(raw.get("params"), method, source))
    spec.pruner = _pruner(raw.get("pruner", "none"), f"{source}: pruner")
    spec.seed = raw.get("seed", 0)
    if not _is_int(spec.seed) or not 0 <= spec.seed < 2**63:
        raise ConfigError(f"{source}: seed: must be an integer in [0, 2**63), got {quote(spec.seed)}")
    if method == "grid":
        if "trials" in raw:
            raise ConfigError(
                f"{source}: trials: only a random sweep (or tpe) takes trials; a grid runs every combination"
            )
        if trials is not None:
            raise ConfigError(f"--trials {trials}: only a random sweep takes --trials; {source} is a grid")
        combinations = spec.size
        if combinations > MAX_TRIALS:
            raise ConfigError(
                f"{source}: params: the grid has {combinations:,} combinations, more than a sweep may run "
                f"({MAX_TRIALS:,}); sweep fewer values, or draw trials at random (method: random)"
            )
        return spec
    spec.trials = trials if trials is not None else raw.get("trials")
    if not _is_int(spec.trials) or spec.trials < 1:
        raise ConfigError(f"{source}: trials: a {method} sweep needs a number of trials >= 1, got {quote(spec.trials)}")
    check_trials(spec.trials, f"--trials {trials}" if trials is not None else f"{source}: trials")
    return spec


def _pruner(raw: Any, where: str) -> dict[str, Any]:
    """`none`, `median`, `hyperband`, or a mapping {name: median, warmup_epochs: 1, ...}: the name and every setting."""
    settings = dict(raw) if isinstance(raw, dict) else {"name": raw}
    name = settings.pop("name", None)
    if name not in PRUNERS:
        raise ConfigError(f"{where}: {quote(name)} is not one of {', '.join(PRUNERS)} (or {{name: median, ...}})")
    for key, value in settings.items():
        if key not in PRUNERS[name]:
            known = tuple(PRUNERS[name])
            raise ConfigError(f"{where}: {name} takes no {quote(key)}{did_you_mean(str(key), known)}")
        low = 2 if key == "reduction_factor" else 1 if key == "min_epochs" else 0
        if not _is_int(value) or not low <= value <= MAX_TRIALS:
            raise ConfigError(f"{where}: {key}: a whole number in [{low}, {MAX_TRIALS}], got {quote(value)}")
    return {"name": name, **PRUNERS[name], **settings}


def check_trials(trials: int, where: str) -> None:
    """Refuse more trials than a sweep may run: each is a training run, and each config is checked up front."""
    if trials > MAX_TRIALS:
        raise ConfigError(f"{where}: {trials:,} trials, more than a sweep may run ({MAX_TRIALS:,})")


def _params(params: Any, method: str, source: str) -> dict[str, list | dict]:
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: params: map each config key to the values to try, e.g. train.lr: [0.01, 0.1]")
    for key, values in params.items():
        where = f"{source}: params: {key}"
        problem = key_problem(str(key))
        if problem:
            raise ConfigError(f"{source}: params: {problem}")
        if isinstance(values, dict) and method in DRAWN:
            _check_range(values, where)
        elif not isinstance(values, list):
            also = "" if method == "grid" else " or a range {low: ..., high: ..., log: true}"
            raise ConfigError(f"{where}: expected a list of values to try{also}, got {kind_of(values)} {quote(values)}")
        elif not values:
            raise ConfigError(f"{where}: the list of values to try is empty")
    return params


def _check_range(r: dict, where: str) -> None:
    for key in r:
        if key not in RANGE_KEYS:
            raise ConfigError(f"{where}: unknown range key {quote(key)}{did_you_mean(str(key), RANGE_KEYS)}")
    for key in ("low", "high"):
        value = r.get(key)
        if not _is_number(value):
            raise ConfigError(f"{where}: {key}: a range needs a finite number, got {quote(value)}")
    if not r["low"] < r["high"]:
        raise ConfigError(f"{where}: low must be below high, got low={quote(r['low'])} high={quote(r['high'])}")
    if not isinstance(r.get("log", False), bool):
        raise ConfigError(f"{where}: log: expected true or false, got {quote(r['log'])}")
    if r.get("log") and r["low"] <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {quote(r['low'])}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (_is_int(x) or isinstance(x, float)) and math.isfinite(x)
