"""mlptrain.core.data and mlptrain.core.synthetic: IDX files through torchvision into normalised tensors, the seeded
validation split, batches, every broken-dataset error, and the synthetic digits."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import IDX_NAMES, copy_dataset, idx_bytes, write_idx

from mlptrain.base.config import DataConfig
from mlptrain.base.errors import DataError, MlptrainError
from mlptrain.core.data import (
    IDX_FILES,
    Split,
    batches,
    check_idx_file,
    class_names,
    epoch_order,
    load_eval_split,
    load_images,
    load_training_data,
    normalize,
    raw_folder,
    split_indices,
    steps_per_epoch,
    val_count,
)
from mlptrain.core.data import write_idx as library_write_idx
from mlptrain.core.nn import MLP
from mlptrain.core.synthetic import make_digits

CPU = torch.device("cpu")
VAL_SIZE = 500


def mnist_cfg(root, **overrides) -> DataConfig:
    fields = {"dataset": "mnist", "root": str(root), "download": False, "val_size": VAL_SIZE}
    return DataConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def mnist_data(mnist_root):
    return load_training_data(mnist_cfg(mnist_root), seed=0, device=CPU)


@pytest.fixture
def mnist_copy(mnist_root, tmp_path) -> Path:
    """A writable copy of the MNIST fixture; returns the copy's root."""
    return copy_dataset(mnist_root, tmp_path / "data")


def load_error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as excinfo:
        load_training_data(cfg, seed=0, device=CPU)
    assert excinfo.value.exit_code == 2
    return str(excinfo.value)


# --- loading MNIST-format files -----------------------------------------------------------------------------


def test_training_data_shapes_and_types(mnist_data):
    train, val = mnist_data.train, mnist_data.val
    assert len(train) == 2500 and len(val) == VAL_SIZE
    for split in (train, val):
        assert split.x.dtype == torch.float32 and split.x.shape == (len(split), 784)
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
        assert split.y.min() >= 0 and split.y.max() <= 9
        assert split.x.device.type == "cpu"
    assert mnist_data.in_features == 784


def test_training_split_is_normalised(mnist_data):
    x = mnist_data.train.x.double()
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1) < 1e-4
    # The validation images use the training statistics, so they are only roughly standardised.
    assert abs(mnist_data.val.x.double().mean().item()) < 0.1


def test_mean_and_std_are_the_training_pixel_statistics(mnist_data, mnist_digits):
    assert type(mnist_data.mean) is float and type(mnist_data.std) is float
    images, _ = mnist_digits["train"]
    train_idx, _ = split_indices(len(images), VAL_SIZE, 0, "mnist")
    pixels = images[train_idx].double() / 255
    assert mnist_data.mean == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert mnist_data.std == pytest.approx(pixels.std().item(), rel=1e-5)
    assert 0 < mnist_data.mean < 1 and 0 < mnist_data.std < 1


def test_splits_hold_the_files_images_and_labels(mnist_data, mnist_digits):
    images, labels = mnist_digits["train"]
    train_idx, val_idx = split_indices(len(labels), VAL_SIZE, 0, "mnist")
    assert torch.equal(mnist_data.train.y, labels[train_idx])
    assert torch.equal(mnist_data.val.y, labels[val_idx])
    assert torch.equal(mnist_data.val.x, normalize(images[val_idx], mnist_data.mean, mnist_data.std))
    # Undoing the normalisation gives back the file's bytes.
    restored = (mnist_data.train.x * mnist_data.std + mnist_data.mean) * 255
    assert torch.equal(restored.round().to(torch.uint8), images[train_idx].reshape(-1, 784))


def test_validation_choice_follows_the_seed(mnist_root, mnist_data):
    again = load_training_data(mnist_cfg(mnist_root), seed=0, device=CPU)
    assert torch.equal(again.val.x, mnist_data.val.x) and torch.equal(again.val.y, mnist_data.val.y)
    other = load_training_data(mnist_cfg(mnist_root), seed=1, device=CPU)
    assert not torch.equal(other.val.y, mnist_data.val.y)
    assert len(other.val) == VAL_SIZE


