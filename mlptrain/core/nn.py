"""The hand-written Linear layer (an autograd Function with its own backward), the MLP built from it, building
one from a config, and converting one to plain torch.nn layers.

Shapes follow torch.nn.Linear: weight (out_features, in_features), bias (out_features,), input (*, in_features).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

if TYPE_CHECKING:
    from mlptrain.base.config import ModelConfig


# A layer whose batch, in_features or out_features is under this runs its products (the forward, both gradients)
# at one thread on a CPU. There MKL's strict reproducible mode (mlptrain/__init__.py) still splits the work by
# thread count, so the last bits followed the count that `threads: auto` picked from the load. On an AMD EPYC with
# AVX-512 (torch 2.14), of batches 1-1024 against widths 1-2048, every product that differed at 1 and 2 threads had
# a size of 17 or less: the forward at batches 2-17, the input gradient at batches 4-17 into layers of 18 units or
# fewer, the weight gradient of a layer with 17 or fewer outputs or inputs at any batch (the 10 outputs included).
# 64 leaves room for other CPUs; such products gain nothing from threads, and switching costs under a microsecond.
SERIAL_BELOW = 64


def one_thread(x: torch.Tensor, *sizes: int) -> bool:
    """Whether a layer's products on the batch x (N, ...), the layer's in and out `sizes`, run at one thread. Not
    inside torch.compile, whose code does not go through here (a thread switch there only broke the graph, with a
    warning)."""
    if torch.compiler.is_compiling():
        return False
    return x.is_cpu and torch.get_num_threads() > 1 and min(x.shape[0], *sizes) < SERIAL_BELOW


def at_one_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) with torch at one CPU thread, the count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (N, in) -> x Wᵀ + b (N, out); the bias is added inside the GEMM. Small layers at one thread (SERIAL_BELOW)."""
    if one_thread(x, *weight.shape):
        return at_one_thread(linear_product, x, weight, bias)
    return linear_product(x, weight, bias)


def linear_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.mm(weight.t()) if bias is None else torch.addmm(bias, x, weight.t())


