"""The MQTT contract: every message kind, built by its real encoder (agent/core/contract/), validates
against its JSON Schema (agent/schemas/), and its decoder gives back what was encoded."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError

from agent.core.contract.ack import Ack, decode_ack, decode_ack_full, encode_ack, to_ranges
from agent.core.contract.event import decode_event, encode_event, event_body
from agent.core.contract.result import (
    Classification,
    Detection,
    FrameResult,
    ModelRef,
    decode_result,
    encode_result,
)
from agent.core.contract.sensor import decode_sensor, encode_sensor, sensor_body
from agent.core.contract.shard import (
    MANIFEST,
    decode_manifest,
    decode_shard_properties,
    manifest_payload,
    shard_properties,
)
from agent.core.contract.status import decode_status, encode_status
from agent.core.contract.telemetry import decode_telemetry, encode_telemetry
from agent.core.contract.topics import DeviceTopics, parse_topic
from agent.schemas import load_schema
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox

# Each schema in agent/schemas and the test below that covers it.
COVERED = {"result.v1", "status.v1", "telemetry.v1", "sensor.v1", "event.v1", "ack.v1",
           "shard-manifest.v1", "shard-properties.v1",
           # count.v1: tested in test_count_contract.py; command.v1 and command-reply.v1 in
           # test_commands.py (every reply of the router and 10k fuzzed payloads)
           "count.v1", "command.v1", "command-reply.v1"}

SEGMENT = st.text("abcxyzABC0189_.:-", min_size=1, max_size=64)
UNIT = st.floats(0.0, 1.0, allow_nan=False)
WALL = st.floats(0.0, 4102444800.0, allow_nan=False)  # 1970 .. 2100
SHA = st.binary(min_size=1, max_size=64).map(lambda b: hashlib.sha256(b).hexdigest())
MODEL = ModelRef("lepton-vehicles-tiny", "1.2.0", "9f" * 32)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validate(schema: str, body: Any) -> None:
    Draft202012Validator(load_schema(schema)).validate(body)


def _wall(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_every_schema_is_covered() -> None:
    stems = {p.name.removesuffix(".json")
             for p in resources.files("agent.schemas").iterdir() if p.name.endswith(".json")}
    assert stems == COVERED


# --- result ----------------------------------------------------------------------------------

_box = st.tuples(*[st.floats(-0.5, 1.5, allow_nan=False)] * 4)
_detection = st.builds(Detection, st.integers(0, 90), st.sampled_from(["car", "bus", "person"]),
                       UNIT, _box)
_class = st.builds(Classification, st.integers(0, 999), st.sampled_from(["cat", "dog"]), UNIT)


@st.composite
def _results(draw: st.DrawFn) -> FrameResult:
    task = draw(st.sampled_from(["detection", "classification"]))
    return FrameResult(
        stream=draw(SEGMENT), frame_index=draw(st.integers(0, 2**40)), capture_wall=draw(WALL),
        capture_mono_ns=draw(st.integers(0, 2**62)), width=draw(st.integers(1, 7680)),
        height=draw(st.integers(1, 4320)), task=task,
        detections=draw(st.lists(_detection, max_size=5)) if task == "detection" else [],
        classes=draw(st.lists(_class, max_size=5)) if task == "classification" else [],
        latency_ms=draw(st.dictionaries(st.sampled_from(["capture", "prepare", "inference"]),
                                        st.floats(0, 5000, allow_nan=False))),
        discontinuity=draw(st.booleans()),
        snapshot=draw(st.none() | st.binary(min_size=1, max_size=32)))


@FAST
@given(_results(), st.integers(1, 2**63 - 1), SEGMENT, SEGMENT)
def test_result(result: FrameResult, seq: int, device: str, site: str) -> None:
    sensors = {"imu": {"ts": "2026-11-22T13:37:07.123456Z", "age_s": 0.02, "values": {"ax": 0.1}}}
    payload = encode_result(result, seq=seq, device=device, site=site, model=MODEL,
                            sensors=sensors)
    body = decode_result(payload)
    _validate("result.v1", body)
    assert (body["device"], body["site"], body["stream"], body["seq"]) == (
        device, site, result.stream, seq)
    assert abs(_wall(body["ts"]) - result.capture_wall) < 1e-5
    assert body["frame"] == {"index": result.frame_index, "width": result.width,
                             "height": result.height, "discontinuity": result.discontinuity}
    assert body["model"] == {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256}
    if result.task == "detection":
        assert [(d["class_id"], d["label"]) for d in body["detections"]] == [
            (d.class_id, d.label) for d in result.detections]
        assert all(0.0 <= v <= 1.0 for d in body["detections"] for v in d["box"])
    else:
        assert [c["class_id"] for c in body["classes"]] == [c.class_id for c in result.classes]
    assert body.get("snapshot") == (hashlib.sha256(result.snapshot).hexdigest()
                                    if result.snapshot is not None else None)
    assert body["sensors"] == sensors


# --- status and telemetry --------------------------------------------------------------------

CACHE = {"used_bytes": 81920, "budget_bytes": 1 << 30, "quarantined": None, "storage_error": None,
         "evictions": {"result": {"records": 3, "bytes": 4100}}}


@pytest.mark.parametrize("state", ["online", "offline"])
def test_status(state: str) -> None:
    extra = {"version": "0.9.0", "model": "lepton-vehicles-tiny", "model_sha256": "9f" * 32,
             "source": "rtsp://10.0.0.21/stream1", "stream": "north", "board": None,
             "host": "edge-7", "pid": 4242, "cache": CACHE}
    if state == "offline":
        extra = {"reason": "lost connection"}
    payload = encode_status(state=state, device="dev-a", site="site-1", wall_time=1795000000.5,
                            extra=extra)
    body = decode_status(payload)
    _validate("status.v1", body)
    assert body == {"schema": {"id": "lepton.status", "version": 1}, "state": state,
                    "device": "dev-a", "site": "site-1", "ts": "2026-11-18T11:06:40.500000Z",
                    **extra}


@FAST
@given(st.floats(0, 240, allow_nan=False), st.integers(0, 2**40), st.integers(0, 2**20),
       st.none() | st.floats(0, 86400, allow_nan=False), st.none() | st.floats(20, 110))
def test_telemetry(fps: float, frames: int, backlog: int, oldest: float | None,
                   temp: float | None) -> None:
    health = {"fps": fps, "frames_captured": frames + 7, "frames_processed": frames,
              "frames_dropped": 7, "queue_depth": {"frames": 2, "results": 0},
              "backlog": backlog, "oldest_unsent_s": oldest, "detections": 3 * frames,
              "frames_skipped_static": 0, "source_reconnects": 1, "source_error": None,
              "cpu_temp_c": temp, "throttled": False, "thermal_level": 0,
              "disk_free_bytes": 10 << 30, "uptime_s": 3600.5, "acks_ignored": 0,
              "health": "ok", "storage_errors": 0, "last_storage_error": None, "cache": CACHE}
    payload = encode_telemetry(device="dev-a", site="site-1", wall_time=1795000000.0,
                               health=health)
    body = decode_telemetry(payload)
    _validate("telemetry.v1", body)
    assert body == {"schema": {"id": "lepton.telemetry", "version": 1}, "device": "dev-a",
                    "site": "site-1", "ts": "2026-11-18T11:06:40.000000Z", **health}


def _pipelines_snapshot() -> Any:
    """A health snapshot of two pipelines, one running and one failed, combined as the runtime
    combines them (agent.service.snapshot.combined)."""
    from agent.service.snapshot import (
        BrokerHealth,
        CaptureStage,
        FrameQueue,
        Health,
        HealthSnapshot,
        InferenceStage,
        OtaStatus,
        OutboxHealth,
        PipelineStatus,
        ThermalHealth,
        combined,
    )

    def pipeline(stream: str, failed: bool) -> PipelineStatus:
        frames = 0 if failed else 240
        return PipelineStatus(
            stream=stream, state="failed" if failed else "running",
            reason="model /nonexistent/model.tflite: does not exist (fix: pass --model with a "
                   ".tflite file)" if failed else None,
            source="synthetic://160x120@20",
            model="/nonexistent/model.tflite" if failed else "lepton-vehicles-tiny",
            model_sha256=None if failed else "9f" * 32, threads=1, fps=0.0 if failed else 19.9,
            capture=CaptureStage(alive=not failed, source="synthetic://160x120@20",
                                 frames=frames + 2, reconnects=0, last_error=None, blocked_s=0.0,
                                 skipped_static=0),
            inference=InferenceStage(alive=not failed, model="lepton-vehicles-tiny",
                                     frames=frames, failures=0, detections=3 * frames,
                                     last_error=None),
            frames=FrameQueue(depth=0, capacity=0 if failed else 4,
                              policy="" if failed else "drop_oldest", dropped=2))

    pipelines = (pipeline("good", False), pipeline("broken", True))
    stages, queues, fps = combined(pipelines)
    outbox = OutboxHealth(
        backlog=0, oldest_unsent_s=None, published=0, ingested=0, acks_ignored=0,
        acks_malformed=0, blobs_waiting=0, blob_bytes_waiting=0, chunks_sent=0,
        blobs_completed=0, disk_free_bytes=10 << 30, used_bytes=4096, budget_bytes=1 << 28,
        wal_bytes=0, evictions={}, quarantined=None, storage_error=None, storage_errors=0,
        last_storage_error=None, results_held=0)
    return HealthSnapshot(
        state="running", health=Health(status="degraded", problems=()), pid=4242,
        device="dev-a", site="site-1", uptime_s=12.5, fps=fps, stages=stages, queues=queues,
        pipelines=pipelines, outbox=outbox,
        broker=BrokerHealth(url=None, connected=False, connects=0, last_error=None),
        sensors={}, thermal=ThermalHealth(temp_c=None, throttled=False, level=0),
        last_error=pipelines[1].reason, ota=OtaStatus.unknown())


def test_status_and_telemetry_carry_every_pipeline() -> None:
    """The retained status (tasks.status_payload) and telemetry (HealthSnapshot.telemetry) of
    a real snapshot with two pipelines validate; each pipeline's entry is decoded back."""
    from agent.service.tasks import status_payload

    snap = _pipelines_snapshot()
    status = decode_status(status_payload(state="online", device="dev-a", site="site-1",
                                          extra={"version": "0.9.0"}, snapshot=snap))
    _validate("status.v1", status)
    assert [(p["stream"], p["state"], p["model"]) for p in status["pipelines"]] == \
        [("good", "running", "lepton-vehicles-tiny"),
         ("broken", "failed", "/nonexistent/model.tflite")]
    assert "does not exist" in status["pipelines"][1]["reason"]
    telemetry = decode_telemetry(encode_telemetry(device="dev-a", site="site-1",
                                                  wall_time=1795000000.0,
                                                  health=snap.telemetry()))
    _validate("telemetry.v1", telemetry)
    good, broken = telemetry["pipelines"]
    assert (good["stream"], good["frames_processed"], good["frames_dropped"]) == ("good", 240, 2)
    assert (broken["state"], broken["frames_processed"]) == ("failed", 0)
    assert telemetry["frames_processed"] == 240  # the aggregate: all pipelines together


