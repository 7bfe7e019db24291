"""Run and experiment directory locks: one writer per directory (issue 12, item 2).

Every command that writes a run or experiment directory holds an exclusive ``flock`` on ``DIR/.lock``. The
kernel drops a ``flock`` when the process that holds it ends, however it ends (exit, exception, SIGKILL,
a machine reboot), so a lock is never left behind and nothing has to be cleaned by hand. A second writer
fails at once with ``RunDirLockedError`` (exit code 9) naming the process that holds the directory.

Two ways to hold a lock:

- ``locked(path)``: a context manager, released when the block ends (the protocol's experiment directories);
- ``hold_run_dir(path)``: the process keeps the lock of the run it is writing until it starts another run or
  ends (the training and search loops, whose run ends when the process does). Holding it again is a no-op,
  so an in-process ``--resume`` of the run just written works; ``release_run_dir`` gives it back early.

Limits: ``flock`` is advisory (a program that ignores ``.lock`` is not stopped) and on network file systems
it is only as good as the server's lock support (NFSv4 and Lustre with ``flock`` mounts honour it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RunDirError, RunDirLockedError

LOCK_FILE = ".lock"


class DirLock:
    """An acquired lock: the open lock file whose ``flock`` keeps other writers out."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None


def acquire(path: str | Path, create: bool = True) -> DirLock:
    """Lock the directory ``path`` (creating it first when ``create``) or raise RunDirLockedError at once."""
    path = Path(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot create or write ({e.strerror or e})", str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirLockedError(path, holder) from None
        raise RunDirError(f"cannot lock ({e.strerror or e})", str(path)) from None
    # Who holds it, for the second writer's message; the content plays no part in the locking itself.
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}\n".encode(), 0)
    except OSError:
        pass
    return DirLock(path, fd)


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


@contextmanager
def locked(path: str | Path, create: bool = True) -> Iterator[DirLock]:
    """Hold the directory's lock for the ``with`` block."""
    lock = acquire(path, create)
    try:
        yield lock
    finally:
        lock.release()


_held: dict[str, DirLock] = {}


def _key(path: str | Path) -> str:
    return os.path.realpath(path)


def hold_run_dir(path: str | Path, create: bool = True) -> None:
    """Take the lock of the run this process is about to write and keep it until the process ends.

    A process writes one run at a time, so taking a new run's lock gives back the previous one (a Python
    session that runs many trainings one after another keeps one lock file open, not one per run).
    Without ``create`` a missing directory is left alone (the caller reports it).
    """
    key = _key(path)
    if key in _held and _held[key].held:
        return
    if not create and not Path(path).is_dir():
        return
    lock = acquire(path, create)
    for other in list(_held):
        _held.pop(other).release()
    _held[key] = lock


def release_all() -> None:
    """Give back every lock taken by ``hold_run_dir`` (the Python API, when its run returns or fails)."""
    for key in list(_held):
        _held.pop(key).release()


def release_run_dir(path: str | Path) -> None:
    """Give back a lock taken by ``hold_run_dir`` (no-op if this process does not hold it)."""
    lock = _held.pop(_key(path), None)
    if lock is not None:
        lock.release()


def abandon_run_dir(path: str | Path) -> None:
    """For a start that failed before writing anything: give back the lock, delete ``.lock`` and remove the
    directory if nothing else is in it (a folder that holds anything else is left as it is)."""
    path = Path(path)
    try:
        # Unlinked while still held: a writer that opened the old file is refused, a later one gets a new file.
        (path / LOCK_FILE).unlink(missing_ok=True)
    except OSError:
        pass
    release_run_dir(path)
    try:
        path.rmdir()
    except OSError:
        pass
