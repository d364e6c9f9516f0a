"""The loop: it learns, schedules the rate as documented, and reads the device only once per epoch."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mlptrain.base.config import Config, TrainConfig
from mlptrain.core.data import EVAL_BATCH_SIZE, Split, TrainingData
from mlptrain.core.engine import (
    EpochProgress,
    FlatParameters,
    Hooks,
    TrainState,
    autocast,
    build_optimizer,
    confusion_matrix,
    evaluate,
    fit,
    predict_logits,
    score_logits,
    train_epoch,
)
from mlptrain.core.nn import MLP
from mlptrain.core.schedule import build_scheduler


def blobs(n: int, seed: int) -> Split:
    """Ten Gaussian blobs in 20-D: separable, so a small MLP must fit them."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 20, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 10, (n,), generator=g)
    return Split(centers[y] + torch.randn(n, 20, generator=g), y)


@pytest.fixture
def data() -> TrainingData:
    return TrainingData(train=blobs(2000, 1), val=blobs(500, 2), mean=0.0, std=1.0)


def test_fit_learns(data):
    torch.manual_seed(0)
    model = MLP([20, 32, 10])
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg, 3 * 32)
    history = list(fit(TrainState(model, opt, sched), data, Config(train=cfg, seed=0)))
    assert [s.epoch for s in history] == [1, 2, 3]
    assert history[-1].val_acc > 0.9
    assert history[-1].train_loss < history[0].train_loss
    assert all(s.train_seconds > 0 and s.samples_per_second > 0 for s in history)


def test_fit_is_deterministic_on_cpu(data):
    def run():
        torch.manual_seed(0)
        model = MLP([20, 32, 10], dropout=0.2)
        cfg = TrainConfig(epochs=2, batch_size=50)
        opt = build_optimizer(model.parameters(), cfg)
        state = TrainState(model, opt, build_scheduler(opt, cfg, 80))
        return [(s.train_loss, s.val_loss) for s in fit(state, data, Config(train=cfg, seed=0))]

    assert run() == run()


def test_one_host_sync_per_epoch(data, monkeypatch):
    """No .item() per batch: the loop reads its device-side sums once, at the end of the epoch."""
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    model = MLP([20, 32, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    progress = EpochProgress.begin(1, data.train, seed=0, lr=0.01)
    train_epoch(TrainState(model, opt), data.train, progress, TrainConfig(batch_size=16), Hooks())
    assert progress.step == 125  # every batch
    progress.loss_sum.item(), progress.correct.item()  # what fit() reads, once
    assert len(calls) == 2  # loss sum and correct count, once each
    calls.clear()
    evaluate(model, data.val)
    assert len(calls) == 2


def test_evaluate_leaves_no_graph_and_uses_eval_mode(data):
    model = MLP([20, 32, 10], dropout=0.5)
    first = evaluate(model, data.val)
    assert evaluate(model, data.val) == first  # dropout off: deterministic
    assert not model.training


@pytest.mark.parametrize("name", ["onecycle", "cosine", "none"])
def test_schedules(name):
    model = MLP([4, 3])
    cfg = TrainConfig(lr=0.1, momentum=0.9, scheduler=name)
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg, 100)
    lrs, moms = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        if sched is not None:
            sched.step()
    if name == "none":
        assert set(lrs) == {0.1} and set(moms) == {0.9}
    elif name == "cosine":
        assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 1e-3 and set(moms) == {0.9}
        assert all(a >= b for a, b in itertools.pairwise(lrs))
    else:  # warm up to lr over the first 30%, anneal far below it; momentum moves the other way
        peak = max(range(100), key=lrs.__getitem__)
        assert 25 <= peak <= 35 and max(lrs) == pytest.approx(0.1)
        assert lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] < 1e-4
        assert moms[0] == pytest.approx(0.9) and moms[peak] == pytest.approx(0.8, abs=1e-3)


def test_onecycle_without_momentum_keeps_none():
    model = MLP([4, 3])
    cfg = TrainConfig(momentum=0.0)
    opt = build_optimizer(model.parameters(), cfg)
    build_scheduler(opt, cfg, 10)
    assert opt.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_uses_momentum_as_beta1(name):
    opt = build_optimizer(MLP([4, 3]).parameters(), TrainConfig(optimizer=name, momentum=0.8, weight_decay=0.01))
    assert opt.param_groups[0]["betas"] == (0.8, 0.999)
    assert opt.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_is_bitwise_the_batched_loop_it_always_was(precision):
    """evaluate() = score_logits(predict_logits()): the loss is still summed batch by batch, in order."""

    @torch.inference_mode()
    def batched(model, split):
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for start in range(0, len(split), EVAL_BATCH_SIZE):
            x, y = split.x[start : start + EVAL_BATCH_SIZE], split.y[start : start + EVAL_BATCH_SIZE]
            with autocast(x.device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return loss_sum.item() / len(split), correct.item() / len(split)

    torch.manual_seed(0)
    model = MLP([20, 64, 10]).eval()
    for n in (1, 500, 2 * EVAL_BATCH_SIZE + 17):  # one short batch, and several batches
        split = blobs(n, n)
        assert evaluate(model, split, precision) == batched(model, split)


def test_predict_logits_and_the_confusion_matrix(data):
    torch.manual_seed(0)
    model = MLP([20, 32, 10], dropout=0.5)
    logits = predict_logits(model, data.val)
    assert logits.shape == (500, 10) and not model.training
    assert torch.equal(logits, predict_logits(model, data.val))  # dropout off
    predicted = logits.argmax(1)
    confusion = confusion_matrix(predicted, data.val.y, 10)
    assert confusion.shape == (10, 10) and confusion.sum() == 500
    assert confusion.diagonal().sum() / 500 == score_logits(logits, data.val.y)[1]
    assert torch.equal(confusion.sum(1), torch.bincount(data.val.y, minlength=10))  # rows are the true labels
    assert confusion[data.val.y[0], predicted[0]] >= 1


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
