"""A `folder` dataset (core/folder.py): class folders of image files, prepared as predict prepares one, decoded once
and cached by the files' paths, sizes and modification times; bad files skipped with one warning, empty classes
refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import write_letters

from mlptrain.base.config import DataConfig
from mlptrain.base.errors import DataError, DataMissing
from mlptrain.core import digit, folder
from mlptrain.core.data import load_eval_split, load_training_data


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own cache folder and an empty in-process memory: nothing reaches ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(folder, "_MEMORY", {})
    return tmp_path / "cache" / "mlptrain" / "folders"


@pytest.fixture
def letters(tmp_path) -> Path:
    return write_letters(tmp_path / "letters", per_class=6, test_per_class=2)


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The files decoded, in the order they were."""
    seen: list[Path] = []
    real = folder._decode_one

    def counting(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(folder, "_decode_one", counting)
    return seen


def forget() -> None:
    """What a new process starts with: no split remembered in memory (the cache on disk stays)."""
    folder._MEMORY.clear()


def test_the_classes_are_the_sorted_folders_and_each_image_is_prepared_as_predict_prepares_it(letters):
    got = folder.load_split(letters, "train")
    assert got.classes == ["a", "b", "c"]
    assert got.images.shape == (18, 28, 28) and got.images.dtype == torch.uint8
    assert got.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    first = sorted((letters / "train" / "b").iterdir())[0]
    assert torch.equal(got.images[6], (digit.prepare(first) * 255).round().to(torch.uint8))
    test = folder.load_split(letters, "test")
    assert test.classes == ["a", "b", "c"] and test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_a_second_load_reads_the_cache_and_a_changed_file_is_decoded_again(letters, decodes, own_cache):
    first = folder.load_split(letters, "train")
    assert len(decodes) == 18 and len(list(own_cache.glob("*.pt"))) == 1
    forget()
    again = folder.load_split(letters, "train")
    assert len(decodes) == 18, "the second load decoded files instead of reading the cache"
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)

    changed = letters / "train" / "a" / "a000.png"
    stat = changed.stat()
    write_letters(letters.parent / "other", per_class=1, seed=5)
    changed.write_bytes((letters.parent / "other" / "train" / "c" / "c000.png").read_bytes())
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    forget()
    fresh = folder.load_split(letters, "train")
    assert len(decodes) == 36
    assert not torch.equal(fresh.images[0], first.images[0]) and torch.equal(fresh.images[1:], first.images[1:])


def test_a_damaged_cache_file_is_ignored_and_written_again(letters, decodes, own_cache):
    first = folder.load_split(letters, "train")
    (cached,) = own_cache.glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    forget()
    again = folder.load_split(letters, "train")
    assert len(decodes) == 36 and torch.equal(again.images, first.images)
    cached.write_bytes(b"not a cache")
    forget()
    assert torch.equal(folder.load_split(letters, "train").images, first.images)
    forget()
    folder.load_split(letters, "train")
    assert len(decodes) == 54, "the cache written after the damaged one is read"
    assert not list(own_cache.glob(".*.tmp")), "a temp file was left behind"


def test_unreadable_files_are_skipped_with_one_warning_and_other_files_silently(letters):
    for name in ("zz1.png", "zz2.png", "zz3.jpg", "zz4.png"):
        (letters / "train" / "b" / name).write_bytes(b"not an image")
    (letters / "train" / "b" / "README.txt").write_text("letters")
    (letters / "train" / "b" / ".DS_Store").write_bytes(b"\0\1")
    data = load_training_data(DataConfig(dataset="folder", root=str(letters), val_size=3), 0, torch.device("cpu"))
    assert len(data.train) + len(data.val) == 18 and data.classes == ["a", "b", "c"]
    (note,) = data.notes
    assert note.startswith("skipped 4 unreadable image file(s): ") and note.endswith("; and 1 more")
    assert str(letters / "train" / "b" / "zz1.png") in note and "zz4" not in note
    assert "README" not in note and "DS_Store" not in note
    forget()
    again = load_training_data(DataConfig(dataset="folder", root=str(letters), val_size=3), 0, torch.device("cpu"))
    assert again.notes == data.notes, "a cached load warns as the first did"


def test_a_class_with_no_usable_image_is_refused_naming_its_folder(letters):
    for image in (letters / "train" / "c").iterdir():
        image.write_bytes(b"broken")
    with pytest.raises(DataError, match=f"^{letters / 'train' / 'c'}: no usable image in it"):
        folder.load_split(letters, "train")
    (letters / "train" / "d").mkdir()
    (letters / "train" / "d" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=f"^{letters / 'train' / 'd'}: no image files in it"):
        folder.load_split(letters, "train")


def test_a_missing_train_folder_or_one_without_classes_is_refused_naming_it(tmp_path):
    with pytest.raises(DataMissing, match=f"^{tmp_path / 'train'}: not there"):
        folder.load_split(tmp_path, "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "stray.png").write_bytes(b"")
    with pytest.raises(DataError, match=f"^{tmp_path / 'train'}: no class folders in it"):
        folder.load_split(tmp_path, "train")


def test_the_test_split_takes_the_training_classes_and_may_be_absent(letters):
    (letters / "test" / "z").mkdir()
    (letters / "test" / "z" / "z.png").write_bytes((letters / "test" / "a" / "a000.png").read_bytes())
    with pytest.raises(DataError, match="test/z: a class the training split lacks"):
        folder.load_split(letters, "test")
    cfg = DataConfig(dataset="folder", root=str(letters / "none"))
    with pytest.raises(DataMissing, match="none/test: not there, so this folder dataset has no test split"):
        load_eval_split(cfg, "test", 0, 0.1, 0.3, torch.device("cpu"))


def test_the_decoded_images_do_not_depend_on_the_thread_count(letters):
    files = sorted((letters / "train" / "a").iterdir()) + sorted((letters / "train" / "c").iterdir())
    assert all(torch.equal(a, b) for a, b in zip(folder.decode(files, 1), folder.decode(files, 3), strict=True))
