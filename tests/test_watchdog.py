"""systemd's watchdog against a real agent process: fed while the pipeline moves, starved
once it is stuck, while the process itself is still alive and answering."""

from __future__ import annotations

import resource
import socket
import time
import uuid
from pathlib import Path

from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess

WATCHDOG_S = 3.0  # the agent pings every third of it
STALL_S = 10.0  # the agent's stall threshold: max(10 s, half the watchdog)
FILE_LIMIT = 192 * 1024  # RLIMIT_FSIZE: the outbox database cannot grow past this


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def _notify_socket() -> tuple[socket.socket, str]:
    name = f"lepton-watchdog-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    return sock, "@" + name


def _next_message(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(512)
    except TimeoutError:
        return None


def test_watchdog_is_starved_when_inference_is_stuck(tmp_path: Path) -> None:
    """The outbox's file cannot grow (a real RLIMIT_FSIZE on the agent), so every commit fails;
    results are held in memory until the result slots run out, inference then blocks on them
    and frames wait in the queue: a stuck pipeline. The pings must stop, and only because of
    the health check: the process stays alive and its event loop answers the status socket."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 1
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "synthetic://96x64@30"
pace = "fast"
drop_policy = "block"
[mqtt]
broker = ""
[outbox]
budget_bytes = 262144
""")
    sock, address = _notify_socket()
    agent = AgentProcess(config, env={"NOTIFY_SOCKET": address,
                                      "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))},
                         preexec_fn=_limit_file_size)
    try:
        ready = _next_message(sock, 120)
        assert ready is not None and ready.startswith(b"READY=1"), (ready, agent.log)

        # Healthy: pings arrive, and nothing is stuck for at least STALL_S after start.
        for _ in range(2):
            assert _next_message(sock, 60) == b"WATCHDOG=1", agent.log

        stuck = agent.wait_status(lambda s: s["outbox"]["storage_error"] is not None,
                                  "commits to fail", timeout=120)
        assert "cannot commit records" in stuck["outbox"]["storage_error"]

        # Stuck: within STALL_S (plus scheduling slack) the pings stop for good. Pings still
        # arriving past the deadline mean the watchdog is fed regardless of the pipeline.
        quiet_for = 3 * WATCHDOG_S
        deadline = time.monotonic() + STALL_S + 60
        pings_after_stall = 0
        while (message := _next_message(sock, quiet_for)) is not None:
            assert message == b"WATCHDOG=1", message
            pings_after_stall += 1
            assert time.monotonic() < deadline, (
                f"still fed {pings_after_stall} times after the pipeline got stuck; "
                f"last status {agent.status()}\n{agent.log}")

        after = agent.status()  # alive, its loop running: the silence is the health check's
        assert after is not None and after["state"] == "running", agent.log
        assert after["stages"]["inference"]["alive"] and after["stages"]["capture"]["alive"]
        assert after["queues"]["frames"]["depth"] > 0  # frames wait for a blocked inference
        assert f"pipeline stuck for over {STALL_S:.0f}s: not feeding the watchdog" in agent.log
    finally:
        agent.kill()
        sock.close()
