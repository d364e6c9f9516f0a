"""What a shell offers on TAB: config files, checkpoints and run folders, config keys. Plain Python, no torch:
it runs on every key press, so it must answer at once."""

from __future__ import annotations

import os
from pathlib import Path


def yaml_files(incomplete: str) -> list[str]:
    """The .yaml/.yml files and the folders (to go into) whose path starts with `incomplete`."""
    return _paths(incomplete, (".yaml", ".yml"))


def configs(incomplete: str) -> list[str]:
    """A CONFIG: the YAML files and folders, then the names of the shipped recipes that are configs."""
    return _with_recipes(yaml_files(incomplete), incomplete, sweeps=False)


def sweep_files(incomplete: str) -> list[str]:
    """A SWEEP: the YAML files and folders, then the names of the shipped sweep files."""
    return _with_recipes(yaml_files(incomplete), incomplete, sweeps=True)


def _with_recipes(found: list[str], incomplete: str, sweeps: bool) -> list[str]:
    from mlptrain.base.recipes import is_sweep, recipe_names

    names = [name for name in recipe_names() if name.startswith(incomplete) and is_sweep(name) == sweeps]
    return found + [name for name in names if name not in found]


def checkpoints(incomplete: str) -> list[str]:
    """The .pt files and the folders (run folders among them) whose path starts with `incomplete`."""
    return _paths(incomplete, (".pt",))


def settings(incomplete: str) -> list[str]:
    """`--set` values: the config keys starting with `incomplete`, each followed by '='; after the '=', nothing."""
    from mlptrain.base.config import config_keys

    if "=" in incomplete:
        return []
    return [f"{key}=" for key in config_keys() if key.startswith(incomplete)]


def _paths(incomplete: str, suffixes: tuple[str, ...]) -> list[str]:
    """Entries of the folder `incomplete` points into: folders (ending in the separator) and files with `suffixes`.

    Hidden entries only when `incomplete` asks for them (its last part starts with '.'), as shells do.
    """
    folder, _, start = incomplete.rpartition(os.sep)
    base = Path(folder or ".") if not (folder == "" and incomplete.startswith(os.sep)) else Path(os.sep)
    prefix = f"{folder}{os.sep}" if folder or incomplete.startswith(os.sep) else ""
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.startswith(start) or (entry.name.startswith(".") and not start.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            found.append(f"{prefix}{entry.name}{os.sep}")
        elif entry.name.lower().endswith(suffixes):
            found.append(f"{prefix}{entry.name}")
    return found