@pytest.mark.parametrize("schema", ["status.v1", "telemetry.v1"])
@pytest.mark.parametrize("broken", ["no state", "unknown state", "wrong type", "no stream"])
def test_a_malformed_pipeline_entry_is_refused(schema: str, broken: str) -> None:
    from agent.service.tasks import status_payload

    snap = _pipelines_snapshot()
    if schema == "status.v1":
        body = decode_status(status_payload(state="online", device="dev-a", site="site-1",
                                            extra={}, snapshot=snap))
    else:
        body = decode_telemetry(encode_telemetry(device="dev-a", site="site-1",
                                                 wall_time=1795000000.0, health=snap.telemetry()))
    _validate(schema, body)  # as built, it passes
    entry = body["pipelines"][1]
    if broken == "no state":
        del entry["state"]
    elif broken == "unknown state":
        entry["state"] = "sleeping"
    elif broken == "wrong type":  # a number where text is due, or text where a count is
        if schema == "status.v1":
            entry["model_sha256"] = 12
        else:
            entry["frames_processed"] = "12"
    else:
        del entry["stream"]
    with pytest.raises(ValidationError):
        _validate(schema, body)


def test_consumers_of_v1_may_ignore_pipelines() -> None:
    """Additive: a status or telemetry without ``pipelines`` (an older agent) still validates,
    and an unknown field beside it too (v1 consumers ignore what they do not know)."""
    snap = _pipelines_snapshot()
    telemetry = decode_telemetry(encode_telemetry(device="dev-a", site="site-1",
                                                  wall_time=1795000000.0,
                                                  health=snap.telemetry()))
    del telemetry["pipelines"]
    telemetry["something_new"] = {"x": 1}
    _validate("telemetry.v1", telemetry)
    status = decode_status(encode_status(state="online", device="dev-a", site="site-1",
                                         wall_time=1795000000.0, extra={"future": True}))
    _validate("status.v1", status)


