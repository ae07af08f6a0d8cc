"""PostgreSQL ingest against the server on this machine (127.0.0.1:5432, database ``test``),
each test in a schema of its own, created and dropped here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backend.store import IngestedRecord, PostgresStore, open_store
from agent.devtools.mosquitto import LocalBroker
from agent.errors import StorageError
from tests.e2e import Ingest, run_agent, write_config
from tests.ingest_support import PG_SERVER, pg_schema_url

psycopg = pytest.importorskip("psycopg", reason="pip install 'lepton-edge[backend]'")


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


def _rows(url: str, sql: str) -> list[tuple]:
    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return list(conn.execute(sql).fetchall())


def _record(seq: int, device: str = "dev-a", stream: str = "cam0") -> IngestedRecord:
    payload = json.dumps({"device": device, "stream": stream, "seq": seq, "detections": []})
    return IngestedRecord(device, "site-1", stream, seq, "2026-11-22T12:00:00.000Z", payload)


def test_upserts_are_idempotent_and_payloads_queryable(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    assert store.store([_record(1), _record(2), _record(3)]) == 3
    assert store.store([_record(2), _record(3), _record(4)]) == 1  # two duplicates
    assert store.store([_record(1, stream="cam1")]) == 1  # same seq, other stream
    assert store.count() == 5
    store.reject("lepton/v1/x", "bad json", b"\xff")
    store.close()
    assert _rows(pg_url, "SELECT payload->>'seq' FROM records WHERE stream = 'cam0' ORDER BY seq") \
        == [("1",), ("2",), ("3",), ("4",)]
    assert _rows(pg_url, "SELECT reason FROM rejects") == [("bad json",)]
    # A second opening (another ingest process) finds the tables and adds nothing twice.
    again = open_store(pg_url)
    assert again.store([_record(4)]) == 0
    again.close()


def test_bad_urls_name_the_problem() -> None:
    with pytest.raises(StorageError, match="plain lowercase identifier"):
        open_store("postgresql://postgres@127.0.0.1:5432/test?schema=Robert');DROP")
    with pytest.raises(StorageError, match=r"cannot open PostgreSQL") as err:
        open_store("postgresql://lepton:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in str(err.value) and ":***@" in str(err.value)


@pytest.mark.broker
def test_two_ingest_processes_split_a_shared_subscription_without_duplicates(
        tmp_path: Path, broker: LocalBroker, pg_url: str) -> None:
    ingests = [Ingest(broker.url, tmp_path / f"i{n}.db", f"ingest-pg-{n}", db_url=pg_url,
                      group="pg") for n in range(2)]
    config = write_config(tmp_path, broker.url, "dev-pg")
    # Paced as fast as it goes with no frame dropped: the count must not depend on timing.
    summary = run_agent(config, "--source", "synthetic://320x240@200", "--pace", "fast",
                        "--max-frames", "400")
    committed = summary["results_committed"]
    assert committed == 400
    stats = [i.stop() for i in ingests]
    rows = _rows(pg_url, "SELECT seq FROM records WHERE device = 'dev-pg' ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, committed + 1))
    stored = [s["stored"] for s in stats]
    assert sum(stored) == committed  # each record stored by exactly one process
    assert min(stored) > 0, f"the shared subscription did not split the load: {stored}"


def test_two_processes_share_chunks_of_one_blob_and_one_finishes_it(pg_url: str,
                                                                    tmp_path: Path) -> None:
    import threading

    from agent.backend.shards import parse_shard
    from agent.core.contract.shard import shard_properties
    from agent.storage.blobs import BlobStore
    from agent.storage.outbox import Outbox

    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    data = os.urandom(40_000)
    blob = box.put(data, meta={"k": 1})
    topic = "lepton/v1/s/d/shards/" + blob
    parts = [parse_shard(topic, shard_properties(p), p.data) for p in box.pending(1000)]
    stores = [PostgresStore(pg_url, tmp_path / "blobs"), PostgresStore(pg_url, tmp_path / "blobs")]
    finished: list[bool] = []

    def feed(store: PostgresStore, mine: list) -> None:  # type: ignore[type-arg]
        for part in mine:
            state = store.add_shard(part)
            finished.append(state.complete)

    threads = [threading.Thread(target=feed, args=(stores[n], parts[n::2])) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finished.count(True) == 1  # exactly one process completed it
    assert (tmp_path / "blobs" / blob[:2] / blob).read_bytes() == data
    assert _rows(pg_url, "SELECT meta->>'k', size FROM blobs") == [("1", 40_000)]
    assert _rows(pg_url, "SELECT COUNT(*) FROM shard_chunks") == [(0,)]
    for s in stores:
        s.close()


def test_a_lost_database_stops_ingest_without_acknowledging(pg_url: str) -> None:
    """A database that goes away is no message's fault: ingest stops with the error (one
    line at the CLI) and acknowledges nothing, so the broker redelivers to the next start."""
    import asyncio

    from agent.backend.ingest import Ingest
    from tests.ingest_support import RESULTS, dumps, message, result_body

    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    ingest = Ingest(store, "lepton/v1/+/+/results/+")
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))
    ingest.on_message(message(RESULTS, b"not json", mid=1))  # its reject cannot be written
    ingest.on_message(message(RESULTS, dumps(result_body(1)), mid=2))
    assert isinstance(ingest.failed, StorageError) and ingest.stats.rejected == 0
    with pytest.raises(StorageError, match="PostgreSQL"):
        asyncio.run(ingest.committer(asyncio.Event()))
    store.close()


def test_a_schema_with_another_records_table_is_refused(pg_url: str) -> None:
    base, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".records (id serial, stream text, seq int, '
                     'payload bytea)')
    with pytest.raises(StorageError, match="not an ingest database: its records table has "
                                           "columns id, stream, seq, payload"):
        open_store(pg_url)
