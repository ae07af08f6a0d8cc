"""One agent per state directory: an exclusive ``flock`` on ``<state_dir>/agent.lock``.

Two agents on one outbox assign the same seqs and fail each other's commits, whatever status
socket each uses, so the lock is on the directory itself. The kernel drops the lock when the
process ends (even by SIGKILL), so a stale lock file is harmless; the pid written into it only
names the holder in the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from agent.errors import StorageError

LOCK_NAME = "agent.lock"


def lock_holder(path: Path) -> int | None:
    """The pid written into a lock file, or None when unreadable or not written yet."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class StateDirLock:
    """Holds the state directory for this process until ``release`` (or the process ends).

    ``read_only``: for a state directory that cannot be written (the agent then runs on a
    volatile outbox elsewhere): the lock file is opened for reading only, which ``flock``
    allows, so a second agent is still refused; none is created when missing (then no agent
    can hold it either) and no pid is written."""

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self.read_only = read_only
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise StorageError naming the directory and the pid holding it."""
        if self.read_only:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return self  # no lock file to hold: nobody holds this directory
            return self._lock(fd)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the state directory's lock file: {exc.strerror}",
                               path=str(self.path),
                               fix="pass --state-dir with a writable directory") from exc
        return self._lock(fd)

    def _lock(self, fd: int) -> StateDirLock:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            pid = lock_holder(self.path)
            holder = f"pid {pid}" if pid else "another process"
            raise StorageError(
                f"another agent ({holder}) is running on state directory {self.state_dir}; "
                "two agents on one outbox would assign the same seqs",
                path=str(self.state_dir),
                fix="stop it first (systemctl stop lepton-agent, or kill "
                    f"{pid or 'it'}), or give this one another --state-dir") from exc
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock the state directory: {exc.strerror}",
                               path=str(self.path),
                               fix="use a local filesystem that supports flock for "
                                   "--state-dir") from exc
        if not self.read_only:
            with contextlib.suppress(OSError):  # only names us in an error; a full disk is no reason
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let another agent take the directory (the file stays; its lock is what counts)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not self.read_only:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
