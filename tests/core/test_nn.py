"""mlptrain.core.nn: LinearFunction's hand-written backward (gradcheck, parity with F.linear), Linear as a drop-in
for torch.nn.Linear, and the MLP built from it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from mlptrain.core.engine import FlatParameters
from mlptrain.core.nn import ACTIVATIONS, MLP, Linear, LinearFunction, to_torch

IN, OUT = 4, 5
INPUT_SHAPES = {"1d": (IN,), "2d": (3, IN), "3d": (2, 3, IN)}


def _operands(shape, bias=True, requires=(True, True, True), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires[0])
    w = torch.randn(OUT, shape[-1], generator=g, dtype=dtype).requires_grad_(requires[1])
    b = torch.randn(OUT, generator=g, dtype=dtype).requires_grad_(requires[2]) if bias else None
    return x, w, b


# --- LinearFunction: gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", INPUT_SHAPES.values(), ids=INPUT_SHAPES.keys())
def test_gradcheck_and_gradgradcheck(shape, bias):
    operands = _operands(shape, bias)
    assert gradcheck(LinearFunction.apply, operands)
    assert gradgradcheck(LinearFunction.apply, operands)


@pytest.mark.parametrize(
    "requires",
    [
        (False, True, True),
        (True, False, False),
        (True, False, True),
        (False, False, True),
        (False, True, False),
    ],
    ids=["weight+bias", "input", "input+bias", "bias-only", "weight-only"],
)
@pytest.mark.parametrize("shape", [INPUT_SHAPES["2d"], INPUT_SHAPES["3d"]], ids=["2d", "3d"])
def test_gradcheck_with_some_inputs_not_requiring_grad(shape, requires):
    operands = _operands(shape, bias=True, requires=requires)
    assert gradcheck(LinearFunction.apply, operands)
    assert gradgradcheck(LinearFunction.apply, operands)


def test_input_without_grad_gets_none_and_weight_is_not_saved():
    x, w, b = _operands((3, IN), requires=(False, True, True))
    out = LinearFunction.apply(x, w, b)
    saved_input, saved_weight = out.grad_fn.saved_tensors
    # grad_weight needs x; only grad_input would need W, and it is not wanted.
    assert saved_weight is None
    assert torch.equal(saved_input, x)
    out.sum().backward()
    assert x.grad is None
    assert w.grad is not None and b.grad is not None
    torch.testing.assert_close(w.grad, torch.ones(3, OUT, dtype=x.dtype).t() @ x)


def test_weight_without_grad_gets_none_and_input_is_not_saved():
    x, w, b = _operands((2, 3, IN), requires=(True, False, False))
    out = LinearFunction.apply(x, w, b)
    saved_input, saved_weight = out.grad_fn.saved_tensors
    assert saved_input is None
    assert torch.equal(saved_weight, w)
    out.sum().backward()
    assert w.grad is None and b.grad is None
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "needs", [(False, True, True), (True, False, False), (False, False, True), (False, False, False)]
)
def test_backward_computes_only_the_grads_asked_for(needs):
    x, w, _ = _operands((2, 3, IN), requires=(False, False, False))
    grad_output = torch.randn(2, 3, OUT, dtype=x.dtype)
    # Saved tensors as setup_context leaves them: what is not needed is None, so touching it would raise.
    ctx = SimpleNamespace(
        needs_input_grad=needs,
        saved_tensors=(x if needs[1] else None, w if needs[0] else None),
        input_shape=x.shape,
    )
    grads = LinearFunction.backward(ctx, grad_output)
    assert len(grads) == 3
    for need, grad in zip(needs, grads, strict=True):
        assert (grad is not None) == need
    if needs[0]:
        torch.testing.assert_close(grads[0], grad_output @ w)
    if needs[1]:
        torch.testing.assert_close(grads[1], grad_output.reshape(-1, OUT).t() @ x.reshape(-1, IN))
    if needs[2]:
        torch.testing.assert_close(grads[2], grad_output.reshape(-1, OUT).sum(0))


# --- LinearFunction: parity with torch.nn.functional.linear -------------------------------------------------


PARITY_SHAPES = [(7,), (1, 1), (16, 33), (5, 2, 9), (2, 3, 4, 6)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", PARITY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_grads_match_functional_linear(shape, bias, dtype):
    g = torch.Generator().manual_seed(sum(shape) * 7 + bias)
    out_features = int(torch.randint(1, 12, (), generator=g))
    x = torch.randn(*shape, generator=g, dtype=dtype)
    w = torch.randn(out_features, shape[-1], generator=g, dtype=dtype)
    b = torch.randn(out_features, generator=g, dtype=dtype) if bias else None
    grad_output = torch.randn(*shape[:-1], out_features, generator=g, dtype=dtype)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        out = fn(*leaves) if bias else fn(*leaves, None)
        return out, torch.autograd.grad(out, leaves, grad_output)

    ours, our_grads = run(LinearFunction.apply)
    ref, ref_grads = run(F.linear)
    assert ours.shape == ref.shape == (*shape[:-1], out_features)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref)
    for got, want in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_tutorial_example_is_exact():
    layer = Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], dtype=torch.float32))
    out = layer(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([30.0, 40.0, 50.0]))


def test_backward_under_cpu_autocast_matches_torch_linear():
    # A drop-in for torch.nn.Linear must train under autocast: the forward runs its GEMM in bfloat16, and the
    # backward must cope with a bfloat16 grad_output against the float32 weight.
    torch.manual_seed(0)
    ours, ref = Linear(8, 4), nn.Linear(8, 4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 8)
    outs = []
    for layer in (ours, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().square().sum().backward()
        outs.append(out)
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    assert ours.weight.grad.dtype == torch.float32
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=2e-2, atol=2e-2)


# --- Linear as a drop-in for torch.nn.Linear ----------------------------------------------------------------


def test_linear_parameter_shapes():
    layer = Linear(6, 3)
    assert layer.weight.shape == (3, 6)
    assert layer.bias.shape == (3,)
    assert layer.in_features == 6 and layer.out_features == 3
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}


def test_linear_without_bias_registers_none():
    layer = Linear(6, 3, bias=False)
    assert layer.bias is None
    assert "bias" not in dict(layer.named_parameters())
    assert "bias" not in layer.state_dict()
    assert "bias" in layer._parameters  # registered as None, like torch.nn.Linear
    x = torch.randn(2, 6)
    torch.testing.assert_close(layer(x), x @ layer.weight.t())


def test_linear_factory_kwargs():
    layer = Linear(3, 2, dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == layer.bias.dtype == torch.float64
    assert layer.weight.device.type == "cpu"


@pytest.mark.parametrize("bias", [True, False])
def test_extra_repr_matches_torch(bias):
    assert Linear(784, 128, bias=bias).extra_repr() == nn.Linear(784, 128, bias=bias).extra_repr()
    assert repr(Linear(784, 128, bias=bias)) == repr(nn.Linear(784, 128, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trips_with_torch_linear(bias):
    torch.manual_seed(1)
    ours, ref = Linear(10, 7, bias=bias), nn.Linear(10, 7, bias=bias)
    ref.load_state_dict(ours.state_dict())  # strict: same keys, same shapes
    x = torch.randn(4, 10)
    torch.testing.assert_close(ours(x), ref(x))

    torch.manual_seed(2)
    ref2, ours2 = nn.Linear(10, 7, bias=bias), Linear(10, 7, bias=bias)
    ours2.load_state_dict(ref2.state_dict())
    torch.testing.assert_close(ours2(x), ref2(x))
    assert list(ours2.state_dict()) == list(ref2.state_dict())


@pytest.mark.parametrize("bias", [True, False])
def test_same_seed_gives_same_init_as_torch_linear(bias):
    torch.manual_seed(1234)
    ours = Linear(784, 128, bias=bias)
    torch.manual_seed(1234)
    ref = nn.Linear(784, 128, bias=bias)
    assert torch.equal(ours.weight, ref.weight)
    if bias:
        assert torch.equal(ours.bias, ref.bias)
    # And the global generator is left in the same state, so whatever is drawn next agrees too.
    after_ref = torch.rand(3)
    torch.manual_seed(1234)
    Linear(784, 128, bias=bias)
    assert torch.equal(torch.rand(3), after_ref)


def test_init_is_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    layer = Linear(784, 128)
    bound = 1 / math.sqrt(784)
    w = layer.weight.detach()
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound  # fills the range: not a much narrower (or randn) init
    assert abs(w.mean()) < 0.01 * bound
    torch.testing.assert_close(w.std(), torch.tensor(bound / math.sqrt(3)), rtol=0.02, atol=0)
    # ~uniform: each tenth of [-bound, bound] holds about a tenth of the 100352 weights.
    counts = torch.histc(w, bins=10, min=-bound, max=bound)
    assert ((counts / w.numel() - 0.1).abs() < 0.01).all()
    assert layer.bias.abs().max() <= bound


def test_reset_parameters_redraws():
    layer = Linear(20, 5)
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


def test_module_hooks_fire():
    layer = Linear(4, 3)
    calls = []
    layer.register_forward_pre_hook(lambda module, args: calls.append(("pre", args[0].shape)))
    layer.register_forward_hook(lambda module, args, output: calls.append(("forward", output.shape)))

    def backward_hook(module, grad_input, grad_output):
        calls.append(("backward", grad_input[0].shape, grad_output[0].shape))

    layer.register_full_backward_hook(backward_hook)
    x = torch.randn(2, 4, requires_grad=True)
    layer(x).sum().backward()
    assert calls == [
        ("pre", (2, 4)),
        ("forward", (2, 3)),
        ("backward", (2, 4), (2, 3)),
    ]
    torch.testing.assert_close(x.grad, layer.weight.detach().sum(0).expand(2, 4))


def test_forward_pre_hook_can_replace_input():
    layer = Linear(4, 3)
    layer.register_forward_pre_hook(lambda module, args: (torch.zeros_like(args[0]),))
    out = layer(torch.randn(2, 4))
    torch.testing.assert_close(out, layer.bias.detach().expand(2, 3))


# --- MLP ----------------------------------------------------------------------------------------------------


def test_mlp_uses_only_mlptrain_linear():
    model = MLP([784, 128, 64, 10])
    modules = list(model.modules())
    assert not any(isinstance(m, nn.Linear) for m in modules)
    linears = [m for m in modules if isinstance(m, Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 64), (64, 10)]


def test_mlp_output_shape():
    model = MLP([784, 128, 64, 10])
    assert model(torch.randn(32, 784)).shape == (32, 10)
    assert model(torch.randn(784)).shape == (10,)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_activations(activation):
    assert set(ACTIVATIONS) == {"relu", "gelu", "tanh", "sigmoid"}
    torch.manual_seed(0)
    model = MLP([20, 16, 8, 3], activation=activation)
    assert isinstance(model.activation, ACTIVATIONS[activation])
    x = torch.randn(5, 20)
    out = model(x)
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    layers = model.layers
    act = ACTIVATIONS[activation]()
    expected = layers[2](act(layers[1](act(layers[0](x)))))
    torch.testing.assert_close(out, expected)


def test_mlp_dropout_is_inserted_and_off_in_eval():
    torch.manual_seed(0)
    model = MLP([20, 16, 3], dropout=0.5)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5
    x = torch.randn(8, 20)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_mlp_without_dropout_has_no_dropout_module():
    model = MLP([20, 16, 3])
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_mlp_without_bias():
    model = MLP([20, 16, 3], bias=False)
    assert all(layer.bias is None for layer in model.layers)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


@pytest.mark.parametrize("sizes", [[], [784]])
def test_mlp_rejects_too_few_sizes(sizes):
    with pytest.raises(ValueError, match="at least an input and an output"):
        MLP(sizes)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="swish"):
        MLP([4, 2], activation="swish")


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_training_step_matches_torch_linear_model(bias):
    torch.manual_seed(0)
    sizes = [12, 10, 8, 4]
    ours = MLP(sizes, bias=bias).double()
    layers = []
    for layer in ours.layers:
        ref_layer = nn.Linear(layer.in_features, layer.out_features, bias=bias, dtype=torch.float64)
        ref_layer.load_state_dict(layer.state_dict())
        layers += [ref_layer, nn.ReLU()]
    ref = nn.Sequential(*layers[:-1])

    x = torch.randn(16, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        ours_params = list(ours.parameters())
        ref_params = list(ref.parameters())
        assert len(ours_params) == len(ref_params)
        for p, q in zip(ours_params, ref_params, strict=True):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
        opt_ours.step()
        opt_ref.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_torch_twin_computes_the_same_function(fused):
    torch.manual_seed(0)
    ours = MLP([784, 32, 16, 10], fused=fused)
    twin = to_torch(ours)
    assert [type(m).__name__ for m in twin] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    x = torch.randn(8, 784)
    torch.testing.assert_close(twin(x), ours(x))
    twin[0].weight.data.zero_()  # a copy: the twin trains on its own weights
    assert ours.layers[0].weight.abs().sum() > 0


def test_torch_twin_keeps_the_activation_dropout_and_missing_bias():
    torch.manual_seed(0)
    ours = MLP([20, 8, 4], activation="gelu", dropout=0.5, bias=False).eval()
    twin = to_torch(ours).eval()
    assert [type(m).__name__ for m in twin] == ["Linear", "GELU", "Dropout", "Linear"]
    assert twin[0].bias is None and twin[2].p == 0.5
    x = torch.randn(4, 20)
    torch.testing.assert_close(twin(x), ours(x))


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_gradcheck(activation, bias):
    from mlptrain.core.nn import MLPFunction

    torch.manual_seed(0)
    model = MLP([5, 4, 3, 2], activation, bias=bias).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    params = [t for layer in model.layers for t in (layer.weight, layer.bias)]

    def f(x, *tensors):
        it = iter(tensors)
        return MLPFunction.apply(x, activation, 0.0, *[next(it) if p is not None else None for p in params])

    assert torch.autograd.gradcheck(f, (x, *[p for p in params if p is not None]))


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_per_layer_bitwise(activation, dropout, bias):
    model = MLP([20, 16, 8, 4], activation, dropout, bias)
    x, y = torch.randn(12, 20), torch.randint(0, 4, (12,))

    def loss_and_grads(fused: bool):
        model.fused = fused
        torch.manual_seed(7)  # the same dropout masks on both paths
        loss = F.cross_entropy(model(x), y)
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(True), loss_and_grads(False)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_fused_path_input_grad_only_when_asked():
    model = MLP([6, 5, 3])
    x = torch.randn(4, 6, requires_grad=True)
    model(x).sum().backward()
    model.fused = False
    x2 = x.detach().clone().requires_grad_()
    model(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_backprop_by_hand_equals_autograd_bitwise(activation, dropout, bias):
    model = MLP([20, 16, 8, 4], activation, dropout, bias)
    x, y = torch.randn(12, 20), torch.randint(0, 4, (12,))
    torch.manual_seed(7)  # the same dropout masks on both paths
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    torch.manual_seed(7)
    loss_by_hand, logits = model.backprop(x, y)
    assert torch.equal(loss_by_hand, loss.detach())
    assert not loss_by_hand.requires_grad and not logits.requires_grad
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.equal(p.grad, g)


def test_backprop_overwrites_bound_gradients_in_place_and_skips_frozen_ones():
    model = MLP([6, 5, 3])
    flat = FlatParameters(model)
    flat.param.grad.fill_(123.0)  # stale numbers: backprop overwrites, it does not accumulate
    model.layers[1].bias.requires_grad_(False)
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 0])
    pointers = [p.grad.data_ptr() for p in model.parameters()]
    model.backprop(x, y)
    assert [p.grad.data_ptr() for p in model.parameters()] == pointers  # still views of flat.param.grad
    assert torch.equal(model.layers[1].bias.grad, torch.full((3,), 123.0))  # frozen: left alone
    twin = MLP([6, 5, 3])
    twin.load_state_dict(model.state_dict())
    F.cross_entropy(twin(x), y).backward()
    for name in ("0.weight", "0.bias", "1.weight"):
        layer, kind = name.split(".")
        assert torch.equal(getattr(model.layers[int(layer)], kind).grad, getattr(twin.layers[int(layer)], kind).grad)


def test_cross_entropy_with_grad_is_autograds(dtype=torch.float64):
    from mlptrain.core.nn import cross_entropy_with_grad

    logits = torch.randn(9, 10, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 10, (9,))
    loss = F.cross_entropy(logits, y)
    (expected,) = torch.autograd.grad(loss, logits)
    got_loss, got_grad = cross_entropy_with_grad(logits.detach(), y)
    assert torch.equal(got_loss, loss.detach()) and torch.equal(got_grad, expected)
