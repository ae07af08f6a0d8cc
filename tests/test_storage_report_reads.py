"""The outbox's read-only report as the web console and diag read it (agent/storage/report.py):
counts, events, blobs, delivery marks and saved state, read from another connection while the
real Outbox that wrote them is open, against what the test wrote (the reference)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, PendingRecord
from agent.storage.report import (
    DeliveryMarks,
    OutboxUnreadable,
    blobs_present,
    read_blob,
    read_counts,
    read_delivery_marks,
    read_events,
    read_state,
)


def _record(stream: str, kind: str, body: dict[str, object]) -> PendingRecord:
    return PendingRecord(stream, f"t/{stream}",
                         lambda seq: json.dumps({**body, "seq": seq}).encode(), kind=kind)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_nothing_to_read_without_an_outbox(tmp_path: Path) -> None:
    assert read_counts(tmp_path, 3600) == []
    assert read_events(tmp_path) == []
    assert read_blob(tmp_path, "0" * 64) is None
    assert blobs_present(tmp_path, ["0" * 64]) == set()
    assert read_delivery_marks(tmp_path) == DeliveryMarks(None, None)
    assert read_state(tmp_path, "x") is None


def test_counts_oldest_first_in_the_window_the_newest_in_the_limit(
        tmp_path: Path, outbox: Outbox) -> None:
    for n in range(5):
        outbox.append([_record("cam0.counts", "count", {"n": n}),
                       _record("cam0", "result", {"r": n})])
    counts = read_counts(tmp_path, 3600)
    assert [json.loads(c.payload)["n"] for c in counts] == [0, 1, 2, 3, 4]
    assert [c.seq for c in counts] == [1, 2, 3, 4, 5]
    assert {c.stream for c in counts} == {"cam0.counts"}
    assert [c.created_ns for c in counts] == sorted(c.created_ns for c in counts)
    assert all(abs(c.created_ns - time.time_ns()) < 60e9 for c in counts)
    # Over the limit, the newest: a chart of the window ends at now, not at the limit.
    assert [json.loads(c.payload)["n"] for c in read_counts(tmp_path, 3600, limit=2)] == [3, 4]
    time.sleep(0.05)  # a window that ends before now: what was committed before it is left out
    assert read_counts(tmp_path, 0.01) == []


def test_events_newest_first_up_to_the_limit(tmp_path: Path, outbox: Outbox) -> None:
    for n in range(4):
        outbox.append([_record("cam0.events", "event", {"e": n})])
    outbox.append([_record("cam0.counts", "count", {"n": 9})])
    assert [json.loads(e.payload)["e"] for e in read_events(tmp_path)] == [3, 2, 1, 0]
    assert [json.loads(e.payload)["e"] for e in read_events(tmp_path, limit=2)] == [3, 2]


def test_a_blob_is_read_whole_or_not_at_all(tmp_path: Path, outbox: Outbox) -> None:
    blobs = BlobStore(outbox, chunk_size=1024)
    data = bytes(range(256)) * 10  # three chunks of 1 KiB
    blob = blobs.put(data, kind="snapshot", content_type="image/jpeg")
    other = blobs.put(b"\xff\xd8 one chunk", content_type="image/png")
    assert read_blob(tmp_path, blob) == ("image/jpeg", data)
    assert read_blob(tmp_path, other) == ("image/png", b"\xff\xd8 one chunk")
    assert read_blob(tmp_path, "f" * 64) is None
    assert blobs_present(tmp_path, [blob, "f" * 64, other]) == {blob, other}
    assert blobs_present(tmp_path, []) == set()
    # A chunk gone (sent and pruned): no longer whole, so not shown.
    outbox.db.execute("DELETE FROM blob_chunks WHERE blob = ? AND idx = 1", (blob,))
    assert read_blob(tmp_path, blob) is None


def test_delivery_marks_follow_pubacks_and_ingest_acks(tmp_path: Path, outbox: Outbox) -> None:
    outbox.append([_record("cam0", "result", {"r": n}) for n in range(3)])
    assert read_delivery_marks(tmp_path) == DeliveryMarks(None, None)
    before = time.time_ns()
    ids = [r.id for r in outbox.fetch_unsent(0, 10)]
    outbox.mark_sent(ids[:2])
    outbox.flush_marks()
    marks = read_delivery_marks(tmp_path)
    assert marks.last_ingest_ack_ns is None
    assert marks.last_puback_ns is not None and before <= marks.last_puback_ns <= time.time_ns()
    outbox.mark_ingested("cam0", [(2, 2)])  # out of order: a marks row, not the watermark
    outbox.flush_marks()
    acked = read_delivery_marks(tmp_path)
    assert acked.last_ingest_ack_ns is not None and acked.last_ingest_ack_ns >= marks.last_puback_ns
    outbox.mark_ingested("cam0", [(1, 1)])  # in order from the first: the watermark moves
    outbox.flush_marks()
    moved = read_delivery_marks(tmp_path)
    assert moved.last_ingest_ack_ns is not None
    assert moved.last_ingest_ack_ns >= (time.time_ns() // 10**9 - 5) * 10**9


def test_saved_state_is_what_the_last_commit_wrote(tmp_path: Path, outbox: Outbox) -> None:
    outbox.append([_record("cam0", "result", {})], state={"pos/cam0": "12", "ota/clock": "{}"})
    outbox.append([_record("cam0", "result", {})], state={"pos/cam0": "13"})
    assert read_state(tmp_path, "pos/cam0") == "13"
    assert read_state(tmp_path, "ota/clock") == "{}"
    assert read_state(tmp_path, "pos/cam1") is None


def test_a_file_that_is_not_an_outbox_is_named(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"not a database" * 100)
    for read in (lambda: read_counts(tmp_path, 60), lambda: read_events(tmp_path),
                 lambda: read_blob(tmp_path, "0" * 64), lambda: blobs_present(tmp_path, ["x"]),
                 lambda: read_delivery_marks(tmp_path), lambda: read_state(tmp_path, "k")):
        with pytest.raises(OutboxUnreadable) as unreadable:
            read()
        assert "unreadable" in str(unreadable.value)
        assert unreadable.value.path == str(tmp_path / "outbox.db")
