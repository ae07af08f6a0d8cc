"""Bad input from issue 20: a starting agent whose state directory is on a read-only or a full
filesystem runs on a volatile outbox instead of exiting.

The end-to-end tests run a real agent process on a real tmpfs (remounted read-only, or
filled), with a real mosquitto and ingest: it says so in one ERROR line, its status says
degraded with the reason, its results reach ingest with seqs above any the real outbox gave
out, a second agent on the same state directory is still refused, SIGTERM stops it cleanly and
the read-only directory is left untouched. Mounting needs root; those tests are skipped,
saying so, where mounting is not permitted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StorageError
from agent.ota import keys
from agent.storage.lock import StateDirLock
from agent.storage.outbox import Outbox, PendingRecord
from agent.storage.report import read_state
from tests.conftest import DEFAULT_MODEL, ingested_seqs, run_cli
from tests.e2e import AgentProcess, Ingest, wait_for
from tests.test_full_disk import _fill
from tests.tmpfs import mounted_tmpfs

DEVICE = "dev-volatile"


def _append(box: Outbox, n: int, stream: str = "cam0") -> list[int]:
    return [r.seq for r in box.append(
        [PendingRecord(stream, "t", lambda seq: b'{"a": 1}') for _ in range(n)])]


# --- the probe, the volatile directory, the locks, the seq floor (no root needed) ---

def test_probe_passes_a_writable_directory_and_names_a_full_one(tmp_path: Path) -> None:
    from agent.storage.volatile import state_dir_unusable

    state = tmp_path / "new" / "state"
    assert state_dir_unusable(state) is None
    assert (state / "agent.lock").exists()  # made, as the lock will be
    # More free space asked for than any filesystem has: the words of a full disk.
    reason = state_dir_unusable(state, min_free=2**62)
    assert reason is not None and str(state) in reason and "no space left" in reason


def test_probe_leaves_mistakes_in_the_config_to_the_lock(tmp_path: Path) -> None:
    """A state_dir that is a file, or whose lock file is a directory, is no filesystem that
    cannot be written: no volatile outbox; the lock refuses it with its one line, as ever."""
    from agent.storage.volatile import state_dir_unusable

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for state in (blocker, blocker / "state"):
        assert state_dir_unusable(state) is None
        with pytest.raises(StorageError, match="cannot create the state directory's lock file"):
            StateDirLock(state).acquire()
    (tmp_path / "state" / "agent.lock").mkdir(parents=True)
    assert state_dir_unusable(tmp_path / "state") is None


def test_volatile_dir_under_the_runtime_directory_or_named_after_the_state_dir(
        tmp_path: Path) -> None:
    from agent.storage.volatile import volatile_budget, volatile_dir

    state = tmp_path / "state"
    assert volatile_dir(state, {"RUNTIME_DIRECTORY": "/run/lepton-agent:/run/x"}) == \
        Path("/run/lepton-agent/volatile-state")
    digest = hashlib.sha256(str(state.absolute()).encode()).hexdigest()[:12]
    assert volatile_dir(state, {}) == \
        Path(tempfile.gettempdir()) / f"lepton-agent-volatile-{digest}"
    assert volatile_dir(tmp_path / "other", {}) != volatile_dir(state, {})
    st = os.statvfs(tmp_path)
    half_free = st.f_bavail * st.f_frsize // 2
    assert volatile_budget(1 << 40, tmp_path) in range(min(64 << 20, half_free) - (1 << 20),
                                                        min(64 << 20, half_free) + 1)
    assert volatile_budget(300_000, tmp_path) == min(300_000, half_free)


def test_a_read_only_lock_still_refuses_a_second_agent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert not StateDirLock(state, read_only=True).acquire().held  # no lock file: none held
    with StateDirLock(state), pytest.raises(StorageError, match="another agent"):
        StateDirLock(state, read_only=True).acquire()
    with StateDirLock(state, read_only=True) as ro:
        assert ro.held
        with pytest.raises(StorageError, match="another agent"):
            StateDirLock(state).acquire()
    assert StateDirLock(state).acquire().held


def test_volatile_outbox_seqs_start_above_the_disk_outboxs(tmp_path: Path) -> None:
    """The volatile outbox's first seq is above the real one's last for the same stream, also
    when the real one's seqs came from a floor (after a quarantine), and a volatile file kept
    from an earlier run continues above both."""
    disk = Outbox(tmp_path / "disk" / "outbox.db")
    last_disk = _append(disk, 5)[-1]
    disk.close()
    volatile = Outbox(tmp_path / "volatile" / "outbox.db", fresh_seq_floor=True)
    first = _append(volatile, 3)
    assert first[0] > last_disk and first == [first[0], first[0] + 1, first[0] + 2]
    volatile.close()
    # The disk outbox quarantined since and took a floor of its own from the clock, then
    # gave out more seqs than the volatile file: a reopened volatile file still goes above.
    quarantined = Outbox(tmp_path / "q" / "outbox.db", fresh_seq_floor=True)
    disk_seqs = _append(quarantined, 10)
    quarantined.close()
    again = Outbox(tmp_path / "volatile" / "outbox.db", fresh_seq_floor=True)
    assert _append(again, 1)[0] > max(disk_seqs[-1], first[-1])
    assert _append(again, 1, stream="cam1")[0] > disk_seqs[-1]
    assert again.integrity_ok()
    again.close()
    # Without the keyword a reopened file continues its own count, as ever.
    plain = Outbox(tmp_path / "disk" / "outbox.db")
    assert _append(plain, 1) == [last_disk + 1]
    plain.close()


def test_the_volatile_outbox_adopts_the_real_ones_state_keeping_its_own(tmp_path: Path) -> None:
    from agent.storage.report import read_all_state

    assert read_all_state(tmp_path / "none") == {}
    real = Outbox(tmp_path / "real" / "outbox.db")
    real.append([PendingRecord("cam0", "t", lambda seq: b"{}")],
                state={"file/cam0": "120", "count/cam0": "a"})
    real.close()
    adopted = read_all_state(tmp_path / "real")
    assert adopted == {"file/cam0": "120", "count/cam0": "a"}
    volatile = Outbox(tmp_path / "volatile" / "outbox.db", fresh_seq_floor=True)
    volatile.append([PendingRecord("cam0", "t", lambda seq: b"{}")], state={"file/cam0": "150"})
    # Its own (a later volatile run's) position wins; what it lacks comes from the real one.
    assert volatile.adopt_state(adopted) == 1
    assert volatile.read_state("file/cam0") == "150" and volatile.read_state("count/cam0") == "a"
    volatile.close()


# --- a real agent on a real read-only or full filesystem (root) ---

@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards (needs root; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "small", "2m") as mount:
        yield mount


def _config(tmp_path: Path, state: Path, broker_url: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "test-site"
state_dir = "{state}"
shutdown_grace_s = 10

[model]
path = "{DEFAULT_MODEL}"
num_threads = 1

[mqtt]
broker = "{broker_url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5

[outbox]
ack_timeout_s = 2
""")
    return config


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(state: Path, where: Path, log: str) -> str:
    lines = [line for line in log.splitlines() if f"state directory {state} is not writable ("
             in line]
    assert len(lines) == 1, log
    line = lines[0]
    assert "ERROR" in line, line
    assert (f"): running on a volatile outbox in {where}; results are not kept through a reboot "
            f"or a power cut, and the backlog in {state} waits for the next start (fix: make "
            f"{state} writable or free space on it, then restart the agent)") in line, line
    return line


