"""Helpers for the ingest tests: stores on SQLite and PostgreSQL, valid records of each kind,
real paho messages fed to a real :class:`agent.backend.ingest.Ingest` (no broker)."""

from __future__ import annotations

import json
import os
import sqlite3
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
