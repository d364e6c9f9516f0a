"""Distorted training batches: new images of the same shape, range and label, drawn reproducibly, on training
batches only."""

from __future__ import annotations

import pytest
import torch

from mlptrain.base.config import AugmentConfig, Config
from mlptrain.core.augment import Augmenter
from mlptrain.core.data import Split, TrainingData, normalize
from mlptrain.core.engine import EpochProgress, Hooks, TrainState, build_optimizer, train_epoch
from mlptrain.core.nn import MLP
from mlptrain.core.synthetic import make_digits

MEAN, STD = 0.13, 0.3


@pytest.fixture(scope="module")
def digits() -> TrainingData:
    images, labels = make_digits(64, seed=5)
    x = normalize(images, MEAN, STD)
    return TrainingData(train=Split(x, labels), val=Split(x[:8], labels[:8]), mean=MEAN, std=STD)


def augmenter(digits, kind="affine+elastic", seed=0, rank=0) -> Augmenter:
    return Augmenter.build(AugmentConfig(kind=kind), digits, seed, rank)


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_augmented_batches_differ_but_keep_shape_and_range(digits, kind):
    x = digits.train.x
    out = augmenter(digits, kind)(x, epoch=1, step=0)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert not torch.equal(out, x)
    assert (out != x).any(1).all()  # every image moved
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD  # blank and full ink
    assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5
    assert (out - x).abs().mean() < (x - x.roll(1, 0)).abs().mean()  # a digit stays nearer itself than another


def test_the_same_seed_epoch_and_batch_give_the_same_batch(digits):
    x = digits.train.x
    a = augmenter(digits)(x, 2, 3)
    assert torch.equal(a, augmenter(digits)(x, 2, 3))
    for other in (augmenter(digits)(x, 2, 4), augmenter(digits)(x, 3, 3), augmenter(digits, seed=1)(x, 2, 3)):
        assert not torch.equal(a, other)
    assert not torch.equal(a, augmenter(digits, rank=1)(x, 2, 3))  # each process draws its own share's


def test_none_builds_no_augmenter_and_zero_strength_changes_nothing_much(digits):
    assert Augmenter.build(AugmentConfig(), digits, 0) is None
    still = AugmentConfig(
        kind="affine+elastic", rotation=0, scale=0, shear=0, translate=0, elastic_alpha=0, elastic_sigma=1
    )
    out = Augmenter.build(still, digits, 0)(digits.train.x, 1, 0)
    torch.testing.assert_close(out, digits.train.x, rtol=0, atol=1e-5)  # the identity grid samples pixel centres


def test_only_training_batches_are_augmented_and_labels_are_kept(digits):
    seen = []

    class Spy(MLP):
        def backprop(self, x, y, label_smoothing=0.0):
            seen.append((x.clone(), y.clone()))
            return super().backprop(x, y, label_smoothing)

    torch.manual_seed(0)
    model = Spy([784, 10])
    cfg = Config().train
    state = TrainState(model, build_optimizer(model.parameters(), cfg))
    progress = EpochProgress.begin(1, digits.train, 0, cfg.lr)
    aug = augmenter(digits)
    train_epoch(state, digits.train, progress, cfg, Hooks(), augment=aug)
    (x, y), order = seen[0], progress.order[: len(seen[0][1])]
    assert torch.equal(y, digits.train.y[order])
    assert torch.equal(x, aug(digits.train.x[order], 1, 0))


def test_the_fast_grid_and_blur_are_affine_grid_and_a_gaussian_convolution(digits):
    import torch.nn.functional as F

    from mlptrain.core.augment import gaussian_kernel

    aug = augmenter(digits)
    theta = aug.matrices(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    pixels, blur = aug.constants(torch.device("cpu"))
    grid = torch.einsum("pk,bjk->bpj", pixels, theta).view(5, 28, 28, 2)
    torch.testing.assert_close(grid, F.affine_grid(theta, [5, 1, 28, 28], align_corners=False))
    field = torch.rand(5, 1, 28, 28)
    k = gaussian_kernel(aug.cfg.elastic_sigma, torch.device("cpu"))
    n = k.numel()
    conv = F.conv2d(F.conv2d(field, k.view(1, 1, 1, n), padding=(0, n // 2)), k.view(1, 1, n, 1), padding=(n // 2, 0))
    torch.testing.assert_close(blur @ field[:, 0] @ blur.t(), conv[:, 0])
