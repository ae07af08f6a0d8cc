"""Record encoding against the JSON Schemas; decoding heads; NMS; manifest inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent.core.contract.result import (
    Classification,
    Detection,
    FrameResult,
    ModelRef,
    encode_result,
)
from agent.core.contract.status import encode_status
from agent.core.contract.telemetry import encode_telemetry
from agent.core.manifest import Manifest, ManifestError, TensorSpec, infer_manifest
from agent.core.postprocess import grid_detections, iou_matrix, nms, ssd_detections, top_classes
from agent.schemas import load_schema

MODEL = ModelRef("m", "1", "a" * 64)


def _result(task: str) -> FrameResult:
    return FrameResult(stream="cam0", frame_index=4, capture_wall=1795000000.25,
                       capture_mono_ns=123, width=640, height=480, task=task,
                       detections=[Detection(0, "car", 0.9, (0.1, 0.2, 0.3, 1.02))],
                       classes=[Classification(3, "cat", 0.7)],
                       latency_ms={"inference": 1.5, "capture": 0.2})


@pytest.mark.parametrize("task", ["detection", "classification"])
def test_results_validate_against_schema(task: str) -> None:
    body = json.loads(encode_result(_result(task), seq=9, device="d", site="s", model=MODEL))
    Draft202012Validator(load_schema("result.v1")).validate(body)
    assert body["seq"] == 9 and body["ts"] == "2026-11-18T11:06:40.250000Z"
    if task == "detection":
        assert body["detections"][0]["box"] == [0.1, 0.2, 0.3, 1.0]  # clipped to [0, 1]
        assert "classes" not in body
    else:
        assert body["classes"][0]["label"] == "cat"


def test_status_and_telemetry_validate() -> None:
    status = json.loads(encode_status(state="online", device="d", site="s", wall_time=1.0,
                                      extra={"version": "0.1.0", "board": None}))
    Draft202012Validator(load_schema("status.v1")).validate(status)
    tele = json.loads(encode_telemetry(device="d", site="s", wall_time=1.0, health={
        "fps": 1.0, "frames_captured": 1, "frames_processed": 1, "frames_dropped": 0,
        "backlog": 0}))
    Draft202012Validator(load_schema("telemetry.v1")).validate(tele)


def test_top_classes_order_and_threshold() -> None:
    m = Manifest(name="c", task="classification", decoder="softmax", labels={0: "a", 1: "b", 2: "c"},
                 score_threshold=0.2, max_results=5)
    out = top_classes(np.array([[0.1, 0.5, 0.4]], np.float32), m)
    assert [(c.label, round(c.score, 2)) for c in out] == [("b", 0.5), ("c", 0.4)]


def test_ssd_decode_uses_offset_and_threshold() -> None:
    m = Manifest(name="s", task="detection", decoder="ssd_postprocess", labels={1: "sedan", 2: "bus"},
                 label_offset=1, score_threshold=0.5, max_results=10)
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2], [0, 0, 1, 1]]], np.float32)
    dets = ssd_detections(boxes, np.array([[1, 0, 0]], np.float32), np.array([[0.9, 0.4, 0.8]],
                          np.float32), np.array([2], np.float32), m)
    assert [(d.label, d.score) for d in dets] == [("bus", pytest.approx(0.9))]


def test_grid_decode_places_boxes_in_cells() -> None:
    m = Manifest(name="g", task="detection", decoder="grid", labels={0: "car", 1: "truck"},
                 score_threshold=0.5, max_results=10)
    grid = np.zeros((1, 4, 4, 7), np.float32)
    grid[0, 1, 2] = [0.9, 0.5, 0.5, 0.25, 0.5, 0.1, 0.9]
    dets = grid_detections(grid, m)
    assert len(dets) == 1 and dets[0].label == "truck"
    assert dets[0].box == pytest.approx((0.25, 0.375, 0.5, 0.875))


def test_nms_class_aware() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.95, 1], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 0, 1], np.int32)
    assert nms(boxes, scores, classes, 0.5, 10) == [0, 2]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000))
def test_nms_keeps_no_overlapping_pair_of_a_class(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random((n, 2)).astype(np.float32)
    b = rng.random((n, 2)).astype(np.float32)
    boxes = np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)[:, [0, 1, 2, 3]]
    scores = rng.random(n).astype(np.float32)
    classes = rng.integers(0, 2, n).astype(np.int32)
    keep = nms(boxes, scores, classes, 0.5, n)
    assert keep == sorted(keep, key=lambda i: (-scores[i], i))
    for i in keep:
        for j in keep:
            if i < j and classes[i] == classes[j]:
                assert iou_matrix(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= 0.5


def _spec(i: int, name: str, shape: tuple[int, ...], dtype: str = "float32", scale: float = 0.0,
          zero: int = 0) -> TensorSpec:
    return TensorSpec(i, name, shape, dtype, scale, zero)


def test_infer_manifest_rejects_unknown_heads() -> None:
    with pytest.raises(ManifestError, match="cannot infer"):
        infer_manifest("x", [_spec(0, "img", (1, 32, 32, 3), "uint8")],
                       [_spec(1, "a", (1, 8, 8, 2)), _spec(2, "b", (1, 3))])
    with pytest.raises(ManifestError, match="no image input"):
        infer_manifest("x", [_spec(0, "v", (1, 10))], [_spec(1, "a", (1, 3))])


def test_infer_manifest_pairs_state_by_quantization() -> None:
    inputs = [_spec(0, "img", (1, 64, 64, 3), "uint8", 0.5, 128),
              _spec(1, "h_in", (1, 4, 4, 8), "uint8", 0.02, 0)]
    outputs = [_spec(2, "h_other", (1, 4, 4, 8), "uint8", 0.03, 0),
               _spec(3, "h_out", (1, 4, 4, 8), "uint8", 0.02, 0)]
    with pytest.raises(ManifestError, match="cannot infer"):  # h_other is a head, not state
        infer_manifest("r", inputs, outputs)
    m = infer_manifest("r", inputs, [*outputs[1:], _spec(4, "scores", (1, 5))])
    assert [(p.output, p.input) for p in m.state] == [("h_out", "h_in")]
    assert m.task == "classification"
