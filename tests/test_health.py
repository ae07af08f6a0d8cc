"""The watchdog's health check on the real capture worker and frame queue: what counts as
stuck (a hung source read, a hung outbox writer, inference idle while frames wait) and what
is only degraded (inference waiting for result slots while the writer retries a full disk)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from agent.core.thermal import ThermalGovernor
from agent.core.uri import parse_source
from agent.errors import AgentError
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.schemas import load_schema
from agent.service.health import RuntimeHealth, StorageState
from agent.service.pipelines import SOURCE_OPEN_STALL_S, StageWatch
from agent.service.snapshot import HealthSnapshot, ThermalHealth
from agent.sources.capture import CaptureWorker
from tests.e2e import AgentProcess, wait_for, write_offline_config

STALL = 10.0


class HangingReader:
    """A live source whose reads return frames until ``hang`` is set, then block until
    ``release`` (like an RTSP read hung inside OpenCV)."""

    fps = 0.0

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()

    def read(self) -> np.ndarray | None:
        if self.hang.is_set():
            self.release.wait()
            return None
        time.sleep(0.001)
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        pass


def _health(capture: Any, frames: Any, held: list[int] | None = None) -> RuntimeHealth:
    """The agent's health over one pipeline (stream cam0) with these stages."""
    inference = SimpleNamespace(stats=SimpleNamespace(frames=0))
    watch = StageWatch("rtsp://cam/stream", capture, inference, frames)  # type: ignore[arg-type]
    pipeline = SimpleNamespace(stream="cam0", watch=watch, done=threading.Event())
    return RuntimeHealth("d", "s", [pipeline], None, None, None,  # type: ignore[arg-type]
                         ThermalGovernor(), 0.0, None, StorageState(),
                         results_held=(lambda: len(held)) if held is not None else None,
                         result_slots=4)


def test_a_read_that_never_returns_is_stuck_even_with_an_empty_frame_queue() -> None:
    reader = HangingReader()
    frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 2, "drop_oldest")
    capture = CaptureWorker(parse_source("rtsp://cam/stream"), frames, lambda im: im,
                            realtime=False, reader_factory=lambda uri: reader)
    health = _health(capture, frames)
    capture.start()
    try:
        wait_for(lambda: capture.stats.frames > 5, "frames read")
        assert health.healthy(STALL)  # reads come and go
        reader.hang.set()
        wait_for(lambda: capture.busy_since is not None and capture.busy_with == "read"
                 and capture.blocked_for(time.monotonic()) > 0.05, "the read to hang")
        frames.clear()
        started = capture.busy_since
        assert started is not None
        assert health.healthy(STALL, started + STALL - 0.5)  # a slow read is not yet a hang
        problems = health.problems(STALL, started + STALL + 1)
        assert len(problems) == 1 and "capture: read of rtsp://cam/stream" in problems[0]
        assert capture.alive and len(frames) == 0  # only the heartbeat can tell
    finally:
        capture.stop()
        reader.release.set()
        capture.join(5)
    assert capture.busy_since is None


def test_an_open_that_never_returns_is_stuck_only_past_the_open_stall_time() -> None:
    """An unreachable camera blocks an open until the backend gives up (FFmpeg: 30 s) and is
    retried; a restart would not bring it back. An open hung for SOURCE_OPEN_STALL_S is."""
    release = threading.Event()

    def hanging_open(uri: Any) -> HangingReader:
        release.wait()
        return HangingReader()

    frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 2, "drop_oldest")
    capture = CaptureWorker(parse_source("rtsp://cam/stream"), frames, lambda im: im,
                            realtime=False, reader_factory=hanging_open)
    health = _health(capture, frames)
    capture.start()
    try:
        wait_for(lambda: capture.busy_since is not None, "the open to start")
        started = capture.busy_since
        assert started is not None and capture.busy_with == "open"
        assert health.healthy(STALL, started + 31)
        problems = health.problems(STALL, started + SOURCE_OPEN_STALL_S + 1)
        assert len(problems) == 1 and "capture: open of rtsp://cam/stream" in problems[0]
    finally:
        capture.stop()
        release.set()
        capture.join(5)


def test_a_failing_storage_holds_inference_back_without_starving_the_watchdog() -> None:
    frames: list[int] = [1]  # a frame waits while inference waits for a result slot
    capture = SimpleNamespace(alive=True, stats=SimpleNamespace(ended=False),
                              blocked_for=lambda now: 0.0, busy_with="")
    held = [1, 2, 3]
    h = _health(capture, frames, held)
    h.storage.went_round(retry_at=0.0, now=100.0)
    assert h.healthy(STALL, now=100.0)
    h.storage.failed("cannot commit records: disk full")
    assert not h.healthy(STALL, now=111.0)  # slots free, inference idle: a hang of its own
    held.append(4)  # every slot holds a result the storage has not taken
    h.storage.went_round(retry_at=115.0, now=105.0)  # retrying, the next try in 10 s
    assert h.healthy(STALL, now=124.0)
    assert h.problems(STALL, now=126.0) == ["outbox writer: no commit attempt for 11s"]
    h.storage.went_round(retry_at=0.0, now=126.0)
    assert h.healthy(STALL, now=130.0)
    assert (h.storage.errors, h.storage.last_error) == (1, "cannot commit records: disk full")
    h.storage.stopped()  # the writer ended (stopping): no longer watched
    assert h.healthy(STALL, now=1000.0)


