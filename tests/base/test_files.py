"""base/files.py's rule for what a write may replace: a regular file or nothing; a symbolic link is followed."""

from __future__ import annotations

import os
import stat

import pytest

from mlptrain.base.errors import ConfigError
from mlptrain.base.files import atomic_write_text, output_problem


def test_a_fifo_is_never_replaced(tmp_path):
    pipe = tmp_path / "out.png"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match=r"out\.png: is not a regular file"):
        atomic_write_text(pipe, "x")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert os.listdir(tmp_path) == ["out.png"]  # no temp file left


def test_a_device_is_never_replaced(tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except (PermissionError, OSError):
        pytest.skip("making a device needs root")
    with pytest.raises(ConfigError, match="not a regular file"):
        atomic_write_text(device, "x")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_link_to_a_fifo_is_refused_and_a_link_to_a_file_is_followed(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "to-pipe").symlink_to(tmp_path / "pipe")
    assert "not a regular file" in output_problem(tmp_path / "to-pipe")
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "figure.png"
    target.write_text("old")
    link = tmp_path / "figure.png"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "later.png"
    dangling.symlink_to(tmp_path / "real" / "later.png")
    atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.png").read_text() == "made"


def test_a_folder_and_a_link_loop_are_named(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    assert output_problem(tmp_path / "d.onnx") == "is a folder; give a file name"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert output_problem(loop) == "a loop of symbolic links"
    assert output_problem(tmp_path / "new.png") is None
