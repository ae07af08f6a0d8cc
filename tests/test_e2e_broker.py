"""Real-broker tier: the agent and ingest as real processes through a private mosquitto.

Exactly once is checked against the agent's own outbox: every committed (stream, seq)
arrives in the ingest store once, with seqs contiguous from 1.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from agent.devtools.demo import wait_for_file
from agent.devtools.mosquitto import LocalBroker, free_port
from agent.schemas import load_schema
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd, ingested_seqs

pytestmark = pytest.mark.broker


def outbox_seqs(state: Path) -> list[int]:
    with sqlite3.connect(state / "outbox.db") as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM records ORDER BY seq")]


def outbox_last_seq(state: Path) -> int:
    with sqlite3.connect(state / "outbox.db") as conn:
        row = conn.execute("SELECT last_seq FROM streams WHERE stream = 'cam0'").fetchone()
        return int(row[0]) if row else 0


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


class Ingest:
    def __init__(self, broker_url: str, db: Path, client_id: str) -> None:
        self.db = db
        ready = db.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            agent_cmd("ingest", "--broker", broker_url, "--db", f"sqlite:///{db}",
                      "--client-id", client_id, "--log-level", "warning", "--ready-file", str(ready)),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_file(ready, self.proc, timeout=30)

    def wait_for(self, device: str, count: int, timeout: float = 30) -> list[int]:
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
        out, err = self.proc.communicate(timeout=15)
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


def test_300_frames_arrive_exactly_once(tmp_path: Path, broker: LocalBroker) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-300")
    config = write_config(tmp_path, broker.url, "dev-300")
    summary = run_agent(config, "--source", "synthetic://320x240@30", "--pace", "fast",
                        "--max-frames", "300")
    assert summary["frames_processed"] == 300 and summary["frames_dropped"] == 0
    assert summary["results_published"] == 300 and summary["backlog"] == 0
    seqs = ingest.wait_for("dev-300", 300)
    stats = ingest.stop()
    assert seqs == list(range(1, 301))
    assert stats["rejected"] == 0
    validator = Draft202012Validator(load_schema("result.v1"))
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        for (payload,) in conn.execute("SELECT payload FROM records"):
            validator.validate(json.loads(payload))


def test_broker_restart_mid_run_still_exactly_once(tmp_path: Path, broker: LocalBroker) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-restart")
    config = write_config(tmp_path, broker.url, "dev-restart")
    agent = subprocess.Popen(
        agent_cmd("run", "--config", str(config), "--json", "--source", "synthetic://320x240@40",
                  "--pace", "realtime", "--max-frames", "240"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    broker.stop()  # SIGTERM: mosquitto saves its persistent store on the way down
    time.sleep(1.5)
    broker.start()
    out, err = agent.communicate(timeout=90)
    assert agent.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    committed = summary["results_committed"]
    assert committed == summary["frames_processed"] > 100
    seqs = ingest.wait_for("dev-restart", committed)
    ingest.stop()
    assert summary["backlog"] == 0, summary
    assert seqs == list(range(1, committed + 1))


def test_agent_sigkill_restart_loses_nothing_reuses_no_seq(tmp_path: Path,
                                                           broker: LocalBroker) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-kill")
    config = write_config(tmp_path, broker.url, "dev-kill")
    state = tmp_path / "state"
    for _ in range(3):
        agent = subprocess.Popen(
            agent_cmd("run", "--config", str(config), "--source", "synthetic://320x240@60",
                      "--pace", "realtime"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.5)
        assert retained_status(broker, "test-site", "dev-kill")["state"] == "online"
        agent.kill()
        agent.wait(10)
    time.sleep(0.5)
    status = retained_status(broker, "test-site", "dev-kill")  # the last will
    assert status["state"] == "offline" and status["reason"] == "connection lost"
    assert status["_retained"]
    killed_total = outbox_last_seq(state)
    assert killed_total > 30
    summary = run_agent(config, "--source", "synthetic://320x240@60", "--pace", "fast",
                        "--max-frames", "20")
    total = outbox_last_seq(state)
    assert total == killed_total + 20
    assert summary["backlog"] == 0
    seqs = ingest.wait_for("dev-kill", total)
    ingest.stop()
    assert seqs == list(range(1, total + 1))
    assert outbox_seqs(state)[-1] == total


def test_unreachable_broker_caches_then_catches_up(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    config = write_config(tmp_path, url, "dev-offline", grace=1.0)
    started = time.monotonic()
    summary = run_agent(config, "--source", "synthetic://320x240@30", "--pace", "fast",
                        "--max-frames", "50")
    assert time.monotonic() - started < 30
    assert summary["results_committed"] == 50 and summary["backlog"] == 50
    assert summary["results_published"] == 0 and "cannot connect" in summary["broker_error"]
    with LocalBroker(tmp_path / "broker", port=port) as broker:
        ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-offline")
        summary = run_agent(config, "--source", "synthetic://320x240@30", "--pace", "fast",
                            "--max-frames", "10")
        assert summary["backlog"] == 0 and summary["results_published"] == 60
        seqs = ingest.wait_for("dev-offline", 60)
        ingest.stop()
    assert seqs == list(range(1, 61))


def test_sigterm_is_a_graceful_stop(tmp_path: Path, broker: LocalBroker) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-term")
    config = write_config(tmp_path, broker.url, "dev-term")
    agent = subprocess.Popen(
        agent_cmd("run", "--config", str(config), "--json", "--source", "synthetic://320x240@30"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert time.monotonic() - sent < 8.0 + 2.0  # within the grace period (plus process exit)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["backlog"] == 0 and summary["results_published"] == summary["results_committed"]
    seqs = ingest.wait_for("dev-term", summary["results_committed"])
    ingest.stop()
    assert seqs == list(range(1, summary["results_committed"] + 1))
    with sqlite3.connect(tmp_path / "state" / "outbox.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    status = retained_status(broker, "test-site", "dev-term")
    assert status["state"] == "offline" and status["reason"] == "stopped"
    Draft202012Validator(load_schema("status.v1")).validate(
        {k: v for k, v in status.items() if not k.startswith("_")})