@pytest.mark.parametrize(("n", "val_size", "seed"), [(3000, 500, 0), (3000, 500, 7), (10, 1, 3), (10, 9, 0)])
def test_split_indices_are_disjoint_and_cover_everything(n, val_size, seed):
    train_idx, val_idx = split_indices(n, val_size, seed, "mnist")
    assert len(val_idx) == val_size and len(train_idx) == n - val_size
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(n))
    again = split_indices(n, val_size, seed, "mnist")
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], val_idx)


def test_split_indices_do_not_touch_the_global_generator():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    split_indices(100, 10, 5, "mnist")
    assert torch.equal(torch.rand(3), expected)


def test_eval_split_test(mnist_root, mnist_data, mnist_digits):
    test = load_eval_split(mnist_cfg(mnist_root), "test", 0, mnist_data.mean, mnist_data.std, CPU)
    images, labels = mnist_digits["test"]
    assert isinstance(test, Split) and len(test) == 500
    assert test.x.dtype == torch.float32 and test.x.shape == (500, 784)
    assert torch.equal(test.y, labels)
    assert torch.equal(test.x, normalize(images, mnist_data.mean, mnist_data.std))


@pytest.mark.parametrize("seed", [0, 3])
def test_eval_split_val_is_the_training_val_split(mnist_root, seed):
    cfg = mnist_cfg(mnist_root)
    data = load_training_data(cfg, seed=seed, device=CPU)
    val = load_eval_split(cfg, "val", seed, data.mean, data.std, CPU)
    assert torch.equal(val.x, data.val.x)
    assert torch.equal(val.y, data.val.y)


def test_fashion_mnist(fashion_root):
    cfg = DataConfig(dataset="fashion-mnist", root=str(fashion_root), download=False, val_size=100)
    data = load_training_data(cfg, seed=0, device=CPU)
    assert (len(data.train), len(data.val)) == (500, 100)
    assert raw_folder(cfg) == fashion_root / "FashionMNIST" / "raw"
    test = load_eval_split(cfg, "test", 0, data.mean, data.std, CPU)
    assert len(test) == 100


def test_fashion_mnist_is_looked_for_in_its_own_folder(mnist_root):
    cfg = DataConfig(dataset="fashion-mnist", root=str(mnist_root), download=False, val_size=10)
    message = load_error(cfg)
    assert str(mnist_root / "FashionMNIST" / "raw") in message


# --- batches ------------------------------------------------------------------------------------------------


def _indexed_split(n: int) -> Split:
    # Row i holds i everywhere, so a batch shows which samples it took and that x and y stayed paired.
    return Split(torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3), torch.arange(n))


def test_batches_cover_each_sample_once_with_a_short_last_batch():
    split = _indexed_split(103)
    got = list(batches(split, epoch_order(103, 0, 1, CPU), 10))
    assert len(got) == steps_per_epoch(103, 10) == 11
    assert [len(y) for _, y in got] == [10] * 10 + [3]
    seen = torch.cat([y for _, y in got])
    assert sorted(seen.tolist()) == list(range(103))
    for x, y in got:
        assert torch.equal(x[:, 0].long(), y) and x.shape[1] == 3
    assert not torch.equal(seen, torch.arange(103))  # shuffled


def test_batches_exact_multiple_and_oversized_batch():
    def sizes(n, batch_size):
        return [len(y) for _, y in batches(_indexed_split(n), epoch_order(n, 0, 1, CPU), batch_size)]

    assert sizes(40, 10) == [10] * 4
    assert sizes(7, 100) == [7]
    assert steps_per_epoch(40, 10) == 4 and steps_per_epoch(7, 100) == 1


def test_batch_order_depends_on_seed_and_epoch_only():
    split = _indexed_split(50)

    def order(seed, epoch):
        return torch.cat([y for _, y in batches(split, epoch_order(50, seed, epoch, CPU), 8)])

    assert torch.equal(order(1, 1), order(1, 1))
    assert not torch.equal(order(1, 1), order(2, 1))
    assert not torch.equal(order(1, 1), order(1, 2))  # each epoch its own order


