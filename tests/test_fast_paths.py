"""The fast paths give the reference path's numbers: fused MLP, flat parameters, precision, compile, threads."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlptrain import evaluate, threads, trainer
from mlptrain.config import Config, TrainConfig
from mlptrain.engine import FlatParameters, build_optimizer
from mlptrain.nn import MLP

TINY = {
    "device": "cpu",
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32, 16], "dropout": 0.2},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.1},
}


def tiny(model=None, train=None, **top) -> Config:
    return Config.from_dict(
        {**TINY, **top, "model": {**TINY["model"], **(model or {})}, "train": {**TINY["train"], **(train or {})}}
    )


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if "second" not in k} for r in csv.DictReader(f)]  # not timings


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_gradcheck(activation, bias):
    from mlptrain.nn import MLPFunction

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
    from mlptrain.nn import cross_entropy_with_grad

    logits = torch.randn(9, 10, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 10, (9,))
    loss = F.cross_entropy(logits, y)
    (expected,) = torch.autograd.grad(loss, logits)
    got_loss, got_grad = cross_entropy_with_grad(logits.detach(), y)
    assert torch.equal(got_loss, loss.detach()) and torch.equal(got_grad, expected)


@pytest.mark.parametrize(
    ("model", "precision", "by_hand"),
    [({"fused": True}, "fp32", True), ({"fused": False}, "fp32", False), ({"fused": True}, "bf16", False)],
)
def test_training_takes_the_by_hand_step_only_on_the_fused_fp32_path(monkeypatch, tmp_path, model, precision, by_hand):
    calls = []
    original = MLP.backprop
    monkeypatch.setattr(MLP, "backprop", lambda self, x, y: calls.append(len(x)) or original(self, x, y))
    trainer.train(tiny(model=model, train={"epochs": 1, "precision": precision}), run_dir=tmp_path / "run")
    assert bool(calls) == by_hand
    if by_hand:
        assert sum(calls) == 1000  # every training sample, once


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_flat_parameters_step_like_separate_ones(name):
    torch.manual_seed(0)
    a, b = MLP([10, 8, 3]), MLP([10, 8, 3])
    b.load_state_dict(a.state_dict())
    flat = FlatParameters(b)
    cfg = TrainConfig(optimizer=name, lr=0.01, momentum=0.9, weight_decay=0.01)
    opt_a, opt_b = build_optimizer(a.parameters(), cfg), build_optimizer([flat.param], cfg)
    for step in range(5):
        x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb), (name, step, key)
    assert set(b.state_dict()) == set(a.state_dict())  # same keys: checkpoints do not change


def test_flat_parameters_are_views_that_the_optimizer_moves():
    model = MLP([4, 3, 2])
    flat = FlatParameters(model)
    for p in model.parameters():
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.param.grad.untyped_storage().data_ptr()
    before = model.layers[0].weight.detach().clone()
    opt = torch.optim.SGD([flat.param], lr=0.1)
    F.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 0, 1, 1])).backward()
    assert flat.param.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(model.layers[0].weight, before)


def test_runs_on_either_path_are_identical(tmp_path):
    trainer.train(tiny(model={"fused": True}), run_dir=tmp_path / "fused")
    trainer.train(tiny(model={"fused": False}), run_dir=tmp_path / "layers")
    assert rows(tmp_path / "fused") == rows(tmp_path / "layers")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_and_eval_reproduces_val(tmp_path, precision):
    config = tiny(train={"precision": precision, "epochs": 3}, model={"dropout": 0.0})
    result = trainer.train(config, run_dir=tmp_path / "r")
    assert result.best.val_acc > 0.5
    ckpt = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert (ckpt["scaler"] is not None) == (precision == "fp16")
    again = evaluate.evaluate_checkpoint(tmp_path / "r" / "best.pt", split="val", device="cpu")
    assert again.accuracy == result.best.val_acc
    assert again.loss == result.best.val_loss  # scored in the same precision as validation was


def test_compile_falls_back_to_eager_with_a_note(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    seen = []

    class Watch(trainer.Callbacks):
        def run_started(self, info):
            seen.extend(info.notes)

    trainer.train(tiny(train={"compile": True}), run_dir=tmp_path / "c", callbacks=Watch())
    trainer.train(tiny(), run_dir=tmp_path / "e")
    assert any("train.compile" in note and "no C++ compiler found" in note for note in seen)
    assert rows(tmp_path / "c") == rows(tmp_path / "e")


def test_compile_trains_like_eager(tmp_path):
    trainer.train(tiny(train={"compile": True}, model={"dropout": 0.0}), run_dir=tmp_path / "c")
    trainer.train(tiny(model={"dropout": 0.0}), run_dir=tmp_path / "e")
    for compiled, eager in zip(rows(tmp_path / "c"), rows(tmp_path / "e"), strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert float(compiled[key]) == pytest.approx(float(eager[key]), rel=1e-3, abs=2e-3), key


@pytest.mark.parametrize(
    ("top", "train", "expected"),
    [
        ({"threads": 1}, {}, 1),
        ({"threads": 2}, {}, 2),
        ({}, {"batch_size": 64}, 1),  # the tutorial's work per step: one thread
    ],
)
def test_threads(tmp_path, top, train, expected):
    seen = []

    class Watch(trainer.Callbacks):
        def run_started(self, info):
            seen.append(info.threads)

    trainer.train(tiny(train={**train, "epochs": 1}, **top), run_dir=tmp_path / "t", callbacks=Watch())
    assert seen == [expected]


def test_auto_threads_uses_the_machine_for_big_steps():
    config = Config.from_dict({"model": {"hidden": [1024, 512]}, "train": {"batch_size": 512}})
    assert threads.configure_threads(config, torch.device("cpu")) == threads.DEFAULT_THREADS
