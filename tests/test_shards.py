"""Shards: blobs split into chunks on the device, reassembled and verified at ingest."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from agent.backend.shards import parse_shard
from agent.backend.store import SqliteStore
from agent.core.contract.shard import MANIFEST, OutgoingPart, shard_properties
from agent.errors import RecordRejected, StorageError
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, PendingRecord
from agent.storage.report import read_report

TOPIC = "lepton/v1/site-1/dev-a/shards/"


def _blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _messages(box: BlobStore, limit: int = 10_000) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    parts = box.pending(limit)
    return [(TOPIC + p.blob, shard_properties(p), p.data) for p in parts]


def test_blob_is_content_addressed_chunked_and_manifest_goes_first(tmp_path: Path) -> None:
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    data = _blob(5000)
    blob = box.put(data, meta={"stream": "cam0"})
    assert blob == hashlib.sha256(data).hexdigest()
    assert box.put(data) == blob  # the same content is stored once
    parts = box.pending(100)
    assert [p.index for p in parts] == [MANIFEST, 0, 1, 2, 3, 4]
    assert b"".join(p.data for p in parts[1:]) == data
    manifest = json.loads(parts[0].data)
    assert manifest["chunk_count"] == 5 and manifest["meta"] == {"stream": "cam0"}
    assert box.backlog() == (1, 5000)


def test_only_unsent_chunks_go_out_after_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    box = BlobStore(outbox, chunk_size=1024)
    blob = box.put(_blob(10 * 1024))
    box.mark_sent([(blob, MANIFEST), (blob, 0), (blob, 1), (blob, 2)])
    outbox.close()
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    assert [p.index for p in box.pending(100)] == list(range(3, 10))
    # Ingest says it holds 0-5: those are never sent again, even after the ack timeout.
    box.on_ack([], {blob: [(0, 5)]})
    assert box.requeue_unacked(time.time_ns() + 1) >= 1  # the manifest goes back
    assert [p.index for p in box.pending(100)] == [MANIFEST, 6, 7, 8, 9]
    assert box.on_ack([blob], {}) == 1
    assert box.pending(100) == [] and box.backlog() == (0, 0)


def test_expired_blobs_are_dropped(tmp_path: Path) -> None:
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    box.put(_blob(3000), expiry_s=1e-9)
    time.sleep(0.01)
    assert box.pending(10) == [] and box.expired == 1


def test_blobs_share_the_disk_budget_and_go_whole(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", budget_bytes=600_000)
    box = BlobStore(outbox, chunk_size=16 * 1024)
    for seed in range(12):
        box.put(_blob(100_000, seed))
    assert outbox.usage().used_bytes <= 600_000
    evicted = outbox.eviction_counts()["shard"]["records"]
    blobs, _ = box.backlog()
    assert evicted > 0 and blobs + evicted == 12
    # No partial blob is left behind.
    counts = outbox.db.execute("SELECT b.chunk_count, COUNT(c.idx) FROM blobs b "
                               "JOIN blob_chunks c USING (blob) GROUP BY b.blob").fetchall()
    assert all(want == have for want, have in counts)


def test_a_blob_larger_than_the_headroom_makes_room_within_the_budget(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", budget_bytes=1_000_000)
    box = BlobStore(outbox, chunk_size=16 * 1024)
    outbox.append([PendingRecord("cam0", "t", lambda seq: b"r" * 500, kind="telemetry")
                   for _ in range(900)])
    assert outbox.file_cap_bytes is not None
    big = _blob(outbox.file_cap_bytes // 2, 1)  # more than the headroom left after the records
    blob = box.put(big)
    assert box.backlog() == (1, len(big)) and blob == hashlib.sha256(big).hexdigest()
    assert outbox.eviction_counts()["telemetry"]["records"] > 0
    assert outbox.disk_bytes() <= 1_000_000
    with pytest.raises(StorageError) as caught:
        box.put(_blob(1_200_000, 2))  # larger than the whole budget: the budget is the cause
    assert ("cannot store a snapshot of 1200000 bytes: the outbox's budget of 1000000 bytes "
            f"leaves its database {outbox.file_cap_bytes} bytes") in caught.value.message
    assert caught.value.fix is not None and "budget_bytes" in caught.value.fix
    assert "free space" not in caught.value.fix
    assert box.backlog() == (1, len(big))  # what was stored is still there


def test_ingest_reassembles_out_of_order_and_duplicated_chunks(tmp_path: Path) -> None:
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    data = _blob(7777, 1)
    blob = box.put(data, kind="clip", content_type="video/mp4", meta={"seconds": 3})
    messages = _messages(box)
    rng = random.Random(2)
    shuffled = messages + rng.sample(messages, 4)  # duplicates
    rng.shuffle(shuffled)
    store = SqliteStore(tmp_path / "ingest.db")
    states = [store.add_shard(parse_shard(*m)) for m in shuffled]
    assert sum(s.complete and s.path is not None for s in states) >= 1
    path = store.blobs.path(blob)
    assert path.read_bytes() == data
    row = store._db.execute("SELECT kind, content_type, size, meta FROM blobs").fetchone()
    assert row == ("clip", "video/mp4", 7777, json.dumps({"seconds": 3}))
    assert store._db.execute("SELECT COUNT(*) FROM shard_chunks").fetchone()[0] == 0
    # A late duplicate of a finished blob is recognised, not stored again.
    again = store.add_shard(parse_shard(*messages[1]))
    assert again.complete


def test_partial_blob_reports_the_chunks_it_holds(tmp_path: Path) -> None:
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    box.put(_blob(6000))
    messages = _messages(box)
    store = SqliteStore(tmp_path / "ingest.db")
    for m in messages[1:3] + messages[5:6]:  # chunks 0, 1 and 4; no manifest
        state = store.add_shard(parse_shard(*m))
    assert not state.complete and state.held == [(0, 1), (4, 4)]


def _tamper(props: list[tuple[str, str]], key: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == key else v) for k, v in props]


def test_bad_shards_are_rejected_with_the_reason(tmp_path: Path) -> None:
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    box.put(_blob(3000))
    (mt, mprops, _), (topic, props, data) = _messages(box)[:2]
    cases = [
        ((topic, props, data[:-1] + b"!"), "fails its chunk-sha256"),
        ((topic, _tamper(props, "chunk-index", "9"), data), "outside"),
        ((topic, _tamper(props, "chunk-count", "x"), data), "not an integer"),
        ((topic, [p for p in props if p[0] != "blob-size"], data), "lacks user property 'blob-size'"),
        ((topic, _tamper(props, "blob-sha256", "0" * 64), data), "does not match the topic"),
        ((TOPIC + "not-a-sha", props, data), "sha256 hex"),
        ((topic, _tamper(props, "lepton-part", "zip"), data), "lepton-part"),
        ((mt, mprops, b"{nope"), "not JSON"),
        ((mt, mprops, json.dumps({"schema": {"id": "lepton.shard-manifest", "version": 1},
                                  "blob": mt.rsplit("/", 1)[1], "chunk_count": 7,
                                  "size": 3000}).encode()), "disagrees"),
    ]
    for message, reason in cases:
        with pytest.raises(RecordRejected, match=reason):
            parse_shard(*message)


def test_chunk_counts_that_disagree_and_forged_blobs_are_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ingest.db")
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    blob = box.put(_blob(3000))
    messages = _messages(box)
    store.add_shard(parse_shard(*messages[1]))
    topic, props, data = messages[2]
    with pytest.raises(RecordRejected, match="disagree"):
        store.add_shard(parse_shard(topic, _tamper(props, "chunk-count", "4"), data))
    # Chunks that are each intact but do not make up the blob the id names: dropped whole.
    forged = OutgoingPart(blob, 2, 3, 3000, b"x" * 952, "snapshot", "image/jpeg")
    store.add_shard(parse_shard(topic, shard_properties(forged), forged.data))
    store.add_shard(parse_shard(*messages[0]))  # manifest
    with pytest.raises(RecordRejected, match="does not match its sha256"):
        store.add_shard(parse_shard(*messages[2]))
    assert not store.blobs.path(blob).exists()
    assert store._db.execute("SELECT COUNT(*) FROM shard_chunks").fetchone()[0] == 0
    assert not any(p.is_file() for p in store.blobs.root.rglob("*"))


@pytest.mark.broker
def test_snapshots_travel_as_shards_end_to_end(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from tests.e2e import Ingest, run_agent, write_config

    config = write_config(tmp_path, broker.url, "dev-shards")
    with config.open("a") as f:
        f.write('\n[shards]\nchunk_size = "2KiB"\nsnapshot_interval_s = 0.2\nin_flight = 8\n')
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-shards")
    summary = run_agent(config, "--source", "synthetic://320x240@20", "--max-frames", "60")
    stats = ingest.stop()
    assert stats["blobs_completed"] >= 3, stats
    with sqlite3.connect(tmp_path / "ingest.db") as db:
        referenced = {json.loads(p).get("snapshot") for (p,) in db.execute("SELECT payload FROM records")}
        referenced.discard(None)
        stored = dict(db.execute("SELECT blob, path FROM blobs"))
    assert referenced and referenced == set(stored)
    for blob, path in stored.items():
        data = Path(path).read_bytes()
        assert data[:2] == b"\xff\xd8" and hashlib.sha256(data).hexdigest() == blob
    report = read_report(tmp_path / "state")
    assert report is not None and report.blobs_waiting == 0  # all acknowledged
    assert summary["results_committed"] == 60
