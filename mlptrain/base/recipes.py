"""The recipes that ship inside the package (mlptrain/recipes/*.yaml; a checkout's configs/ is a link to that folder):
their names and what each is for, and a config argument resolved to its file, so that `mlptrain train mnist-best`
works wherever mlptrain is installed. A file that exists always wins over a recipe of the same name."""

from __future__ import annotations

from pathlib import Path

from mlptrain.base.errors import ConfigError

# Beside the package's modules: an installed wheel is unpacked, so the recipes are plain files there too.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
_SUFFIXES = (".yaml", ".yml")


def recipe_names() -> list[str]:
    """The shipped recipes' names, sorted: `mnist`, `mnist-best`, ..."""
    return sorted(path.stem for path in RECIPES.glob("*.yaml"))


def is_sweep(name: str) -> bool:
    """Whether the recipe is a sweep file (`mlptrain sweep NAME`) rather than a config (`mlptrain train NAME`)."""
    text = (RECIPES / f"{name}.yaml").read_text(encoding="utf-8")
    return any(line.startswith("params:") for line in text.splitlines())


def describe(name: str) -> str:
    """What the recipe is for: the first line of its opening comment."""
    for line in (RECIPES / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def recipe_file(name: str) -> Path | None:
    """The shipped recipe a bare name (`smoke`, `smoke.yaml`) means, or None."""
    stem = name.removesuffix(_SUFFIXES[0]).removesuffix(_SUFFIXES[1])
    if not stem or "/" in name or "\\" in name:
        return None
    recipe = RECIPES / f"{stem}.yaml"
    return recipe if recipe.is_file() else None


def resolve(argument: str | Path, what: str = "config file") -> Path:
    """The file `argument` names: itself if it exists (or names a folder), else the shipped recipe of that name
    (`mnist-best` or `mnist-best.yaml`). A bare name that is neither is refused in one line listing the recipes;
    any other path is returned as given, for its reader to report."""
    path = Path(argument)
    if path.exists() or path.is_symlink():
        return path
    text = str(argument)
    recipe = recipe_file(text)
    if recipe is not None:
        return recipe
    if "/" in text or "\\" in text or not text.removesuffix(_SUFFIXES[0]).removesuffix(_SUFFIXES[1]):
        return path
    if Path(text).suffix in ("", *_SUFFIXES):
        raise ConfigError(
            f"{what} not found: {text} (nor is it a recipe's name; the recipes are {', '.join(recipe_names())}: "
            "mlptrain config --list)"
        )
    return path
