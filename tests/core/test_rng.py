"""Every RNG a run draws from, captured into plain data and put back: the same draws follow."""

from __future__ import annotations

import random

import numpy as np
import torch

from mlptrain.core.rng import rng_state, seed_everything, set_rng_state


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random()


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(7)
    draws()  # move every generator on, numpy's cached gaussian included
    np.random.randn()
    state = rng_state(torch.device("cpu"))
    torch.save(state, tmp_path / "rng.pt")
    expected = draws()
    seed_everything(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    assert draws() == expected


def test_the_same_seed_gives_the_same_draws_and_another_does_not():
    seed_everything(1)
    first = draws()
    seed_everything(1)
    assert draws() == first
    seed_everything(2)
    assert draws() != first
