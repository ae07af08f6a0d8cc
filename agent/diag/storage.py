"""``diag storage``: the card the state directory lives on, and how worn it is.

Reports the filesystem under ``[agent] state_dir`` (type and mount options from
``/proc/self/mountinfo``), its free space against ``[outbox] budget_bytes``, the bytes written
to its block device since boot (``/sys/dev/block/MAJ:MIN/stat``, sectors written x 512) and,
on eMMC, the card's own wear estimate (``device/life_time``, ``device/pre_eol_info``).

Warnings: no ``noatime`` (every read of a file writes its inode), ``sync`` (every write waits
for the card, and small writes are not merged), a RAM filesystem (tmpfs: the outbox does not
survive a reboot), a budget larger than the free space (the disk fills before the budget
does), eMMC past 70% of its rated life. Failures: read-only, nearly full, eMMC past its life or
at urgent pre-EOL. Each says what the agent does meanwhile (see docs/durability.md).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.diag import CheckResult, Status
from agent.storage.mounts import RAM_FILESYSTEMS, find_mount
from agent.storage.volatile import MIN_FREE_BYTES

NO_ATIME_NEEDED = (*RAM_FILESYSTEMS, "proc", "sysfs", "devtmpfs", "overlay")
FULL_FAIL_BYTES = 50 * 2**20


def sectors_written(device: str, sys_root: Path = Path("/sys")) -> int | None:
    """Bytes written to the block device ``major:minor`` since boot, or None (not a block
    device: tmpfs, overlay's 0:N)."""
    try:
        fields = (sys_root / "dev" / "block" / device / "stat").read_text().split()
        return int(fields[6]) * 512  # field 7: sectors written, always 512-byte sectors
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Wear:
    """eMMC's own estimate (JEDEC): life used in 10% steps (1 = 0-10% ... 11 = past its life)
    of its two cell types, and the pre-end-of-life state (1 normal, 2 warning, 3 urgent)."""

    life_a: int
    life_b: int
    pre_eol: int | None

    @property
    def used_pct(self) -> int:
        """The upper end of the worse type's step, in percent."""
        return min(max(self.life_a, self.life_b) * 10, 110)


def emmc_wear(device: str, sys_root: Path = Path("/sys")) -> Wear | None:
    """The card's wear estimate when the block device is eMMC (the partition's disk)."""
    try:
        node = (sys_root / "dev" / "block" / device).resolve()
        if (node / "partition").exists():
            node = node.parent
        life = (node / "device" / "life_time").read_text().split()
        a, b = (int(v, 16) for v in life[:2])
    except (OSError, ValueError):
        return None
    try:
        eol: int | None = int((node / "device" / "pre_eol_info").read_text().strip(), 16)
    except (OSError, ValueError):
        eol = None
    return Wear(a, b, eol)


def _uptime_s(proc_root: Path) -> float | None:
    try:
        return float((proc_root / "uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def check_storage(cfg: AgentConfig, proc_root: Path = Path("/proc"),
                  sys_root: Path = Path("/sys")) -> CheckResult:
    """The state directory's filesystem, its free space against the budget and its wear."""
    from agent.storage.outbox import disk_footprint
    from agent.storage.report import outbox_path

    state = cfg.agent.state_dir
    where = state if state.exists() else next((p for p in state.parents if p.exists()), Path("/"))
    budget = int(cfg.outbox.budget_bytes)
    details: dict[str, Any] = {"state_dir": str(state), "budget_bytes": budget}
    try:
        mount = find_mount(where, (proc_root / "self" / "mountinfo").read_text())
    except OSError:
        mount = None
    if mount is not None:
        details |= {"mount_point": str(mount.mount_point), "fstype": mount.fstype,
                    "options": list(mount.options), "source": mount.source,
                    "device": mount.device}
    usage = shutil.disk_usage(where)
    held = disk_footprint(outbox_path(state)) if state.exists() else 0
    details |= {"free_bytes": usage.free, "total_bytes": usage.total, "outbox_bytes": held}
    written = sectors_written(mount.device, sys_root) if mount else None
    uptime = _uptime_s(proc_root)
    if written is not None:
        details["written_since_boot_bytes"] = written
        if uptime:
            details["written_per_day_bytes"] = round(written / uptime * 86400)
    wear = emmc_wear(mount.device, sys_root) if mount else None
    if wear is not None:
        details |= {"emmc_life_time": [wear.life_a, wear.life_b], "emmc_pre_eol": wear.pre_eol,
                    "emmc_life_used_pct": wear.used_pct}

    fs = f"{mount.fstype} at {mount.mount_point}" if mount else "filesystem unknown"
    summary = [fs, f"{usage.free / 2**30:.1f} GiB free for a {budget / 2**20:.0f} MiB budget"]
    if written is not None:
        summary.append(f"{written / 2**30:.2f} GiB written since boot"
                       + (f" ({written / uptime * 86400 / 2**30:.2f} GiB/day)" if uptime else ""))
    if wear is not None:
        summary.append(f"eMMC life used <= {wear.used_pct}%")
    text = ", ".join(summary)
    options = set(mount.options) if mount else set()
    keeps = ("the agent keeps running: results wait in memory (inference slows to match) and "
             "the commit is retried")
    found: list[tuple[Status, str, str]] = []
    if "ro" in options or not os.access(where, os.W_OK):
        # A running agent's commits fail and it goes on as on a full disk; a starting one
        # runs on a volatile outbox (agent.storage.volatile), with health degraded.
        found.append(("fail", f"{where} is read-only (a running agent keeps going: results "
                      "wait in memory and the commit is retried; an agent starting now runs on "
                      "a volatile outbox in RAM, which a reboot or a power cut loses, until "
                      "this is fixed and it is restarted)",
                      "remount read-write (mount -o remount,rw), check dmesg for I/O errors; a "
                      "card that went read-only by itself is failing: replace it"))
    if usage.free < FULL_FAIL_BYTES:
        found.append(("fail", f"the filesystem is nearly full ({keeps}; an agent starting "
                      f"with under {MIN_FREE_BYTES // 2**20} MiB free runs on a volatile outbox "
                      "in RAM, which a reboot or a power cut loses)",
                      "free space on it, or move [agent] state_dir"))
    if wear is not None and (wear.life_a >= 11 or wear.life_b >= 11 or wear.pre_eol == 3):
        found.append(("fail", "the eMMC is past its rated life", "replace the card/module now"))
    if mount is not None and mount.fstype in RAM_FILESYSTEMS:
        found.append(("warn", f"{mount.fstype} is RAM: the outbox will not survive a reboot or a "
                      "power cut", "put [agent] state_dir on the card (e.g. /var/lib/lepton)"))
    if "sync" in options:
        found.append(("warn", "mounted with 'sync': every write waits for the card and small "
                      "writes are not merged (more wear)", "remove 'sync' from the mount "
                      "options in /etc/fstab; the outbox fsyncs what it needs"))
    if mount is not None and "noatime" not in options and mount.fstype not in NO_ATIME_NEEDED:
        found.append(("warn", "mounted without 'noatime': reading a file writes its access time",
                      "add 'noatime' to the mount options in /etc/fstab, then "
                      f"mount -o remount,noatime {mount.mount_point}"))
    if usage.free + held < budget:
        found.append(("warn", f"the budget ({budget / 2**20:.0f} MiB) is more than the free "
                      "space: the disk fills before the budget does",
                      "lower [outbox] budget_bytes or free space"))
    if wear is not None and not any(s == "fail" for s, _, _ in found) and (
            wear.used_pct >= 80 or wear.pre_eol == 2):
        found.append(("warn", f"the eMMC has used {wear.used_pct - 10}-{wear.used_pct}% of its "
                      "rated life", "plan to replace the card; see docs/durability.md for the "
                      "agent's daily writes"))
    if not found:
        return CheckResult("storage", "pass", text, details=details)
    worst: Status = "fail" if any(s == "fail" for s, _, _ in found) else "warn"
    details["findings"] = [reason for _, reason, _ in found]
    first = next(f for f in found if f[0] == worst)
    others = [r for s, r, _ in found if r != first[1]]
    return CheckResult("storage", worst, f"{text}; {first[1]}"
                       + (f"; also: {'; '.join(others)}" if others else ""), first[2], details)
