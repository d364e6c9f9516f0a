"""torch.optim in an eager run, without importing torch._dynamo.

torch.optim imports torch._dynamo the first time an optimizer is made, stepped or saved, only to keep
torch.compile from tracing the optimizer's own code: 1.6 s and about 100 MB here, four times a smoke run's
whole training. mlptrain compiles the model (train.compile), never the optimizer, so a run skips that import:
`make_optimizer` marks the optimizer's wrapped methods as already handled, as torch itself does after their
first call, and `step` calls the step under torch's wrappers with gradients off, as those wrappers do. Once
torch._dynamo is loaded (a compiled run, or anything else in the process) both are torch's own calls.

This leans on two details of torch.optim (the `__dynamo_disable` cache of torch._disable_dynamo and the
`__wrapped__` chain of Optimizer.step); tests/cli/test_startup.py fails if a torch release changes them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch

_DISABLED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")  # @torch._disable_dynamo methods


def dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def make_optimizer(cls: Callable[..., torch.optim.Optimizer], *args, **kwargs) -> torch.optim.Optimizer:
    """cls(*args, **kwargs), with torch.optim.Optimizer's dynamo-disabled methods callable without torch._dynamo."""
    if not dynamo_loaded():
        for name in _DISABLED:
            fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
            if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
                setattr(fn, "__dynamo_disable", fn)  # what torch caches on a first call: "disabled" means itself
    return cls(*args, **kwargs)


def step(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.step(): the same update, without the profiler record, the step hooks (mlptrain registers none)
    and the torch._dynamo graph breaks around it."""
    if dynamo_loaded():
        optimizer.step()
        return
    with torch.no_grad():
        inspect.unwrap(type(optimizer).step)(optimizer)
    optimizer._opt_called = True  # what an LR scheduler reads to check that the optimizer stepped first
