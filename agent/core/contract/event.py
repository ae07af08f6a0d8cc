"""The ``lepton.event`` v1 record: something (an anomaly) started or ended."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.contract.result import iso_utc
from agent.core.contract.wire import compact, decode_body

EVENT_SCHEMA = {"id": "lepton.event", "version": 1}


def event_stream(source: str) -> str:
    """The stream (own seq space) of the events about ``source``."""
    return f"{source}.events"


def event_body(*, device: str, site: str, source: str, ts: float, type: str, label: str,
               score: float, model: Mapping[str, str]) -> dict[str, Any]:
    """An event record without its seq (assigned when the outbox commits it)."""
    return {"schema": EVENT_SCHEMA, "device": device, "site": site,
            "stream": event_stream(source), "ts": iso_utc(ts), "source": source, "type": type,
            "label": label, "score": round(score, 4), "model": dict(model)}


def encode_event(body: Mapping[str, Any], *, seq: int) -> bytes:
    """The payload of an event record made by :func:`event_body`, with its seq."""
    return compact({**body, "seq": seq})


def decode_event(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.event`` v1 payload; ValueError says what is malformed."""
    return decode_body(payload, EVENT_SCHEMA)
