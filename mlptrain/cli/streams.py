"""The process's standard streams: which process speaks (rank 0 under torchrun), a first line on a terminal before
torch loads, and what happens when stdout's reader leaves (`mlptrain eval X | head -1`)."""

from __future__ import annotations

import contextlib
import os
import sys

# 128 + SIGPIPE: what a shell reports for `yes | head -1`. The reader left, so nothing more is said.
EXIT_BROKEN_PIPE = 141


def rank() -> int:
    """This process's rank when torchrun started it (0 otherwise): only rank 0 prints."""
    return int(os.environ.get("RANK", "0"))


def announce(what: str, quiet: bool = False) -> None:
    """`mlptrain: WHAT...` on a terminal, before torch loads (seconds), so the screen is never blank. Piped (to a
    file, a log, another program) nothing is added."""
    if not quiet and rank() == 0 and sys.stderr.isatty():
        sys.stderr.write(f"mlptrain: {what}...\n")
        sys.stderr.flush()


def reader_left() -> int:
    """stdout's reader went away: point stdout at /dev/null, so that no later flush fails (and prints a traceback
    at exit), and return the exit code to leave with."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
