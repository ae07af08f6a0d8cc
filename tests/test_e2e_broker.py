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

from agent.devtools.mosquitto import LocalBroker, free_port
from agent.schemas import load_schema
from tests.conftest import ROOT, agent_cmd
from tests.e2e import Ingest, outbox_last_seq, outbox_seqs, retained_status, run_agent, write_config

pytestmark = pytest.mark.broker


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
