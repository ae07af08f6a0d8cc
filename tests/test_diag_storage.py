"""``diag storage``: the state directory's filesystem, free space against the budget, bytes
written since boot and eMMC wear, on hand-made /proc and /sys trees and on real mounts."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.diag.storage import check_storage, emmc_wear, find_mount, sectors_written
from agent.errors import StorageError
from agent.storage.outbox import Outbox, PendingRecord
from tests.conftest import run_cli

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 179:2 / / rw,noatime - ext4 /dev/mmcblk0p2 rw
40 27 179:1 / /boot rw,relatime - vfat /dev/mmcblk0p1 rw
41 27 179:3 / /var/lib/lepton\\040data rw,relatime,sync - ext4 /dev/mmcblk0p3 rw
42 27 0:50 / /run/lepton rw,nosuid - tmpfs tmpfs rw,size=1024k
"""


def _sys_tree(root: Path, life: str = "0x02 0x01", eol: str = "0x01",
              sectors: int = 2_000_000) -> Path:
    """/sys with mmcblk0 (eMMC) and its partitions as the kernel lays them out."""
    disk = root / "devices" / "mmc" / "block" / "mmcblk0"
    (disk / "device").mkdir(parents=True)
    (disk / "device" / "life_time").write_text(life + "\n")
    (disk / "device" / "pre_eol_info").write_text(eol + "\n")
    (root / "dev" / "block").mkdir(parents=True)
    for n in (1, 2, 3):
        part = disk / f"mmcblk0p{n}"
        part.mkdir()
        (part / "partition").write_text(f"{n}\n")
        (part / "stat").write_text(f"100 0 800 10 50 0 {sectors * n} 30 0 40 40 0 0 0 0\n")
        (root / "dev" / "block" / f"179:{n}").symlink_to(part)
    return root


def _proc(root: Path, mountinfo: str = MOUNTINFO, uptime: float = 43200.0) -> Path:
    (root / "self").mkdir(parents=True)
    (root / "self" / "mountinfo").write_text(mountinfo)
    (root / "uptime").write_text(f"{uptime} 1000.0\n")
    return root


def test_find_mount_takes_the_longest_mount_point_and_unescapes() -> None:
    m = find_mount(Path("/var/lib/lepton data/state"), MOUNTINFO)
    assert m is not None and m.mount_point == Path("/var/lib/lepton data")
    assert m.fstype == "ext4" and "sync" in m.options and m.device == "179:3"
    root = find_mount(Path("/var/lib/other"), MOUNTINFO)
    assert root is not None and root.mount_point == Path("/") and "noatime" in root.options
    assert find_mount(Path("/run/lepton/x"), MOUNTINFO).fstype == "tmpfs"  # type: ignore[union-attr]


def test_written_bytes_and_emmc_wear_from_sys(tmp_path: Path) -> None:
    sys_root = _sys_tree(tmp_path, life="0x09 0x0A", eol="0x02")
    assert sectors_written("179:2", sys_root) == 4_000_000 * 512  # field 7 x 512
    assert sectors_written("0:50", sys_root) is None  # tmpfs: no block device
    wear = emmc_wear("179:2", sys_root)  # a partition: the disk's device/ has the wear
    assert wear is not None and (wear.life_a, wear.life_b, wear.pre_eol) == (9, 10, 2)
    assert wear.used_pct == 100


def _check(tmp_path: Path, state: Path, mountinfo: str, **sys_kw: str) -> tuple:
    cfg = load_config(overrides={"agent": {"state_dir": str(state)},
                                 "outbox": {"budget_bytes": 64 * 2**20}})
    result = check_storage(cfg, proc_root=_proc(tmp_path / "proc", mountinfo),
                           sys_root=_sys_tree(tmp_path / "sys", **sys_kw))
    return result, cfg


def _mountinfo_for(path: Path, options: str, fstype: str = "ext4", dev: str = "179:2") -> str:
    return MOUNTINFO + f"50 27 {dev} / {path} {options} - {fstype} /dev/mmcblk0p2 rw\n"


