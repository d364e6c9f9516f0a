"""Data-parallel training on PyTorch's own engine: the processes torchrun starts, their process group, their sums.

A World of one process is the plain single-process run: its collectives are no-ops, so the loop has one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, MlptrainError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Which process this is among how many; torchrun says so in RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # among the processes of this machine: the GPU it drives
    local_size: int = 1  # processes on this machine: they share its CPU cores

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        size = int(env["WORLD_SIZE"])
        return cls(int(env["RANK"]), size, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", size)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """Where this process trains: a CUDA device means its own GPU, cuda:LOCAL_RANK (one GPU per process)."""
        if not self.distributed or device.type != "cuda":
            return device
        return torch.device("cuda", self.local_rank)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (the tensor itself in a single process)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def agreed_signal(self, signum: int | None) -> int | None:
        """The signal any process received (the highest number), or None: every process gets the same answer.

        Called by all processes at the same point of the loop (every batch), so they stop at the same batch and
        none is left waiting in a collective. A CPU tensor, so on CUDA it costs no device sync.
        """
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_cpu_group)
        return int(flag) or None


SINGLE = World()
_cpu_group = None  # gloo group for the small host-side messages: the default group itself, unless that is nccl


def check_world(config: Config, device: torch.device, world_size: int, local_size: int) -> None:
    """Refuse, before any work, a config that cannot be split over `world_size` processes on `device`."""
    if world_size == 1:
        return
    if device.type == "cpu":
        from mlptrain.core.threads import THREADS_PER_CORE, cpu_cores  # threads imports this module

        if local_size > THREADS_PER_CORE * cpu_cores():
            raise ConfigError(
                f"--nproc {local_size}: this machine gives this process {cpu_cores()} cores; start at most "
                f"{THREADS_PER_CORE * cpu_cores()} processes ({THREADS_PER_CORE} per core)"
            )
    batch_size = config.train.batch_size
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size ({batch_size}) is the global batch and must divide evenly over the {world_size} "
            f"processes; use a multiple of {world_size}"
        )
    if device.type == "mps":
        raise ConfigError("device: mps trains in one process only; several processes need cpu or cuda")
    if device.type == "cuda" and local_size > torch.cuda.device_count():
        raise ConfigError(
            f"device: {local_size} processes on this machine need a GPU each, but it has "
            f"{torch.cuda.device_count()}; start at most that many"
        )


@contextlib.contextmanager
def joined(world: World, device: torch.device):
    """The process group of a torchrun launch, for the length of a run: gloo on CPU, nccl on CUDA.

    Destroyed at the end, errors included. A single process, or a group the caller set up itself, is left alone.
    """
    global _cpu_group
    if not world.distributed or dist.is_initialized():
        _cpu_group = None
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        _cpu_group = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        _cpu_group = None  # the default group is gloo already
    try:
        yield
    finally:
        _cpu_group = None
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel: gradients averaged over all processes during backward.

    Works with FlatParameters: with gradient_as_bucket_view off (the default) the reducer copies each averaged
    bucket back into the parameters' existing .grad tensors, which are views into the flat gradient, so the
    optimizer's one flat step sees them. Every parameter gets a gradient from the one MLPFunction node, so
    find_unused_parameters is not needed.
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def seed_rank(seed: int, world: World, *where: int) -> None:
    """Give every process but rank 0 a dropout stream of its own, drawn from (seed, rank, where).

    Rank 0 keeps the stream a checkpoint saves and restores; the others' streams are not saved, so on resume
    they start afresh (`where` is the resume point, so they do not repeat the masks they drew before).
    """
    if world.rank:
        torch.manual_seed(hash((seed, world.rank, *where)) % 2**63)


def run_on_main(world: World, fn: Callable[[], T]) -> T:
    """fn() on rank 0 only, its result on every process; an error it raises is raised on every process."""
    return _main_then_all(world, fn, share=True)


def main_first(world: World, fn: Callable[[], T]) -> T:
    """fn() on rank 0, then, once it succeeded, on every other process (rank 0 downloads a missing dataset once)."""
    return _main_then_all(world, fn, share=False)


def _main_then_all(world: World, fn: Callable[[], T], share: bool) -> T:
    if not world.distributed:
        return fn()
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except MlptrainError as e:  # a user's problem: every process exits with it; rank 0 says it
            error = e
    box = [(result if share else None, error)]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    shared, error = box[0]
    if error is not None:
        raise error
    if world.is_main:
        return result
    return shared if share else fn()
