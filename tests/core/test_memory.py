"""memory: what a model needs, estimated from its layer sizes, against what the device has."""

from __future__ import annotations

import pytest
import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError
from mlptrain.core import memory
from mlptrain.core.nn import MLP


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_is_the_mlps(bias):
    sizes = [784, 128, 64, 10]
    assert memory.parameter_count(sizes, bias) == sum(p.numel() for p in MLP(sizes, bias=bias).parameters())


def test_the_machines_memory_is_known_and_a_model_that_fits_passes():
    have = memory.device_bytes(torch.device("cpu"))
    assert have is not None and have > 2**28
    memory.check_fits([784, 128, 10], torch.device("cpu"), batch_size=128)
    memory.check_run_fits(Config(), torch.device("cpu"))


def test_a_model_larger_than_the_device_is_refused_before_anything_is_built(monkeypatch):
    monkeypatch.setattr(memory, "device_bytes", lambda device: 2**30)  # a 1 GiB device
    with pytest.raises(ConfigError, match=r"model.hidden: a model of 79,500,010 parameters needs about .* GiB"):
        memory.check_fits([784, 100_000, 10], torch.device("cpu"), batch_size=128)
    memory.check_fits([784, 100_000, 10], torch.device("cpu"), training=False)  # 0.3 GiB to hold: fits
    big = Config.from_dict({"data": {"dataset": "synthetic", "synthetic_size": 1_000_000}})
    with pytest.raises(ConfigError, match=r"data\.synthetic_size"):
        memory.check_run_fits(big, torch.device("cpu"))