# --- sensor and event ------------------------------------------------------------------------

_reading = st.dictionaries(st.sampled_from(["ax", "ay", "az", "lat", "lon", "temp"]),
                           st.floats(allow_infinity=True, allow_nan=True, width=32))


@FAST
@given(SEGMENT, WALL, _reading, st.integers(1, 2**63 - 1), st.booleans())
def test_sensor(name: str, ts: float, values: dict[str, float], seq: int, scored: bool) -> None:
    extra = ({"window": {"end": "2026-11-22T13:37:07.123456Z", "samples": 256, "rate_hz": 100.0,
                         "rms": {"ax": 0.02}}, "score": 0.1234, "anomaly": False}
             if scored else None)
    body = sensor_body(device="dev-a", site="site-1", stream=name, ts=ts, protocol="nmea0183",
                       values=values, counters={"bytes": 1024, "readings": 10, "parse_errors": 1},
                       model={"name": "bearing", "version": "1", "sha256": "ab" * 32}
                       if scored else None, extra=extra)
    decoded = decode_sensor(encode_sensor(body, seq=seq))
    _validate("sensor.v1", decoded)
    assert decoded == {**body, "seq": seq}
    assert decoded["values"] == {k: v for k, v in values.items() if math.isfinite(v)}
    assert abs(_wall(decoded["ts"]) - ts) < 1e-5


