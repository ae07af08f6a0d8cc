"""Ingest acknowledgements (contract ``lepton.ack`` v1): which (stream, seq) ranges are stored,
which blobs are complete, and which chunk ranges ingest holds of blobs still incomplete."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_BLOB_ID = re.compile(r"^[0-9a-f]{64}$")

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


@dataclass(frozen=True)
class Ack:
    """A decoded ``lepton.ack``."""

    streams: dict[str, Ranges] = field(default_factory=dict)
    blobs_complete: list[str] = field(default_factory=list)
    blobs_held: dict[str, Ranges] = field(default_factory=dict)


def encode_ack(streams: dict[str, Ranges], *, ingest: str, blobs_complete: Iterable[str] = (),
               blobs_held: dict[str, Ranges] | None = None) -> bytes:
    body: dict[str, Any] = {
        "schema": ACK_SCHEMA, "ingest": ingest,
        "streams": {s: [[lo, hi] for lo, hi in r] for s, r in sorted(streams.items())}}
    complete = sorted(set(blobs_complete))
    if complete or blobs_held:
        body["blobs"] = {"complete": complete, "held": {
            b: [[lo, hi] for lo, hi in r] for b, r in sorted((blobs_held or {}).items())}}
    return json.dumps(body, separators=(",", ":")).encode()


def _ranges(item_name: str, ranges: Any, low: int) -> Ranges:
    if not isinstance(ranges, list):
        raise ValueError(f"ack ranges of {item_name} are not a list")
    parsed: Ranges = []
    for item in ranges:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
                or not low <= item[0] <= item[1]):
            raise ValueError(f"bad range {item!r} for {item_name}")
        parsed.append((item[0], item[1]))
    return parsed


def decode_ack_full(payload: bytes) -> Ack:
    """Parse an ack with its blob part; raise ValueError saying what is malformed."""
    streams = decode_ack(payload)
    body: Any = json.loads(payload)
    blobs = body.get("blobs") or {}
    if not isinstance(blobs, dict):
        raise ValueError("ack 'blobs' is not an object")
    complete = blobs.get("complete", [])
    held = blobs.get("held", {})
    if not isinstance(complete, list) or not all(isinstance(b, str) and _BLOB_ID.match(b)
                                                 for b in complete):
        raise ValueError("ack 'blobs.complete' must list sha256 hex ids")
    if not isinstance(held, dict) or not all(_BLOB_ID.match(str(b)) for b in held):
        raise ValueError("ack 'blobs.held' must map sha256 hex ids to ranges")
    return Ack(streams, list(complete),
               {str(b): _ranges(f"blob {b}", r, 0) for b, r in held.items()})


def within_published(streams: Mapping[str, Ranges],
                     last_seq: Mapping[str, int]) -> tuple[dict[str, Ranges], int]:
    """The part of an ack the device can take: for each stream in ``last_seq`` (the streams it
    has records of, with the last seq it assigned), the ranges cut at that seq. Returns the
    ranges kept and how many ranges were dropped or cut: those of unknown streams and those
    reaching beyond the last seq. An ingest acknowledges only what it received, so these
    come from a confused or forged ack; the broker's ACLs are what keep forgers out."""
    kept: dict[str, Ranges] = {}
    ignored = 0
    for stream, ranges in streams.items():
        last = last_seq.get(stream)
        for lo, hi in ranges:
            if last is None or lo > last:
                ignored += 1
                continue
            if hi > last:
                ignored += 1
            kept.setdefault(stream, []).append((lo, min(hi, last)))
    return kept, ignored


def decode_ack(payload: bytes) -> dict[str, Ranges]:
    """Parse an ack's stream ranges; raise ValueError saying what is malformed."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"ack is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != ACK_SCHEMA:
        raise ValueError("ack lacks schema lepton.ack v1")
    streams = body.get("streams")
    if not isinstance(streams, dict):
        raise ValueError("ack lacks a 'streams' object")
    return {str(stream): _ranges(f"stream {stream!r}", ranges, 1)
            for stream, ranges in streams.items()}
