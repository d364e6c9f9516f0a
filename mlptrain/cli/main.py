"""The `mlptrain` command: every command module's commands, registered in the order --help lists them, and the
entry point that runs one and exits with its code. Nothing registers itself on import: the list below is the CLI."""

from __future__ import annotations

import os
import sys

import typer

from mlptrain.cli import bench, exits, inference, runs, streams, sweep, train, tune
from mlptrain.cli.app import new_app
from mlptrain.run.interrupt import exit_on_sigterm, signal_exit

app = new_app(
    [
        train.train,
        train.config_,
        inference.evaluate,
        inference.export,
        runs.plot,
        inference.predict,
        runs.runs,
        sweep.sweep,
        bench.bench,
        tune.augment,
        tune.lr_find,
    ]
)


def main() -> None:
    """Entry point: run the command and exit with its code (exits.leave: at once, once torch is loaded)."""
    exit_on_sigterm()
    exits.leave(_run())


def _run() -> int:
    """The command's exit code. Typer's own usage errors become one line too, like the library's."""
    from mlptrain.cli import report

    try:
        return app(prog_name="mlptrain", standalone_mode=False) or 0
    except typer.TyperException as e:  # usage errors (exit 2) and the like
        if not e.format_message():  # `mlptrain` alone: the help was printed, nothing went wrong
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        report.error(e.format_message() + hint)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        code, line = signal_exit(e) if isinstance(e, KeyboardInterrupt) else (130, "interrupted")
        report.error(line)
        return code
    except BrokenPipeError:
        return streams.reader_left()
    except SystemExit as e:  # how exits.errors() ends a command
        return e.code if isinstance(e.code, int) else 1
    except (KeyError, ValueError, IndexError, OSError) as e:  # Typer's completion, before any command runs
        line = _completion_problem(e)
        if line is None:
            raise
        report.error(line)
        return 2 if os.environ.get(COMPLETE_VAR) else 1


COMPLETE_VAR = "_MLPTRAIN_COMPLETE"  # set by the shell's completion script (Typer's), with COMP_WORDS, COMP_CWORD


def _completion_problem(e: Exception) -> str | None:
    """One line for what Typer's completion raises: run by hand without the shell's variables, or
    --install-completion unable to write (a read-only HOME); None for anything else."""
    if os.environ.get(COMPLETE_VAR):
        return (
            f"{COMPLETE_VAR} is for the shell's completion script, which also sets COMP_WORDS and COMP_CWORD (a "
            f"number): {type(e).__name__}: {e}"
        )
    if isinstance(e, OSError) and "--install-completion" in sys.argv:
        return f"--install-completion: cannot write {e.filename or 'the shell profile'}: {e.strerror or e}"
    return None
