"""The count record (``lepton.count`` v1) and the track events of ``lepton.event`` v1: built by
their real encoders (agent/core/contract/count.py, event.py), valid against their JSON Schemas,
decoded back; and a red case per schema rule the encoders must never break."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent.core.contract.count import (
    CountBucket,
    CountEntry,
    CountRecord,
    count_record,
    count_stream,
    decode_count,
    encode_count,
)
from agent.core.contract.event import (
    MAX_TRAJECTORY,
    SnapshotRef,
    TrackEvent,
    decode_event,
    decode_track_event,
    downsample,
    encode_event,
    event_body,
    track_event_body,
)
from agent.core.contract.topics import DeviceTopics, parse_topic
from agent.schemas import load_schema

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME = st.text("abcxyzABC0189_.:-", min_size=1, max_size=64)
LABEL = st.sampled_from(["car", "truck", "bus", "traffic light", "person"])
START_2026 = 1795000020  # 2026-11-18T11:07:00Z (date -u -d @1795000020), a whole minute


def _errors(schema: str, body: Any) -> list[str]:
    return [e.message for e in Draft202012Validator(load_schema(schema)).iter_errors(body)]


def _valid(schema: str, body: Any) -> None:
    assert _errors(schema, body) == []


# --- counts ---------------------------------------------------------------------------------

@st.composite
def _records(draw: st.DrawFn) -> CountRecord:
    seconds = draw(st.sampled_from([1, 15, 60, 300, 900, 3600, 86400]))
    start = draw(st.integers(0, 4102444800 // seconds)) * seconds
    keys = draw(st.lists(st.tuples(NAME, st.sampled_from(["line", "zone"]), LABEL,
                                   st.sampled_from(["in", "out"])), unique=True, max_size=12))
    counts = [(*k, draw(st.integers(0, 2**31 - 1))) for k in keys]
    return count_record(device=draw(NAME), site=draw(NAME), source=draw(NAME),
                        start=float(start), seconds=seconds, partial=draw(st.booleans()),
                        counts=counts)


@FAST
@given(_records(), st.integers(1, 2**63 - 1))
def test_encoded_counts_validate_and_decode_back(record: CountRecord, seq: int) -> None:
    payload = encode_count(record, seq=seq)
    body = json.loads(payload)
    _valid("count.v1", body)
    assert body["stream"] == f"{record.source}.counts" == count_stream(record.source)
    assert body["seq"] == seq
    # The start as an independent reading of the RFC 3339 text: whole seconds, aligned.
    start = datetime.strptime(body["bucket"]["start"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()
    assert start == record.bucket.start and start % body["bucket"]["seconds"] == 0
    received = decode_count(payload)
    assert received.seq == seq and received.record == record


def test_a_closed_bucket_as_the_runtime_has_it() -> None:
    """Float start and seconds (what the analytics core's ClosedBucket holds), a str enum as
    direction: one record, its topic and stream, and the exact payload."""
    import enum

    class Direction(str, enum.Enum):
        IN = "in"
        OUT = "out"

    record = count_record(device="cam-n-01", site="a7", source="north", start=1795000020.0,
                          seconds=60.0, partial=True,
                          counts=[("stop-bar", "line", "truck", Direction.OUT, 1),
                                  ("stop-bar", "line", "car", Direction.IN, 12),
                                  ("yard", "zone", "person", Direction.IN, 2)])
    payload = encode_count(record, seq=7)
    assert json.loads(payload) == {
        "schema": {"id": "lepton.count", "version": 1}, "device": "cam-n-01", "site": "a7",
        "stream": "north.counts", "source": "north", "seq": 7,
        "bucket": {"start": "2026-11-18T11:07:00Z", "seconds": 60, "partial": True},
        "counts": [
            {"rule": "stop-bar", "kind": "line", "label": "car", "direction": "in", "count": 12},
            {"rule": "stop-bar", "kind": "line", "label": "truck", "direction": "out",
             "count": 1},
            {"rule": "yard", "kind": "zone", "label": "person", "direction": "in", "count": 2}]}
    topic = DeviceTopics("a7", "cam-n-01").counts("north")
    assert topic == "lepton/v1/a7/cam-n-01/counts/north"
    parsed = parse_topic(topic)
    assert (parsed.kind, parsed.stream) == ("counts", "north")
    # An empty bucket is a record too: it says "measured, nothing counted".
    empty = count_record(device="d", site="s", source="north", start=0.0, seconds=60,
                         partial=False, counts=[])
    _valid("count.v1", json.loads(encode_count(empty, seq=1)))


def _count_body(**change: Any) -> dict[str, Any]:
    body = json.loads(encode_count(count_record(
        device="d", site="s", source="north", start=float(START_2026), seconds=60,
        partial=False, counts=[("stop-bar", "line", "car", "in", 3)]), seq=1))
    for path, value in change.items():
        *parents, leaf = path.split("__")
        target = body
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DROP:
            del target[leaf]
        else:
            target[leaf] = value
    return body


_DROP = object()


@pytest.mark.parametrize("change, where", [
    ({"counts__0__direction": "up"}, "direction"),
    ({"counts__0__kind": "area"}, "kind"),
    ({"counts__0__count": -1}, "count"),
    ({"counts__0__count": 2**31}, "count"),
    ({"counts__0__extra": 1}, "additional"),
    ({"counts__0__rule": "stop bar"}, "rule"),
    ({"bucket__seconds": 0}, "seconds"),
    ({"bucket__seconds": 86401}, "seconds"),
    ({"bucket__start": "2026-11-18T11:07:00.5Z"}, "start"),
    ({"bucket__start": "2026-11-18T11:07:00+01:00"}, "start"),
    ({"bucket__partial": _DROP}, "partial"),
    ({"stream": "north"}, "stream"),
    ({"seq": 0}, "seq"),
    ({"seq": 2**63}, "seq"),
    ({"ts": "2026-11-18T11:07:00Z"}, "additional"),
    ({"schema": {"id": "lepton.count", "version": 2}}, "schema"),
])
def test_count_schema_refuses(change: dict[str, Any], where: str) -> None:
    body = _count_body(**change)
    assert _errors("count.v1", body), f"count.v1 accepted a bad {where}: {body}"


def test_count_schema_accepts_the_unchanged_body() -> None:
    _valid("count.v1", _count_body())


@pytest.mark.parametrize("make, match", [
    (lambda: CountEntry("stop-bar", "line", "car", "up", 1), "direction"),
    (lambda: CountEntry("stop-bar", "area", "car", "in", 1), "kind"),
    (lambda: CountEntry("stop bar", "line", "car", "in", 1), "rule"),
    (lambda: CountEntry("stop-bar", "line", "car", "in", -1), "count"),
    (lambda: CountEntry("stop-bar", "line", "", "in", 1), "label"),
    (lambda: CountBucket(1795000030.0, 60, False), "aligned"),
    (lambda: CountBucket(1795000020.0, 61.5, False), "whole"),
    (lambda: CountBucket(-60.0, 60, False), "1970"),
    (lambda: count_record(device="d", site="s", source="n", start=0.0, seconds=60,
                          partial=False, counts=[("a", "line", "car", "in", 1),
                                                 ("a", "line", "car", "in", 2)]), "twice"),
    (lambda: count_record(device="d/x", site="s", source="n", start=0.0, seconds=60,
                          partial=False, counts=[]), "device"),
])
def test_count_types_refuse_what_the_contract_forbids(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("payload, match", [
    (json.dumps(_count_body(stream="south.counts")).encode(), "stream"),
    (json.dumps(_count_body(bucket__start="2026-11-18T11:07:30Z")).encode(), "aligned"),
    (json.dumps(_count_body(bucket__start="2026-02-30T00:00:00Z")).encode(), "real date"),
    (json.dumps({**_count_body(), "counts": [_count_body()["counts"][0]] * 2}).encode(), "twice"),
    (json.dumps(_count_body(bucket__partial=_DROP)).encode(), "partial"),
    (json.dumps(_count_body(schema={"id": "lepton.event", "version": 1})).encode(), "schema"),
    (b"\xff", "not JSON"),
])
def test_decode_count_says_what_is_wrong(payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_count(payload)


# --- track events ---------------------------------------------------------------------------

POINT = st.tuples(st.floats(-0.5, 1.5, allow_nan=False), st.floats(-0.5, 1.5, allow_nan=False))
SNAP = SnapshotRef("ab" * 32, "image/jpeg")


@st.composite
def _track_events(draw: st.DrawFn) -> TrackEvent:
    kind = draw(st.sampled_from(["crossing", "zone_enter", "zone_exit", "loitering",
                                 "overcrowding"]))
    return TrackEvent(
        type=kind, rule=draw(NAME), track_id=draw(st.integers(0, 2**63 - 1)),
        label=draw(LABEL), confidence=draw(st.floats(0, 1)),
        trajectory=downsample(draw(st.lists(POINT, min_size=1, max_size=500))),
        direction=draw(st.sampled_from(["in", "out"])) if kind == "crossing" else None,
        dwell_s=draw(st.floats(0, 86400)) if kind in ("zone_exit", "loitering") else None,
        occupancy=draw(st.integers(0, 500)) if kind == "overcrowding" else None,
        snapshot=draw(st.none() | st.just(SNAP)))


@FAST
@given(_track_events(), st.integers(1, 2**63 - 1), st.floats(0, 4102444800))
def test_track_events_validate_and_decode_back(event: TrackEvent, seq: int, ts: float) -> None:
    body = track_event_body(device="cam-n-01", site="a7", source="north", ts=ts, event=event,
                            model={"name": "m", "version": "1", "sha256": "0" * 64})
    payload = encode_event(body, seq=seq)
    raw = json.loads(payload)
    _valid("event.v1", raw)
    assert raw["stream"] == "north.events" and raw["type"] == event.type
    assert len(raw["trajectory"]) <= MAX_TRAJECTORY
    got = decode_track_event(payload)
    assert (got.seq, got.source, got.device, got.site) == (seq, "north", "cam-n-01", "a7")
    assert got.event.type == event.type and got.event.track_id == event.track_id
    assert got.event.trajectory == event.trajectory and got.event.snapshot == event.snapshot
    assert got.event.direction == event.direction and got.event.occupancy == event.occupancy


def test_downsample_keeps_the_ends_and_spreads_evenly() -> None:
    points = [(i / 99, 1 - i / 99) for i in range(100)]
    out = downsample(points, 32)
    assert len(out) == 32
    assert out[0] == (0.0, 1.0) and out[-1] == (1.0, 0.0)
    xs = [x for x, _ in out]
    steps = [b - a for a, b in itertools.pairwise(xs)]
    assert xs == sorted(xs) and max(steps) - min(steps) <= 1.5 / 99  # even to one index
    assert downsample([(1.7, -0.2)]) == ((1.0, 0.0),)  # clipped to the frame
    assert downsample(points[:5]) == tuple((round(x, 4), round(y, 4)) for x, y in points[:5])


def test_a_crossing_event_as_the_runtime_makes_it() -> None:
    event = TrackEvent("crossing", "stop-bar", 41, "car", 0.8734, ((0.5, 0.4), (0.5, 0.7)),
                       direction="in", snapshot=SNAP)
    body = track_event_body(device="d", site="s", source="north", ts=1795000020.25, event=event)
    assert json.loads(encode_event(body, seq=3)) == {
        "schema": {"id": "lepton.event", "version": 1}, "device": "d", "site": "s",
        "stream": "north.events", "ts": "2026-11-18T11:07:00.250000Z", "source": "north",
        "type": "crossing", "rule": "stop-bar", "track_id": 41, "label": "car",
        "confidence": 0.8734, "trajectory": [[0.5, 0.4], [0.5, 0.7]], "direction": "in",
        "snapshot": {"sha256": "ab" * 32, "content_type": "image/jpeg"}, "seq": 3}


def test_anomaly_events_still_validate_unchanged() -> None:
    """Additive: every event v1 allowed before still validates (the sensors' anomalies)."""
    body = event_body(device="d", site="s", source="vib0", ts=1.0, type="anomaly_start",
                      label="bearing", score=0.93, model={"name": "m", "version": "1",
                                                          "sha256": "0" * 64})
    _valid("event.v1", json.loads(encode_event(body, seq=1)))
    with pytest.raises(ValueError, match="rule"):  # not a track event
        decode_track_event(encode_event(body, seq=1))
    assert decode_event(encode_event(body, seq=1))["type"] == "anomaly_start"


def _event_body(**change: Any) -> dict[str, Any]:
    event = TrackEvent("zone_exit", "yard", 7, "person", 0.6, ((0.1, 0.2),), dwell_s=12.5,
                       snapshot=SNAP)
    body = json.loads(encode_event(track_event_body(device="d", site="s", source="north",
                                                    ts=1.0, event=event), seq=1))
    for key, value in change.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("change, why", [
    ({"type": "crossing", "dwell_s": _DROP}, "a crossing without direction"),
    ({"direction": "up", "type": "crossing", "dwell_s": _DROP}, "direction up"),
    ({"direction": "in"}, "direction on a zone exit"),
    ({"dwell_s": _DROP}, "a zone exit without dwell"),
    ({"occupancy": 3}, "occupancy on a zone exit"),
    ({"type": "overcrowding", "dwell_s": _DROP}, "overcrowding without occupancy"),
    ({"trajectory": [[0.5, 0.5]] * (MAX_TRAJECTORY + 1)}, "33 trajectory points"),
    ({"trajectory": [[0.5, 1.2]]}, "a point off the frame"),
    ({"trajectory": []}, "an empty trajectory"),
    ({"confidence": 1.5}, "confidence above 1"),
    ({"track_id": -1}, "a negative track id"),
    ({"label": _DROP}, "no label"),
    ({"snapshot": {"sha256": "AB" * 32, "content_type": "image/jpeg"}}, "uppercase sha"),
    ({"snapshot": {"sha256": "ab" * 32}}, "a snapshot without content type"),
    ({"score": 0.9}, "an anomaly score on a track event"),
    ({"type": "anomaly_end", "dwell_s": _DROP, "score": 0.5}, "track fields on an anomaly"),
    ({"type": "lane_change"}, "an unknown type"),
])
def test_event_schema_refuses(change: dict[str, Any], why: str) -> None:
    assert _errors("event.v1", _event_body(**change)), f"event.v1 accepted {why}"


def test_event_schema_accepts_the_unchanged_body() -> None:
    _valid("event.v1", _event_body())


@pytest.mark.parametrize("kwargs, match", [
    ({"type": "crossing"}, "needs direction"),
    ({"type": "zone_enter", "dwell_s": 3.0}, "takes no dwell_s"),
    ({"type": "overcrowding"}, "needs occupancy"),
    ({"type": "crossing", "direction": "up"}, "direction"),
    ({"type": "zone_enter", "trajectory": ()}, "trajectory"),
    ({"type": "zone_enter", "trajectory": ((0.1, 0.1),) * 33}, "trajectory"),
    ({"type": "zone_enter", "confidence": float("nan")}, "confidence"),
    ({"type": "tailgating"}, "type"),
])
def test_track_event_refuses_what_the_contract_forbids(kwargs: dict[str, Any],
                                                       match: str) -> None:
    base: dict[str, Any] = {"rule": "r", "track_id": 1, "label": "car", "confidence": 0.5,
                            "trajectory": ((0.1, 0.1),)}
    with pytest.raises(ValueError, match=match):
        TrackEvent(**{**base, **kwargs})
