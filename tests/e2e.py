"""Helpers for the real-process tiers: agent config, ingest processes, outbox and status reads."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.devtools import rig
from agent.devtools.mosquitto import LocalBroker
from agent.devtools.rig import write_agent_config
from agent.storage.report import OutboxUnreadable, read_report, record_seqs
from tests.conftest import DEFAULT_MODEL, ROOT, ingested_seqs

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
    return write_agent_config(tmp_path / "agent.toml", device_id=device, site="test-site",
                              state_dir=tmp_path / "state", broker_url=broker_url,
                              model=DEFAULT_MODEL, grace=grace, ack_timeout_s=2)


def write_offline_config(tmp_path: Path, source: str, *, source_extra: str = "",
                         extra: str = "") -> Path:
    """An offline agent (no broker) on the default model, one thread, a 1 s grace, no web
    console (tests run many agents at once; the console's own tests give it a port)."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 1
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "{source}"
{source_extra}
[mqtt]
broker = ""
[web]
listen = ""
{extra}""")
    return config


# Every process the rig helpers below start, killed after each test by conftest's reaper.
RUNNING: list[subprocess.Popen[str]] = []


class Reaped(rig._Process):
    """A rig process registered with conftest's reaper each time it starts."""

    def _spawn(self) -> None:
        super()._spawn()
        RUNNING.append(self.proc)


class ReapedIngest(Reaped, rig.IngestProcess):
    """The rig's ingest process, reaped by conftest."""


class Ingest(ReapedIngest):
    """``lepton-agent ingest`` as a real process, into SQLite (``db``) or ``db_url``."""

    def __init__(self, broker_url: str, db: Path, client_id: str, *, db_url: str | None = None,
                 group: str = "ingest") -> None:
        super().__init__(broker_url, db, client_id=client_id, group=group, db_url=db_url,
                         cwd=ROOT)
        self.start()

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
    return AgentProcess(config, *extra).finish(timeout)


class AgentProcess(Reaped, rig.AgentProcess):
    """``lepton-agent run --config`` as a real process (started at once): its status socket,
    its log lines (``log``), its summary (``finish``, ``stop``)."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], Any] | None = None) -> None:
        super().__init__(config, *extra, cwd=ROOT, env=env, preexec_fn=preexec_fn)
        self.start()

    @property
    def lines(self) -> list[str]:
        return self._err.lines