def test_batches_resume_from_a_step():
    split = _indexed_split(50)
    order = epoch_order(50, 0, 3, CPU)
    full = [y for _, y in batches(split, order, 8)]
    tail = [y for _, y in batches(split, order, 8, start_step=4)]
    assert len(tail) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail, strict=True))


# --- broken or missing datasets -----------------------------------------------------------------------------


def test_missing_files_without_download(tmp_path):
    cfg = mnist_cfg(tmp_path)
    message = load_error(cfg)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in IDX_FILES:
        assert name in message
    assert "data.download is false" in message


def test_one_missing_file_is_named(mnist_copy):
    (mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    message = load_error(mnist_cfg(mnist_copy))
    assert "lacks t10k-labels-idx1-ubyte (data.download is false)" in message


def test_gzipped_files_are_unpacked(mnist_root, mnist_data, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        original = (mnist_root / "MNIST" / "raw" / name).read_bytes()
        (raw / f"{name}.gz").write_bytes(gzip.compress(original, compresslevel=1))
    data = load_training_data(mnist_cfg(tmp_path / "data"), seed=0, device=CPU)
    assert torch.equal(data.train.x, mnist_data.train.x) and torch.equal(data.val.y, mnist_data.val.y)
    for name in IDX_FILES:
        assert (raw / name).read_bytes() == (mnist_root / "MNIST" / "raw" / name).read_bytes()
    assert not list(raw.glob(".*.tmp"))


def test_corrupt_gzip_is_a_data_error(mnist_copy):
    raw = mnist_copy / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data")
    message = load_error(mnist_cfg(mnist_copy))
    assert "train-labels-idx1-ubyte.gz" in message and "cannot be unpacked" in message
    assert not (raw / "train-labels-idx1-ubyte").exists()
    assert not list(raw.glob(".*.tmp"))


@pytest.mark.parametrize("keep", [10, 16, 16 + 28 * 28 * 5 + 3], ids=["inside-header", "header-only", "mid-data"])
def test_truncated_idx_file(mnist_copy, keep):
    path = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    message = load_error(mnist_cfg(mnist_copy))
    assert str(path) in message and "truncated" in message


def test_idx_file_with_extra_bytes(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    message = load_error(mnist_cfg(mnist_copy))
    assert str(path) in message and "corrupt" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train-images-idx3-ubyte", idx_bytes(torch.zeros(3000, 28, 28, dtype=torch.uint8), magic=0x801)),
        ("train-labels-idx1-ubyte", idx_bytes(torch.zeros(3000, dtype=torch.uint8), magic=0x00000803)),
        ("t10k-labels-idx1-ubyte", idx_bytes(torch.zeros(500, dtype=torch.uint8), magic=0x00000D01)),
        ("t10k-images-idx3-ubyte", b"\x89PNG\r\n\x1a\n" + bytes(100)),
    ],
    ids=["images-with-label-magic", "labels-with-image-magic", "float-labels", "png"],
)
def test_wrong_magic_number(mnist_copy, name, content):
    path = mnist_copy / "MNIST" / "raw" / name
    path.write_bytes(content)
    train = name.startswith("train")
    cfg = mnist_cfg(mnist_copy)
    with pytest.raises(DataError) as excinfo:
        if train:
            load_training_data(cfg, seed=0, device=CPU)
        else:
            load_eval_split(cfg, "test", 0, 0.1, 0.3, CPU)
    message = str(excinfo.value)
    assert str(path) in message and "magic" in message


def test_check_idx_file_returns_shape(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    assert check_idx_file(raw / "train-images-idx3-ubyte", ndim=3) == (3000, 28, 28)
    assert check_idx_file(raw / "t10k-labels-idx1-ubyte", ndim=1) == (500,)


def test_image_and_label_counts_must_match(mnist_copy, mnist_digits):
    _, labels = mnist_digits["train"]
    path = write_idx(mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels[:2999])
    message = load_error(mnist_cfg(mnist_copy))
    assert "3000 images" in message and "2999 labels" in message and str(path) in message


def test_labels_out_of_range(mnist_copy, mnist_digits):
    _, labels = mnist_digits["train"]
    bad = labels.clone()
    bad[17] = 10
    path = write_idx(mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte", bad)
    message = load_error(mnist_cfg(mnist_copy))
    assert str(path) in message and "0..9" in message


@pytest.mark.parametrize("val_size", [3000, 3001, 10**6])
def test_val_size_must_be_smaller_than_training_set(mnist_root, val_size):
    message = load_error(mnist_cfg(mnist_root, val_size=val_size))
    assert "data.val_size" in message and str(val_size) in message and "3000" in message


def test_largest_val_size_leaves_one_training_image(mnist_root):
    data = load_training_data(mnist_cfg(mnist_root, val_size=2999), seed=0, device=CPU)
    assert (len(data.train), len(data.val)) == (1, 2999)


def test_a_fraction_holds_out_that_share_the_same_images_as_its_count(mnist_root):
    data = load_training_data(mnist_cfg(mnist_root, val_size=0.1), seed=0, device=CPU)
    counted = load_training_data(mnist_cfg(mnist_root, val_size=300), seed=0, device=CPU)
    assert (len(data.train), len(data.val)) == (2700, 300)
    assert torch.equal(data.val.y, counted.val.y) and torch.equal(data.val.x, counted.val.x)
    val = load_eval_split(mnist_cfg(mnist_root, val_size=0.1), "val", 0, data.mean, data.std, CPU)
    assert torch.equal(val.x, data.val.x)  # eval finds the very images the run held out


@pytest.mark.parametrize(("fraction", "held"), [(1e-6, 1), (0.9996, 2999)])
def test_a_fraction_holds_out_at_least_one_image_and_leaves_one(mnist_root, fraction, held):
    assert val_count(mnist_cfg(mnist_root, val_size=fraction), 3000) == held


def test_a_fraction_that_leaves_nothing_to_train_on_is_refused(mnist_root):
    message = load_error(mnist_cfg(mnist_root, val_size=0.99999))
    assert "data.val_size (0.99999 of 3000 images is 3000)" in message


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")))
def test_the_shipped_configs_run_on_a_subset(config, mnist_root):
    """3,000 training images, fewer than any count the shipped configs held out before they took a fraction."""
    from mlptrain.base.config import load_config

    if "params" in (text := config.read_text()) or "dataset: synthetic" in text:
        pytest.skip("a sweep, or synthetic digits of its own size")
    cfg = load_config(config, [f"data.root={mnist_root}", "data.download=false"]).data
    data = load_training_data(cfg, seed=0, device=CPU)
    assert len(data.val) < len(data.train)


def test_data_root_may_name_the_folder_that_holds_the_files(mnist_root, mnist_data):
    raw = mnist_root / "MNIST" / "raw"
    data = load_training_data(mnist_cfg(raw), seed=0, device=CPU)
    assert raw_folder(mnist_cfg(raw)) == raw and torch.equal(data.val.x, mnist_data.val.x)


def test_an_empty_raw_folder_named_as_data_root_is_said_as_itself(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    message = load_error(mnist_cfg(raw))
    assert f"{raw}{os.sep} lacks" in message and "raw/MNIST" not in message


def test_data_error_is_an_mlptrain_error():
    assert issubclass(DataError, MlptrainError)


# --- download (never touches the network) -------------------------------------------------------------------

TORCHVISION_OFFLINE = (
    "Error downloading train-images-idx3-ubyte.gz:\n"
    "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n"
    "Tried http://yann.lecun.com/exdb/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n"
)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(TORCHVISION_OFFLINE),
        RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz: ... <urlopen error [Errno -2] Name or service not known>"
        ),
        URLError(OSError(-2, "Name or service not known")),
        OSError(-2, "Name or service not known"),
    ],
    ids=["torchvision-message", "one-line", "urlerror", "oserror"],
)
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_failed_download_is_a_data_error(tmp_path, monkeypatch, dataset, error):
    calls = []

    def offline(self):
        calls.append(self.raw_folder)
        raise error

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)  # FashionMNIST inherits it
    cfg = DataConfig(dataset=dataset, root=str(tmp_path), download=True, val_size=10)
    message = load_error(cfg)
    assert calls and Path(calls[0]) == raw_folder(cfg)
    assert str(raw_folder(cfg)) in message
    assert "download failed" in message
    assert "Name or service not known" in message
    assert "\n" not in message