# The status socket's JSON as the agent served it before the snapshot was typed (taken from
# a live agent at 6fc942c): every key, in order; evictions and sensors are maps by name.
STATUS_KEYS = [
    "state", "health", "health.status", "health.problems", "pid", "device", "site", "uptime_s",
    "fps", "stages", "stages.capture", *(f"stages.capture.{k}" for k in (
        "alive", "source", "frames", "reconnects", "last_error", "blocked_s", "skipped_static")),
    "stages.inference", *(f"stages.inference.{k}" for k in (
        "alive", "model", "frames", "failures", "detections", "last_error")),
    "queues", "queues.frames", *(f"queues.frames.{k}" for k in (
        "depth", "capacity", "policy", "dropped")), "pipelines",
    "outbox", *(f"outbox.{k}" for k in (
        "backlog", "oldest_unsent_s", "published", "ingested", "acks_ignored", "acks_malformed",
        "blobs_waiting", "blob_bytes_waiting", "chunks_sent", "blobs_completed",
        "disk_free_bytes", "used_bytes", "budget_bytes", "wal_bytes", "evictions", "quarantined",
        "storage_error", "storage_errors", "last_storage_error", "results_held",
        "volatile")),
    "broker", *(f"broker.{k}" for k in ("url", "connected", "connects", "last_error")),
    "sensors", "thermal", *(f"thermal.{k}" for k in ("temp_c", "throttled", "level")),
    "last_error", "ota", *(f"ota.{k}" for k in (
        "slot", "model", "version", "deployment", "state", "last_deployment", "last_outcome",
        "last_reason", "clock_skew_s", "clock_skew_threshold_s", "clock_skew_exceeds"))]


def _key_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict) and k not in ("evictions", "sensors"):
            out += _key_paths(v, f"{prefix}{k}.")
    return out


def _live_snapshot(tmp_path: Path) -> dict[str, Any]:
    """The status socket's answer of a real agent (synthetic camera, offline) with frames
    processed."""
    agent = AgentProcess(write_offline_config(tmp_path, "synthetic://160x120@20"))
    try:
        return agent.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 3,
                                 "frames processed", timeout=120)
    finally:
        agent.stop()


def test_the_typed_snapshot_reads_back_a_live_agents_status_unchanged(tmp_path: Path) -> None:
    """``from_json`` reads every field the status socket serves and ``to_json`` gives the same
    JSON back, key order included (the socket's and diag's form stay byte for byte); the
    telemetry built from the typed snapshot is a valid lepton.telemetry v1 message."""
    live = _live_snapshot(tmp_path)
    assert _key_paths(live) == STATUS_KEYS
    snap = HealthSnapshot.from_json(live)
    assert snap.to_json() == live
    assert json.dumps(snap.to_json()) == json.dumps(live)
    assert snap.stages.inference.frames >= 3 and snap.broker.url is None
    assert snap.health.status == "ok" and snap.health.problems == ()

    # Every optional part filled: an eviction, a quarantined cache, a sensor with a reading.
    sensor = {"port": "/dev/ttyUSB0", "protocol": "nmea", "baud": 9600, "connected": False,
              "bytes": 120, "readings": 3, "parse_errors": 1, "last_parse_error": "bad checksum",
              "reconnects": 2, "last_error": "unplugged",
              "latest": {"ts": "2026-12-01T09:00:00.000Z", "values": {"temp": 21.5}},
              "windows": 4, "score": 0.25, "anomaly": False}
    full = {**live, "sensors": {"env": sensor},
            "outbox": {**live["outbox"], "evictions": {"result": {"records": 2, "bytes": 900}},
                       "quarantined": "/state/outbox.db.corrupt", "budget_bytes": 262144}}
    typed = HealthSnapshot.from_json(full)
    assert typed.to_json() == full and json.dumps(typed.to_json()) == json.dumps(full)
    assert typed.outbox.evictions["result"].bytes == 900
    assert typed.sensors["env"].latest == sensor["latest"]

    validator = Draft202012Validator(load_schema("telemetry.v1"))
    for s in (snap, typed, replace(typed, thermal=ThermalHealth(71.5, True, 2))):
        report = s.telemetry()
        validator.validate({"schema": {"id": "lepton.telemetry", "version": 1}, "device": "d",
                            "site": "s", "ts": "2026-12-01T09:00:00Z", **report})
        assert report["cache"]["evictions"] == s.to_json()["outbox"]["evictions"]
        assert report["frames_processed"] == s.stages.inference.frames


def test_a_status_answer_missing_a_field_is_an_error_naming_it(tmp_path: Path) -> None:
    """``lepton-agent status`` reads the socket's answer typed: one of another version (a
    field missing) is a clear error naming the field and the fix, not a traceback."""
    from agent.cli.status import _typed

    live = _live_snapshot(tmp_path)
    broken = {**live, "outbox": {k: v for k, v in live["outbox"].items() if k != "backlog"}}
    with pytest.raises(AgentError, match="backlog") as err:
        _typed(broken, tmp_path / "agent.sock")
    assert err.value.fix and "same version" in err.value.fix
