"""One agent per state directory, and a stop that ends the process whatever the storage does."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.service.status import query
from agent.storage.lock import StateDirLock
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd
from tests.e2e import RUNNING


def start_agent(state: Path, *extra: str, env: dict[str, str] | None = None,
                config: str = "") -> subprocess.Popen[str]:
    cfg = state.parent / f"agent-{len(list(state.parent.glob('agent-*.toml')))}.toml"
    cfg.write_text(f'[model]\npath = "{DEFAULT_MODEL}"\n' + config)
    proc = subprocess.Popen(agent_cmd("run", "--config", str(cfg), "--offline", "--source",
                                      "synthetic://160x120@20", "--state-dir", str(state), *extra),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    RUNNING.append(proc)  # conftest's reaper kills it if the test fails half-way
    return proc


def wait_for(predicate, what: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"agent exited before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def committed_seq(db: Path) -> int:
    # Raw SQL on purpose, here and below: this test plays a foreign writer on the agent's
    # outbox.db and tells its rows from the agent's by topic, which the read-only report
    # (agent.storage.report) rightly does not offer.
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records "
                                    "WHERE stream = 'cam0'").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_lock_names_the_directory_and_the_holder(tmp_path: Path) -> None:
    with StateDirLock(tmp_path / "state") as held:
        assert held.held
        with pytest.raises(StorageError) as err:
            StateDirLock(tmp_path / "state").acquire()
        assert f"pid {os.getpid()}" in str(err.value)
        assert str(tmp_path / "state") in str(err.value) and "--state-dir" in str(err.value)
    StateDirLock(tmp_path / "state").acquire().release()  # free again once released


def test_second_agent_on_one_state_dir_is_refused_whatever_its_socket(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_agent(state, env={"RUNTIME_DIRECTORY": str(tmp_path / "run-a")})
    try:
        wait_for(lambda: (tmp_path / "run-a" / "status.sock").exists(), "its status socket", first)
        # Another status socket (a shell beside a systemd unit): only the lock can refuse it.
        second = start_agent(state, env={"RUNTIME_DIRECTORY": str(tmp_path / "run-b")})
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert "another agent" in err and f"pid {first.pid}" in err and str(state) in err
        assert "Traceback" not in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0
    again = start_agent(state, "--max-frames", "3", "--pace", "fast")  # the lock went with it
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err


def test_stop_ends_the_process_while_every_commit_fails(tmp_path: Path) -> None:
    """Another writer took the seqs the agent assigns next, so every commit fails (UNIQUE);
    SIGTERM must still end the agent, reporting the results it could not keep."""
    state = tmp_path / "state"
    db = state / "outbox.db"
    proc = start_agent(state, "--json", config="[agent]\nshutdown_grace_s = 1.0\n")
    try:
        wait_for(lambda: committed_seq(db) > 5, "a few committed results", proc)
        with sqlite3.connect(db, timeout=30) as conn:
            last = committed_seq(db)
            conn.executemany("INSERT OR IGNORE INTO records (stream, seq, topic, payload, qos, "
                             "created_ns) VALUES ('cam0', ?, 'foreign', x'00', 1, 0)",
                             [(last + i,) for i in range(1, 100_000)])
        wait_for(lambda: "UNIQUE" in str((query(state / "agent.sock") or {}).get("last_error")),
                 "a failed commit", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)  # hung for over 10 minutes before the fix
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["results_uncommitted"] > 0
    assert f"{summary['results_uncommitted']} result(s)" in err and "not committed" in err
    assert "another process has written to this outbox" in err and "free space" not in err
    assert "Traceback" not in err
    with sqlite3.connect(db) as conn:  # what was committed before the failures is all there
        ours = conn.execute("SELECT COUNT(*) FROM records WHERE stream = 'cam0' "
                            "AND topic != 'foreign'").fetchone()[0]
    assert ours == summary["results_committed"] >= last



def test_a_stop_that_hangs_past_the_bound_ends_the_process(tmp_path: Path) -> None:
    """The last resort: when the graceful stop itself hangs (a stage or a disk that never
    returns), the process still ends once the grace and the bound are over."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import asyncio, logging, time\n"
        "from agent.config.schema import AgentConfig\n"
        "from agent.service import app\n"
        "logging.basicConfig()\n"
        "app.STOP_BOUND_S = 0.5\n"
        "a = app.AgentApp(AgentConfig.model_validate({'agent': {'shutdown_grace_s': 0}}))\n"
        "a._held = lambda: (7, 2)\n"
        "a._on_signal(asyncio.Event())\n"
        "time.sleep(600)  # the stop never finishes\n")
    done = subprocess.run([*agent_cmd()[:1], str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert "did not stop within" in done.stderr and "7 result(s)" in done.stderr


def test_the_lock_is_taken_on_a_full_disk(tmp_path: Path) -> None:
    """A full disk at start: the pid cannot be written, the lock still holds."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        with (mount / "filler").open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        with StateDirLock(mount) as held:
            assert held.held
            with pytest.raises(StorageError, match="another agent"):
                StateDirLock(mount).acquire()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
