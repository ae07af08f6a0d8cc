"""Counts at the backend: ingest validates ``lepton.count`` records, stores them once in
``count_buckets`` and ``counts`` (SQLite and a real PostgreSQL), rejects malformed ones with a
reason, acknowledges them to the device on ``ack``; ``lepton-agent counts`` re-buckets them and
its tallies equal sums worked out here by hand."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.backend.ingest import Ingest
from agent.backend.store import PostgresStore, SqliteStore, Store
from agent.cli import main as cli_main
from agent.core.contract.ack import decode_ack
from agent.core.contract.count import count_record, encode_count
from agent.core.contract.event import SnapshotRef, TrackEvent, encode_event, track_event_body
from agent.core.contract.topics import DeviceTopics
from agent.devtools.mosquitto import LocalBroker
from tests.conftest import run_cli
from tests.ingest_support import (
    IngestProcess,
    message,
    open_test_store,
    rejects,
    stored_seqs,
    wait_until,
)

SITE = "site1"
T0 = int(datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).timestamp())


def topic(device: str, source: str) -> str:
    return DeviceTopics(SITE, device).counts(source)


def minute_counts(m: int) -> list[tuple[str, str, str, str, int]]:
    """dev1/north's counts in minute ``m`` (the scene every expectation below is summed from):
    stop-bar car in m+1 every minute, car out 2 on even minutes, truck in 1 every fifth minute,
    one person into zone yard at minute 3; minute 7 was measured and counted nothing."""
    if m == 7:
        return []
    out = [("stop-bar", "line", "car", "in", m + 1)]
    if m % 2 == 0:
        out.append(("stop-bar", "line", "car", "out", 2))
    if m % 5 == 0:
        out.append(("stop-bar", "line", "truck", "in", 1))
    if m == 3:
        out.append(("yard", "zone", "person", "in", 1))
    return out


def scene() -> list[tuple[str, bytes]]:
    """dev1/north: minutes 0..31 of 12:00 UTC, the last partial (a graceful stop); dev2/south:
    minutes 0..14, 10 cars in on stop-bar each."""
    msgs = []
    for m in range(32):
        rec = count_record(device="dev1", site=SITE, source="north", start=float(T0 + 60 * m),
                           seconds=60, partial=m == 31, counts=minute_counts(m))
        msgs.append((topic("dev1", "north"), encode_count(rec, seq=m + 1)))
    for m in range(15):
        rec = count_record(device="dev2", site=SITE, source="south", start=float(T0 + 60 * m),
                           seconds=60, partial=False,
                           counts=[("stop-bar", "line", "car", "in", 10)])
        msgs.append((topic("dev2", "south"), encode_count(rec, seq=m + 1)))
    return msgs


def feed(store: Store, msgs: list[tuple[str, bytes]]) -> Ingest:
    ingest = Ingest(store, "lepton/v1/+/+/counts/+", name="test-ingest")
    for mid, (t, payload) in enumerate(msgs, start=1):
        ingest.on_message(message(t, payload, mid))
    ingest.flush()
    return ingest


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            return list(conn.execute(sql))
    assert isinstance(store, PostgresStore)
    with store._db.cursor() as cur:
        cur.execute(sql)
        out = [tuple(int(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, float)
                     else v for v in r) for r in cur.fetchall()]
    store._db.commit()
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_test_store(request.param, tmp_path)


def db_url(store: Store) -> str:
    if isinstance(store, SqliteStore):
        return f"sqlite:///{store.path}"
    assert isinstance(store, PostgresStore)
    return f"postgresql://postgres@127.0.0.1:5432/test?schema={store.schema}"


# --- ingest and store -----------------------------------------------------------------------

def test_counts_are_stored_once_however_often_they_arrive(store: Store) -> None:
    msgs = scene()
    first = feed(store, msgs)
    assert (first.stats.stored, first.stats.duplicates, first.stats.rejected) == (47, 0, 0)
    # Redelivery: the whole scene again, and a batch holding one record twice.
    again = feed(store, msgs + msgs[:3])
    assert (again.stats.stored, again.stats.duplicates) == (0, 50)
    assert rows(store, "SELECT COUNT(*) FROM count_buckets") == [(47,)]
    # dev1: 31 buckets with counts; entries as minute_counts says, counted by hand:
    # 31 car-in + 16 car-out (even minutes 0..30) + 7 truck (0,5,..,30) + 1 person = 55.
    assert rows(store, "SELECT COUNT(*) FROM counts WHERE device = 'dev1'") == [(55,)]
    assert rows(store, "SELECT SUM(count) FROM counts WHERE device = 'dev1' AND label = 'car' "
                       "AND direction = 'in'") == [(sum(range(1, 33)) - 8,)]  # 520
    assert rows(store, "SELECT seq, partial FROM count_buckets WHERE device = 'dev1' AND "
                       "partial = 1") == [(32, 1)]
    assert rows(store, "SELECT stream, source, start_s, seconds FROM count_buckets WHERE "
                       "device = 'dev2' AND seq = 15") == [("south.counts", "south",
                                                           T0 + 14 * 60, 60)]
    # The empty minute is a bucket with no entries, not a missing bucket.
    assert rows(store, f"SELECT COUNT(*) FROM counts WHERE start_s = {T0 + 7 * 60} AND "
                       "device = 'dev1'") == [(0,)]
    assert rows(store, f"SELECT COUNT(*) FROM count_buckets WHERE start_s = {T0 + 7 * 60} "
                       "AND device = 'dev1'") == [(1,)]
    assert stored_seqs(store, "north.counts") == []  # counts are not in records


def _count_json(**change: Any) -> bytes:
    body = json.loads(encode_count(count_record(
        device="dev1", site=SITE, source="north", start=float(T0), seconds=60, partial=False,
        counts=[("stop-bar", "line", "car", "in", 3)]), seq=1))
    for path, value in change.items():
        *parents, leaf = path.split("__")
        target = body
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[leaf] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize("t, payload, code, words", [
    (topic("dev1", "north"), _count_json(counts__0__direction="up"), "schema",
     "counts/0/direction"),
    (topic("dev1", "north"), _count_json(bucket__start="2026-11-22T12:00:30Z"), "bad_count",
     "not aligned"),
    (topic("dev1", "north"), _count_json(stream="south.counts"), "bad_count", "north.counts"),
    (topic("dev1", "north"), json.dumps({**json.loads(_count_json()), "counts": [
        json.loads(_count_json())["counts"][0]] * 2}).encode(), "bad_count", "twice"),
    (topic("dev1", "south"), _count_json(), "topic_mismatch", "source"),
    (topic("dev1", "north"), _count_json(bucket__start="2026-02-30T12:00:00Z"), "bad_ts",
     "bucket.start"),
    (topic("dev1", "north") + "/x", _count_json(), "bad_topic", "one segment"),
])
def test_a_malformed_count_is_rejected_with_its_reason(store: Store, t: str, payload: bytes,
                                                       code: str, words: str) -> None:
    good = (topic("dev1", "north"), encode_count(count_record(
        device="dev1", site=SITE, source="north", start=float(T0 + 60), seconds=60,
        partial=False, counts=[("stop-bar", "line", "car", "in", 1)]), seq=2))
    ingest = feed(store, [(t, payload), good])
    assert ingest.stats.rejects == {code: 1}
    assert ingest.stats.stored == 1  # the good one beside it is stored
    (rt, reason, kept), = rejects(store)
    assert rt == t and words in reason and kept == payload
    assert rows(store, "SELECT seq FROM count_buckets") == [(2,)]


def test_track_events_are_stored_as_events_are(store: Store) -> None:
    event = TrackEvent("crossing", "stop-bar", 41, "car", 0.87, ((0.5, 0.4), (0.5, 0.7)),
                       direction="in", snapshot=SnapshotRef("ab" * 32))
    payload = encode_event(track_event_body(device="dev1", site=SITE, source="north",
                                            ts=T0 + 1.5, event=event), seq=1)
    bad = json.loads(payload)
    bad["direction"] = "up"
    events = DeviceTopics(SITE, "dev1").events("north")
    ingest = feed(store, [(events, payload), (events, json.dumps({**bad, "seq": 2}).encode())])
    assert ingest.stats.stored == 1 and ingest.stats.rejects == {"schema": 1}
    assert stored_seqs(store, "north.events") == [1]


# --- the counts command ---------------------------------------------------------------------

def counts_json(capsys: pytest.CaptureFixture[str], url: str, *flags: str) -> dict[str, Any]:
    assert cli_main(["counts", "--db", url, "--json", *flags]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def tallies(report: dict[str, Any]) -> dict[tuple[str, str, str, str, str, str], int]:
    """(bucket start, device, rule, label, direction, partial) -> count."""
    return {(b["start"][11:16], s["device"], c["rule"], c["label"], c["direction"],
             "partial" if s["partial"] else ""): c["count"]
            for b in report["buckets"] for s in b["series"] for c in s["counts"]}


def test_counts_rebucket_to_15_minutes_as_summed_by_hand(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    feed(store, scene())
    report = counts_json(capsys, db_url(store), "--by", "15m")
    assert report["by_s"] == 900
    assert [(b["start"], b["seconds"], b["partial"]) for b in report["buckets"]] == [
        ("2026-11-22T12:00:00Z", 900, False), ("2026-11-22T12:15:00Z", 900, False),
        ("2026-11-22T12:30:00Z", 900, True)]
    # Sums of minute_counts, worked out by hand:
    #   car in   12:00 = 1+..+15 - 8 (minute 7 empty) = 112; 12:15 = 16+..+30 = 345; 12:30 = 31+32
    #   car out  even minutes x 2: 0..14 -> 8 x 2; 16..28 -> 7 x 2; 30 -> 2
    #   truck in minutes 0,5,10 | 15,20,25 | 30
    assert tallies(report) == {
        ("12:00", "dev1", "stop-bar", "car", "in", ""): 112,
        ("12:00", "dev1", "stop-bar", "car", "out", ""): 16,
        ("12:00", "dev1", "stop-bar", "truck", "in", ""): 3,
        ("12:00", "dev1", "yard", "person", "in", ""): 1,
        ("12:00", "dev2", "stop-bar", "car", "in", ""): 150,
        ("12:15", "dev1", "stop-bar", "car", "in", ""): 345,
        ("12:15", "dev1", "stop-bar", "car", "out", ""): 14,
        ("12:15", "dev1", "stop-bar", "truck", "in", ""): 3,
        ("12:30", "dev1", "stop-bar", "car", "in", "partial"): 63,
        ("12:30", "dev1", "stop-bar", "car", "out", "partial"): 2,
        ("12:30", "dev1", "stop-bar", "truck", "in", "partial"): 1,
    }
    first = report["buckets"][0]["series"]
    assert [(s["device"], s["stream"], s["records"]) for s in first] == [
        ("dev1", "north", 15), ("dev2", "south", 15)]
    assert report["buckets"][2]["series"][0]["records"] == 2
    totals = {(t["device"], t["rule"], t["label"], t["direction"]): t["count"]
              for t in report["totals"]}
    assert totals[("dev1", "stop-bar", "car", "in")] == 520
    assert totals[("dev2", "stop-bar", "car", "in")] == 150
    # The shape of one series entry, all of it.
    assert report["buckets"][1]["series"][0] == {
        "site": SITE, "device": "dev1", "stream": "north", "records": 15, "partial": False,
        "counts": [
            {"rule": "stop-bar", "kind": "line", "label": "car", "direction": "in", "count": 345},
            {"rule": "stop-bar", "kind": "line", "label": "car", "direction": "out", "count": 14},
            {"rule": "stop-bar", "kind": "line", "label": "truck", "direction": "in",
             "count": 3}]}


def test_counts_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = next(open_test_store("sqlite", tmp_path))
    feed(store, scene())
    url = db_url(store)
    only_dev2 = counts_json(capsys, url, "--device", "dev2", "--by", "1h")
    assert tallies(only_dev2) == {("12:00", "dev2", "stop-bar", "car", "in", ""): 150}
    yard = counts_json(capsys, url, "--line", "yard", "--site", SITE)
    assert tallies(yard) == {("12:00", "dev1", "yard", "person", "in", ""): 1}
    # dev2 never counted on yard: not listed as a zero (it may have no such zone).
    assert [s["device"] for b in yard["buckets"] for s in b["series"]] == ["dev1", "dev1",
                                                                           "dev1"]
    north = counts_json(capsys, url, "--stream", "north", "--by", "1d")
    assert {s["stream"] for b in north["buckets"] for s in b["series"]} == {"north"}
    # --since 12:20 starts at the 15-minute bucket holding it (12:15).
    since = counts_json(capsys, url, "--since", "2026-11-22T12:20:00Z", "--device", "dev1")
    assert [b["start"] for b in since["buckets"]] == ["2026-11-22T12:15:00Z",
                                                      "2026-11-22T12:30:00Z"]
    hourly = counts_json(capsys, url, "--by", "1h", "--device", "dev1", "--line", "stop-bar")
    assert tallies(hourly)[("12:00", "dev1", "stop-bar", "car", "in", "partial")] == 520
    nothing = counts_json(capsys, url, "--site", "elsewhere")
    assert nothing["buckets"] == [] and nothing["totals"] == []
    # Text: one line per tally, partial buckets flagged.
    assert cli_main(["counts", "--db", url, "--device", "dev1", "--line", "stop-bar"]) == 0
    text = capsys.readouterr().out
    assert "2026-11-22T12:30:00Z (partial)  site1  dev1    north   stop-bar  line  car    in   63" \
        in text
    assert "total" in text and "1 with partial intervals" in text
    store.close()


def test_counts_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    store = next(open_test_store("sqlite", tmp_path))
    feed(store, scene())
    store.close()
    url = f"sqlite:///{tmp_path}/ingest.db"
    cases = [
        (["--db", url, "--by", "90s"], "not a multiple of the stored bucket length 60 s"),
        (["--db", url, "--by", "fortnight"], "--by"),
        (["--db", url, "--since", "yesterday-ish"], "--since"),
        (["--db", "mysql://x/y"], "unknown database scheme"),
        (["--db", f"sqlite:///{tmp_path}/missing.db"], "no such database file"),
        (["--db", "postgresql://postgres@127.0.0.1:1/test"], "cannot open PostgreSQL"),
    ]
    for flags, words in cases:
        done = run_cli("counts", *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (flags, done.stderr)
        assert "Traceback" not in done.stderr


# --- end to end: a device's MQTT client, mosquitto, the ingest process, the ack -------------

@pytest.mark.slow
@pytest.mark.broker
def test_counts_reach_ingest_and_are_acknowledged(tmp_path: Path, broker: LocalBroker,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ingest = IngestProcess(broker.url, tmp_path / "ingest.db")
    acks: list[bytes] = []
    got_ack = threading.Event()
    device = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id="dev1-counts")

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        acks.append(bytes(msg.payload))
        got_ack.set()

    device.on_message = on_message
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    try:
        device.subscribe(DeviceTopics(SITE, "dev1").ack, qos=1)[0]
        msgs = [(t, p) for t, p in scene() if "/dev1/" in t][:16]  # minutes 0..15 of dev1
        infos = [device.publish(t, p, qos=1) for t, p in msgs]
        infos.append(device.publish(msgs[3][0], msgs[3][1], qos=1))  # a re-publish
        for info in infos:
            info.wait_for_publish(timeout=30)

        def acked() -> set[int]:
            seqs: set[int] = set()
            for a in acks:
                for lo, hi in decode_ack(a).get("north.counts", []):
                    seqs.update(range(lo, hi + 1))
            return seqs

        wait_until(lambda: acked() == set(range(1, 17)), "ingest to ack north.counts 1..16")
    finally:
        device.loop_stop()
        device.disconnect()
    stats, log = ingest.stop()
    assert stats["stored"] == 16 and stats["rejected"] == 0, log
    assert "subscribed to $share/ingest/lepton/v1/+/+/counts/+" in log
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        assert [r[0] for r in conn.execute(
            "SELECT seq FROM count_buckets ORDER BY seq")] == list(range(1, 17))
        # minutes 0..14 in the first quarter hour (112 car in, by hand), minute 15 (16) after
        assert conn.execute("SELECT SUM(count) FROM counts WHERE label = 'car' AND "
                            "direction = 'in'").fetchone() == (128,)
    report = counts_json(capsys, f"sqlite:///{tmp_path}/ingest.db")
    assert tallies(report)[("12:00", "dev1", "stop-bar", "car", "in", "")] == 112