def test_download_that_fetches_the_files(tmp_path, monkeypatch, mnist_root):
    def fetch(self):
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        for name in IDX_FILES:
            (raw / name).write_bytes((mnist_root / "MNIST" / "raw" / name).read_bytes())

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fetch)
    data = load_training_data(mnist_cfg(tmp_path, download=True), seed=0, device=CPU)
    assert len(data.train) == 2500


def test_no_download_when_files_are_present(mnist_root, monkeypatch):
    def fail(self):
        raise AssertionError("download called although the files are there")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    data = load_training_data(mnist_cfg(mnist_root, download=True), seed=0, device=CPU)
    assert len(data.val) == VAL_SIZE


# --- synthetic digits ---------------------------------------------------------------------------------------


def test_make_digits_is_deterministic():
    images, labels = make_digits(200, seed=5)
    again_images, again_labels = make_digits(200, seed=5)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, _ = make_digits(200, seed=6)
    assert not torch.equal(images, other_images)


def test_make_digits_chunking_does_not_change_the_images():
    images, labels = make_digits(50, seed=3)
    chunked_images, chunked_labels = make_digits(50, seed=3, chunk=50)
    assert torch.equal(images, chunked_images) and torch.equal(labels, chunked_labels)


def test_make_digits_types_and_classes():
    images, labels = make_digits(500, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (500, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (500,)
    assert set(labels.tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    # Digits, not noise: most pixels are background, and every image has strokes.
    assert (images == 0).float().mean() > 0.5
    assert ((images > 128).flatten(1).sum(1) > 10).all()


def test_synthetic_digits_are_learnable():
    # A small MLP, a few hundred SGD steps on 2000 images: well above chance (10%) on 500 unseen ones.
    torch.manual_seed(0)
    train_images, train_labels = make_digits(2000, seed=101)
    test_images, test_labels = make_digits(500, seed=102)
    x = train_images.reshape(-1, 784).float() / 255
    mean, std = x.mean(), x.std()
    x = (x - mean) / std
    x_test = (test_images.reshape(-1, 784).float() / 255 - mean) / std
    model = MLP([784, 128, 10])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, len(x), (100,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), train_labels[idx]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == test_labels).float().mean().item()
    assert accuracy > 0.6


def test_synthetic_dataset_through_load_training_data(tmp_path):
    cfg = DataConfig(
        dataset="synthetic", root=str(tmp_path / "unused"), download=False, val_size=100, synthetic_size=600
    )
    data = load_training_data(cfg, seed=0, device=CPU)
    assert (len(data.train), len(data.val)) == (500, 100)
    assert data.train.x.shape == (500, 784) and data.train.x.dtype == torch.float32
    assert abs(data.train.x.double().mean().item()) < 1e-4
    assert not (tmp_path / "unused").exists()  # nothing is written or downloaded
    test = load_eval_split(cfg, "test", 0, data.mean, data.std, CPU)
    assert len(test) == 100  # a sixth of the training size
    val = load_eval_split(cfg, "val", 0, data.mean, data.std, CPU)
    assert torch.equal(val.x, data.val.x) and torch.equal(val.y, data.val.y)
    # The images do not depend on the run's seed (like MNIST); only the held-out choice does.
    other = load_training_data(cfg, seed=1, device=CPU)
    assert not torch.equal(other.val.y, data.val.y)
    all_labels = torch.cat([data.train.y, data.val.y]).sort().values
    assert torch.equal(torch.cat([other.train.y, other.val.y]).sort().values, all_labels)


def test_synthetic_val_size_too_large(tmp_path):
    cfg = DataConfig(dataset="synthetic", root=str(tmp_path), val_size=600, synthetic_size=600)
    assert "data.val_size" in load_error(cfg)


def test_idx_names_match_the_library():
    assert sorted(IDX_NAMES.values()) == sorted(IDX_FILES)


def test_the_idx_writer_matches_torchvision(tmp_path):
    from torchvision import datasets

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 9])
    raw = Path(tmp_path) / "MNIST" / "raw"
    for prefix in ("train", "t10k"):
        library_write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        library_write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    ds = datasets.MNIST(tmp_path, train=True, download=False)
    assert torch.equal(ds.data, images) and torch.equal(ds.targets, labels)