def _runs_volatile(agent: AgentProcess, ingest: Ingest, status: Any, state: Path,
                   where: Path, above: int, words: str) -> dict[str, Any]:
    """The agent runs, degraded with the reason, and its results reach ingest above ``above``."""
    snap = wait_for(lambda: (s := status()) and s["outbox"]["ingested"] >= 3 and s,
                    "results delivered from the volatile outbox", timeout=120)
    assert snap["state"] == "running"
    assert snap["health"]["status"] == "degraded" and snap["health"]["problems"] == []
    reason = snap["outbox"]["volatile"]
    assert reason.startswith(f"state directory {state} is not writable (")
    assert words in reason and f"volatile outbox in {where}" in reason
    assert snap["outbox"]["budget_bytes"] <= 64 << 20
    _error_line(state, where, agent.log)
    seqs = ingest.wait_for(DEVICE, 3)
    assert len(seqs) >= 3 and min(seqs) > above
    return snap


def _second_agent_refused(config: Path, env: dict[str, str] | None) -> None:
    second = AgentProcess(config, "--source", "synthetic://160x120@15", env=env)
    code = second.wait(120)
    assert code != 0 and "another agent" in second.log, second.log
    assert "Traceback" not in second.log


@pytest.mark.broker
def test_agent_on_a_read_only_state_dir_runs_on_a_volatile_outbox(
        small_tmpfs: Path, tmp_path: Path, broker: Any) -> None:
    state = small_tmpfs / "state"
    disk = Outbox(state / "outbox.db")  # a backlog from an earlier run, on the card
    last_disk = _append(disk, 4)[-1]
    disk.append([PendingRecord("cam0", "t", lambda seq: b"{}")], state={"test/kept": "7"})
    last_disk += 1
    disk.close()
    release = keys.generate(tmp_path / "release")  # the device's trusted OTA key, on the card
    (state / "ota" / "trusted").mkdir(parents=True)
    shutil.copy(release.public, state / "ota" / "trusted" / "release.pub")
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    before = _tree(state)
    runtime = tmp_path / "run"  # systemd's RuntimeDirectory
    runtime.mkdir()
    env = {"RUNTIME_DIRECTORY": str(runtime)}
    config = _config(tmp_path, state, broker.url)
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "volatile-ingest")
    agent = AgentProcess(config, "--source", "synthetic://160x120@15", env=env)
    try:
        _runs_volatile(agent, ingest, agent.status, state, runtime / "volatile-state",
                       last_disk, "Read-only file system")
        text = run_cli("status", "--config", str(config), env={**os.environ, **env})
        assert text.returncode == 0, text.stderr
        assert f"storage:   DEGRADED: state directory {state} is not writable" in text.stdout
        _second_agent_refused(config, env)
        assert "no trusted release key" not in agent.log  # the card's key is still trusted
        summary = agent.stop()  # SIGTERM: exit status 0
    finally:
        if agent.running:
            agent.send(9)
        ingest.stop()
    assert summary["error"] is None and summary["results_committed"] > 0
    assert _tree(state) == before  # the read-only directory untouched
    # What the real outbox committed with its records carries on in the volatile one.
    assert read_state(runtime / "volatile-state", "test/kept") == "7"


