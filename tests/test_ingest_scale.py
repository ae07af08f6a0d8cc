"""Ingest at fleet scale: the compiled schema check and the decoder's shortcuts agree with the
reference checks on fuzz, ingest reports its lag, `ingest --check`, and a PostgreSQL that
drops ingest's connection mid-run loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import fastjsonschema
import pytest
from hypothesis import given
from jsonschema import Draft202012Validator

from agent.backend.decode import _TS, Reject, check_timestamp, decode_json
from agent.backend.ingest import RecordValidator
from agent.core.contract.topics import parse_topic
from agent.core.uri import parse_broker
from agent.devtools.mosquitto import LocalBroker, free_port
from agent.devtools.simulate import FleetOptions, FleetReport, run_fleet, store_reader
from agent.schemas import load_schema
from tests.conftest import run_cli
from tests.ingest_support import (
    RESULTS,
    IngestProcess,
    dumps,
    message,
    new_ingest,
    pg_schema_url,
    publish,
    result_body,
    stored_seqs,
    wait_until,
)
from tests.test_fuzz_ingest import EDGE_TIMES, FUZZ, record_payloads
from tests.test_ingest_metrics import scrape


@pytest.fixture
def pg_url():
    yield from pg_schema_url()


REFERENCE = {kind: Draft202012Validator(load_schema(name))
             for kind, name in RecordValidator.SCHEMAS.items()}
COMPILED = {kind: fastjsonschema.compile(load_schema(name), use_formats=False)
            for kind, name in RecordValidator.SCHEMAS.items()}


def outcome(topic: str, payload: bytes, shortcuts: bool) -> object:
    """The value decode_json returns, or the code of its reject."""
    try:
        return decode_json(topic, payload, shortcuts=shortcuts)
    except Reject as exc:
        return exc.code


@FUZZ
@given(record_payloads())
def test_compiled_schemas_agree_with_jsonschema(sample: tuple[str, bytes]) -> None:
    topic, payload = sample
    try:
        kind = parse_topic(topic).kind
        _, body = decode_json(topic, payload)
    except (ValueError, Reject):
        return
    if kind not in REFERENCE:
        return
    try:
        COMPILED[kind](body)
        compiled_ok = True
    except fastjsonschema.JsonSchemaException:
        compiled_ok = False
    assert compiled_ok == REFERENCE[kind].is_valid(body), payload[:300]


@FUZZ
@given(record_payloads())
def test_decoder_shortcuts_change_no_outcome(sample: tuple[str, bytes]) -> None:
    """Skipping the depth scan, the number hooks or the string walk where they cannot find
    anything gives the same value or the same reject code as running all of them."""
    topic, payload = sample
    assert outcome(topic, payload, True) == outcome(topic, payload, False), payload[:300]


@pytest.mark.parametrize("number", [b"9223372036854775807", b"18446744073709551615",
                                    b"18446744073709551616", b"-9223372036854775809",
                                    b"-9999999999999999999", b"1e308", b"1e309", b"-1E+999",
                                    b"123456789012345678.5", b"1.5e-400"])
def test_numbers_at_the_edges_decode_as_with_the_hooks(number: bytes) -> None:
    payload = b'{"a": [1, ' + number + b', {"b": ' + number + b"}]}"
    assert outcome("t", payload, True) == outcome("t", payload, False)


def timestamp_before(value: str) -> bool:
    """check_timestamp's date check as it was, with strptime."""
    try:
        datetime.strptime(value.partition(".")[0][:19], "%Y-%m-%dT%H:%M:%S")
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("ts", [*EDGE_TIMES, "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z",
                                "2026-11-22T23:59:61Z", "2026-11-22T23:59:62Z",
                                "2026-11-22T23:60:00Z", "2026-00-10T00:00:00Z",
                                "2026-01-00T00:00:00Z", "2026-04-31T00:00:00Z",
                                "0001-01-01T00:00:00Z", "2026-11-22T12:00:00.123456Z"])
def test_timestamps_checked_as_strptime_did(ts: str) -> None:
    try:
        check_timestamp(ts, "t")
        got = True
    except Reject:
        got = False
    if _TS.match(ts):
        assert got == timestamp_before(ts)
    else:
        assert not got


# -- lag -------------------------------------------------------------------------------------

def test_lag_counts_what_is_received_and_not_committed(tmp_path: Path) -> None:
    from agent.backend.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/i.db", tmp_path / "blobs")
    ingest = new_ingest(store)
    try:
        assert ingest.stats.lag_messages == 0 and ingest.stats.lag_oldest_s() == 0.0
        before = time.monotonic()
        for seq in (1, 2, 3):
            ingest.on_message(message(RESULTS, dumps(result_body(seq)), mid=seq))
        assert ingest.stats.lag_messages == 3
        assert ingest.stats.lag_since is not None and ingest.stats.lag_since >= before
        assert ingest.stats.lag_oldest_s(time.monotonic() + 2.0) >= 2.0
        ingest.on_message(message(RESULTS, b"not json", mid=4))  # rejected at once: no lag
        assert ingest.stats.lag_messages == 3
        ingest.flush()
        assert stored_seqs(store) == [1, 2, 3]
        assert ingest.stats.lag_messages == 0 and ingest.stats.lag_oldest_s() == 0.0
        assert ingest.stats.commits == 1 and ingest.stats.commit_s > 0
    finally:
        store.close()


