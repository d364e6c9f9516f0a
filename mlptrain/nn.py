"""The hand-written Linear layer (an autograd Function with its own backward) and the MLP built from it.

Shapes follow torch.nn.Linear: weight (out_features, in_features), bias (out_features,), input (*, in_features).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import init


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b, with the backward written out by hand.

    forward and setup_context are separate (the "new style") so torch.func transforms (vmap rule generated)
    and torch.compile can trace it like a built-in op.

    Autocast: the forward's addmm/mm are on autocast's lower-precision list, so under autocast they run in
    its dtype (bf16/fp16) exactly as in torch.nn.Linear. The backward computes in the dtype of the incoming
    gradient, casting the saved fp32 tensors to it, and autograd casts each gradient back to its input's dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])  # (N, in)
        if bias is None:
            out = x.mm(weight.t())
        else:
            out = torch.addmm(bias, x, weight.t())  # (N, out), bias broadcast inside the GEMM
        if input.dim() != 2:
            out = out.reshape(*input.shape[:-1], weight.shape[0])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        input, weight, _ = inputs
        # Save only what backward reads: x feeds grad_weight, W feeds grad_input.
        need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out)
        if ctx.needs_input_grad[0]:
            # (N, out) @ (out, in) -> (N, in); .to() is a no-op outside autocast
            grad_input = g.mm(weight.to(g.dtype)).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            x = input.reshape(-1, input.shape[-1]).to(g.dtype)
            grad_weight = g.t().mm(x)  # (out, N) @ (N, in) -> (out, in)
        if ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)  # (out,)
        return grad_input, grad_weight, grad_bias


class Linear(nn.Module):
    """A drop-in for torch.nn.Linear that runs LinearFunction; its state_dict is interchangeable."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same draws as torch.nn.Linear: Kaiming-uniform with a=√5 is U(±1/√fan_in), so the
        # usual learning rates apply (the tutorials' randn init is ~√fan_in times too large).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return LinearFunction.apply(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class MLP(nn.Module):
    """Linear layers of `sizes` ([in, hidden..., classes]) with activation and dropout between them; logits out."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        self.sizes = list(sizes)
        self.layers = nn.ModuleList(Linear(i, o, bias=bias) for i, o in itertools.pairwise(sizes))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.dropout(self.activation(x))
        return x  # (*, classes) logits
