"""Ingest SIGKILLed mid-batch, three times, while a real agent's records stream in through a
real mosquitto: after restarts on the same persistent session, the store holds every seq of
the device's outbox exactly once, with the device's own payload.

The agent runs with ``--delivery broker``: it forgets a record once the broker has it, so
the broker's redelivery to ingest is the only way back for what ingest had not committed.
That is the guarantee under test (PUBACK only after commit): acknowledging before the
commit loses the killed batch, and this test fails: checked by making ingest PUBACK each
message on arrival instead of after the commit (red 3 runs out of 3).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.devtools.mosquitto import LocalBroker
from agent.storage.report import record_payloads
from tests.conftest import ingested_seqs
from tests.e2e import AgentProcess, Ingest, outbox_last_seq, wait_for, write_config

DEVICE = "dev-kill"
FRAMES = 1500


def _payloads(db: Path, sql: str) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        return {int(seq): p if isinstance(p, str) else bytes(p).decode()
                for seq, p in conn.execute(sql)}


@pytest.mark.broker
def test_ingest_killed_mid_batch_stores_every_outbox_record_exactly_once(
        tmp_path: Path, broker: LocalBroker) -> None:
    db = tmp_path / "ingest.db"
    # A plain (not shared) subscription: the broker queues for the persistent session while
    # ingest is dead, and redelivers what was sent but never PUBACKed.
    ingest = Ingest(broker.url, db, "ingest-kill", group="")
    # Paced (15 s of frames) so the three kills and restarts fall inside the stream.
    agent = AgentProcess(write_config(tmp_path, broker.url, DEVICE), "--source",
                         "synthetic://160x120@100", "--pace", "realtime", "--max-frames",
                         str(FRAMES), "--delivery", "broker")
    kills = []
    for _ in range(3):
        # Kill right after a commit while records keep arriving: the next batch is in flight.
        seen = len(ingested_seqs(db, DEVICE))
        wait_for(lambda seen=seen: len(ingested_seqs(db, DEVICE)) >= seen + 100,
                 "ingest to store 100 more records", timeout=120)
        ingest.proc.kill()
        ingest.proc.wait()
        kills.append(len(ingested_seqs(db, DEVICE)))
        ingest = Ingest(broker.url, db, "ingest-kill", group="")
    summary = agent.finish(timeout=300)
    last = outbox_last_seq(tmp_path / "state")
    assert summary["results_committed"] == last and summary["backlog"] == 0
    assert kills[-1] < last, f"the kills came after everything was stored: {kills}"
    try:
        wait_for(lambda: len(ingested_seqs(db, DEVICE)) >= last, f"all {last} records stored",
                 timeout=120)
    except AssertionError:
        missing = sorted(set(range(1, last + 1)) - set(ingested_seqs(db, DEVICE)))
        raise AssertionError(f"{len(missing)} records never stored (kills after {kills} "
                             f"stored): seqs {missing[:20]}...") from None
    stats = ingest.stop()
    assert ingested_seqs(db, DEVICE) == list(range(1, last + 1))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] == 0
    stored = _payloads(db, f"SELECT seq, payload FROM records WHERE device = '{DEVICE}'")
    sent = {seq: p.decode() for seq, p in record_payloads(tmp_path / "state", "cam0").items()}
    assert stored == sent
    assert stats["rejected"] == 0