@FAST
@given(SEGMENT, WALL, st.sampled_from(["anomaly_start", "anomaly_end"]), UNIT,
       st.integers(1, 2**63 - 1))
def test_event(source: str, ts: float, kind: str, score: float, seq: int) -> None:
    body = event_body(device="dev-a", site="site-1", source=source, ts=ts, type=kind,
                      label="bearing_fault", score=score,
                      model={"name": "bearing", "version": "1", "sha256": "ab" * 32})
    decoded = decode_event(encode_event(body, seq=seq))
    _validate("event.v1", decoded)
    assert decoded == {**body, "seq": seq}
    assert (decoded["stream"], decoded["source"], decoded["type"]) == (
        f"{source}.events", source, kind)


# --- ack -------------------------------------------------------------------------------------

@FAST
@given(st.dictionaries(SEGMENT, st.sets(st.integers(1, 2**63 - 1), min_size=1, max_size=20),
                       max_size=4),
       st.lists(SHA, max_size=3, unique=True),
       st.dictionaries(SHA, st.sets(st.integers(0, 10_000), min_size=1), max_size=3))
def test_ack(seqs: dict[str, set[int]], complete: list[str], held: dict[str, set[int]]) -> None:
    streams = {s: to_ranges(v) for s, v in seqs.items()}
    held_ranges = {b: to_ranges(v) for b, v in held.items()}
    payload = encode_ack(streams, ingest="ingest-1", blobs_complete=complete,
                         blobs_held=held_ranges)
    _validate("ack.v1", json.loads(payload))
    assert decode_ack(payload) == streams
    assert decode_ack_full(payload) == Ack(streams, sorted(complete), held_ranges)


