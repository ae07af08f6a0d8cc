"""The outbox's disk budget, priorities, durability settings, corruption and a full disk."""

from __future__ import annotations

import logging
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.outbox import Outbox, PendingRecord

BUDGET = 1_000_000


def _payload(size: int) -> Callable[[int], bytes]:
    return lambda seq: b"x" * size


def _batch(rng: random.Random, n: int = 40,
           kinds: tuple[str, ...] = ("result", "event", "telemetry")) -> list[PendingRecord]:
    return [PendingRecord("cam0", "t/cam0", _payload(rng.randint(300, 900)), kind=rng.choice(kinds))
            for _ in range(n)]


def test_budget_holds_after_every_batch_and_evicts_lowest_priority_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=BUDGET)
    rng = random.Random(3)
    batch_bytes = 40 * (900 + 96)
    for _ in range(150):
        box.append(_batch(rng))
        usage = box.usage()
        assert usage.used_bytes <= BUDGET
        assert usage.file_bytes <= BUDGET + batch_bytes + 64 * 1024
    counts = box.eviction_counts()
    assert counts["telemetry"]["records"] > 0
    kept = dict(box.db.execute("SELECT class, COUNT(*) FROM records GROUP BY class").fetchall())
    # Events (highest priority) outlive everything; telemetry goes first.
    assert kept.get("event", 0) > kept.get("result", 0) >= kept.get("telemetry", 0)
    assert counts.get("event", {"records": 0})["records"] < counts["telemetry"]["records"]
    box.close()
    # The counts are in the file: they survive a restart.
    again = Outbox(tmp_path / "o.db", budget_bytes=BUDGET)
    assert again.eviction_counts() == counts
    assert again.integrity_ok()


def _footprint(state: Path) -> int:
    """Bytes on disk of every file in the outbox's directory (db, WAL, shm, reserve), by stat."""
    return sum(max(p.stat().st_size, p.stat().st_blocks * 512)
               for p in state.iterdir() if p.is_file())


@pytest.mark.parametrize(("budget", "batch", "size"), [
    (1_000_000, 40, (300, 900)), (256 * 1024, 10, (200, 2000)), (4_000_000, 200, (100, 4000))])
