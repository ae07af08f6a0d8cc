"""The ``lepton.telemetry`` v1 message: a periodic health report."""

from __future__ import annotations

from typing import Any

from agent.core.contract.result import iso_utc
from agent.core.contract.wire import compact, decode_body

TELEMETRY_SCHEMA = {"id": "lepton.telemetry", "version": 1}


def encode_telemetry(
    *, device: str, site: str, wall_time: float, health: dict[str, Any]
) -> bytes:
    """Payload of a periodic health report on ``telemetry``."""
    body = {"schema": TELEMETRY_SCHEMA, "device": device, "site": site,
            "ts": iso_utc(wall_time), **health}
    return compact(body)


def decode_telemetry(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.telemetry`` v1 payload; ValueError says what is malformed."""
    return decode_body(payload, TELEMETRY_SCHEMA)