def test_a_healthy_card_passes_with_its_figures(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result, _ = _check(tmp_path, state, _mountinfo_for(tmp_path, "rw,noatime"))
    assert result.status == "pass", result
    d = result.details
    assert d["fstype"] == "ext4" and d["mount_point"] == str(tmp_path)
    assert d["written_since_boot_bytes"] == 2 * 2_000_000 * 512
    assert d["written_per_day_bytes"] == 2 * 2_000_000 * 512 * 2  # 12 h of uptime
    assert d["emmc_life_used_pct"] == 20 and d["budget_bytes"] == 64 * 2**20
    assert "GiB written since boot" in result.reason and "eMMC life used <= 20%" in result.reason


@pytest.mark.parametrize(("options", "fstype", "sys_kw", "status", "reason", "fix"), [
    ("rw,relatime", "ext4", {}, "warn", "without 'noatime'", "remount,noatime"),
    ("rw,noatime,sync", "ext4", {}, "warn", "mounted with 'sync'", "remove 'sync'"),
    ("rw", "tmpfs", {}, "warn", "will not survive a reboot", "state_dir on the card"),
    ("rw,noatime", "ext4", {"life": "0x08 0x01"}, "warn", "used 70-80% of its rated life",
     "plan to replace the card"),
    ("rw,noatime", "ext4", {"life": "0x0B 0x01"}, "fail", "past its rated life", "replace"),
    ("rw,noatime", "ext4", {"eol": "0x03"}, "fail", "past its rated life", "replace"),
])
def test_findings_and_their_fixes(tmp_path: Path, options: str, fstype: str,
                                  sys_kw: dict[str, str], status: str, reason: str,
                                  fix: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result, _ = _check(tmp_path, state, _mountinfo_for(tmp_path, options, fstype), **sys_kw)
    assert result.status == status, result
    assert reason in result.reason and fix in result.fix, result


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def test_real_tmpfs_read_only(small_tmpfs: Path) -> None:
    state = small_tmpfs / "state"
    box = Outbox(state / "outbox.db", budget_bytes=1024 * 1024)
    box.append([PendingRecord("cam0", "t", lambda seq: b'{"a": 1}')])
    cfg = load_config(overrides={"agent": {"state_dir": str(state)}})
    result = check_storage(cfg)  # the real /proc and /sys
    assert result.status == "fail" and "nearly full" in result.reason  # under 50 MiB free
    assert "tmpfs is RAM" in result.reason
    assert "budget (256 MiB) is more than the free space" in result.reason
    assert result.details["fstype"] == "tmpfs" and "written_since_boot_bytes" not in result.details
    box.close()  # a filesystem with files open for writing cannot be remounted read-only
    _remount(small_tmpfs, "ro")
    try:
        result = check_storage(cfg)
        assert result.status == "fail" and "read-only" in result.reason and "ro" in \
            result.details["options"]
        assert "a running agent keeps going" in result.reason and "remount" in result.fix
        assert "an agent starting now runs on a volatile outbox" in result.reason
        # What the outbox says on a read-only state directory: its file, and a fix.
        with pytest.raises(StorageError, match=f"storage {state / 'outbox.db'}: cannot open"):
            Outbox(state / "outbox.db", budget_bytes=1024 * 1024)
    finally:
        _remount(small_tmpfs, "rw")
    again = Outbox(state / "outbox.db", budget_bytes=1024 * 1024)
    stored = again.append([PendingRecord("cam0", "t", lambda seq: b'{"a": 3}')])
    assert [r.seq for r in stored] == [2] and again.integrity_ok()


def test_diag_storage_cli(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndevice_id = "d"\nstate_dir = "{state}"\n')
    out = run_cli("diag", "storage", "--json", "--config", str(config))
    report = json.loads(out.stdout)
    check = next(c for c in report["checks"] if c["name"] == "storage")
    assert check["details"]["state_dir"] == str(state) and check["details"]["fstype"]
    assert out.returncode == {"pass": 0, "warn": 1, "fail": 2}[check["status"]]
    text = run_cli("diag", "storage", "--config", str(config))
    assert "storage:" in text.stdout and "Traceback" not in text.stderr


def test_an_agent_on_tmpfs_warns_at_start_and_runs_on(tmp_path: Path) -> None:
    """Bad input from issue 20: the state directory on tmpfs. The agent says at start that the
    outbox will not survive a reboot, with the fix, and runs (commits, status) as usual."""
    from agent.service.status import query
    from tests.e2e import wait_for
    from tests.test_service import start_agent

    ram = tmp_path / "ram"
    ram.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(ram)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        proc = start_agent(ram)
        try:
            snap = wait_for(lambda: (s := query(ram / "state" / "agent.sock")) and
                            s["outbox"]["backlog"] > 0 and s, "results committed on the tmpfs")
            assert snap["state"] == "running"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert (f"state directory {ram / 'state'} is on tmpfs ({ram}), which is RAM: the outbox "
                "and what it holds do not survive a reboot or a power cut (fix: put [agent] "
                "state_dir on the card") in err, err
    finally:
        subprocess.run(["umount", "-l", str(ram)], check=False)
