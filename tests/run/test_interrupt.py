"""Stopping cleanly: a signal asks for a stop, a second Ctrl-C stops at once, the handlers are put back after."""

from __future__ import annotations

import os
import signal

import pytest

from mlptrain.core.distributed import World
from mlptrain.run.interrupt import AgreedStop, StopRequest, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_asks_for_a_stop_and_the_handlers_are_put_back(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), sig)
        assert stop() and stop.signum == sig and stop.name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


def test_a_second_ctrl_c_stops_at_once():
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt), stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_learnt_from_another_process_is_not_a_first_ctrl_c():
    # Another rank's Ctrl-C reached this one through AgreedStop first; torchrun's relay of the same Ctrl-C then
    # arrives here: it is this process's first, so it asks for the stop it already has, and nothing is raised.
    stop = StopRequest()
    with stop_on_signals(stop):
        stop.signum = signal.SIGINT  # as AgreedStop.now() sets it
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second one of its own still stops at once
            os.kill(os.getpid(), signal.SIGINT)


def test_one_process_asks_its_own_request_after_every_batch():
    stop = StopRequest()
    should_stop = AgreedStop(stop, World())
    assert not should_stop() and not should_stop.now()
    stop.request(signal.SIGTERM)
    assert should_stop() and should_stop.now()


def test_several_processes_compare_notes_every_few_batches():
    class Peers(World):
        def agreed_signal(self, signum):  # another rank got SIGTERM
            return signal.SIGTERM

    stop = StopRequest()
    should_stop = AgreedStop(stop, Peers(0, 2, 0, 2), every=3)
    assert [should_stop() for _ in range(2)] == [False, False]  # no collective between the checks
    assert should_stop() and stop.signum == signal.SIGTERM  # the third batch asks, and stops like the others


def test_a_signal_after_the_processes_compared_notes_waits_for_the_next_comparison():
    # torchrun relays a Ctrl-C to each rank at its own moment: one may get it right after an all-reduce that said
    # "no signal". Stopping on it there would leave the other ranks alone in the next batch's collective (a gloo
    # "connection closed by peer" in CI); it must wait for the next comparison, which every rank then shares.
    stop = StopRequest()
    answers = [None, signal.SIGINT]  # what the all-reduce says each time

    class LateSignal(World):
        def agreed_signal(self, signum):
            answer = answers.pop(0)
            stop.request(signal.SIGINT)  # lands on this rank just after the all-reduce
            return answer

    should_stop = AgreedStop(stop, LateSignal(0, 2, 0, 2), every=1)
    assert not should_stop()  # the ranks agreed on no signal: this one goes on with them
    assert should_stop()  # the next comparison carries it to every rank
