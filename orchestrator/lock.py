"""One live `launch` per sweep directory: an exclusive flock on DIR/launch.lock.

The kernel drops a flock when the process holding it ends, however it ends (Ctrl-C, SIGKILL, a
crash), so a dead launch never leaves a stale lock behind. The file's text (the holder's pid and
host) only tells a second launch whom it is waiting for; the file itself is never deleted, since
deleting a lock file races with a process that has just opened it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "launch.lock"
EXIT_LOCKED = 3
"""Exit status of a launch refused because another live launch holds the sweep directory."""


class SweepLocked(Exception):
    """Another live process holds the sweep directory's lock."""

    def __init__(self, directory: Path, pid: str, host: str) -> None:
        self.directory, self.pid, self.host = directory, pid, host
        super().__init__(
            f"{directory} is held by a live launch (pid {pid} on host {host}); wait for it to end or stop it "
            f"(Ctrl-C in its terminal, or `kill {pid}` on {host}), then launch again: finished runs are kept")


@contextmanager
def sweep_lock(directory: str | Path) -> Iterator[Path]:
    """Hold DIR/launch.lock for the duration of the block, or raise SweepLocked at once (no waiting)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SweepLocked(directory, *_holder(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now; the lock itself goes with the descriptor
    finally:
        os.close(fd)


def _holder(path: Path) -> tuple[str, str]:
    """The pid and host the holder wrote; 'unknown' while it is between taking the lock and writing them."""
    try:
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except OSError:
        fields = {}
    return fields.get("pid", "unknown"), fields.get("host", "unknown")
