"""The systemd unit (verify, offline security exposure) and the sd_notify protocol against a
real unix datagram socket given to the agent as NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.service.notify import Notifier
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd

UNIT = ROOT / "systemd" / "lepton-agent.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists; the installed path is /opt/lepton/venv.
    unit = tmp_path / "lepton-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/lepton/venv/bin/lepton-agent",
                                             shutil.which("true") or "/bin/true"))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "lepton-agent.service" not in out.stderr, out.stderr


@needs_analyze
def test_unit_security_exposure_at_most_2_5() -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True)
    found = re.search(r"Overall exposure level for lepton-agent.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.5


def test_unit_keeps_devices_reachable() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=",
                 "User=lepton", "SupplementaryGroups=video dialout", "StateDirectory=",
                 "CacheDirectory=", "LogsDirectory=", "LoadCredential=mqtt-password",
                 "DeviceAllow=char-video4linux rw", "DeviceAllow=char-ttyUSB rw",
                 "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert line in text
    assert "PrivateDevices=yes" not in text  # it would hide /dev/video* and serial ports


def _listen(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def test_notifier_abstract_and_path_sockets(tmp_path: Path) -> None:
    sock, path = _listen(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("up")
    assert sock.recv(256) == b"READY=1\nSTATUS=up"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"lepton-test-{os.getpid()}"
    abstract.bind("\0" + name)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
    assert abstract.recv(64) == b"WATCHDOG=1"
    assert not Notifier({}).ready("x")  # not under systemd: a no-op
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
    sock.close()
    abstract.close()


def test_agent_speaks_sd_notify(tmp_path: Path) -> None:
    sock, path = _listen(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
    proc = subprocess.Popen(agent_cmd("run", "--offline", "--state-dir", str(tmp_path / "state"),
                                      "--model", str(DEFAULT_MODEL), "--source",
                                      "synthetic://160x120@20"),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    messages: list[bytes] = []
    deadline = time.monotonic() + 60  # a hang guard: the loop ends at the third ping
    while time.monotonic() < deadline and sum(m == b"WATCHDOG=1" for m in messages) < 3:
        with contextlib.suppress(TimeoutError):
            messages.append(sock.recv(512))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    while True:  # the process has exited: what it sent is already queued on the socket
        try:
            messages.append(sock.recv(512))
        except TimeoutError:
            break
    sock.close()
    assert proc.returncode == 0, err
    assert messages[0].startswith(b"READY=1\nSTATUS=running lepton-vehicles-tiny")
    assert messages.count(b"WATCHDOG=1") >= 3
    assert any(m.startswith(b"STOPPING=1") for m in messages)


def test_a_full_notify_socket_costs_a_ping_not_the_event_loop(tmp_path: Path) -> None:
    """A receiver that stops reading fills its queue (10 datagrams here); the next pings are
    dropped with False instead of blocking the caller, which is the agent's event loop."""
    import threading

    sock, path = _listen(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(n.watchdog() for _ in range(1000)),
                              daemon=True)
    sender.start()
    sender.join(60)  # a hang guard: a blocking send never returns while nobody reads
    assert not sender.is_alive(), "sd_notify blocked on a full socket queue"
    assert results[0] and not results[-1]
    assert sock.recv(64) == b"WATCHDOG=1"  # what fitted was delivered
    sock.close()
    n.close()
