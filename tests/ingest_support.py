"""Helpers for the ingest tests: stores on SQLite and PostgreSQL, valid records of each kind,
real paho messages fed to a real :class:`agent.backend.ingest.Ingest` (no broker)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backend.ingest import Ingest
from agent.backend.store import PostgresStore, SqliteStore, Store, open_store

PG_SERVER = os.environ.get("LEPTON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SITE, DEVICE = "site1", "dev1"
RESULTS = f"lepton/v1/{SITE}/{DEVICE}/results/cam0"
SENSORS = f"lepton/v1/{SITE}/{DEVICE}/sensors/vib0"
EVENTS = f"lepton/v1/{SITE}/{DEVICE}/events/vib0"
SHARDS = f"lepton/v1/{SITE}/{DEVICE}/shards/" + "ab" * 32


def result_body(seq: int) -> dict[str, Any]:
    return {"schema": {"id": "lepton.result", "version": 1}, "device": DEVICE, "site": SITE,
            "stream": "cam0", "seq": seq, "ts": "2026-11-22T12:00:00.123456Z", "mono_ns": 5,
            "frame": {"index": 0, "width": 10, "height": 10, "discontinuity": False},
            "model": {"name": "m", "version": "1", "sha256": "0" * 64}, "task": "detection",
            "latency_ms": {"capture": 1.5}, "detections": [
                {"label": "car", "class_id": 2, "score": 0.5, "box": [0.1, 0.1, 0.5, 0.5]}]}


def sensor_body(seq: int) -> dict[str, Any]:
    return {"schema": {"id": "lepton.sensor", "version": 1}, "device": DEVICE, "site": SITE,
            "stream": "vib0", "seq": seq, "ts": "2026-11-22T12:00:00.000000Z",
            "protocol": "csv", "values": {"x": 0.5}, "counters": {"bytes": 1, "readings": 1,
                                                                  "parse_errors": 0}}


def event_body(seq: int) -> dict[str, Any]:
    return {"schema": {"id": "lepton.event", "version": 1}, "device": DEVICE, "site": SITE,
            "stream": "vib0.events", "seq": seq, "ts": "2026-11-22T12:00:00.000000Z",
            "source": "vib0", "type": "anomaly_start", "label": "x", "score": 0.9}


def poison_messages() -> list[tuple[str, str, bytes]]:
    """(reason code, topic, payload) of messages that used to crash or wedge ingest."""
    def result(**change: Any) -> bytes:
        return dumps({**result_body(1), **change})

    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("number_range", RESULTS, result(seq=2**70)),
        ("schema", RESULTS, result(seq=2**63)),
        ("schema", RESULTS, result(mono_ns=2**64 - 1)),
        ("number_range", RESULTS, result(mono_ns=-(2**70))),
        ("schema", SENSORS, dumps({**sensor_body(1), "counters": {"bytes": 2**63}})),
        ("schema", EVENTS, dumps({**event_body(2**63)})),
        ("too_deep", RESULTS, deep),
        ("too_deep", RESULTS, b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("too_large", RESULTS, b" " * (2 << 20)),
        ("number_range", RESULTS, result(latency_ms={"capture": float("nan")})),
        ("number_range", RESULTS, result(latency_ms={"capture": float("inf")})),
        ("number_range", RESULTS, result(latency_ms={"capture": 1}).replace(b":1}", b":1e999}")),
        ("duplicate_key", RESULTS, result().replace(b'"seq":1,', b'"seq":1,"seq":2,')),
        ("bad_string", RESULTS, result(model={"name": "a\x00b", "version": "1",
                                              "sha256": "0" * 64})),
        ("bad_string", RESULTS, result().replace(b'"m"', b'"\\ud800"')),
        ("bad_ts", RESULTS, result(ts="2026-13-45T99:99:99Z")),
        ("bad_ts", SENSORS, dumps({**sensor_body(1), "ts": "yesterday"})),
        ("schema", EVENTS, dumps({**event_body(1), "stream": "x\x01y"})),
        ("not_utf8", RESULTS, b'{"a": "\xff"}'),
    ]


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def message(topic: str, payload: bytes, mid: int = 1,
            props: list[tuple[str, str]] | None = None) -> paho.MQTTMessage:
    """A real paho message as the link hands it to ingest."""
    msg = paho.MQTTMessage(mid, topic.encode())
    msg.payload = payload
    msg.qos = 1
    if props is not None:
        msg.properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        msg.properties.UserProperty = props
    return msg


def new_ingest(store: Store) -> Ingest:
    return Ingest(store, "lepton/v1/+/+/results/+", name="test-ingest")


def stored_seqs(store: Store, stream: str = "cam0") -> list[int]:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            return [r[0] for r in conn.execute(
                "SELECT seq FROM records WHERE stream = ? ORDER BY seq", (stream,))]
    assert isinstance(store, PostgresStore)
    with store._db.cursor() as cur:
        cur.execute("SELECT seq FROM records WHERE stream = %s ORDER BY seq", (stream,))
        rows = cur.fetchall()
    store._db.commit()
    return [int(r[0]) for r in rows]


def rejects(store: Store) -> list[tuple[str, str, bytes]]:
    """(topic, reason, payload) of every reject, oldest first."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            return list(conn.execute("SELECT topic, reason, payload FROM rejects ORDER BY id"))
    assert isinstance(store, PostgresStore)
    with store._db.cursor() as cur:
        cur.execute("SELECT topic, reason, payload FROM rejects ORDER BY id")
        rows = [(t, r, bytes(p)) for t, r, p in cur.fetchall()]
    store._db.commit()
    return rows


def pg_schema_url() -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards (skips without a server)."""
    psycopg = pytest.importorskip("psycopg", reason="pip install 'lepton-edge[backend]'")
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {exc}")
    schema = f"lepton_test_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{PG_SERVER}?schema={schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def open_test_store(kind: str, tmp_path: Path) -> Iterator[Store]:
    """An ingest store of ``kind`` ("sqlite" or "postgres"), closed afterwards."""
    if kind == "sqlite":
        store = open_store(f"sqlite:///{tmp_path}/ingest.db", tmp_path / "blobs")
        yield store
        store.close()
        return
    for url in pg_schema_url():
        store = open_store(url, tmp_path / "blobs")
        yield store
        store.close()


class IngestProcess:
    """``lepton-agent ingest`` as a real process with the given flags (no --client-id unless
    given), logging at info, started; reaped by conftest if a test fails half-way."""

    def __init__(self, broker_url: str, db: Path, *flags: str) -> None:
        from tests.conftest import ROOT
        from tests.e2e import ReapedIngest

        self.db = db
        self.rig = ReapedIngest(broker_url, db, *flags, log_level="info", cwd=ROOT).start()
        self.proc = self.rig.proc

    def stop(self) -> tuple[dict[str, Any], str]:
        """SIGTERM; the stats JSON it prints and its stderr."""
        return self.rig.stop(), self.rig.log


def publish(port: int, messages: list[tuple[str, bytes]], tls: dict[str, Path] | None = None,
            props: list[list[tuple[str, str]] | None] | None = None) -> None:
    """Publish QoS 1 and wait until the broker has each one."""
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if tls:
        client.tls_set(ca_certs=str(tls["ca"]), certfile=str(tls["cert"]),
                       keyfile=str(tls["key"]))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for n, (topic, payload) in enumerate(messages):
            p = None
            if props and props[n]:
                p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                p.UserProperty = props[n]
            infos.append(client.publish(topic, payload, qos=1, properties=p))
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