def test_whole_footprint_on_disk_stays_within_the_budget(
        tmp_path: Path, budget: int, batch: int, size: tuple[int, int]) -> None:
    """The budget bounds what the outbox takes from the disk, WAL and reserve included."""
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db", budget_bytes=budget)
    rng = random.Random(budget)
    peak = 0
    for i in range(max(60, 3 * budget // (batch * sum(size) // 2))):
        box.append([PendingRecord("cam0", "t/cam0", _payload(rng.randint(*size)),
                                  kind=rng.choice(("result", "event", "telemetry")))
                    for _ in range(batch)])
        if i % 3 == 0:  # some delivered, a batch behind, as a link would
            last = box.last_seq("cam0") - batch
            box.mark_ingested("cam0", [(last - batch + 1, last)])
        footprint = _footprint(state)
        peak = max(peak, footprint)
        # The database file keeps to its share, even with batches larger than the headroom.
        assert box.file_cap_bytes is not None and box.usage().file_bytes <= box.file_cap_bytes
        assert footprint <= budget, (i, {p.name: p.stat().st_size for p in state.iterdir()})
    kept = box.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    assert kept < box.last_seq("cam0") / 2  # it filled up and deleted
    print(f"budget {budget}: peak {peak}, {i + 1} batches, {box.wal_truncations} WAL truncations")
    if batch * sum(size) / 2 < budget / 32:
        # With batches small against the budget (the agent commits every 50 ms) the split
        # fits: forcing the WAL down is the exception, not every batch.
        assert box.wal_truncations <= (i + 1) // 50
    assert peak > budget * 0.6  # and used most of the budget
    box.close()
    assert _footprint(state) <= budget


def test_a_lowered_budget_shrinks_the_file_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db", budget_bytes=4_000_000)
    rng = random.Random(8)
    for _ in range(150):
        box.append(_batch(rng))
    box.close()
    assert _footprint(state) > 3_000_000
    box = Outbox(state / "outbox.db", budget_bytes=BUDGET)
    box.append(_batch(rng))
    assert _footprint(state) <= BUDGET
    assert box.integrity_ok() and box.backlog()[0] > 0  # it kept what fits


def test_delivered_records_go_before_any_undelivered_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=BUDGET, until_ingested=False)
    rng = random.Random(4)
    for _ in range(20):
        box.append(_batch(rng, kinds=("telemetry",)))
        box.mark_sent(r.id for r in box.fetch_unsent(0, 1000))
    # Undelivered events that fit the database file's share of the budget (the rest of the
    # budget is the WAL's, the reserve's and the shared memory index's).
    for _ in range(16):
        box.append(_batch(rng, kinds=("event",)))
    assert box.eviction_counts() == {}  # only delivered records were deleted so far
    assert box.usage().used_bytes <= BUDGET
    assert box.backlog()[0] == 16 * 40


def test_priorities_come_from_config(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=BUDGET, priorities={"telemetry": 99, "event": 1})
    rng = random.Random(5)
    for _ in range(14):  # fits the file's share of the budget
        box.append(_batch(rng, kinds=("telemetry",)))
    for _ in range(20):
        box.append(_batch(rng, kinds=("event",)))
    counts = box.eviction_counts()
    assert counts["event"]["records"] > 0 and "telemetry" not in counts


def test_durability_interval_zero_means_every_commit_is_synced(tmp_path: Path) -> None:
    full = Outbox(tmp_path / "a.db", durability_interval_s=0)
    normal = Outbox(tmp_path / "b.db")
    assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert normal.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    normal.append(_batch(random.Random(1), 3))
    normal.maybe_fsync(force=True)  # the WAL exists and is flushed without error


def test_schema_1_outbox_is_migrated_in_place(tmp_path: Path) -> None:
    # Raw SQL on purpose: it builds an old-schema file by hand, which no storage API writes.
    db = sqlite3.connect(tmp_path / "o.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
        INSERT INTO streams VALUES ('cam0', 7);
        CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
            seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
            created_ns INTEGER NOT NULL, sent_ns INTEGER, acked_ns INTEGER, UNIQUE (stream, seq));
        INSERT INTO records (stream, seq, topic, payload, qos, created_ns)
            VALUES ('cam0', 7, 't', x'00', 1, 1);
    """)
    db.commit()
    db.close()
    box = Outbox(tmp_path / "o.db")
    box.append(_batch(random.Random(1), 1))
    assert [(r.seq) for r in box.fetch_unsent(0, 10)] == [7, 8]
    # schema 3: sent/acked marks in their own table
    assert box.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "3"


@pytest.mark.parametrize("damage", ["garbage", "torn_pages"])
def test_corrupt_outbox_is_quarantined_and_a_fresh_one_started(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "outbox.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        box = Outbox(db)
        for _ in range(30):
            box.append(_batch(random.Random(2)))
        box.close()
        raw = bytearray(db.read_bytes())
        for offset in range(4096 * 2, len(raw), 4096 * 3):  # smash some b-tree pages
            raw[offset:offset + 64] = b"\xff" * 64
        db.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        box = Outbox(db)
    assert "OUTBOX CORRUPT" in caplog.text
    assert box.quarantined is not None and box.quarantined.exists()
    assert box.quarantined.name.startswith("outbox.db.corrupt-")
    box.append(_batch(random.Random(1), 2))
    seqs = [r.seq for r in box.fetch_unsent(0, 10)]
    # New seqs start above any the lost file could have issued (ingest dedupes on seq).
    assert seqs[0] > int(time.time() * 1000) * 1000 - 10**9 and seqs[1] == seqs[0] + 1
    assert box.integrity_ok()
    box.close()
    assert Outbox(db).last_seq("cam0") == seqs[1]  # the floor persists


def test_seqs_after_a_second_quarantine_start_above_the_first_replacement(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    issued: list[int] = []
    for _ in range(2):
        db.write_bytes(b"this is not a database" * 100)
        box = Outbox(db)
        assert box.quarantined is not None
        for _ in range(3):
            issued += [r.seq for r in box.append(_batch(random.Random(1), 40))]
        box.close()
    # The second fresh file's seqs continue above everything the first one issued.
    assert issued == sorted(set(issued)) and len(issued) == 240
    # Each damaged file is kept for a support bundle, even two within one second.
    assert len(list(tmp_path.glob("outbox.db.corrupt-*"))) == 2


def test_unwritable_state_dir_is_still_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="--state-dir"):
        Outbox(blocker / "sub" / "outbox.db")


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills up (needs root; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_evicts_within_the_file_and_keeps_going(tiny_filesystem: Path) -> None:
    # A budget larger than the disk: the filesystem fills before the budget does.
    box = Outbox(tiny_filesystem / "o.db", budget_bytes=64 * 1024 * 1024)
    rng = random.Random(6)
    for _ in range(120):
        box.append(_batch(rng, 20))
    counts = box.eviction_counts()
    assert sum(c["records"] for c in counts.values()) > 0
    assert box.integrity_ok()
    assert box.backlog()[0] > 0


def test_a_batch_larger_than_the_free_disk_raises_a_named_error(tiny_filesystem: Path) -> None:
    box = Outbox(tiny_filesystem / "o.db", budget_bytes=64 * 1024 * 1024)
    box.append([PendingRecord("cam0", "t", lambda seq: b"y" * 1000)])
    with pytest.raises(StorageError, match="free space") as err:
        box.append([PendingRecord("cam0", "t", lambda seq: b"y" * 1_500_000)])
    assert str(tiny_filesystem / "o.db") in str(err.value)
    # What was committed is still there, or counted as evicted to make room.
    evicted = sum(c["records"] for c in box.eviction_counts().values())
    assert box.backlog()[0] + evicted == 1
    box.append([PendingRecord("cam0", "t", lambda seq: b"z" * 1000)])  # and it goes on
    assert box.integrity_ok()


def test_diag_cache_reports_budget_evictions_and_quarantine(tmp_path: Path) -> None:
    from agent.config.schema import AgentConfig
    from agent.diag.checks import check_cache

    cfg = AgentConfig.model_validate({"agent": {"state_dir": str(tmp_path)},
                                      "outbox": {"budget_bytes": BUDGET}})
    box = Outbox(tmp_path / "outbox.db", budget_bytes=BUDGET)
    rng = random.Random(9)
    for _ in range(80):
        box.append(_batch(rng))
    box.close()
    result = check_cache(cfg)
    assert result.status == "warn" and "evicted" in result.reason
    assert result.details["used_bytes"] <= BUDGET
    (tmp_path / "outbox.db.corrupt-20261122T000000").write_bytes(b"junk")
    result = check_cache(cfg)
    assert "moved aside" in result.reason and "support bundle" in (result.fix or "")
