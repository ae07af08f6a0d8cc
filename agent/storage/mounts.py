"""The mount a path lives on (/proc/self/mountinfo): for ``diag storage`` and for the agent's
own warning at start when its state directory is on a RAM filesystem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RAM_FILESYSTEMS = ("tmpfs", "ramfs")


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on, from /proc/self/mountinfo."""

    mount_point: Path
    fstype: str
    options: tuple[str, ...]  # per-mount and superblock options together
    source: str
    device: str  # "major:minor"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_mount(path: Path, mountinfo: str) -> Mount | None:
    """The mount holding ``path`` (the longest mount point above it; the last one mounted
    there wins), from the text of /proc/self/mountinfo."""
    target = path.resolve()
    best: Mount | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        point = Path(_unescape(fields[4]))
        if not (target == point or point in target.parents):
            continue
        if best is None or len(point.parts) >= len(best.mount_point.parts):
            supers = tail[2].split(",") if len(tail) > 2 else []
            best = Mount(point, tail[0], tuple(fields[5].split(",") + supers),
                         _unescape(tail[1]), fields[2])
    return best


def ram_filesystem_warning(state_dir: Path, proc_root: Path = Path("/proc")) -> str | None:
    """A warning (with its fix) when ``state_dir`` is on a RAM filesystem, where the outbox
    does not survive a reboot or a power cut; None otherwise or when the mounts are unreadable."""
    try:
        mount = find_mount(state_dir, (proc_root / "self" / "mountinfo").read_text())
    except OSError:
        return None
    if mount is None or mount.fstype not in RAM_FILESYSTEMS:
        return None
    return (f"state directory {state_dir} is on {mount.fstype} ({mount.mount_point}), which is "
            "RAM: the outbox and what it holds do not survive a reboot or a power cut (fix: put "
            "[agent] state_dir on the card, e.g. /var/lib/lepton)")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem (OSError if it
    cannot be asked)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
