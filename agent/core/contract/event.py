"""The ``lepton.event`` v1 record: something started or ended (a sensor's anomaly), or a
track crossed a line, entered or left a zone, loitered in it or made it overcrowded."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.contract.result import iso_utc
from agent.core.contract.topics import check_segment
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


# --- Track events: what a pipeline's lines and zones saw (additive in v1) ---------------------

TRACK_EVENT_TYPES = ("crossing", "zone_enter", "zone_exit", "loitering", "overcrowding")
MAX_TRAJECTORY = 32
"""Most [x, y] points an event's trajectory carries (the schema's maxItems)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+-]{1,64}$")
_DWELL_MAX = 31536000.0  # a year: the schema's bound
_OCCUPANCY_MAX = 1_000_000
_TRACK_ID_MAX = 2**63 - 1


def downsample(points: Sequence[tuple[float, float]],
               limit: int = MAX_TRAJECTORY) -> tuple[tuple[float, float], ...]:
    """At most ``limit`` of ``points``, evenly spread, the first and the last always kept;
    each clipped to [0, 1] and rounded to 4 decimals (1/10000 of the frame)."""
    if limit < 2:
        raise ValueError(f"trajectory limit {limit} must be at least 2")
    n = len(points)
    picks = range(n) if n <= limit else sorted({round(i * (n - 1) / (limit - 1))
                                                for i in range(limit)})
    return tuple((round(min(1.0, max(0.0, float(points[i][0]))), 4),
                  round(min(1.0, max(0.0, float(points[i][1]))), 4)) for i in picks)