@pytest.mark.broker
def test_metrics_serve_lag_and_commit_time(tmp_path: Path, broker: LocalBroker) -> None:
    port = free_port()
    ingest = IngestProcess(broker.url, tmp_path / "i.db", "--metrics-listen", f"127.0.0.1:{port}")
    publish(broker.port, [(RESULTS, dumps(result_body(n))) for n in range(1, 51)])
    wait_until(lambda: scrape(port).get("lepton_ingest_stored_total") == 50, "50 stored")
    wait_until(lambda: scrape(port).get("lepton_ingest_lag_messages") == 0, "lag back to 0")
    samples = scrape(port)
    stats, _ = ingest.stop()
    assert samples["lepton_ingest_lag_oldest_seconds"] == 0.0
    assert samples["lepton_ingest_batch_commit_seconds_count"] == stats["commits"] >= 1
    assert 0 < samples["lepton_ingest_batch_commit_seconds_sum"] < 60
    assert samples["lepton_ingest_store_outages_total"] == 0


# -- ingest --check --------------------------------------------------------------------------

def test_check_says_broker_and_database_are_reachable_and_current(
        tmp_path: Path, broker: LocalBroker) -> None:
    db = f"sqlite:///{tmp_path}/i.db"
    fresh = run_cli("ingest", "--broker", broker.url, "--db", db, "--check")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "reachable" in fresh.stdout and "absent" in fresh.stdout
    ingest = IngestProcess(broker.url, tmp_path / "i.db")
    ingest.stop()
    ok = run_cli("ingest", "--broker", broker.url, "--db", db, "--check")
    assert ok.returncode == 0 and "schema current" in ok.stdout, ok.stdout
    port = broker.port
    broker.stop()
    down = run_cli("ingest", "--broker", f"mqtt://127.0.0.1:{port}", "--db", db, "--check")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stdout.startswith("FAIL broker") and "unreachable" in down.stdout
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE outbox (x)")
    broker.start()
    foreign = run_cli("ingest", "--broker", broker.url, "--db",
                      f"sqlite:///{tmp_path}/other.db", "--check")
    assert foreign.returncode == 1 and "not ingest's: outbox" in foreign.stdout


def test_check_on_postgresql(tmp_path: Path, broker: LocalBroker, pg_url: str) -> None:
    empty = run_cli("ingest", "--broker", broker.url, "--db", pg_url, "--check")
    assert empty.returncode == 0 and "schema empty" in empty.stdout, empty.stdout
    IngestProcess(broker.url, tmp_path / "i.db", "--db", pg_url).stop()
    ok = run_cli("ingest", "--broker", broker.url, "--db", pg_url, "--check")
    assert ok.returncode == 0 and "schema current" in ok.stdout, ok.stdout
    bad = run_cli("ingest", "--broker", broker.url, "--db",
                  "postgresql://postgres@127.0.0.1:1/test", "--check")
    assert bad.returncode == 1 and "unreachable" in bad.stdout


# -- PostgreSQL going away mid-run -----------------------------------------------------------

def terminate_ingest_backends(pg_url: str) -> int:
    """pg_terminate_backend on this test's ingest connections (application_name names the
    schema), as a server restart does to them."""
    import psycopg

    base, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "application_name = %s", (f"lepton-ingest/{schema}",)).fetchall()
    return len(rows)


@pytest.mark.slow
def test_postgresql_connections_killed_mid_run_lose_nothing(
        tmp_path: Path, broker: LocalBroker, pg_url: str) -> None:
    port = free_port()
    ingest = IngestProcess(broker.url, tmp_path / "i.db", "--db", pg_url,
                           "--metrics-listen", f"127.0.0.1:{port}")
    options = FleetOptions(devices=20, rate=20.0, seconds=8.0, site="pgdown", ack_timeout_s=2.0,
                           drain_s=60.0)
    killed: list[int] = []

    async def run() -> FleetReport:
        async def killer() -> None:
            for _ in range(3):  # three outages, 2 s apart, while records flow
                await asyncio.sleep(2.0)
                killed.append(await asyncio.to_thread(terminate_ingest_backends, pg_url))
        task = asyncio.create_task(killer())
        report = await run_fleet(parse_broker(broker.url), options, store_reader(pg_url))
        await task
        return report

    report = asyncio.run(run())
    samples = scrape(port)
    stats, log = ingest.stop()
    assert sum(killed) >= 3, killed
    assert stats["store_outages"] >= 1 and samples["lepton_ingest_store_outages_total"] >= 1
    assert "PostgreSQL went away" in log and "the database is back" in log
    assert report.offered == 20 * 160
    assert report.lost == 0 and report.pending == 0 and report.duplicates_stored == 0
    assert report.stored == report.offered
