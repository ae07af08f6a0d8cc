"""The fleet simulator against a real mosquitto and a real `lepton-agent ingest` (PostgreSQL and
SQLite): every record offered is stored, checked by reading the database independently."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.core.uri import parse_broker
from agent.devtools.simulate import FleetOptions, FleetReport, run_fleet, store_reader
from tests.e2e import ReapedIngest
from tests.ingest_support import pg_schema_url


@pytest.fixture
def pg_url():
    yield from pg_schema_url()


def stored_pairs(db_url: str, site: str) -> set[tuple[str, int]]:
    """(device, seq) stored for ``site``, read with the database's own client."""
    if db_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(db_url[len("sqlite:///"):]) as conn:
            return set(conn.execute("SELECT device, seq FROM records WHERE site = ?", (site,)))
    import psycopg

    base, _, schema = db_url.partition("?schema=")
    with psycopg.connect(base) as conn:
        rows = conn.execute(f'SELECT device, seq FROM "{schema}".records WHERE site = %s',
                            (site,)).fetchall()
    return {(d, int(s)) for d, s in rows}


@pytest.mark.slow
def test_200_devices_against_postgresql_lose_nothing(broker, tmp_path: Path, pg_url: str) -> None:
    ingest = ReapedIngest(broker.url, tmp_path / "ingest.db", db_url=pg_url, cwd=None).start()
    try:
        options = FleetOptions(devices=200, rate=2.0, seconds=5.0, site="fleet200",
                               ack_timeout_s=5.0, drain_s=60.0)
        report = asyncio.run(run_fleet(parse_broker(broker.url), options, store_reader(pg_url)))
    finally:
        stats = ingest.stop()
    assert report.offered == 200 * 10
    stored = stored_pairs(pg_url, "fleet200")
    expected = {(f"sim-{n:05d}", s) for n in range(200) for s in range(1, 11)}
    assert stored == expected
    assert report.lost == 0 and report.pending == 0
    assert report.acknowledged == report.offered
    assert report.stored == len(expected) and report.duplicates_stored == 0
    assert stats["stored"] == len(expected)
    assert report.connects == 200


def test_records_published_before_ingest_subscribes_are_sent_again(broker, tmp_path: Path) -> None:
    """With no ingest subscribed the broker drops what devices publish; only the devices'
    resend after the ack timeout gets those records stored."""
    db = tmp_path / "ingest.db"
    url = f"sqlite:///{db}"
    options = FleetOptions(devices=5, rate=10.0, seconds=2.0, site="late", ack_timeout_s=1.0,
                           drain_s=40.0)
    holder: dict[str, ReapedIngest] = {}

    def start_ingest_after_offer(report: FleetReport) -> None:
        holder["ingest"] = ReapedIngest(broker.url, db, cwd=None).start()

    # The fleet offers everything while nobody listens; ingest starts once the offer is over.
    report = asyncio.run(run_fleet(parse_broker(broker.url), options, store_reader(url),
                                   on_offered=start_ingest_after_offer))
    holder["ingest"].stop()
    assert report.offered == 100
    assert report.resent >= 100  # every record went out at least twice
    assert report.lost == 0 and report.pending == 0
    assert stored_pairs(url, "late") == {(f"sim-{n:05d}", s) for n in range(5)
                                         for s in range(1, 21)}


def test_resends_back_off_while_acks_lag(broker) -> None:
    """No ingest at all: each device's ack timeout doubles after every fruitless round
    (0.5, 1, 2, 4 s), so over 7 s a record goes out about 4 times, not 14 as with a fixed
    0.5 s timeout."""
    options = FleetOptions(devices=2, rate=5.0, seconds=1.0, site="lag", ack_timeout_s=0.5,
                           ack_timeout_max_s=60.0, drain_s=6.0)
    report = asyncio.run(run_fleet(parse_broker(broker.url), options))
    assert report.offered == 10 and report.acknowledged == 0 and report.pending == 10
    assert report.published <= 10 * 5
    assert report.resent >= 10


def test_the_cli_reports_one_json_line_and_checks_the_store(broker, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    db = tmp_path / "ingest.db"
    ingest = ReapedIngest(broker.url, db, cwd=None).start()
    try:
        out = run_cli("simulate", "--broker", broker.url, "--devices", "3", "--rate", "5",
                      "--seconds", "1", "--site", "cli", "--db", f"sqlite:///{db}")
    finally:
        ingest.stop()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["offered"], report["stored"], report["lost"]) == (15, 15, 0)
    bad = run_cli("simulate", "--broker", broker.url, "--site", "a/b")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "site" in bad.stderr



def test_acks_slower_than_the_timeout_stretch_it_to_twice_their_delay() -> None:
    """A backend 8 s behind is not a lost record: the device waits 16 s before publishing
    again, instead of resending its whole backlog every 5 s."""
    import random
    import time

    from agent.core.contract.ack import encode_ack
    from agent.core.contract.topics import DeviceTopics
    from agent.devtools.simulate import STREAM, VirtualDevice
    from tests.ingest_support import message

    options = FleetOptions(devices=1, rate=1, seconds=1, ack_timeout_s=5.0)
    dev = VirtualDevice("d", DeviceTopics("s", "d"), options, random.Random(1), FleetReport(1))
    for _ in range(4):
        dev.make_record(time.time())
    now = time.monotonic()
    for seq in (1, 2, 3, 4):
        record = dev.unsent.pop(seq)
        record.sent_at, record.sends = now - 8.0, 1
        dev.sent[seq] = record
    dev.sent[4].sends = 2  # resent: its delay says nothing (Karn)
    dev.sent[4].sent_at = now - 30.0
    ack = encode_ack({STREAM: [(1, 2)]}, ingest="i")
    dev.on_message(message(dev.topics.ack, ack))
    assert dev.timer.delay_s is not None and 8.0 <= dev.timer.delay_s < 8.5
    assert 16.0 <= dev.timer.timeout_s < 17.0
    assert sorted(dev.sent) == [3, 4] and dev.report.acknowledged == 2
    dev.on_message(message(dev.topics.ack, encode_ack({STREAM: [(4, 4)]}, ingest="i")))
    assert dev.timer.delay_s < 8.5  # the resent record's 30 s was not taken
    dev.on_message(message(dev.topics.ack, encode_ack({STREAM: [(1, 1)]}, ingest="i")))
    assert dev.report.duplicates_seen == 1