@pytest.mark.broker
def test_agent_on_a_full_state_dir_runs_on_a_volatile_outbox(
        small_tmpfs: Path, tmp_path: Path, broker: Any) -> None:
    from agent.storage.volatile import volatile_dir

    state = small_tmpfs / "state"
    disk = Outbox(state / "outbox.db")
    last_disk = _append(disk, 2)[-1]
    disk.close()
    _fill(small_tmpfs / "filler")
    where = volatile_dir(state, {})  # no RuntimeDirectory: under the temporary directory
    config = _config(tmp_path, state, broker.url)
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "volatile-full-ingest")
    agent = AgentProcess(config, "--source", "synthetic://160x120@15",
                         env={"RUNTIME_DIRECTORY": ""})
    try:
        from agent.service.status import query

        _runs_volatile(agent, ingest, lambda: agent.running and query(where / "agent.sock"),
                       state, where, last_disk, "no space left")
        # `status` finds it without being told where the volatile outbox is.
        text = run_cli("status", "--config", str(config),
                       env={**os.environ, "RUNTIME_DIRECTORY": ""})
        assert text.returncode == 0 and "DEGRADED" in text.stdout, text.stdout + text.stderr
        _second_agent_refused(config, {"RUNTIME_DIRECTORY": ""})
        assert "no trusted release key" in agent.log  # none on this card
        summary = agent.stop()
    finally:
        if agent.running:
            agent.send(9)
        ingest.stop()
        shutil.rmtree(where, ignore_errors=True)
    assert summary["error"] is None and summary["results_committed"] > 0
    assert max(ingested_seqs(tmp_path / "ingest.db", DEVICE)) > last_disk


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
def test_stopping_with_a_volatile_backlog_says_it_is_lost_at_a_reboot(
        small_tmpfs: Path, tmp_path: Path) -> None:
    """No broker: what the volatile outbox holds at stop is named, with what loses it."""
    state = small_tmpfs / "state"
    state.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    runtime = tmp_path / "run"
    runtime.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{state}"\n'
                      f'[model]\npath = "{DEFAULT_MODEL}"\nnum_threads = 1\n')
    agent = AgentProcess(config, "--source", "synthetic://160x120@15", "--web-listen", "",
                         env={"RUNTIME_DIRECTORY": str(runtime)})
    try:
        agent.wait_status(lambda s: s["outbox"]["backlog"] >= 3, "results in the volatile outbox")
        summary = agent.stop()
    finally:
        if agent.running:
            agent.send(9)
    assert summary["backlog"] >= 3
    assert (f"{summary['backlog']} record(s) not delivered are left in the volatile outbox "
            f"{runtime / 'volatile-state'}: a reboot or a power cut loses them") in agent.log
    assert list(state.iterdir()) == []


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
@pytest.mark.broker
def test_a_file_source_resumes_on_the_volatile_outbox_where_the_card_left_it(
        tmp_path: Path, broker: Any) -> None:
    """The real outbox's committed position (read read-only from the read-only card) carries
    on: the file is not started again from frame 0, whose frames would get new seqs."""
    from agent.devtools.rig import write_agent_config
    from agent.service.pipelines import REPLAY_FRAMES
    from agent.storage.report import read_all_state

    clip = tmp_path / "road.avi"
    out = run_cli("synth-clip", str(clip), "--frames", "240")
    assert out.returncode == 0, out.stderr
    card = tmp_path / "card"
    card.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(card)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "volatile-resume-ingest")
    try:
        state = card / "state"
        config = write_agent_config(tmp_path / "agent.toml", device_id=DEVICE, site="test-site",
                                    state_dir=state, broker_url=broker.url, model=DEFAULT_MODEL,
                                    delivery="ingested")
        config.write_text(config.read_text() + '\n[[lines]]\nname = "mid"\n'
                          "points = [[0.5, 0.0], [0.5, 1.0]]\n\n[analytics]\nbucket_s = 3600\n")
        first = AgentProcess(config, "--source", str(clip), "--pace", "realtime")
        first.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 60,
                          "a quarter of the clip processed", timeout=120)
        first.stop()
        positions = {k: v for k, v in read_all_state(state).items() if k.startswith("position/")}
        assert len(positions) == 1, positions
        position = int(next(iter(positions.values())))
        assert position >= 59
        subprocess.run(["mount", "-o", "remount,ro", str(card)], check=True)
        runtime = tmp_path / "run"
        runtime.mkdir()
        second = AgentProcess(config, "--source", str(clip), "--pace", "fast",
                              env={"RUNTIME_DIRECTORY": str(runtime)})
        summary = second.finish(timeout=180)
        assert f"state directory {state} is not writable" in second.log
        assert f"resuming {clip} after frame {position}" in second.log, second.log
        assert 0 < summary["frames_processed"] <= 240 - (position + 1) + REPLAY_FRAMES, summary
    finally:
        ingest.stop()
        subprocess.run(["umount", "-l", str(card)], check=False)
