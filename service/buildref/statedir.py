"""The state directory: private to the service's user whatever the umask (it holds the index, the
spool and mirrors of repositories that may be private), and held by one service at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator

import structlog

from buildref.errors import StateDirInUse

LOCK_FILE = "buildref.lock"


def private_dir(path: str) -> None:
    """Make ``path`` (and missing parents) a directory of mode 0700; an existing one with a wider
    mode is narrowed, and the log says so (``os.makedirs`` alone obeys the umask, and leaves an
    existing directory as it is)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode == 0o700:
        return
    log = structlog.get_logger("buildref.state")
    try:
        os.chmod(path, 0o700)
    except PermissionError as e:  # another user's directory: say so, loudly, and go on
        log.error("directory open to other users and cannot be narrowed", path=path, mode=oct(mode),
                  error=e.strerror)
        return
    if mode & 0o077:
        log.warning("directory narrowed", path=path, mode=oct(mode), now="0o700")


@contextlib.contextmanager
def locked(state_dir: str) -> Iterator[None]:
    """Hold the state directory for the life of the block: two services on one directory would
    drain one spool and write one index twice over. The lock file holds the holder's pid, to name
    it; the kernel releases the lock when the process ends, however it ends."""
    path = os.path.join(state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirInUse(f"another buildref serve (pid {holder}) is using the state directory "
                                f"{state_dir}: stop it, or give this one its own state_dir") from None
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # the file stays: removing it would race the next service taking the lock
