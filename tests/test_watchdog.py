"""systemd's watchdog against a real agent process under a notify socket: fed while the
pipeline moves, starved once a source read hangs (the process still alive and answering),
and still fed while the storage fails, since a restart would lose the results held in memory
and would not fix a full disk."""

from __future__ import annotations

import resource
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.e2e import AgentProcess, wait_for, write_offline_config
from tests.mjpeg_camera import MjpegCamera

WATCHDOG_S = 3.0  # the agent pings every third of it
STALL_S = 10.0  # the agent's stall threshold: max(10 s, half the watchdog)
# RLIMIT_FSIZE: no outbox file (512-byte pages, compressed payloads since schema 3) grows past
# this, so neither a commit nor the eviction that would make room for it can write its WAL
# frames; at 192 KiB the outbox now evicts within the limit and every commit succeeds.
FILE_LIMIT = 32 * 1024
RESULT_SLOTS = 256  # agent.service.app: results held in memory before inference must wait


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET (abstract namespace),
    drained by a thread as systemd does (a full queue, 10 datagrams, would block the agent's
    sends); ``messages`` are (monotonic time, datagram)."""

    def __init__(self) -> None:
        name = f"lepton-watchdog-{uuid.uuid4().hex[:12]}"
        self.address = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, bytes]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="notify", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(512)))
            except TimeoutError:
                continue
            except OSError:
                return

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if m == b"WATCHDOG=1" and t >= since]

    def last_ping(self, default: float) -> float:
        return max(self.pings(), default=default)

    def env(self, watchdog_s: float) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def wait_ready(self, agent: AgentProcess) -> None:
        """READY=1 from the agent; fails at once, with its log, if it exits first."""
        wait_for(lambda: agent.proc.poll() is not None
                 or any(m.startswith(b"READY=1") for _, m in list(self.messages)),
                 "READY=1", timeout=120)
        assert agent.proc.poll() is None, f"agent exited:\n{agent.log}"
        assert all(m in (b"WATCHDOG=1",) or m.startswith(b"READY=1")
                   for _, m in list(self.messages)), self.messages

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def test_watchdog_is_starved_when_a_source_read_hangs(tmp_path: Path) -> None:
    """The camera stops sending mid-stream with the connection open: the capture thread sits
    in one read, the frame queue is empty and inference idle, so only the capture heartbeat
    can tell. The pings must stop once the read has been blocked for the stall time, while
    the process stays alive and its event loop answers the status socket."""
    camera = MjpegCamera().start()
    config = write_offline_config(tmp_path, camera.url)
    notify = NotifyListener()
    agent = AgentProcess(config, env=notify.env(WATCHDOG_S))
    try:
        notify.wait_ready(agent)
        agent.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 10,
                          "frames from the camera", timeout=120)
        # Healthy: pings arrive.
        healthy_since = time.monotonic()
        wait_for(lambda: len(notify.pings(healthy_since)) >= 2, "pings while healthy")

        camera.stalled.set()
        stalled_at = time.monotonic()
        # Stuck: the pings stop for longer than systemd waits (quiet_for), within STALL_S plus
        # scheduling slack. Pings still arriving past the deadline mean the watchdog is fed
        # regardless of the hung read.
        quiet_for = 3 * WATCHDOG_S
        wait_for(lambda: time.monotonic() - notify.last_ping(stalled_at) > quiet_for,
                 f"the pings to stop for {quiet_for:.0f}s after the source hung (still fed "
                 f"{len(notify.pings(stalled_at))} times)", timeout=STALL_S + 60, interval=0.2)

        after = agent.status()  # alive, its loop running: the silence is the health check's
        assert after is not None and after["state"] == "running", agent.log
        assert after["stages"]["capture"]["alive"] and after["stages"]["inference"]["alive"]
        assert after["queues"]["frames"]["depth"] == 0  # nothing waits: the old check saw none
        assert f"pipeline stuck for over {STALL_S:.0f}s (cam0: capture: read of {camera.url} has not " \
               "returned for" in agent.log, agent.log
    finally:
        agent.kill()
        notify.close()
        camera.stop()


def test_watchdog_stays_fed_while_every_commit_fails(tmp_path: Path) -> None:
    """The outbox's file cannot grow (a real RLIMIT_FSIZE on the agent), so every commit fails;
    results are held in memory until the result slots run out, then inference waits on them
    and frames wait in the queue. That is a storage problem, not a hang: the outbox writer
    keeps retrying, so the pings keep coming for several stall periods, and the status
    reports the health as degraded with the storage errors counted."""
    config = write_offline_config(tmp_path, "synthetic://96x64@30",
                                  source_extra='pace = "fast"\ndrop_policy = "block"',
                                  extra="[outbox]\nbudget_bytes = 262144")
    notify = NotifyListener()
    agent = AgentProcess(config, env=notify.env(WATCHDOG_S), preexec_fn=_limit_file_size)
    try:
        notify.wait_ready(agent)
        held = agent.wait_status(lambda s: s["outbox"]["results_held"] >= RESULT_SLOTS
                                 and s["queues"]["frames"]["depth"] > 0
                                 and s["outbox"]["storage_error"] is not None,
                                 "every result slot held while commits fail", timeout=120)
        assert "cannot commit records" in held["outbox"]["storage_error"]
        assert held["outbox"]["storage_errors"] > 0
        assert held["health"]["status"] == "degraded", held["health"]

        # For two stall periods inference makes no progress, and the pings go on: a gap of a
        # whole stall period means the watchdog was starved (systemd would have restarted).
        frames_held = held["stages"]["inference"]["frames"]
        assert_fed_for(notify, agent, 2 * STALL_S)
        after = agent.status()
        assert after is not None and after["state"] == "running"
        assert after["stages"]["inference"]["frames"] == frames_held  # still held back
        assert after["outbox"]["storage_errors"] > held["outbox"]["storage_errors"]  # retrying
        assert "cannot commit records" in after["outbox"]["last_storage_error"]
        assert after["health"] == {"status": "degraded", "problems": []}
        assert "not feeding the watchdog" not in agent.log
    finally:
        agent.kill()
        notify.close()


def assert_fed_for(notify: NotifyListener, agent: AgentProcess, seconds: float,
                   between: Callable[[], object] = lambda: None) -> int:
    """Watch the pings for ``seconds`` (calling ``between`` as it goes): none may be missing
    for a whole stall period, which means the watchdog was starved. Returns the pings seen."""
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        between()
        gap = now - notify.last_ping(start)
        assert gap < STALL_S, (f"no ping for {gap:.0f}s: the watchdog was starved; "
                               f"status {agent.status()}\n{agent.log}")
        time.sleep(0.2)
    return len(notify.pings(start))