def linear_grads(
    g: torch.Tensor,
    x: torch.Tensor | None,
    weight: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
    out: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight, grad_bias) of y = x Wᵀ + b, given g = dL/dy (N, out); each only if needed.

    Computes in g's dtype: under autocast g is bf16/fp16 while the saved weight is fp32, and the cast is what
    autocast itself did in the forward. Autograd casts each gradient back to its input's dtype. `out` may give
    tensors for grad_weight and grad_bias to be written in place of new ones.
    """
    other = x if x is not None else weight  # (N, in) or (out, in); neither when only the bias wants a gradient
    if other is not None and one_thread(g, other.shape[1], g.shape[1]):
        return at_one_thread(_linear_grads, g, x, weight, needs, out)
    return _linear_grads(g, x, weight, needs, out)


def _linear_grads(g, x, weight, needs, out):
    need_input, need_weight, need_bias = needs
    out_weight, out_bias = out or (None, None)
    grad_input = g.mm(_as(weight, g)) if need_input else None  # (N, out) @ (out, in) -> (N, in)
    grad_weight = torch.mm(g.t(), _as(x, g), out=out_weight) if need_weight else None  # (out, N) @ (N, in)
    grad_bias = torch.sum(g, 0, out=out_bias) if need_bias else None  # (out,)
    return grad_input, grad_weight, grad_bias


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Skips the dispatch of a no-op .to() on the fp32 path, where every microsecond of a step is overhead.
    return t if t.dtype == like.dtype else t.to(like.dtype)


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b, with the backward written out by hand.

    The classic forward(ctx, ...) form: apply() then costs about as much as torch's own linear. The "new
    style" (a separate setup_context), which torch.func transforms need, costs more per call in Python than
    a small MLP's step can spare (README, Performance); so no vmap/grad of torch.func.

    Autocast: the forward's addmm/mm are on autocast's lower-precision list, so under autocast they run in
    its dtype (bf16/fp16) exactly as in torch.nn.Linear; the backward follows the incoming gradient's dtype.
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Save only what backward reads: x feeds grad_weight, W feeds grad_input.
        need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
        ctx.input_shape = input.shape
        if input.dim() == 2:
            return linear(input, weight, bias)
        out = linear(input.reshape(-1, input.shape[-1]), weight, bias)  # (N, out)
        return out.reshape(*input.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input, weight = ctx.saved_tensors
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out)
        x = input.reshape(-1, input.shape[-1]) if input is not None else None
        grad_input, grad_weight, grad_bias = linear_grads(g, x, weight, ctx.needs_input_grad)
        if grad_input is not None:
            grad_input = grad_input.reshape(ctx.input_shape)
        return grad_input, grad_weight, grad_bias


# Activation backward as one ATen kernel each, from the tensor the forward kept: relu, tanh and sigmoid need
# their output, gelu its input.
_ACTIVATION_FORWARD = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}
_ACTIVATION_BACKWARD = {
    "relu": lambda g, z, a: torch.ops.aten.threshold_backward(g, a, 0),
    "tanh": lambda g, z, a: torch.ops.aten.tanh_backward(g, a),
    "sigmoid": lambda g, z, a: torch.ops.aten.sigmoid_backward(g, a),
    "gelu": lambda g, z, a: torch.ops.aten.gelu_backward(g, z),
}


def mlp_forward(
    x: torch.Tensor,
    activation: str,
    dropout: float,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """x (N, in) -> (logits (N, out), what mlp_backward needs): linear layers with activation and dropout between.

    Dropout (probability `dropout`, 0 for none) draws exactly as F.dropout draws on the CPU, so this and a stack
    of Linear, activation and nn.Dropout modules give the same masks from the same generator state.
    """
    act = _ACTIVATION_FORWARD[activation]
    inputs, pre, post, masks = [], [], [], []  # per layer: its input; per hidden layer: z, act(z), mask
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        inputs.append(h)
        h = linear(h, weight, bias)  # (N, out_i)
        if i < len(weights) - 1:
            z, h = h, act(h)
            pre.append(z if activation == "gelu" else None)
            post.append(h if activation != "gelu" else None)
            if dropout > 0:
                mask = torch.empty_like(h).bernoulli_(1 - dropout).div_(1 - dropout)
                h = h * mask
                masks.append(mask)
    return h, (*inputs, *weights, *pre, *post, *masks)


def mlp_backward(
    grad_logits: torch.Tensor,
    saved: Sequence[torch.Tensor | None],
    activation: str,
    needs: Sequence[bool],
    out: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """(grad of x, [grad of weight, grad of bias for each layer]) from dL/dlogits (N, out) and mlp_forward's saved.

    `needs` holds, like ctx.needs_input_grad, whether x, then each layer's weight and bias want a gradient.
    `out`, a tensor (or None) per weight and bias, receives that gradient in place instead of a new tensor.
    """
    n = (len(needs) - 1) // 2
    inputs, weights = saved[:n], saved[n : 2 * n]
    pre, post = saved[2 * n : 3 * n - 1], saved[3 * n - 1 : 4 * n - 2]
    masks = saved[4 * n - 2 :]
    act_grad = _ACTIVATION_BACKWARD[activation]
    grads: list[torch.Tensor | None] = [None] * (2 * n)
    g = grad_logits  # (N, out_last)
    for i in reversed(range(n)):
        need_input = needs[0] if i == 0 else True
        g_in, grads[2 * i], grads[2 * i + 1] = linear_grads(
            g, inputs[i], weights[i], (need_input, needs[1 + 2 * i], needs[2 + 2 * i]),
            None if out is None else (out[2 * i], out[2 * i + 1]),
        )  # fmt: skip
        if i > 0:
            if masks:
                g_in = g_in * masks[i - 1]
            g_in = act_grad(g_in, pre[i - 1], post[i - 1])
        g = g_in
    return g, grads


class MLPFunction(torch.autograd.Function):
    """A whole MLP in one autograd node: x (N, in) -> logits (N, out), with activation and dropout between layers.

    The same maths as a stack of LinearFunction layers (the tests hold it to that), but the backward runs the
    layers' GEMMs back to back in one call instead of one autograd node per layer and activation, which is what
    per-step overhead is made of at MNIST sizes. Arguments: x, activation name, dropout probability (0 when not
    training), then weight, bias (or None) of each layer in order.
    """

    @staticmethod
    def forward(ctx, x, activation: str, dropout: float, *params):
        h, saved = mlp_forward(x, activation, dropout, params[0::2], params[1::2])
        ctx.activation = activation
        ctx.save_for_backward(*saved)
        return h

    @staticmethod
    def backward(ctx, grad_output):
        needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[3:])
        grad_input, grads = mlp_backward(grad_output, ctx.saved_tensors, ctx.activation, needs)
        return (grad_input, None, None, *grads)


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

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        fused: bool = True,
    ):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        self.sizes = list(sizes)
        self.layers = nn.ModuleList(Linear(i, o, bias=bias) for i, o in itertools.pairwise(sizes))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activation_name, self.dropout_p = activation, dropout
        # fused: the whole network as one MLPFunction node (fast); False: one LinearFunction per layer, whose
        # modules' hooks fire (the reference path). Both give the same numbers.
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.dim() == 2:
            dropout = self.dropout_p if self.training else 0.0
            return MLPFunction.apply(x, self.activation_name, dropout, *self._params())  # (N, classes) logits
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.dropout(self.activation(x))
        return x  # (*, classes) logits

    def _params(self) -> list[torch.Tensor | None]:
        return [t for layer in self.layers for t in (layer.weight, layer.bias)]

    @torch.no_grad()
    def backprop(
        self, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's forward and backward by hand, without autograd: x (N, in), y (N,) -> (loss, logits).

        Sets every trainable parameter's .grad to the gradient of the mean cross-entropy (with `label_smoothing`,
        see cross_entropy_with_grad); without smoothing these are the very numbers that
        zeroing the gradients and calling F.cross_entropy(self(x), y).backward() gives (the same kernels, in
        the same order), writing in place where a .grad exists so FlatParameters' views stay bound. Skipping
        the autograd graph is what makes a small step fast on a CPU. Module and tensor hooks do not fire.
        """
        params = self._params()
        dropout = self.dropout_p if self.training else 0.0
        logits, saved = mlp_forward(x, self.activation_name, dropout, params[0::2], params[1::2])
        loss, grad_logits = cross_entropy_with_grad(logits, y, label_smoothing)
        trainable = [p is not None and p.requires_grad for p in params]
        out = [p.grad if t else None for p, t in zip(params, trainable, strict=True)]
        _, grads = mlp_backward(grad_logits, saved, self.activation_name, (False, *trainable), out)
        for p, grad, into in zip(params, grads, out, strict=True):
            if grad is not None and into is None:
                p.grad = grad
        return loss, logits


