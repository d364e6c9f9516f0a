"""YAML files read in bounded time and memory: the one reader for configs, sweep files, --set values and run
folders' config.yaml (duplicate keys, alias bombs, self-reference and deep nesting refused), and `quote`, the
bounded repr that every error message quotes a value through."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from mlptrain.base.errors import ConfigError
from mlptrain.base.files import file_problem
from mlptrain.base.recipes import RECIPES

# Bounds on what a YAML file (config, sweep file, run folder's config.yaml) may make mlptrain read and build.
MAX_YAML_BYTES = 256 * 1024  # a config is a few hundred bytes; PyYAML reads about 100 kB a second
MAX_YAML_VALUES = 100_000  # counting each repetition an alias makes
MAX_YAML_DEPTH = 50


class _Refused(yaml.YAMLError):
    """A document that would take unbounded memory or time to build (an alias bomb, a loop, deep nesting)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last), and a document
    that grows past MAX_YAML_VALUES values once its aliases are expanded, refers to itself or nests too deeply."""

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain name, got {kind_of(key)}", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {quote(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values of the document as if every alias (*name) were written out in full, without building it.

    PyYAML builds an alias as a reference, but anything that walks the result (a copy, an error's repr) walks every
    repetition: ten nested aliases of ten items each are 10**10 values. A node's expanded size is counted once.
    """
    sizes: dict[int, int] = {}
    path = [(root, iter(_children(root)), [1])]  # (node, its children left, its size so far)
    on_path = {id(root)}
    while path:
        node, children, size = path[-1]
        child = next(children, None)
        if child is None:
            path.pop()
            on_path.discard(id(node))
            sizes[id(node)] = size[0]
            if path:
                path[-1][2][0] += size[0]
        elif id(child) in sizes:
            size[0] += sizes[id(child)]
        elif id(child) in on_path:
            raise _Refused(f"an alias at line {child.start_mark.line + 1} refers to a value that contains it")
        elif len(path) >= MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep")
        else:
            on_path.add(id(child))
            path.append((child, iter(_children(child)), [1]))
        if path and path[-1][2][0] > MAX_YAML_VALUES:
            raise _Refused(f"more than {MAX_YAML_VALUES:,} values, counting each repetition its aliases make")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def parse_yaml(text: str, source: str) -> Any:
    """YAML text read with _StrictLoader; every problem, a bomb included, is a one-line ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _Refused as e:
        raise ConfigError(f"{source}: refused: {e}") from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise ConfigError(f"{source}: refused: nested more than {MAX_YAML_DEPTH} levels deep") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None


def read_yaml(path: Path, what: str = "config file", example: str = "mnist", empty: Any = None) -> Any:
    """A YAML file's content, refusing duplicate keys; every problem is a one-line ConfigError naming the file.
    A file with no content (or only comments) is refused, unless `empty` says what it stands for."""
    problem = file_problem(path, what, MAX_YAML_BYTES)
    if problem:
        raise ConfigError(problem)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_YAML_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is invalid); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    if len(text) > MAX_YAML_BYTES:  # it grew since stat
        raise ConfigError(f"{path}: refused: larger than {MAX_YAML_BYTES:,} bytes")
    raw = parse_yaml(text, str(path))
    if raw is None and empty is not None:
        return empty
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; see the shipped {RECIPES / example}.yaml for an example")
    return raw


def quote(value: Any) -> str:
    """repr(value) cut short (strings, lists and nesting): what an error message shows of a value, in bounded time."""
    return _QUOTE.repr(value)


def _quoter() -> reprlib.Repr:
    r = reprlib.Repr()  # Python 3.11's takes no keyword arguments
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlong = 3, 60, 60, 8, 8, 40
    return r


_QUOTE = _quoter()


def kind_of(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "nothing",
    }
    return names.get(type(value), type(value).__name__)
