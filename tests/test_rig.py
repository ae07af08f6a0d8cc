"""The real-process rig (agent/devtools/rig.py): broker, ingest and agent as real processes,
each killed and restarted, every record ingested exactly once, nothing left running."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.devtools.mosquitto import find_mosquitto
from agent.devtools.rig import Rig
from tests.conftest import ingested_seqs

pytestmark = pytest.mark.broker


def _stored(db: Path, device: str) -> list[tuple[str, int]]:
    """Every (stream, seq) row ingest stored, duplicates included."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT stream, seq FROM records WHERE device = ? "
                                 "ORDER BY stream, seq", (device,)))


needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")


@pytest.fixture
def rig(tmp_path: Path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with Rig(tmp_path) as r:
        yield r
    assert not list(r.running())


def test_twenty_frames_ingested_exactly_once(rig: Rig) -> None:
    ingest = rig.ingest(client_id="rig-ingest")
    config = rig.config(device_id="dev-rig")
    agent = rig.agent(config, "--source", "synthetic://160x120@40", "--pace", "fast",
                      "--max-frames", "20")
    summary = agent.finish()
    assert summary["frames_processed"] == 20 and summary["results_published"] == 20
    assert summary["backlog"] == 0
    seqs = ingested_seqs(ingest.db, "dev-rig")
    stats = ingest.stop()
    assert seqs == list(range(1, 21))
    assert _stored(ingest.db, "dev-rig") == [("cam0", n) for n in range(1, 21)]
    assert stats["stored"] == 20 and stats["rejected"] == 0


def test_kill_and_restart_each_part(rig: Rig) -> None:
    """SIGKILL the broker, ingest and the agent mid-stream, restart each; a last short run
    delivers the rest: every committed seq stored once, no process left behind."""
    ingest = rig.ingest(client_id="rig-ingest-kill")
    config = rig.config(device_id="dev-kill", delivery="ingested")
    agent = rig.agent(config, "--source", "synthetic://160x120@40")
    agent.wait_status(lambda s: s["outbox"]["ingested"] >= 10, "ten results acknowledged")

    rig.broker.kill()
    rig.broker.start()
    ingest.kill()
    assert not ingest.running
    ingest.start()
    agent.kill()
    assert not agent.running
    agent.restart()
    agent.wait_status(lambda s: s["broker"]["connected"], "the restarted agent to connect")
    agent.stop()

    last = rig.agent(config, "--source", "synthetic://160x120@40", "--max-frames", "1")
    summary = last.finish()
    assert summary["backlog"] == 0, summary
    ingest.stop()
    stored = _stored(ingest.db, "dev-kill")
    seqs = [seq for _, seq in stored]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10
    assert len(set(stored)) == len(stored)


@needs_mosquitto
def test_leaving_the_rig_reaps_every_process(tmp_path: Path) -> None:
    """Whatever still runs when the ``with`` ends (here: an error) is killed, broker included."""
    with pytest.raises(RuntimeError), Rig(tmp_path) as rig:
        ingest = rig.ingest(client_id="rig-reap")
        agent = rig.agent(rig.config(device_id="dev-reap"), "--source", "synthetic://160x120@40")
        agent.wait_status(lambda s: s["broker"]["connected"], "the agent to connect")
        broker = rig.broker.process
        raise RuntimeError("a test failing half-way")
    assert not ingest.running and not agent.running
    assert broker is not None and broker.poll() is not None
    assert agent.returncode == -9 and ingest.returncode == -9
