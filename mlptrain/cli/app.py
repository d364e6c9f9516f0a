"""The CLI's framework, below every command module: the Typer app and its root (`--version`), the `command` mark
each command module puts on its functions (main.py registers them, in --help order), Click-style help (usage lines,
examples closing the help, no types beside flags), and the parameters several commands take alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from mlptrain import __version__
from mlptrain.cli import completion


class PlainHelp:
    """Help as Click writes it: `CONFIG`, `[DIR]`, `IMAGE...` in the usage line, and no type beside a flag
    (`<bool>`) or an argument (`<path>`): options that take a value say what in their metavar."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) or getattr(param, "is_flag", False):
                param.display_type_rich = _no_type
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def _no_type(ctx) -> None:
    return None


class Command(PlainHelp, TyperCommand):
    pass


class Group(PlainHelp, TyperGroup):
    def collect_usage_pieces(self, ctx) -> list[str]:
        return TyperGroup.collect_usage_pieces(self, ctx)


def bare_means(option: str, value: str, values: tuple[str, ...]) -> type[Command]:
    """A Command class in which `option` given alone means `option=value`: click has no options whose value may be
    left out. A bare `option` takes the next word as its value only if that is one of `values`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        filled: list[str] = []
        for i, arg in enumerate(args):
            filled.append(arg)
            if arg == "--":
                filled += args[i + 1 :]
                break
            if arg == option and (i + 1 == len(args) or args[i + 1] not in values):
                filled.append(value)
        return Command.parse_args(self, ctx, filled)

    return type("BareValueCommand", (Command,), {"parse_args": parse_args})


def examples(*lines: str) -> str:
    """The help's closing lines: an example command line or several."""
    return "\n\n".join(["Examples:" if len(lines) > 1 else "Example:", *(f"  {line}" for line in lines)])


@dataclass(frozen=True)
class CommandMark:
    """How a command function is registered: its name (None: the function's), help class and closing examples."""

    name: str | None
    cls: type[Command]
    epilog: str


def command(name: str | None = None, *lines: str, cls: type[Command] = Command) -> Callable[[Any], Any]:
    """Mark a function as the command `name`, with Click-style help and `lines` (example command lines) closing it.
    Marking registers nothing: main.py registers every command, in the order --help lists them."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.command_mark = CommandMark(name, cls, examples(*lines))
        return fn

    return mark


# Bash adds a space after a completion that is the only one, so `--set train.lr=<TAB>` or `runs/<TAB>` left the
# cursor a word too far. The line below tells bash not to, for a lone reply that ends in = or /.
BASH_NOSPACE = '    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=/] ]]; then compopt -o nospace; fi\n'


def _bash_script_without_that_space() -> None:
    """Add BASH_NOSPACE to the bash script that `--install-completion` and `--show-completion` write.

    The one place mlptrain touches a private part of Typer: its bash script template, in typer._completion_shared
    (Typer has no public way to change it; its zsh and fish scripts already leave no space). If a Typer release
    moves it, nothing changes here and tests/cli/test_completion.py fails.
    """
    from typer import _completion_shared

    scripts = getattr(_completion_shared, "_completion_scripts", {})
    script = scripts.get("bash", "")
    if BASH_NOSPACE not in script and "    return 0\n}" in script:
        scripts["bash"] = script.replace("    return 0\n}", BASH_NOSPACE + "    return 0\n}", 1)


def new_app(commands: list[Callable[..., Any]]) -> typer.Typer:
    """The `mlptrain` app with `commands` (each marked by `command`) registered in that order."""
    app = typer.Typer(
        cls=Group,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        help="Train and evaluate multi-layer perceptrons on MNIST-style digits.",
        epilog=examples("mlptrain train smoke", "mlptrain eval runs/<run>/best.pt"),
    )
    app.callback()(_root)
    _bash_script_without_that_space()
    for fn in commands:
        mark: CommandMark = fn.command_mark
        app.command(mark.name, cls=mark.cls, epilog=mark.epilog)(fn)
    return app


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mlptrain {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train and evaluate multi-layer perceptrons on MNIST-style digits."""


# Parameters several commands take, alike.
Device = Annotated[str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer reads the annotation at runtime
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config key (repeatable), e.g. train.lr=0.1.",
        autocompletion=completion.settings,
    ),
]
ConfigFile = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(
        metavar="CONFIG",
        help="A YAML config file, or a shipped recipe's name: mnist, mnist-best, smoke, tutorial (config --list).",
        autocompletion=completion.configs,
    ),
]
Checkpoint = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT",
        help="A checkpoint written by `mlptrain train`, e.g. runs/<run>/best.pt.",
        autocompletion=completion.checkpoints,
    ),
]
DataRoot = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--data-root", metavar="DIR", help="Where the dataset lives, if not where the run found it."),
]
