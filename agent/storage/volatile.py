"""A starting agent whose state directory cannot be written (a read-only or full filesystem)
runs on a volatile outbox instead of exiting: in ``$RUNTIME_DIRECTORY/volatile-state``
(systemd's RuntimeDirectory, a tmpfs under /run) or in a directory of its own under the
system's temporary directory. Results are then not kept through a reboot or a power cut, and
the backlog left in the real state directory waits for the next start (docs/durability.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from agent.storage.lock import LOCK_NAME
from agent.storage.mounts import free_bytes

# Below this much free space the state directory counts as full at start: the outbox's first
# commit (and its reserve file) would fail at once.
MIN_FREE_BYTES = 1 << 20
# The volatile outbox lives in RAM on most systems: it takes at most this, and at most half
# of what its filesystem has free, whatever [outbox] budget_bytes says.
VOLATILE_BUDGET_BYTES = 64 << 20
VOLATILE_NAME = "volatile-state"


# The errors of a filesystem that cannot be written (read-only, permissions, full, quota).
# Others (the path is a file, a name too long, a symlink loop) are mistakes in the config:
# the lock refuses them with its one line, as ever, rather than hiding them under a volatile
# outbox.
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})


def state_dir_unusable(state_dir: Path, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why ``state_dir`` cannot hold the outbox (naming it and the system's words for the
    error: read-only file system, permission denied, no space left), or None when it can:
    it is created if missing, its lock file opens for writing and its filesystem has at least
    ``min_free`` bytes free. None too for an error outside ``UNWRITABLE`` (the lock says
    it). Takes no lock: another agent holding it is the lock's to say."""
    lock = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {state_dir}: {exc.strerror}" if exc.errno in UNWRITABLE else None
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        return (f"cannot open {lock} for writing: {exc.strerror}" if exc.errno in UNWRITABLE
                else None)
    os.close(fd)
    try:
        free = free_bytes(state_dir)
    except OSError:
        return None  # no figure: the outbox's own open says what is wrong
    if free < min_free:
        return (f"no space left on the filesystem of {state_dir}: {free // 1024} KiB free, "
                f"under the {min_free // 1024} KiB an outbox needs to start")
    return None


def volatile_dir(state_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the volatile outbox for ``state_dir`` lives: under systemd's RuntimeDirectory
    when the service has one, else a directory named after ``state_dir``'s absolute path
    under the temporary directory (so that a second agent on the same state directory meets
    the same lock)."""
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    runtime = runtime.split(":")[0]
    if runtime:
        return Path(runtime) / VOLATILE_NAME
    digest = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"lepton-agent-volatile-{digest}"


def volatile_budget(configured: int, directory: Path) -> int:
    """The volatile outbox's budget: the configured one, capped at ``VOLATILE_BUDGET_BYTES``
    and at half of what ``directory``'s filesystem has free (RAM, on a tmpfs)."""
    return max(0, min(configured, VOLATILE_BUDGET_BYTES, free_bytes(directory) // 2))