# --- shards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 1024, 5000])
def test_shard_messages_of_a_stored_blob(tmp_path: Path, size: int) -> None:
    """The manifest and the chunks the real BlobStore makes of a blob, with their properties."""
    box = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    meta = {"stream": "cam0", "frame_index": 41, "ts": "2026-11-22T18:50:01.120Z",
            "detections": 3, "labels": ["car"]}
    blob = box.put(data, meta=meta)
    parts = box.pending(100)
    assert parts[0].index == MANIFEST and len(parts) == 1 + math.ceil(size / 1024)
    for part in parts:
        props = decode_shard_properties(shard_properties(part))
        _validate("shard-properties.v1", props)
        assert props["blob-sha256"] == blob
        assert props["lepton-part"] == ("manifest" if part.index == MANIFEST else "chunk")
    manifest = decode_manifest(parts[0].data)
    _validate("shard-manifest.v1", manifest)
    assert (manifest["blob"], manifest["size"], manifest["chunk_count"], manifest["meta"]) == (
        blob, size, len(parts) - 1, meta)


@FAST
@given(SHA, st.integers(1, 2**40), st.integers(1, 1 << 20), st.integers(0, 2**62),
       st.none() | st.integers(0, 2**62))
def test_manifest(blob: str, size: int, chunk_size: int, created: int,
                  expires: int | None) -> None:
    count = -(-size // chunk_size)
    if count > 1 << 24:
        chunk_size, count = 1 << 20, -(-size // (1 << 20))
    payload = manifest_payload(blob=blob, size=size, chunk_size=chunk_size, chunk_count=count,
                               kind="clip", content_type="video/mp4", created_ns=created,
                               expires_ns=expires, meta={"stream": "north"})
    body = decode_manifest(payload)
    _validate("shard-manifest.v1", body)
    assert body == {"schema": {"id": "lepton.shard-manifest", "version": 1}, "blob": blob,
                    "size": size, "chunk_size": chunk_size, "chunk_count": count, "kind": "clip",
                    "content_type": "video/mp4", "created_ns": created, "expires_ns": expires,
                    "meta": {"stream": "north"}}


def test_the_shard_schemas_constrain() -> None:
    """A chunk without its index, a manifest with one, a repeated property, a foreign blob id
    are each refused: the schemas check, not only parse."""
    chunk = {"lepton-part": "chunk", "blob-sha256": "ab" * 32, "chunk-count": "2",
             "blob-size": "10", "kind": "snapshot", "content-type": "image/jpeg",
             "chunk-index": "1", "chunk-sha256": "cd" * 32}
    _validate("shard-properties.v1", chunk)
    for bad in ({k: v for k, v in chunk.items() if k != "chunk-index"},
                {**chunk, "lepton-part": "manifest"}, {**chunk, "blob-sha256": "xyz"},
                {**chunk, "chunk-count": "0"}):
        with pytest.raises(ValidationError):
            _validate("shard-properties.v1", bad)
    with pytest.raises(ValueError, match="given twice"):
        decode_shard_properties([("kind", "a"), ("kind", "b")])
    with pytest.raises(ValueError, match=r"lepton\.shard-manifest"):
        decode_manifest(json.dumps({"schema": {"id": "lepton.result", "version": 1}}).encode())


@pytest.mark.parametrize("decode", [decode_result, decode_status, decode_telemetry, decode_sensor,
                                    decode_event, decode_manifest])
def test_decoders_refuse_other_messages(decode: Any) -> None:
    other = encode_ack({"s": [(1, 1)]}, ingest="i")
    with pytest.raises(ValueError, match="lacks schema"):
        decode(other)
    with pytest.raises(ValueError, match="not JSON"):
        decode(b"\xff{")


# --- topics ----------------------------------------------------------------------------------

@FAST
@given(SEGMENT, SEGMENT, SEGMENT)
def test_topics_round_trip(site: str, device: str, stream: str) -> None:
    topics = DeviceTopics(site, device)
    for kind, topic in (("results", topics.results(stream)), ("events", topics.events(stream)),
                        ("sensors", topics.sensors(stream)), ("shards", topics.shards(stream))):
        parsed = parse_topic(topic)
        assert (parsed.site, parsed.device, parsed.kind, parsed.stream) == (
            site, device, kind, stream)
    for kind, topic in (("status", topics.status), ("telemetry", topics.telemetry),
                        ("ack", topics.ack)):
        assert parse_topic(topic).kind == kind and parse_topic(topic).stream is None
