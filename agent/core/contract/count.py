"""The ``lepton.count`` v1 record: one pipeline's line and zone counts over one interval (a
bucket aligned to wall-clock time), per rule, class and direction.

The record goes on ``counts/{source}`` (``source``: the pipeline's stream) and has a seq space
of its own, the outbox stream ``{source}.counts`` (:func:`count_stream`), which is what the
body's ``stream`` carries: ingest keys it on (device, stream, seq) and acknowledges that stream,
so the device's outbox marks it ingested like a result. Build a :class:`CountRecord` when a
bucket closes and hand :func:`encode_count` to the outbox, which calls it with the seq.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from agent.core.contract.topics import check_segment
from agent.core.contract.wire import compact, decode_body

COUNT_SCHEMA = {"id": "lepton.count", "version": 1}
KINDS = ("line", "zone")
DIRECTIONS = ("in", "out")
MAX_ENTRIES = 4096
"""Most count entries in one record (rules x classes x 2 directions); the schema's maxItems."""
MAX_BUCKET_SECONDS = 86400
MAX_COUNT = 2**31 - 1
MAX_LABEL = 128
SEQ_MAX = 2**63 - 1
_STREAM_SUFFIX = ".counts"
_START = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def count_stream(source: str) -> str:
    """The stream (own seq space, in the outbox and at ingest) of the counts of ``source``."""
    return f"{source}{_STREAM_SUFFIX}"


