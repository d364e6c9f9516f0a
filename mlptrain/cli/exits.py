"""How a command ends: a library error becomes one line on stderr and an exit code (SystemExit), a stopped run
says where it stopped, and a missing dataset gets the hint that fits the command. No typer: each command wraps its
body in `errors()`, and main.py returns the code `SystemExit` carries."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from mlptrain.cli import streams
from mlptrain.run.interrupt import signal_exit


@contextlib.contextmanager
def errors():
    """Map library errors to one line and an exit code: 2 bad input, 1 failed run, 130 Ctrl-C (143 SIGTERM).

    Under torchrun the other ranks stay quiet about what rank 0 says too (a bad config, a Ctrl-C); an
    unexpected failure of their own is printed with their rank.
    """
    from mlptrain.base.errors import MlptrainError
    from mlptrain.cli import report

    rank = streams.rank()
    try:
        yield
    except BrokenPipeError:
        raise SystemExit(streams.reader_left()) from None
    except MlptrainError as e:
        if rank == 0:
            report.error(one_line(str(e)))
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt as e:
        code, line = signal_exit(e)
        if rank == 0:
            report.error(line)
        raise SystemExit(code) from None
    except Exception as e:
        if os.environ.get("MLPTRAIN_DEBUG"):
            raise
        where = f"rank {rank}: " if rank else ""
        report.error(
            f"{where}the run failed: {type(e).__name__}: {one_line(str(e))} (set MLPTRAIN_DEBUG=1 for the traceback)"
        )
        raise SystemExit(1) from None


MAX_ERROR_CHARS = 1000  # an error quotes paths and values; a huge one is cut, never printed whole


def one_line(text: str) -> str:
    """An error's text as one line of bounded length."""
    text = " ".join(text.splitlines())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@contextlib.contextmanager
def hint(hint: str):
    """A dataset not found gets `hint`: what this command can do about it."""
    from mlptrain.base.errors import DataMissing

    try:
        yield
    except DataMissing as e:
        raise DataMissing(f"{e}; {hint}") from None


TRAIN_DATA_HINT = "or point at them with --set data.root=DIR; `mlptrain train smoke` trains on synthetic digits"


@contextlib.contextmanager
def live(reporter):
    """Around training: the reporter's progress bar is closed whatever happens, and a run stopped by a signal
    prints where it stopped and the command that carries on, and exits 128 + the signal's number."""
    from mlptrain.base.errors import Interrupted
    from mlptrain.cli import report

    try:
        yield reporter
    except Interrupted as e:
        reporter.close()
        if streams.rank() == 0:  # under torchrun, one message for all the ranks
            report.interrupted(str(e), e.resume_command)
        raise SystemExit(e.exit_code) from None
    finally:
        reporter.close()


def leave(code: int) -> NoReturn:
    """End the process with `code`, its output flushed (a reader that left: 141).

    Once torch is loaded the process leaves with os._exit after running the atexit handlers, skipping the
    interpreter's teardown of thousands of modules: that took 1.0 s after a smoke run's last line here. A
    torchrun worker needs it most, as multiprocessing's own workers do: a gloo thread may still be releasing the
    last collective's tensors when Python finalizes, and taking the GIL then aborts the process ("terminate
    called without an active exception", seen in about one resumed --nproc 2 run in ten here). Every file a
    command writes is fsynced before this point.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = streams.reader_left()
    if "torch" in sys.modules or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import atexit

        atexit._run_exitfuncs()  # what a normal exit runs first (logging's and TensorBoard's flushes among them)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)