@pytest.mark.parametrize("shape", [(5, 28, 28), (3, 7, 11), (1, 1, 1)])
def test_the_idx_reader_matches_torchvision(tmp_path, shape):
    from torchvision.datasets import MNIST

    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (shape[0],), generator=torch.Generator().manual_seed(2))
    raw = Path(tmp_path) / "MNIST" / "raw"
    for prefix in ("train", "t10k"):
        library_write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        library_write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    theirs = MNIST(tmp_path, train=False, download=False)
    ours = load_images(DataConfig(dataset="mnist", root=str(tmp_path), download=False), train=False)
    assert ours[0].dtype == theirs.data.dtype and ours[1].dtype == theirs.targets.dtype
    assert torch.equal(ours[0], theirs.data) and torch.equal(ours[1], theirs.targets)


def test_fashion_class_names_are_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert class_names("fashion-mnist") == list(FashionMNIST.classes)


def test_reading_idx_files_does_not_import_torchvision(mnist_root):
    code = (
        "import sys\n"
        "from mlptrain.base.config import DataConfig\n"
        "from mlptrain.core.data import load_images\n"
        f"images, labels = load_images(DataConfig(dataset='mnist', root={str(mnist_root)!r}), train=True)\n"
        "assert len(images) == len(labels) > 0\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_pixel_statistics_are_exact_whatever_the_thread_count():
    # A float sum of the pixels, which torch splits between threads, gave another last bit at another count.
    from mlptrain.core.data import pixel_stats

    images = torch.randint(0, 256, (3000, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    exact = images.double().div(255)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pixel_stats(images)
        torch.set_num_threads(2)
        assert pixel_stats(images) == one
    finally:
        torch.set_num_threads(before)
    assert one == pytest.approx((exact.mean().item(), exact.std().item()), rel=1e-12)


def test_synthetic_digits_are_rendered_once_and_each_caller_gets_its_own(monkeypatch):
    # A sweep's trials in one worker load the same data: rendered once (the cache), keyed by what determines the
    # images (count and seed), and no caller's tensors are another's.
    import mlptrain.core.data as data
    import mlptrain.core.synthetic as synthetic

    data._rendered_digits.cache_clear()
    calls = []
    render = synthetic.make_digits
    monkeypatch.setattr(synthetic, "make_digits", lambda n, seed: calls.append((n, seed)) or render(n, seed=seed))
    cfg = DataConfig(dataset="synthetic", synthetic_size=123, val_size=23)
    first = load_training_data(cfg, 0, torch.device("cpu"))
    images, labels = load_images(cfg, train=True)
    first.train.x.add_(1.0)  # a trial that writes into its data...
    images.zero_()
    labels.zero_()
    second = load_training_data(cfg, 0, torch.device("cpu"))  # ...is not seen by the next one
    assert torch.equal(second.train.x, load_training_data(cfg, 0, torch.device("cpu")).train.x)
    assert torch.equal(load_images(cfg, train=True)[0], make_digits(123, seed=1)[0])
    assert not torch.equal(second.train.x, first.train.x)
    assert calls == [(123, 1)]  # once, for all five loads
    other = DataConfig(dataset="synthetic", synthetic_size=124, val_size=23)
    assert len(load_training_data(other, 0, torch.device("cpu")).train) == 101 and len(calls) == 2
