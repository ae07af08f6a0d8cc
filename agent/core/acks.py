"""Ingest acknowledgements (contract ``lepton.ack`` v1): which (stream, seq) ranges are stored."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

ACK_SCHEMA = {"id": "lepton.ack", "version": 1}
Ranges = list[tuple[int, int]]


def to_ranges(seqs: Iterable[int]) -> Ranges:
    """Sorted, merged inclusive ranges covering ``seqs``."""
    out: Ranges = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def encode_ack(streams: dict[str, Ranges], *, ingest: str) -> bytes:
    body = {"schema": ACK_SCHEMA, "ingest": ingest,
            "streams": {s: [[lo, hi] for lo, hi in r] for s, r in sorted(streams.items())}}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_ack(payload: bytes) -> dict[str, Ranges]:
    """Parse an ack; raise ValueError saying what is malformed."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"ack is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != ACK_SCHEMA:
        raise ValueError("ack lacks schema lepton.ack v1")
    streams = body.get("streams")
    if not isinstance(streams, dict):
        raise ValueError("ack lacks a 'streams' object")
    out: dict[str, Ranges] = {}
    for stream, ranges in streams.items():
        if not isinstance(ranges, list):
            raise ValueError(f"ack ranges of stream {stream!r} are not a list")
        parsed: Ranges = []
        for item in ranges:
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
                    or not 1 <= item[0] <= item[1]):
                raise ValueError(f"bad range {item!r} for stream {stream!r}")
            parsed.append((item[0], item[1]))
        out[str(stream)] = parsed
    return out
