"""The ``lepton.result`` v1 record: what inference made of a frame, its encoder and decoder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.core.contract.wire import compact, decode_body

RESULT_SCHEMA = {"id": "lepton.result", "version": 1}


def iso_utc(wall_time: float) -> str:
    """RFC 3339 UTC timestamp with microseconds, e.g. ``2026-11-22T13:37:07.123456Z``."""
    return datetime.fromtimestamp(wall_time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is ``(ymin, xmin, ymax, xmax)`` normalized to [0, 1]."""

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(min(1.0, max(0.0, v)), 5) for v in self.box],
        }


@dataclass(frozen=True)
class Classification:
    """One class of a classifier's top-k."""

    class_id: int
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "score": round(self.score, 4)}


@dataclass(frozen=True)
class Keypoint:
    """One named body point; ``x``, ``y`` normalized to [0, 1]."""

    name: str
    x: float
    y: float
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "x": round(min(1.0, max(0.0, self.x)), 5),
                "y": round(min(1.0, max(0.0, self.y)), 5),
                "score": round(min(1.0, max(0.0, self.score)), 4)}


@dataclass(frozen=True)
class Pose:
    """One person: a score and keypoints; ``box`` (ymin, xmin, ymax, xmax) when the model
    gives one (MoveNet multi-pose)."""

    score: float
    keypoints: list[Keypoint]
    box: tuple[float, float, float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": round(min(1.0, max(0.0, self.score)), 4),
                               "keypoints": [k.to_json() for k in self.keypoints]}
        if self.box is not None:
            out["box"] = [round(min(1.0, max(0.0, v)), 5) for v in self.box]
        return out


@dataclass(frozen=True)
class Segment:
    """One class of a segmentation map: ``area`` as a fraction of the frame, ``box`` of its
    largest connected component (ymin, xmin, ymax, xmax normalized)."""

    class_id: int
    label: str
    area: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id,
                "area": round(min(1.0, max(0.0, self.area)), 5),
                "box": [round(min(1.0, max(0.0, v)), 5) for v in self.box]}


@dataclass(frozen=True)
class Embedding:
    """A feature vector (dequantized floats; unit length when ``normalized``)."""

    dim: int
    values: tuple[float, ...]
    normalized: bool = False

    def to_json(self) -> dict[str, Any]:
        # 6 significant digits: float32 carries ~7, and the record stays ~10 bytes a value.
        return {"dim": self.dim, "normalized": self.normalized,
                "values": [float(f"{v:.6g}") for v in self.values]}


TASKS = ("classification", "detection", "pose", "segmentation", "embedding")


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result."""

    name: str
    version: str
    sha256: str


@dataclass
class FrameResult:
    """What inference made of one frame, before it gets its sequence number."""

    stream: str
    frame_index: int
    capture_wall: float
    capture_mono_ns: int
    width: int
    height: int
    task: str
    detections: list[Detection] = field(default_factory=list)
    classes: list[Classification] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    discontinuity: bool = False
    snapshot: bytes | None = None  # a JPEG of the frame, sent as a blob
    # False on a frame between two detector runs (``interval``): no result record is sent for
    # it, only what its analytics produced.
    detected: bool = True
    analytics: Any = None  # the pipeline's analytics of this frame (agent.service.analytics)
    poses: list[Pose] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    embedding: Embedding | None = None
    mask_png: bytes | None = None  # segmentation: the class map as a PNG, sent as a blob


def encode_result(
    result: FrameResult, *, seq: int, device: str, site: str, model: ModelRef,
    sensors: dict[str, Any] | None = None,
) -> bytes:
    """The JSON payload of a result record (compact, UTF-8)."""
    body: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "device": device,
        "site": site,
        "stream": result.stream,
        "seq": seq,
        "ts": iso_utc(result.capture_wall),
        "mono_ns": result.capture_mono_ns,
        "frame": {
            "index": result.frame_index,
            "width": result.width,
            "height": result.height,
            "discontinuity": result.discontinuity,
        },
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "task": result.task,
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
    }
    if result.snapshot is not None:
        body["snapshot"] = hashlib.sha256(result.snapshot).hexdigest()
    if result.mask_png is not None:
        body["mask"] = hashlib.sha256(result.mask_png).hexdigest()
    if sensors:
        body["sensors"] = sensors
    # Each task carries its own field (the schema requires it and refuses the others).
    if result.task == "detection":
        body["detections"] = [d.to_json() for d in result.detections]
    elif result.task == "pose":
        body["poses"] = [p.to_json() for p in result.poses]
    elif result.task == "segmentation":
        body["segments"] = [s.to_json() for s in result.segments]
    elif result.task == "embedding":
        body["embedding"] = (result.embedding.to_json() if result.embedding is not None
                             else {"dim": 0, "normalized": False, "values": []})
    else:
        body["classes"] = [c.to_json() for c in result.classes]
    return compact(body)


def decode_result(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.result`` v1 payload; ValueError says what is malformed."""
    return decode_body(payload, RESULT_SCHEMA)
