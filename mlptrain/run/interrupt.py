"""Stopping cleanly on Ctrl-C or SIGTERM: the request a signal sets, the handlers that set it, and the stop that
every process of a distributed run agrees on, so all of them stop after the same batch."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the type: stopping needs no torch until a distributed run compares notes
    from mlptrain.core.distributed import World


class StopRequest:
    """Set by a signal handler (or a test); the loop stops at the next batch boundary and saves its place."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGINT."""
        return signal.Signals(self.signum).name


class SignalStop(KeyboardInterrupt):
    """SIGTERM where there is no place to save (starting up, or after training): the command stops at once, as a
    Ctrl-C does there, and exits 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_on_sigterm() -> None:
    """From the start of a command: SIGTERM raises SignalStop (Python's default would kill it without a word).
    Training swaps in stop_on_signals while it runs, and puts this back after."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stop)


def _raise_stop(signum, frame):
    raise SignalStop(signum)


def signal_exit(e: KeyboardInterrupt) -> tuple[int, str]:
    """(exit code, one line) for a command stopped at once by a signal."""
    signum = getattr(e, "signum", signal.SIGINT)
    return 128 + signum, "interrupted" if signum == signal.SIGINT else f"{signal.Signals(signum).name}: stopped"


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest):
    """While training, SIGINT/SIGTERM ask for a clean stop; a second Ctrl-C stops at once.

    "Second" counts the signals this process received, not the request: a torchrun worker can learn of the stop
    from another process (AgreedStop) before torchrun's relay of the same Ctrl-C reaches it, and that relay is
    its first, not a second press (taken for one, it left the others waiting in a collective: 1 run in 12).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    received = []

    def handle(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in received:
            raise KeyboardInterrupt
        received.append(signum)
        stop.request(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class AgreedStop:
    """The loop's should_stop: the local StopRequest, or, with several processes, whether any of them has one.

    Every process calls it at the same points (after every batch, after every epoch), so they all stop after the
    same batch and none is left waiting in a collective. Between batches they compare notes only every `every`
    batches: an all-reduce costs more than a small step (README, Performance).
    """

    def __init__(self, stop: StopRequest, world: World, every: int = 8):
        self.stop, self.world, self.every, self.calls = stop, world, every, 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.world.distributed and self.calls % self.every:
            return False
        return self.now()

    def now(self) -> bool:
        signum = self.world.agreed_signal(self.stop.signum)
        # The answer is the all-reduced one, never the local request read again: a signal that lands between the
        # all-reduce and here would stop this process alone, and leave the others in the next batch's collective.
        if signum is None:
            return False
        if self.stop.signum is None:  # another process got the signal: stop likewise
            self.stop.signum = signum
        return True
