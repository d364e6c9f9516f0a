"""Files that must never be half-written, run folders that never collide, and which files are safe to open."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from mlptrain.errors import ConfigError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file in the same folder, fsync it, then rename over `path`.

    A reader (or a crash at any moment) sees either the old file or the new one, never a mix.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened for this.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_run_dir(parent: Path, name: str) -> Path:
    """Create and return `parent/<name>-<YYYYmmdd-HHMMSS>`, adding -2, -3... if that exists already.

    os.mkdir is atomic, so two runs started in the same second still get folders of their own.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    make_dirs(parent)
    for attempt in range(1, 1000):
        candidate = parent / (f"{name}-{stamp}" if attempt == 1 else f"{name}-{stamp}-{attempt}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {candidate}: {e.strerror}") from None
    raise ConfigError(f"cannot find a free run folder name under {parent}")


def make_dirs(folder: Path) -> None:
    """mkdir -p, with a one-line error that names the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot create the folder {folder}: a file of that name is in the way") from None
    except OSError as e:
        raise ConfigError(f"cannot create the folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write into the folder {folder}: permission denied")


def file_problem(path: Path, what: str, max_bytes: int | None = None) -> str | None:
    """Why `path` cannot be read as a `what` (missing, a folder, not a regular file, too large), or None.

    Only regular files are opened: a FIFO or a device would block the read, or never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{what} not found: {path}"
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a folder, not a {what}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: not a regular file (a pipe, socket or device), so not a {what}"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{path}: refused: {info.st_size:,} bytes, more than a {what} may hold ({max_bytes:,})"
    return None
