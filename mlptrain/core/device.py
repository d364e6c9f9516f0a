"""The device a command runs on: `device` (auto, cpu, cuda, cuda:N, mps) resolved once, to a torch.device this machine
has, and passed down from there; the config only checks the spelling, without torch."""

from __future__ import annotations

import torch

from mlptrain.base.config import DEVICE_RE, quote
from mlptrain.base.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, refusing devices this machine lacks."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if DEVICE_RE.fullmatch(spec) is None:
        raise ConfigError(f"device: unknown device {quote(spec)}; use auto, cpu, cuda, cuda:N or mps")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device: {spec!r} is not a device torch can name") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device: {spec!r} asked for, but this machine has no usable CUDA GPU (try 'auto')")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device: {spec!r} asked for, but this machine has only {count} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' asked for, but Apple's MPS backend is not available here (try 'auto')")
    return device
