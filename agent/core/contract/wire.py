"""The JSON framing every contract message shares: compact UTF-8 out, a checked header in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def compact(body: Mapping[str, Any], *, sort_keys: bool = False) -> bytes:
    """``body`` as compact UTF-8 JSON (no spaces), the form every message is sent in."""
    return json.dumps(body, separators=(",", ":"), sort_keys=sort_keys).encode()


def decode_body(payload: bytes, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of ``payload`` if its ``schema`` header is ``schema``; else ValueError."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{schema['id']} payload is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != dict(schema):
        raise ValueError(f"payload lacks schema {schema['id']} v{schema['version']}")
    return body
