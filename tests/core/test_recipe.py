"""The recipe's extras: label smoothing's by-hand gradient, clipping, the weights' average, weight decay on weights
only, and the step that puts them together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlptrain.base.config import TrainConfig
from mlptrain.core.engine import FlatParameters, build_optimizer, train_step
from mlptrain.core.nn import MLP, cross_entropy_with_grad
from mlptrain.core.recipe import WeightAverage, clip_grad_norm


def batch(n=16, features=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 0.9])
def test_smoothed_cross_entropy_and_its_gradient_match_autograd_in_float64(eps):
    logits = torch.randn(9, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (9,))
    loss, grad = cross_entropy_with_grad(logits.detach(), y, eps)
    expected = F.cross_entropy(logits, y, label_smoothing=eps)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_backprop_with_label_smoothing_matches_autograd_in_float64(activation):
    torch.manual_seed(0)
    model = MLP([12, 16, 8, 10], activation=activation).double()
    x, y = batch(dtype=torch.float64)
    model.zero_grad()
    F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    loss, _ = model.backprop(x, y, label_smoothing=0.1)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y, label_smoothing=0.1).item(), rel=1e-14)
    for got, want in zip([p.grad for p in model.parameters()], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_clipping_bounds_the_norm_like_torch_and_counts_the_cut_steps():
    torch.manual_seed(0)
    model = MLP([12, 16, 10])
    flat = FlatParameters(model)
    optimizer = build_optimizer([flat.param], TrainConfig())
    x, y = batch()
    model.backprop(x, y)
    reference = flat.param.grad.clone().requires_grad_()
    reference.grad = reference.detach().clone()
    norm = flat.param.grad.norm().item()
    clipped = torch.zeros((), dtype=torch.int64)
    clip_grad_norm(optimizer, norm / 4, clipped)
    torch.nn.utils.clip_grad_norm_([reference], norm / 4)
    assert flat.param.grad.norm().item() == pytest.approx(norm / 4, rel=1e-5)
    assert torch.equal(flat.param.grad, reference.grad)
    clip_grad_norm(optimizer, norm, clipped)  # already under: untouched, not counted
    assert flat.param.grad.norm().item() == pytest.approx(norm / 4, rel=1e-5) and clipped.item() == 1


def test_clipping_spans_both_weight_decay_groups():
    torch.manual_seed(0)
    model = MLP([12, 16, 10])
    flat = FlatParameters(model, weights_first=True)
    optimizer = build_optimizer(flat.groups(), TrainConfig(weight_decay=0.1))
    model.backprop(*batch())
    norm = flat.param.grad.norm().item()
    clip_grad_norm(optimizer, norm / 2, torch.zeros((), dtype=torch.int64))
    assert flat.param.grad.norm().item() == pytest.approx(norm / 2, rel=1e-5)


def test_the_average_follows_its_reference_update():
    torch.manual_seed(0)
    model = MLP([12, 16, 10])
    flat = FlatParameters(model, weights_first=True)
    optimizer = build_optimizer(flat.groups(), TrainConfig(lr=0.1, weight_decay=0.01))
    average = WeightAverage(model, flat.param, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 30):
        train_step(model, optimizer, *batch(seed=step))
        average.update()
        d = min(0.9, (1 + step) / (10 + step))
        expected = {k: d * expected[k] + (1 - d) * v for k, v in model.state_dict().items()}
    assert average.updates == 29
    for key, value in average.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(average.model.layers[0].weight, model.layers[0].weight)
    assert not any(p.requires_grad for p in average.model.parameters())


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_spares_the_biases(optimizer):
    """The flat split steps exactly like per-tensor groups, and a bias with no gradient does not shrink."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5, momentum=0.0 if optimizer == "sgd" else 0.9)
    torch.manual_seed(0)
    flat_model, plain = MLP([12, 16, 10]), MLP([12, 16, 10])
    plain.load_state_dict(flat_model.state_dict())
    flat = FlatParameters(flat_model, weights_first=True)
    opt_flat = build_optimizer(flat.groups(), cfg)
    weights = [p for p in plain.parameters() if p.dim() >= 2]
    biases = [p for p in plain.parameters() if p.dim() < 2]
    opt_plain = build_optimizer([{"params": weights}, {"params": biases, "weight_decay": 0.0}], cfg)
    for step in range(3):
        x, y = batch(seed=step)
        train_step(flat_model, opt_flat, x, y)
        train_step(plain, opt_plain, x, y, autograd=True)
    for a, b in zip(flat_model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    bias = flat_model.layers[0].bias.detach().clone()
    flat.param.grad.zero_()
    opt_flat.step()
    if optimizer == "sgd":  # no momentum: a zero gradient moves only what decays
        assert torch.equal(flat_model.layers[0].bias, bias)


def test_without_weight_decay_the_optimizer_steps_one_flat_tensor():
    model = MLP([12, 16, 10])
    flat = FlatParameters(model, weights_first=False)
    assert flat.groups() == [flat.param]
    assert FlatParameters(MLP([12, 10], bias=False), weights_first=True).groups()[0]["params"][0].numel() == 120
