"""Files that must never be half-written, run folders that never collide, and which files are safe to open."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mlptrain.base.errors import ConfigError, WriteFailed


def atomic_write(path: Path, write: Callable[[BinaryIO], None], check: Callable[[Path], None] | None = None) -> None:
    """Write through a temp file of its own in the same folder, fsync it, then rename over `path`.

    `check`, if given, reads the whole temp file back (by its path) before the rename: if it raises, the temp file
    goes, `path` keeps what it held, and the exception carries on.

    A reader (or a crash at any moment) sees either the old file or the new one, never a mix. The temp file is
    created with O_EXCL (mkstemp), so a name planted beforehand (a symlink, say) is never followed; it carries this
    process's id, so the next writer in the folder can tell a dead process's leftover (remove_stale_temp_files).
    SIGINT and SIGTERM wait until the file is whole. A full disk, or any other failed write, is a WriteFailed
    naming the file; the old file stays. What `path` may be is output_problem's to say: a symbolic link is
    followed (the file it names is replaced, the link stays), and a device, FIFO, socket or folder is a
    ConfigError, never replaced.
    """
    path = writable_target(path)
    with held_signals():
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise _write_failed(path, e) from None
        tmp = Path(name)
        try:
            os.fchmod(fd, _FILE_MODE)  # what open() would have given; mkstemp makes the file private (0600)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check(tmp)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _write_failed(path, e) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


class Reserved:
    """atomic_write in two halves, for a file written on another thread: now, its temp file made and `size` bytes
    reserved for it (where the file system can: a disk that fills up meanwhile cannot cut the file short, and one
    already full is a WriteFailed now); later, from any thread, commit fills it, fsyncs it and renames it into place.
    discard (or a commit that fails) removes the temp file; `path` keeps what it held. Signals are the caller's to
    hold: handlers run on the main thread only."""

    def __init__(self, path: Path, size: int):
        self.path = writable_target(path)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise _write_failed(self.path, e) from None
        self.tmp = Path(name)
        try:
            os.fchmod(fd, _FILE_MODE)
            _reserve(fd, size)
            self.file = os.fdopen(fd, "wb")
        except BaseException as e:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise (_write_failed(self.path, e) if isinstance(e, OSError) else e) from None

    def commit(self, write: Callable[[BinaryIO], None]) -> None:
        try:
            write(self.file)
            self.file.truncate()  # what the reservation held beyond the end of what was written
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise _write_failed(self.path, e) from None
        except BaseException:
            self.discard()
            raise
        _fsync_dir(self.path.parent)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def _reserve(fd: int, size: int) -> None:
    """Allocate `size` bytes to the file now; where the file system cannot (or the platform has no
    posix_fallocate), the space is left to the write."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def copy_into(source: Path, f: BinaryIO) -> None:
    """Copy the file at `source` into `f`, open and at its start: in the kernel where it can (os.copy_file_range:
    no copy through this process's memory, and on a file system with reflinks, such as XFS or btrfs, no bytes
    written twice), else through a buffer."""
    f.flush()
    with open(source, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        copied = 0
        if hasattr(os, "copy_file_range"):
            with contextlib.suppress(OSError):  # another file system, or a kernel without it: the buffer below
                while copied < size and (n := os.copy_file_range(src.fileno(), f.fileno(), size - copied)):
                    copied += n
        if copied < size:
            src.seek(copied)
            f.seek(copied)
            shutil.copyfileobj(src, f, 1 << 22)


def output_problem(path: Path) -> str | None:
    """Why `path` cannot be written as an output file (a folder, a device, a FIFO, a socket, a link loop), or None.

    A write replaces the file whole (temp file + rename), so only a regular file, or nothing, may be there: a
    rename would turn /dev/null, or a FIFO that a reader waits on, into a regular file. A symbolic link is
    followed, as a shell's `>` follows it: what it names is what is checked, and replaced.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None  # a new file (or a link to one still to be made)
    except OSError as e:
        return "a loop of symbolic links" if e.errno == errno.ELOOP else f"cannot be used ({e.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder; give a file name"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket), which writing the file whole would replace"
    return None


def check_output(path: Path | None, option: str = "") -> None:
    """Refuse an output path that output_problem objects to, in one line naming `option` (e.g. '--out') and the
    path; None passes."""
    problem = None if path is None else output_problem(path)
    if problem:
        raise ConfigError(f"{option} {path}: {problem}" if option else f"cannot write {path}: {problem}")


def writable_target(path: Path) -> Path:
    """The file a write to `path` replaces: `path` with its symbolic links followed; checked by output_problem."""
    check_output(path)
    return Path(os.path.realpath(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_failed(path: Path, e: OSError) -> WriteFailed:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteFailed(f"no space left on the device while writing {path}", path, "no space left on the device")
    return WriteFailed(f"cannot write {path}: {e.strerror or e}", path, str(e.strerror or e))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
# A temp file of atomic_write: .<file>.<pid>.<random>.tmp (and .<file>.<pid>.tmp, as versions before 0.x named them).
_TEMP_RE = re.compile(r"^\..+\.(\d+)(?:\.[A-Za-z0-9_]{8})?\.tmp$")


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files that processes which have since died (a kill -9, a power cut) left in `folder`;
    returns them. A live process's temp file is left alone."""
    removed = []
    for entry in Path(folder).iterdir():
        found = _TEMP_RE.match(entry.name)
        if found and not _alive(int(found.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # another user's live process; an absurd number is nobody's
    return True


@contextlib.contextmanager
def held_signals():
    """SIGINT and SIGTERM wait until the block ends, then arrive as they would have: what is written inside is
    never cut in two by a Ctrl-C, however many times it is pressed.

    The handlers are swapped for ones that take note, rather than the signals masked: a signal masked in the main
    thread still reaches Python through any other thread (torch's own), and Python runs its handler regardless.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread, where Python runs them
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in pending[:2]:  # a second Ctrl-C still means "now"
            signal.raise_signal(sig)


_HELD = (signal.SIGINT, signal.SIGTERM)


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


def make_dirs(folder: Path) -> bool:
    """mkdir -p, with a one-line error that names the folder; True if this call made `folder` itself (os.mkdir
    is atomic: of two processes making one folder at once, one is told it did)."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            made = True
        except FileExistsError:
            made = False
        if not folder.is_dir():
            raise FileExistsError
    except FileExistsError:
        raise ConfigError(f"cannot create the folder {folder}: a file of that name is in the way") from None
    except OSError as e:
        raise ConfigError(f"cannot create the folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write into the folder {folder}: permission denied")
    return made


# The lock file that a folder's one writer holds (train, resume and sweep); readers never look at it.
LOCK_FILE = ".mlptrain.lock"
_held: dict[tuple[int, int], int] = {}  # (device, inode) of each folder this process holds -> how many holds


@contextlib.contextmanager
def folder_lock(folder: Path, wait: float = 0.0) -> Iterator[None]:
    """Be the one process writing into `folder` while the block runs; another one gets a ConfigError naming the
    folder and the holder's PID. The lock is the OS's (flock): it dies with its process, so a kill -9 never leaves
    a folder stuck; the lock file goes when the block ends. Taking the lock also removes the temp files that dead
    writers left behind. Re-entrant within a process (a sweep holds its folder while each trial holds its own).
    `wait`: seconds to wait for a holder to let go before refusing (the short locks of a sweep's manifest)."""
    folder = Path(folder)
    key = _folder_key(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(folder, wait)
    _held[key] = 1
    try:
        remove_stale_temp_files(folder)
        yield
    finally:
        del _held[key]
        if _same_file(fd, folder / LOCK_FILE):  # still ours: leave the folder as tidy as it was
            with contextlib.suppress(OSError):
                os.unlink(folder / LOCK_FILE)
        os.close(fd)


def _folder_key(folder: Path) -> tuple[int, int]:
    try:
        st = os.stat(folder)
    except OSError as e:
        raise ConfigError(f"cannot use the folder {folder}: {e.strerror}") from None
    return st.st_dev, st.st_ino


def _acquire(folder: Path, wait: float = 0.0) -> int:
    """Open and flock folder/LOCK_FILE, then write our PID into it; never follows a planted symlink."""
    path = folder / LOCK_FILE
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            why = "it is a symbolic link, which mlptrain never follows" if e.errno == errno.ELOOP else e.strerror
            raise ConfigError(f"cannot lock {folder}: {path}: {why}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"cannot lock {folder}: {path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(_in_use(folder, fd)) from None
                os.close(fd)
                time.sleep(0.05)
                continue
            if _same_file(fd, path):  # not removed (and made anew) by the holder we waited on
                with contextlib.suppress(OSError):  # only for the message another writer gets (a full disk...)
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _in_use(folder: Path, fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    holder = f"PID {text}" if text.isdigit() else "a process that is just starting"
    return (
        f"{folder} is in use by another mlptrain ({holder}): one process writes into a folder at a time; wait for "
        "it to finish, or stop it first"
    )


def not_there(path: Path, what: str) -> str:
    """Why `path`, which is not there to use, is not: 'no such <what>', or a loop of symbolic links, or the OS's
    reason (a folder on the way that may not be entered)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"no such {what}"
    except OSError as e:
        return "a loop of symbolic links" if e.errno == errno.ELOOP else f"cannot be reached ({e.strerror})"
    return f"no such {what}"


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def file_problem(path: Path, what: str, max_bytes: int | None = None) -> str | None:
    """Why `path` cannot be read as a `what` (missing, a folder, not a regular file, too large), or None.

    Only regular files are opened: a FIFO or a device would block the read, or never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{what} not found: {path}"
    except OSError as e:
        why = "a loop of symbolic links" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
        return f"{path}: {why}"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a folder, not {_a(what)}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: not a regular file (a pipe, socket or device), so not {_a(what)}"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{path}: refused: {info.st_size:,} bytes, more than {_a(what)} may hold ({max_bytes:,})"
    return None
