"""What fits: the memory a model (and training it) needs, estimated from its layer sizes before anything is built,
against the memory of the device it would live on; so a model that cannot fit is refused in one line, at once."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError
from mlptrain.core.data import IN_FEATURES, NUM_CLASSES

BYTES_PER_VALUE = 4  # fp32 weights, gradients and optimizer state
# Copies of the parameters training holds: the weights, their gradients, and up to two optimizer states (Adam's
# moments; SGD's momentum is one). Scoring holds the weights alone.
TRAINING_COPIES = 4
MNIST_TRAIN_IMAGES = 60_000  # and Fashion-MNIST's
ACTIVATION_COPIES = 3  # a training step keeps each layer's output, its activation and its gradient per sample


def parameter_count(sizes: Sequence[int], bias: bool = True) -> int:
    """Weights (and biases) of an MLP whose layer sizes are `sizes` ([in, hidden..., classes])."""
    return sum(a * b + (b if bias else 0) for a, b in itertools.pairwise(sizes))


def needed_bytes(sizes: Sequence[int], batch_size: int, training: bool, bias: bool = True) -> int:
    """About how many bytes the model takes on its device: to train with `batch_size` rows, or to score them (the
    weights and one batch's activations, input included)."""
    if not training:
        return (parameter_count(sizes, bias) + batch_size * sum(sizes)) * BYTES_PER_VALUE
    activations = batch_size * sum(sizes) * ACTIVATION_COPIES
    return (parameter_count(sizes, bias) * TRAINING_COPIES + activations) * BYTES_PER_VALUE


def device_bytes(device: torch.device) -> int | None:
    """The device's memory in bytes (the machine's RAM for the CPU); None where it cannot be told (mps)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def check_fits(
    sizes: Sequence[int],
    device: torch.device,
    batch_size: int = 0,
    training: bool = True,
    bias: bool = True,
    key: str = "model.hidden",
    remedy: str = "make the layers smaller",
) -> None:
    """Refuse (ConfigError, naming `key`) a model of layer sizes `sizes` that would not fit in `device`'s memory."""
    have = device_bytes(device)
    need = needed_bytes(sizes, batch_size, training, bias)
    if have is not None and need > have:
        purpose = "to train on" if training else "to score"
        purpose = f"{purpose} batches of {batch_size:,} images" if batch_size else "to hold"
        raise ConfigError(
            f"{key}: a model of {parameter_count(sizes, bias):,} parameters needs about {_gib(need)} "
            f"{purpose}, more than the {device.type} has ({_gib(have)}); {remedy}"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_run_fits(config: Config, device: torch.device, world_size: int = 1) -> None:
    """Refuse a run whose model, or whose synthetic dataset, could not fit where it would train."""
    model = config.model
    sizes = [IN_FEATURES, *model.hidden, NUM_CLASSES]
    images = config.data.synthetic_size if config.data.dataset == "synthetic" else MNIST_TRAIN_IMAGES
    rows = max(1, min(config.train.batch_size, images) // world_size)  # a batch holds at most the whole split
    check_fits(sizes, device, rows, training=True, bias=model.bias)
    have = device_bytes(torch.device("cpu"))
    if config.data.dataset == "synthetic" and have is not None:
        need = config.data.synthetic_size * IN_FEATURES * (1 + BYTES_PER_VALUE)  # bytes, then normalised floats
        if need > have:
            raise ConfigError(
                f"data.synthetic_size: {config.data.synthetic_size:,} images need about {_gib(need)}, more than "
                f"this machine has ({_gib(have)})"
            )
