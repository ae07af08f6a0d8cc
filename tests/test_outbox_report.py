"""The read-only outbox report, and that status, diag and the dev tools read the outbox only
through it: the backlog they show follows the delivery mode like ``Outbox.backlog``."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import StorageError
from agent.storage.outbox import Outbox, PendingRecord
from agent.storage.report import (
    ClassCounts,
    Eviction,
    OutboxUnreadable,
    outbox_path,
    read_report,
    record_seqs,
    records_pending,
)
from tests.conftest import ROOT, run_cli

MODES = ("ingested", "broker")


def _fill(state: Path, delivery: str) -> Outbox:
    """Eight records on two streams, four sent (PUBACK) and two of those ingested, so that the
    two delivery modes give different backlogs (6 until ingested, 4 until the broker)."""
    box = Outbox(outbox_path(state), until_ingested=delivery == "ingested")
    kinds = ["result", "event", "result", "telemetry", "result"]
    stored = box.append([PendingRecord("cam0", "t/cam0", lambda s: b'{"seq":%d}' % s, kind=k)
                         for k in kinds])
    stored += box.append([PendingRecord("cam1", "t/cam1", lambda s: b"x" * s) for _ in range(3)])
    box.mark_sent([r.id for r in stored[:4]])
    box.mark_ingested("cam0", [(1, 2)])
    box.flush_marks()  # the report reads the file; the outbox holds marks until its next write
    return box


def _config(tmp_path: Path, state: Path, delivery: str) -> Path:
    path = tmp_path / f"agent-{delivery}.toml"
    path.write_text(f'[agent]\nstate_dir = "{state}"\n\n[outbox]\ndelivery = "{delivery}"\n')
    return path


@pytest.mark.parametrize("delivery", MODES)
def test_status_diag_and_report_agree_with_outbox_backlog(tmp_path: Path, delivery: str) -> None:
    state = tmp_path / "state"
    box = _fill(state, delivery)
    backlog, _ = box.backlog()
    assert backlog == {"ingested": 6, "broker": 4}[delivery]
    box.close()
    config = _config(tmp_path, state, delivery)

    report = read_report(state, delivery)  # type: ignore[arg-type]
    assert report is not None
    assert report.backlog == backlog

    out = run_cli("status", "--json", "--config", str(config), "--socket",
                  str(tmp_path / "nobody.sock"))
    assert out.returncode == 3, out.stderr  # not running: what the outbox holds
    status = json.loads(out.stdout)
    assert status["delivery"] == delivery
    assert status["backlog"] == backlog
    assert status["last_seq"] == {"cam0": 5, "cam1": 3}

    out = run_cli("diag", "cache", "--json", "--config", str(config))
    cache = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "cache")
    assert cache["details"]["backlog"] == backlog, cache


@pytest.mark.parametrize("delivery", MODES)
def test_report_contents(tmp_path: Path, delivery: str) -> None:
    state = tmp_path / "state"
    box = _fill(state, delivery)
    report = read_report(state, delivery, integrity=True)  # type: ignore[arg-type]
    assert report is not None
    assert report.path == state / "outbox.db"
    assert report.delivery == delivery
    assert report.integrity == "ok"
    assert dict(report.last_seq) == {"cam0": 5, "cam1": 3}
    assert report.oldest_unsent_s is not None and report.oldest_unsent_s >= 0
    undelivered = {"ingested": (5, 0, 1), "broker": (4, 0, 0)}[delivery]
    assert dict(report.classes) == {
        "result": ClassCounts(records=6, unsent=4, undelivered=undelivered[0]),
        "event": ClassCounts(records=1, unsent=0, undelivered=undelivered[1]),
        "telemetry": ClassCounts(records=1, unsent=0, undelivered=undelivered[2]),
    }
    assert sum(c.undelivered for c in report.classes.values()) == report.backlog
    usage = box.usage()
    assert report.used_bytes == usage.used_bytes
    assert report.file_bytes == usage.file_bytes
    assert report.disk_bytes == box.disk_bytes()
    assert report.evictions == {} and report.evicted_records == 0
    assert report.blobs_waiting == 0 and report.quarantined == ()
    pending = records_pending(state, delivery)  # type: ignore[arg-type]
    assert len(pending) == report.backlog
    assert ("cam0", 1) not in pending
    assert (("cam0", 3) in pending) is (delivery == "ingested")  # sent, never ingested
    assert record_seqs(state, "cam1") == [1, 2, 3]
    assert record_seqs(state) == [1, 1, 2, 2, 3, 3, 4, 5]
    box.close()


def test_report_evictions_and_quarantine(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    outbox_path(state).write_bytes(b"not a database" * 512)
    box = Outbox(outbox_path(state), budget_bytes=400_000)  # moves the junk aside
    assert box.quarantined is not None
    for _ in range(20):
        box.append([PendingRecord("cam0", "t", lambda s: b"r" * 2000) for _ in range(20)])
    assert box.evictions, "the budget should have evicted undelivered results"
    report = read_report(state)
    assert report is not None
    assert report.quarantined == (box.quarantined,)
    assert report.evictions == {k: Eviction(n, b) for k, (n, b) in box.evictions.items()}
    assert report.evicted_records == box.evictions["result"][0]
    assert report.backlog == box.backlog()[0]
    assert report.disk_bytes <= 400_000
    box.close()


def test_report_is_read_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert read_report(state) is None and records_pending(state) == set()
    assert record_seqs(state) == [] and not state.exists()  # never creates anything
    box = _fill(state, "ingested")
    box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    report = read_report(state, integrity=True)
    assert report is not None and report.backlog == box.backlog()[0]
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    # the agent keeps writing beside a reader
    box.append([PendingRecord("cam0", "t", lambda s: b"y")])
    report = read_report(state)
    assert report is not None and report.backlog == box.backlog()[0] == 7
    box.close()


def test_unreadable_outbox_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # Raw junk on purpose: the report must refuse it, never repair or quarantine it.
    outbox_path(state).write_bytes(b"garbage" * 1000)
    with pytest.raises(OutboxUnreadable) as err:
        read_report(state)
    assert isinstance(err.value, StorageError)
    assert err.value.path == str(outbox_path(state)) and err.value.fix
    assert outbox_path(state).read_bytes() == b"garbage" * 1000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["append", "sent", "ingested", "requeue"]),
                              st.integers(1, 6)), max_size=12),
       delivery=st.sampled_from(MODES))
def test_report_backlog_follows_outbox_backlog(tmp_path_factory: pytest.TempPathFactory,
                                               ops: list[tuple[str, int]], delivery: str) -> None:
    state = tmp_path_factory.mktemp("state")
    box = Outbox(outbox_path(state), until_ingested=delivery == "ingested")
    for op, n in ops:
        if op == "append":
            box.append([PendingRecord("cam0", "t", lambda s: b"p") for _ in range(n)])
        elif op == "sent":
            box.mark_sent([r.id for r in box.fetch_unsent(0, n)])
        elif op == "ingested":
            box.mark_ingested("cam0", [(1, n * 2)])
        else:
            box.requeue_unacked(2**62)
        backlog = box.backlog()[0]  # the file's marks and those the outbox holds in memory
        box.flush_marks()  # the report reads the file
        report = read_report(state, delivery)  # type: ignore[arg-type]
        if report is not None:
            assert report.backlog == backlog == box.backlog()[0]
            assert len(records_pending(state, delivery)) == report.backlog  # type: ignore[arg-type]
    box.close()


def _outbox_readers() -> list[str]:
    """Places outside agent/storage and agent/backend (ingest's own database) that open a
    SQLite database other than ingest's, or import sqlite's connect under another name."""
    found = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("agent/storage/", "agent/backend/")):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == "sqlite3":
                found.append(f"{rel}:{node.lineno}: from sqlite3 import ...")
            elif isinstance(node, ast.Import) and any(
                    a.name == "sqlite3" and a.asname for a in node.names):
                found.append(f"{rel}:{node.lineno}: import sqlite3 as ...")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "connect" and isinstance(node.func.value, ast.Name)
                  and node.func.value.id == "sqlite3"):
                target = ast.get_source_segment(source, node.args[0]) if node.args else ""
                if "ingest" not in (target or ""):  # ingest's database is the backend's
                    found.append(f"{rel}:{node.lineno}: sqlite3.connect({target})")
    return found


def test_nothing_outside_storage_opens_the_outbox() -> None:
    assert _outbox_readers() == [], "read the outbox through agent.storage.report"


def test_the_oldest_unsent_age_is_in_seconds_and_the_check_is_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = 1_800_000_000 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: t0)
    box = Outbox(tmp_path / "outbox.db")
    box.append([PendingRecord("cam0", "t", lambda seq: b"{}", kind="result")])
    box.close()
    monkeypatch.setattr(time, "time_ns", lambda: t0 + 5 * 10**9)
    report = read_report(tmp_path, "ingested")
    assert report is not None
    assert report.oldest_unsent_s == 5.0
    assert report.integrity is None  # quick_check only when asked: it reads the whole file
    assert report.blobs_waiting == 0
