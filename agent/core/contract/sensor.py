"""The ``lepton.sensor`` v1 record: a sensor's latest reading (and the window a model scored)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agent.core.contract.result import iso_utc
from agent.core.contract.wire import compact, decode_body

SENSOR_SCHEMA = {"id": "lepton.sensor", "version": 1}


def sensor_body(*, device: str, site: str, stream: str, ts: float, protocol: str,
                values: Mapping[str, float], counters: Mapping[str, int],
                model: Mapping[str, str] | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A sensor record without its seq (assigned when the outbox commits it); non-finite values
    are left out, since JSON has no NaN or infinity."""
    body: dict[str, Any] = {
        "schema": SENSOR_SCHEMA, "device": device, "site": site, "stream": stream,
        "ts": iso_utc(ts), "protocol": protocol,
        "values": {k: v for k, v in values.items() if math.isfinite(v)},
        "counters": dict(counters)}
    if model is not None:
        body["model"] = dict(model)
    body.update(extra or {})
    return body


def encode_sensor(body: Mapping[str, Any], *, seq: int) -> bytes:
    """The payload of a sensor record made by :func:`sensor_body`, with its seq."""
    return compact({**body, "seq": seq})


def decode_sensor(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.sensor`` v1 payload; ValueError says what is malformed."""
    return decode_body(payload, SENSOR_SCHEMA)