def _plain(value: Any) -> Any:
    """A str-valued enum member as its value (``Direction.IN`` -> ``"in"``)."""
    return value.value if isinstance(value, enum.Enum) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CountEntry:
    """How many of ``label`` crossed line ``rule`` (or entered, ``in``, / left, ``out``, zone
    ``rule``) in ``direction`` during the bucket."""

    rule: str
    kind: str
    label: str
    direction: str
    count: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _plain(self.kind))
        object.__setattr__(self, "direction", _plain(self.direction))
        if not isinstance(self.rule, str):
            raise ValueError(f"count rule {self.rule!r} is not a string")
        check_segment("rule", self.rule)
        if self.kind not in KINDS:
            raise ValueError(f"count kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.label, str) or not 1 <= len(self.label) <= MAX_LABEL:
            raise ValueError(f"count label {self.label!r} must be 1-{MAX_LABEL} characters")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"count direction {self.direction!r} is not 'in' or 'out'")
        if not _is_int(self.count) or not 0 <= self.count <= MAX_COUNT:
            raise ValueError(f"count {self.count!r} of {self.rule}/{self.label}/{self.direction} "
                             f"must be an integer in 0..{MAX_COUNT}")

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What the entry counts: (rule, kind, label, direction); unique within a record."""
        return (self.rule, self.kind, self.label, self.direction)

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "label": self.label,
                "direction": self.direction, "count": self.count}


@dataclass(frozen=True)
class CountBucket:
    """The interval counted: ``start`` in epoch seconds (UTC), a whole multiple of ``seconds``
    (aligned to wall-clock time); ``partial`` when the agent did not see all of it (a graceful
    stop closed it early, or it was restored after a restart)."""

    start: float
    seconds: int
    partial: bool

    def __post_init__(self) -> None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not math.isfinite(seconds) or seconds != int(seconds) \
                or not 1 <= seconds <= MAX_BUCKET_SECONDS:
            raise ValueError(f"bucket seconds {seconds!r} must be a whole number of seconds in "
                             f"1..{MAX_BUCKET_SECONDS}")
        object.__setattr__(self, "seconds", int(seconds))
        start = self.start
        if isinstance(start, bool) or not isinstance(start, (int, float)) \
                or not math.isfinite(start):
            raise ValueError(f"bucket start {start!r} is not a number of epoch seconds")
        whole = round(start)
        # floor(t / s) * s in floating point lands within a few ulps of the whole second.
        if abs(start - whole) > 1e-3 or whole % self.seconds != 0:
            raise ValueError(f"bucket start {start!r} is not aligned to its {self.seconds} s "
                             "interval (a whole multiple of seconds since the epoch)")
        if not 0 <= whole <= 253402300799 - self.seconds:  # 1970 .. 9999-12-31T23:59:59
            raise ValueError(f"bucket start {start!r} is outside 1970..9999")
        object.__setattr__(self, "start", float(whole))
        if not isinstance(self.partial, bool):
            raise ValueError(f"bucket partial {self.partial!r} is not true or false")

    @property
    def start_s(self) -> int:
        """The start as whole epoch seconds."""
        return int(self.start)

    @property
    def start_iso(self) -> str:
        """RFC 3339 UTC, whole seconds: ``2026-11-22T13:37:00Z``."""
        return datetime.fromtimestamp(self.start_s, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start_iso, "seconds": self.seconds, "partial": self.partial}


@dataclass(frozen=True)
class CountRecord:
    """One closed bucket of one pipeline (``source``: its stream), before its seq is known."""

    device: str
    site: str
    source: str
    bucket: CountBucket
    counts: tuple[CountEntry, ...]

    def __post_init__(self) -> None:
        check_segment("device", self.device)
        check_segment("site", self.site)
        check_segment("source", self.source)
        object.__setattr__(self, "counts", tuple(self.counts))
        if len(self.counts) > MAX_ENTRIES:
            raise ValueError(f"{len(self.counts)} count entries in one record (at most "
                             f"{MAX_ENTRIES})")
        seen: set[tuple[str, str, str, str]] = set()
        for entry in self.counts:
            if entry.key in seen:
                raise ValueError("count entry {} given twice in one bucket".format(
                    "/".join(entry.key)))
            seen.add(entry.key)

    @property
    def stream(self) -> str:
        """The seq space the record belongs to: ``{source}.counts``."""
        return count_stream(self.source)


@dataclass(frozen=True)
class ReceivedCount:
    """A decoded ``lepton.count`` v1 record with its seq."""

    seq: int
    record: CountRecord


def count_record(*, device: str, site: str, source: str, start: float, seconds: float,
                 partial: bool, counts: Iterable[tuple[str, str, str, str, int]]) -> CountRecord:
    """A :class:`CountRecord` from plain values: ``counts`` as (rule, kind, label, direction,
    count) tuples (a direction may be a str enum); sorted by key so the payload is stable."""
    entries = sorted((CountEntry(r, k, lb, d, n) for r, k, lb, d, n in counts),
                     key=lambda e: e.key)
    return CountRecord(device, site, source, CountBucket(start, int(seconds), partial),
                       tuple(entries))


def encode_count(record: CountRecord, *, seq: int) -> bytes:
    """The compact UTF-8 JSON payload of ``record`` with its ``seq`` (assigned by the outbox)."""
    if not _is_int(seq) or not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"seq {seq!r} must be in 1..{SEQ_MAX}")
    return compact({"schema": COUNT_SCHEMA, "device": record.device, "site": record.site,
                    "stream": record.stream, "source": record.source, "seq": seq,
                    "bucket": record.bucket.to_json(),
                    "counts": [e.to_json() for e in record.counts]})


def _parse_start(value: Any) -> float:
    if not isinstance(value, str) or not _START.match(value):
        raise ValueError(f"bucket start {value!r} is not an RFC 3339 UTC time in whole seconds "
                         "(YYYY-MM-DDTHH:MM:SSZ)")
    try:
        when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"bucket start {value!r} is not a real date and time") from None
    return when.timestamp()


def count_from_json(body: Mapping[str, Any]) -> ReceivedCount:
    """The typed record of a parsed ``lepton.count`` v1 object; ValueError says what is wrong
    (including what the schema cannot say: a bucket start not aligned to its length, an entry
    key given twice, a ``stream`` that is not ``{source}.counts``)."""
    if dict(body.get("schema") or {}) != COUNT_SCHEMA:
        raise ValueError("payload lacks schema lepton.count v1")
    try:
        bucket, seq, entries = body["bucket"], body["seq"], body["counts"]
        if not isinstance(bucket, Mapping) or not isinstance(entries, list):
            raise ValueError("'bucket' must be an object and 'counts' a list")
        if not _is_int(seq) or not 1 <= seq <= SEQ_MAX:
            raise ValueError(f"seq {seq!r} must be in 1..{SEQ_MAX}")
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ValueError(f"count entry {entry!r} is not an object")
        record = CountRecord(
            device=body["device"], site=body["site"], source=body["source"],
            bucket=CountBucket(_parse_start(bucket["start"]), bucket["seconds"],
                               bucket["partial"]),
            counts=tuple(CountEntry(e["rule"], e["kind"], e["label"], e["direction"],
                                    e["count"]) for e in entries))
    except KeyError as exc:
        raise ValueError(f"count record lacks {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ValueError(f"count record is malformed: {exc}") from None
    if body.get("stream") != record.stream:
        raise ValueError(f"stream {body.get('stream')!r} is not {record.stream!r} (the counts "
                         "of source S are stream 'S.counts')")
    return ReceivedCount(seq, record)


def decode_count(payload: bytes) -> ReceivedCount:
    """The typed record of a ``lepton.count`` v1 payload; ValueError says what is malformed."""
    body = decode_body(payload, COUNT_SCHEMA)
    return count_from_json(body)