@dataclass(frozen=True)
class SnapshotRef:
    """A blob sent as a shard (``shards/{sha256}``): the track's best snapshot."""

    sha256: str
    content_type: str = "image/jpeg"

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ValueError(f"snapshot sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if not isinstance(self.content_type, str) or not _CONTENT_TYPE.match(self.content_type):
            raise ValueError(f"snapshot content type {self.content_type!r} is not like "
                             "image/jpeg")

    def to_json(self) -> dict[str, str]:
        return {"sha256": self.sha256, "content_type": self.content_type}


def _number(what: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{what} {value!r} must be a number in {low:g}..{high:g}")
    return float(value)


@dataclass(frozen=True)
class TrackEvent:
    """A line or zone event about one track.

    ``type`` is one of :data:`TRACK_EVENT_TYPES`; ``label`` is the track's voted class and
    ``confidence`` that vote's confidence. ``direction`` is given for a crossing only,
    ``dwell_s`` for loitering and zone_exit only, ``occupancy`` for overcrowding only.
    ``trajectory`` holds the track's normalized box centres, oldest first (at most
    :data:`MAX_TRAJECTORY`: pass it through :func:`downsample`)."""

    type: str
    rule: str
    track_id: int
    label: str
    confidence: float
    trajectory: tuple[tuple[float, float], ...]
    direction: str | None = None
    dwell_s: float | None = None
    occupancy: int | None = None
    snapshot: SnapshotRef | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _plain(self.direction))
        object.__setattr__(self, "trajectory", tuple(
            (float(p[0]), float(p[1])) for p in self.trajectory))
        if self.type not in TRACK_EVENT_TYPES:
            raise ValueError(f"event type {self.type!r} is not one of "
                             f"{', '.join(TRACK_EVENT_TYPES)}")
        if not isinstance(self.rule, str):
            raise ValueError(f"event rule {self.rule!r} is not a string")
        check_segment("rule", self.rule)
        if isinstance(self.track_id, bool) or not isinstance(self.track_id, int) \
                or not 0 <= self.track_id <= _TRACK_ID_MAX:
            raise ValueError(f"track id {self.track_id!r} must be an integer >= 0")
        if not isinstance(self.label, str) or not 1 <= len(self.label) <= 128:
            raise ValueError(f"event label {self.label!r} must be 1-128 characters")
        _number("vote confidence", self.confidence, 0.0, 1.0)
        if not 1 <= len(self.trajectory) <= MAX_TRAJECTORY:
            raise ValueError(f"trajectory of {len(self.trajectory)} points: give 1-"
                             f"{MAX_TRAJECTORY} (downsample() bounds it)")
        for x, y in self.trajectory:
            _number("trajectory x", x, 0.0, 1.0)
            _number("trajectory y", y, 0.0, 1.0)
        wants = {"direction": self.type == "crossing",
                 "dwell_s": self.type in ("zone_exit", "loitering"),
                 "occupancy": self.type == "overcrowding"}
        for name, wanted in wants.items():
            given = getattr(self, name) is not None
            if given != wanted:
                raise ValueError(f"a {self.type} event {'needs' if wanted else 'takes no'} "
                                 f"{name}")
        if self.direction is not None and self.direction not in ("in", "out"):
            raise ValueError(f"crossing direction {self.direction!r} is not 'in' or 'out'")
        if self.dwell_s is not None:
            _number("dwell_s", self.dwell_s, 0.0, _DWELL_MAX)
        if self.occupancy is not None and (isinstance(self.occupancy, bool)
                                           or not isinstance(self.occupancy, int)
                                           or not 0 <= self.occupancy <= _OCCUPANCY_MAX):
            raise ValueError(f"occupancy {self.occupancy!r} must be an integer in "
                             f"0..{_OCCUPANCY_MAX}")

    def to_json(self) -> dict[str, Any]:
        """The event's own members of a ``lepton.event`` record."""
        body: dict[str, Any] = {"rule": self.rule, "track_id": self.track_id,
                                "label": self.label, "confidence": round(self.confidence, 4),
                                "trajectory": [[x, y] for x, y in self.trajectory]}
        if self.direction is not None:
            body["direction"] = self.direction
        if self.dwell_s is not None:
            body["dwell_s"] = round(self.dwell_s, 3)
        if self.occupancy is not None:
            body["occupancy"] = self.occupancy
        if self.snapshot is not None:
            body["snapshot"] = self.snapshot.to_json()
        return body


@dataclass(frozen=True)
class ReceivedTrackEvent:
    """A decoded track event record."""

    device: str
    site: str
    source: str
    seq: int
    ts: str
    event: TrackEvent
    model: dict[str, str] | None = None


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def track_event_body(*, device: str, site: str, source: str, ts: float, event: TrackEvent,
                     model: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A track event record without its seq (encode it with :func:`encode_event`); ``source``
    is the pipeline's stream, ``ts`` the wall-clock time of the frame the event happened on."""
    check_segment("source", source)
    body: dict[str, Any] = {"schema": EVENT_SCHEMA, "device": device, "site": site,
                            "stream": event_stream(source), "ts": iso_utc(ts), "source": source,
                            "type": event.type, **event.to_json()}
    if model is not None:
        body["model"] = dict(model)
    return body


def decode_track_event(payload: bytes) -> ReceivedTrackEvent:
    """The typed record of a track event payload; ValueError says what is malformed (an
    anomaly event is not a track event)."""
    body = decode_event(payload)
    try:
        snap = body.get("snapshot")
        event = TrackEvent(
            type=body["type"], rule=body["rule"], track_id=body["track_id"],
            label=body["label"], confidence=body["confidence"],
            trajectory=tuple((p[0], p[1]) for p in body["trajectory"]),
            direction=body.get("direction"), dwell_s=body.get("dwell_s"),
            occupancy=body.get("occupancy"),
            snapshot=None if snap is None else SnapshotRef(snap["sha256"], snap["content_type"]))
        seq = body["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"seq {seq!r} must be an integer >= 1")
        return ReceivedTrackEvent(body["device"], body["site"], body["source"], seq,
                                  body["ts"], event, body.get("model"))
    except KeyError as exc:
        raise ValueError(f"track event lacks {exc.args[0]!r}") from None
    except (TypeError, IndexError) as exc:
        raise ValueError(f"track event is malformed: {exc}") from None
