"""The ``lepton.status`` v1 message: retained birth, clean stop and last will."""

from __future__ import annotations

from typing import Any

from agent.core.contract.result import iso_utc
from agent.core.contract.wire import compact, decode_body

STATUS_SCHEMA = {"id": "lepton.status", "version": 1}


def encode_status(
    *, state: str, device: str, site: str, wall_time: float, extra: dict[str, Any] | None = None
) -> bytes:
    """Payload of the retained ``status`` topic (birth, clean stop, and last will)."""
    body: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "state": state,
        "device": device,
        "site": site,
        "ts": iso_utc(wall_time),
    }
    if extra:
        body.update(extra)
    return compact(body)


def decode_status(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.status`` v1 payload; ValueError says what is malformed."""
    return decode_body(payload, STATUS_SCHEMA)
