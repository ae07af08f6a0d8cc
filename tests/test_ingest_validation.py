"""Ingest validation: every malformed message is rejected with a reason, never a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backend.ingest import RecordValidator
from agent.backend.store import Store, open_store
from agent.core.contract.result import FrameResult, ModelRef, encode_result
from agent.devtools.mosquitto import LocalBroker
from agent.errors import RecordRejected, StorageError
from tests.conftest import agent_cmd, ingested_seqs
from tests.ingest_support import (
    DEVICE,
    RESULTS,
    SITE,
    IngestProcess,
    dumps,
    message,
    new_ingest,
    open_test_store,
    poison_messages,
    publish,
    rejects,
    result_body,
    stored_seqs,
    wait_until,
)

TOPIC = "lepton/v1/site1/dev1/results/cam0"


def good(seq: int = 1) -> bytes:
    r = FrameResult("cam0", 0, 1.0, 1, 10, 10, "detection")
    return encode_result(r, seq=seq, device="dev1", site="site1", model=ModelRef("m", "1", "0" * 64))


def test_valid_record() -> None:
    rec = RecordValidator().validate(TOPIC, good(7))
    assert (rec.device, rec.stream, rec.seq) == ("dev1", "cam0", 7)


@pytest.mark.parametrize(("topic", "payload", "why"), [
    (TOPIC, b"\xff\xfe", "not UTF-8"),
    (TOPIC, b"{", "not JSON"),
    (TOPIC, b"[]", "schema"),
    (TOPIC, json.dumps({**json.loads(good()), "seq": 0}).encode(), "seq"),
    (TOPIC, json.dumps({**json.loads(good()), "extra": 1}).encode(), "extra"),
    (TOPIC, json.dumps({k: v for k, v in json.loads(good()).items() if k != "ts"}).encode(), "ts"),
    ("lepton/v1/site1/other/results/cam0", good(), "does not match topic"),
    ("lepton/v1/site1/dev1/results/cam9", good(), "does not match topic"),
    ("lepton/v2/site1/dev1/results/cam0", good(), "unsupported contract version"),
    ("lepton/v1/site1/dev1/status", good(), "not a record topic"),
])
def test_rejections_name_the_problem(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(RecordRejected) as info:
        RecordValidator().validate(topic, payload)
    assert why in str(info.value) and info.value.topic == topic


def test_store_is_idempotent(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/ingest.db")
    v = RecordValidator()
    recs = [v.validate(TOPIC, good(i)) for i in (1, 2, 3)]
    assert store.store(recs) == 3
    assert store.store([*recs[1:], v.validate(TOPIC, good(4))]) == 1
    assert store.count() == 4
    store.close()


def test_bad_db_urls() -> None:
    with pytest.raises(StorageError, match="sqlite:///PATH"):
        open_store("mysql://x/y")


# -- poison messages: rejected, counted, acknowledged; the next valid record is stored ------

@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_test_store(request.param, tmp_path)


def test_poison_messages_are_rejected_counted_and_the_next_record_stored(store: Store) -> None:
    ingest = new_ingest(store)
    poison = poison_messages()
    for n, (_, topic, payload) in enumerate(poison, start=1):
        ingest.on_message(message(topic, payload, mid=n))
        ingest.flush()
    ingest.on_message(message(RESULTS, dumps(result_body(7))))
    ingest.flush()
    assert stored_seqs(store) == [7]
    want: dict[str, int] = {}
    for code, _, _ in poison:
        want[code] = want.get(code, 0) + 1
    assert ingest.stats.rejects == want, [r[1] for r in rejects(store)]
    assert ingest.stats.rejected == len(poison) and ingest.stats.stored == 1
    rows = rejects(store)
    assert [r[0] for r in rows] == [topic for _, topic, _ in poison]
    assert all(len(payload) <= 65536 for _, _, payload in rows)
    big = next(r for r in rows if "exceeds" in r[1])
    assert len(big[2]) == 65536  # a huge payload is kept truncated
    assert "nested 100000 deep" in rows[6][1]
    for code in want:
        assert f"{code} {want[code]}" in ingest.stats.summary()


def test_a_record_the_database_refuses_is_rejected_and_the_rest_of_its_batch_stored(
        tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/ingest.db")
    with sqlite3.connect(tmp_path / "ingest.db") as conn:  # a value rule the schema lacks
        conn.execute("CREATE TRIGGER no13 BEFORE INSERT ON records WHEN NEW.seq = 13 "
                     "BEGIN SELECT RAISE(ABORT, 'seq 13 refused'); END")
    ingest = new_ingest(store)
    for seq in (12, 13, 14):
        ingest.on_message(message(RESULTS, dumps(result_body(seq)), mid=seq))
    ingest.flush()
    assert stored_seqs(store) == [12, 14]
    assert ingest.stats.rejects == {"unstorable": 1}
    assert "seq 13 refused" in rejects(store)[0][1]
    store.close()


# -- the --db URL ------------------------------------------------------------------------

def test_three_slashes_are_relative_and_the_absolute_reading_is_suggested(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as err:
        open_store("sqlite:///tmp/x.db")  # meant /tmp/x.db; ./tmp does not exist
    assert "sqlite:////tmp/x.db" in str(err.value) and str(tmp_path) in str(err.value)
    assert not (tmp_path / "tmp").exists()
    store = open_store("sqlite:///rel.db")
    assert store.describe() == f"SQLite {tmp_path / 'rel.db'}"
    store.close()
    store = open_store(f"sqlite:///{tmp_path}/abs.db")  # four slashes: absolute
    assert (tmp_path / "abs.db").exists()
    store.close()


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(StorageError, match=f"directory {missing} does not exist") as err:
        open_store(f"sqlite:///{missing}/x.db")
    assert "mkdir -p" in str(err.value)
    assert not (tmp_path / "no").exists()


def test_an_agent_outbox_is_refused_as_ingest_database(tmp_path: Path) -> None:
    from agent.storage.outbox import Outbox

    Outbox(tmp_path / "outbox.db").close()
    before = (tmp_path / "outbox.db").read_bytes()
    with pytest.raises(StorageError, match="not an ingest database") as err:
        open_store(f"sqlite:///{tmp_path}/outbox.db")
    assert "streams" in str(err.value)
    assert (tmp_path / "outbox.db").read_bytes() == before


def test_cli_names_the_db_problem_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(agent_cmd("ingest", "--broker", "mqtt://127.0.0.1:1", "--db",
                                   "sqlite:///tmp/x.db"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sqlite:////tmp/x.db" in out.stderr and not (tmp_path / "tmp").exists()


# -- real processes against a real mosquitto ----------------------------------------------

@pytest.mark.broker
def test_two_default_ingests_on_one_host_each_keep_their_connection(
        tmp_path: Path, broker: LocalBroker) -> None:
    ingests = [IngestProcess(broker.url, tmp_path / f"i{n}.db") for n in range(2)]
    publish(broker.port, [(RESULTS, dumps(result_body(seq))) for seq in range(1, 61)])
    wait_until(lambda: sum(len(ingested_seqs(i.db)) for i in ingests) == 60,
               "both ingests to store the 60 records")
    stats, logs = zip(*(i.stop() for i in ingests), strict=True)
    assert [s["connects"] for s in stats] == [1, 1], logs
    assert sorted(ingested_seqs(ingests[0].db) + ingested_seqs(ingests[1].db)) == \
        list(range(1, 61))
    assert all(s["stored"] > 0 for s in stats), stats  # the shared subscription split them
    for ingest, log in zip(ingests, logs, strict=True):
        assert f"ingest: storing into SQLite {ingest.db}" in log  # the resolved path
        assert "disconnected" not in log
        subscribed = [line.split("subscribed to ")[1] for line in log.splitlines()
                      if "subscribed to " in line]
        assert sorted(subscribed) == sorted(
            f"$share/ingest/lepton/v1/+/+/{kind}/+"
            for kind in ("results", "shards", "sensors", "events", "counts")), log


@pytest.mark.broker
@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")
def test_ingest_over_mutual_tls(tmp_path: Path) -> None:
    from tests.test_tls import make_pki

    pki = make_pki(tmp_path)
    server = {"ca": pki["ca.crt"], "cert": pki["server.crt"], "key": pki["server.key"]}
    client = {"ca": pki["ca.crt"], "cert": pki["client.crt"], "key": pki["client.key"]}
    with LocalBroker(tmp_path / "broker", tls=server) as broker:
        ingest = IngestProcess(broker.url, tmp_path / "i.db", "--tls-ca", str(pki["ca.crt"]),
                               "--tls-cert", str(pki["client.crt"]),
                               "--tls-key", str(pki["client.key"]))
        publish(broker.port, [(RESULTS, dumps(result_body(1)))], tls=client)
        wait_until(lambda: ingested_seqs(ingest.db) == [1], "the record over mqtts")
        stats, _ = ingest.stop()
        assert stats["stored"] == 1 and stats["connects"] == 1


@pytest.mark.parametrize(("flags", "why"), [
    (["--tls-ca", "/no/such/ca.pem"], "[--tls-ca]: /no/such/ca.pem does not exist"),
    (["--tls-key", "{tmp}/junk.pem"], "[--tls-key]: a client key without a certificate"),
    (["--tls-ca", "{tmp}/junk.pem"], "[--tls-ca]: cannot load the CA certificate"),
    (["--tls-cert", "{tmp}/junk.pem", "--tls-key", "{tmp}/junk.pem"],
     "[--tls-cert]: cannot load the client certificate"),
    (["--tls-ca", "{tmp}/junk.pem"], "[--broker]: --tls-ca given, but the broker URL is not"),
])
def test_ingest_tls_flags_name_the_bad_file(tmp_path: Path, flags: list[str], why: str) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    broker = "mqtt://127.0.0.1:1" if "[--broker]" in why else "mqtts://127.0.0.1:1"
    out = subprocess.run(agent_cmd("ingest", "--broker", broker, "--db",
                                   f"sqlite:///{tmp_path}/x.db",
                                   *(f.format(tmp=tmp_path) for f in flags)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert why in out.stderr


def _shard(data: bytes, **manifest: Any) -> list[tuple[str, bytes, list[tuple[str, str]]]]:
    """A one-chunk blob: its chunk and its manifest (fields overridden by ``manifest``)."""
    blob = hashlib.sha256(data).hexdigest()
    props = [("blob-sha256", blob), ("chunk-count", "1"), ("blob-size", str(len(data)))]
    body = {"schema": {"id": "lepton.shard-manifest", "version": 1}, "blob": blob,
            "size": len(data), "chunk_count": 1, "kind": "snapshot",
            "content_type": "image/jpeg", "meta": {}, **manifest}
    topic = f"lepton/v1/{SITE}/{DEVICE}/shards/{blob}"
    return [(topic, data, [*props, ("lepton-part", "chunk"), ("chunk-index", "0"),
                           ("chunk-sha256", blob)]),
            (topic, dumps(body), [*props, ("lepton-part", "manifest")])]


@pytest.mark.parametrize("manifest", [{"kind": {"a": 1}}, {"content_type": ["x"]},
                                      {"kind": "a\x00b"}, {"meta": [1]}])
def test_a_manifest_the_database_cannot_take_is_rejected(store: Store,
                                                         manifest: dict[str, Any]) -> None:
    ingest = new_ingest(store)
    for n, (topic, payload, props) in enumerate(_shard(b"bad blob", **manifest), start=1):
        ingest.on_message(message(topic, payload, mid=n, props=props))
    assert ingest.stats.rejected == 1, ingest.stats.last_reject
    for n, (topic, payload, props) in enumerate(_shard(b"good blob"), start=1):
        ingest.on_message(message(topic, payload, mid=n, props=props))
    ingest.flush()
    assert ingest.stats.blobs_completed == 1


def test_reject_reasons_are_logged_periodically(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    store = open_store(f"sqlite:///{tmp_path}/ingest.db")
    ingest = new_ingest(store)
    caplog.set_level(logging.INFO, logger="agent.ingest")
    want = "received 3, stored 1, duplicates 0, rejected 2 (not_json 1, schema 1)"

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ingest.committer(stop, stats_interval=0.05))
        for n, payload in enumerate((b"{", b"[]", dumps(result_body(1))), start=1):
            ingest.on_message(message(RESULTS, payload, mid=n))
        deadline = asyncio.get_running_loop().time() + 60
        while not any(want in r.getMessage() for r in caplog.records):
            assert asyncio.get_running_loop().time() < deadline, caplog.text
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(run())
    periodic = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ingest: ")]
    assert any(want in line for line in periodic), periodic
    store.close()