def cross_entropy_with_grad(
    logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.cross_entropy(logits, y, label_smoothing=ε), its gradient with respect to logits (N, classes)).

    Without smoothing, by the ATen kernels that autograd runs for it (log-softmax, NLL and their backwards), so
    the numbers are the same to the last bit. With ε > 0 the target is q = (1 - ε)·onehot(y) + ε/K, the loss
    mean_n -Σ_k q_k log p_k, and its gradient (softmax - q) / N (the tests hold it to autograd's in float64).
    """
    if label_smoothing > 0:
        return _smoothed_cross_entropy_with_grad(logits, y, label_smoothing)
    log_probs = torch._log_softmax(logits, 1, False)  # (N, classes)
    loss, total_weight = torch.ops.aten.nll_loss_forward(log_probs, y, None, 1, -100)  # mean reduction
    grad = torch.ops.aten.nll_loss_backward(torch.ones_like(loss), log_probs, y, None, 1, -100, total_weight)
    return loss, torch.ops.aten._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype)


def _smoothed_cross_entropy_with_grad(
    logits: torch.Tensor, y: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = logits.shape
    log_probs = torch.log_softmax(logits, 1)  # (N, K)
    target = torch.full_like(log_probs, eps / k).scatter_add_(
        1, y[:, None], torch.full((n, 1), 1.0 - eps, dtype=log_probs.dtype, device=log_probs.device)
    )  # (N, K) q: 1 - ε + ε/K on the label, ε/K elsewhere
    loss = -(target * log_probs).sum() / n
    grad = log_probs.exp_().sub_(target).div_(n)  # (softmax - q) / N
    return loss, grad


def build_model(cfg: ModelConfig, in_features: int, num_classes: int) -> MLP:
    """The MLP that a config's model section describes, for inputs of `in_features` and `num_classes` classes."""
    return MLP([in_features, *cfg.hidden, num_classes], cfg.activation, cfg.dropout, cfg.bias, cfg.fused)


def to_torch(model: MLP, dropout: bool = True) -> nn.Sequential:
    """The same network from torch.nn.Linear, activation and nn.Dropout modules, holding copies of `model`'s weights
    (on its device): what a plain PyTorch script builds, to compare against or to hand on. `dropout=False` leaves
    the Dropout modules out (what evaluation computes): Linear layers then sit at 0, 2, 4..."""
    layers: list[nn.Module] = []
    for i, ours in enumerate(model.layers):
        linear = nn.Linear(ours.in_features, ours.out_features, bias=ours.bias is not None)
        linear.load_state_dict(ours.state_dict())  # the same keys: weight (out, in) and bias
        layers.append(linear)
        if i < len(model.layers) - 1:
            layers.append(ACTIVATIONS[model.activation_name]())
            if dropout and model.dropout_p > 0:
                layers.append(nn.Dropout(model.dropout_p))
    return nn.Sequential(*layers).to(model.layers[0].weight.device)
