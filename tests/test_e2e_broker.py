"""Real-broker tier: the agent and ingest as real processes through a private mosquitto.

Exactly once is checked against the agent's own outbox: every committed (stream, seq)
arrives in the ingest store once, with seqs contiguous from 1.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from functools import partial
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from agent.devtools.mosquitto import LocalBroker, free_port
from agent.schemas import load_schema
from agent.storage.report import integrity_check
from tests.conftest import ROOT, agent_cmd
from tests.e2e import (
    RUNNING,
    AgentProcess,
    Ingest,
    outbox_last_seq,
    outbox_seqs,
    retained_status,
    run_agent,
    wait_for,
    write_config,
)

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
    agent = AgentProcess(config, "--source", "synthetic://320x240@40", "--pace", "realtime",
                         "--max-frames", "240")
    assert len(ingest.wait_for("dev-restart", 20, timeout=60)) >= 20, agent.log  # mid-run
    broker.stop()  # SIGTERM: mosquitto saves its persistent store on the way down
    agent.wait_status(lambda s: not s["broker"]["connected"] and s["outbox"]["backlog"] >= 10,
                      "the agent to lose the broker and keep committing")
    broker.start()
    summary = agent.finish()
    committed = summary["results_committed"]
    assert committed == summary["frames_processed"] > 100
    seqs = ingest.wait_for("dev-restart", committed)
    ingest.stop()
    assert summary["backlog"] == 0, summary
    assert seqs == list(range(1, committed + 1))


def _retained_state(broker: LocalBroker, device: str, state: str) -> dict | None:
    """The device's retained status when it says ``state``."""
    status = retained_status(broker, "test-site", device)
    return status if status.get("state") == state else None


def _committing_and_online(broker: LocalBroker, state_dir: Path, last_seq: int, pid: int) -> bool:
    """The outbox reached ``last_seq`` and the retained status is process ``pid``'s birth."""
    if outbox_last_seq(state_dir) < last_seq:
        return False
    status = _retained_state(broker, "dev-kill", "online")
    return status is not None and status.get("pid") == pid


def test_agent_sigkill_restart_loses_nothing_reuses_no_seq(tmp_path: Path,
                                                           broker: LocalBroker) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-e2e-kill")
    config = write_config(tmp_path, broker.url, "dev-kill")
    state = tmp_path / "state"
    committed_before = 0
    for _ in range(3):
        agent = subprocess.Popen(
            agent_cmd("run", "--config", str(config), "--source", "synthetic://320x240@60",
                      "--pace", "realtime"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        RUNNING.append(agent)  # type: ignore[arg-type]
        wait_for(partial(_committing_and_online, broker, state, committed_before + 10, agent.pid),
                 "this agent's retained 'online' and 10 new records", interval=0.2)
        agent.kill()
        agent.wait(10)
        committed_before = outbox_last_seq(state)
    status = wait_for(partial(_retained_state, broker, "dev-kill", "offline"), "the last will",
                      interval=0.2)
    assert status["reason"] == "connection lost"
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
    summary = run_agent(config, "--source", "synthetic://320x240@30", "--pace", "fast",
                        "--max-frames", "50")  # run_agent's timeout guards against a hang
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
    agent = AgentProcess(config, "--source", "synthetic://320x240@30")
    agent.wait_status(lambda s: s["outbox"]["ingested"] >= 10, "results acknowledged by ingest")
    summary = agent.stop()  # exit status 0 with a summary; its timeout is only a hang guard
    assert summary["backlog"] == 0 and summary["results_published"] == summary["results_committed"]
    seqs = ingest.wait_for("dev-term", summary["results_committed"])
    ingest.stop()
    assert seqs == list(range(1, summary["results_committed"] + 1))
    assert integrity_check(tmp_path / "state") == "ok"
    status = retained_status(broker, "test-site", "dev-term")
    assert status["state"] == "offline" and status["reason"] == "stopped"
    Draft202012Validator(load_schema("status.v1")).validate(
        {k: v for k, v in status.items() if not k.startswith("_")})
