"""Helpers for the real-process tiers: agent config, ingest processes, outbox and status reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.devtools.demo import wait_for_file
from agent.devtools.mosquitto import LocalBroker
from agent.storage.report import OutboxUnreadable, read_report, record_seqs
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd, ingested_seqs

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 60.0,
             interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail naming
    ``what`` after ``timeout`` seconds (a hang guard, generous on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def outbox_seqs(state: Path) -> list[int]:
    return record_seqs(state)


def outbox_last_seq(state: Path) -> int:
    """The last seq the outbox gave cam0; 0 before the agent made its database."""
    try:
        report = read_report(state)
    except OutboxUnreadable:  # created but its tables not yet
        return 0
    return report.last_seq.get("cam0", 0) if report else 0


def write_config(tmp_path: Path, broker_url: str, device: str, grace: float = 8.0) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
device_id = "{device}"
site = "test-site"
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = {grace}

[model]
path = "{DEFAULT_MODEL}"
num_threads = 1

[mqtt]
broker = "{broker_url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
telemetry_interval_s = 1

[outbox]
ack_timeout_s = 2
""")
    return path


RUNNING: list[subprocess.Popen[str]] = []  # killed after each test by conftest's reaper


class Ingest:
    """``lepton-agent ingest`` as a real process, into SQLite (``db``) or ``db_url``."""

    def __init__(self, broker_url: str, db: Path, client_id: str, *, db_url: str | None = None,
                 group: str = "ingest") -> None:
        self.db = db
        ready = db.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            agent_cmd("ingest", "--broker", broker_url, "--db", db_url or f"sqlite:///{db}",
                      "--client-id", client_id, "--group", group, "--log-level", "warning",
                      "--ready-file", str(ready)),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        RUNNING.append(self.proc)
        wait_for_file(ready, self.proc, timeout=60)

    def wait_for(self, device: str, count: int, timeout: float = 60) -> list[int]:
        """The device's ingested seqs once there are ``count`` (what there is at ``timeout``)."""
        deadline = time.monotonic() + timeout
        seqs: list[int] = []
        while time.monotonic() < deadline:
            seqs = ingested_seqs(self.db, device)
            if len(seqs) >= count:
                break
            time.sleep(0.1)
        return seqs

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


def retained_status(broker: LocalBroker, site: str, device: str) -> dict:
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict = {}
    done = threading.Event()

    def on_message(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        got.update(json.loads(message.payload))
        got["_retained"] = message.retain
        done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"lepton/v1/{site}/{device}/status", qos=1)
    client.loop_start()
    done.wait(5)
    client.loop_stop()
    client.disconnect()
    return got


def run_agent(config: Path, *extra: str, timeout: float = 120) -> dict:
    out = subprocess.run(agent_cmd("run", "--config", str(config), "--json", *extra), cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


class AgentProcess:
    """``lepton-agent run --config`` as a real process: its status socket, its log lines."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], Any] | None = None) -> None:
        from agent.config import load_config
        from agent.service.status import socket_path

        cfg = load_config(config)
        self.socket = socket_path(cfg.agent.state_dir, cfg.agent.status_socket)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            agent_cmd("run", "--config", str(config), "--json", *extra), cwd=ROOT,
            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        RUNNING.append(self.proc)
        # Drained in a thread so a chatty agent never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def status(self) -> dict[str, Any] | None:
        """The running agent's snapshot; fails at once when the process has exited."""
        from agent.service.status import query

        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with status {self.proc.returncode}:\n{self.log}")
        return query(self.socket)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 60.0) -> dict[str, Any]:
        """The first snapshot for which ``predicate`` holds."""
        def check() -> dict[str, Any] | None:
            snap = self.status()
            return snap if snap is not None and predicate(snap) else None

        try:
            return wait_for(check, what, timeout, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status {self.status()}\nagent log:\n{self.log}") \
                from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the run to end (``timeout`` is a hang guard); its summary (exit status 0)."""
        self.proc.wait(timeout)
        self._reader.join(10)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        assert self.proc.returncode == 0, self.log
        return dict(json.loads(out.strip().splitlines()[-1]))

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGTERM, then the run summary it prints (the exit status must be 0)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)
