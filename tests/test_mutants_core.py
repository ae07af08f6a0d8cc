"""Known answers for agent/core that the mutation run (``make mutants``) found untested: URIs,
acks, topics, manifests, NMEA, grid decoding. Each asserts the exact result or message, so a
changed operator, bound or word fails."""

from __future__ import annotations

import hashlib
import itertools
import json
import re

import numpy as np
import pytest

from agent.core import uri
from agent.core.contract import ack as acks
from agent.core.contract import topics
from agent.core.manifest import (
    InputShapeError,
    Manifest,
    ManifestError,
    StatePair,
    TensorSpec,
    _image_input,
    check_image_input,
    check_manifest,
    find_state_pairs,
    infer_manifest,
    output_classes,
)
from agent.core.postprocess import grid_detections
from agent.core.sensors import Nmea0183, ProtocolError, nmea_checksum

BLOB = "ab" * 32


def raises(exc: type[Exception], message: str):  # type: ignore[no-untyped-def]
    """pytest.raises matching the whole message."""
    return pytest.raises(exc, match=r"^" + re.escape(message) + "$")


# --- uri -------------------------------------------------------------------------------------

def test_source_uris_parse_to_their_kind_and_target() -> None:
    s = uri.parse_source(" synthetic://640x480@30 ")
    assert (s.kind, s.target, s.width, s.height, s.fps, s.raw, s.is_live) == (
        "synthetic", "synthetic://640x480@30", 640, 480, 30.0, "synthetic://640x480@30", True)
    assert uri.parse_source("synthetic://16x16").fps == 15.0
    assert uri.parse_source("synthetic://7680x4320@240").width == 7680
    assert uri.parse_source("synthetic://20x20@0.5").fps == 0.5
    gst = uri.parse_source("gst: videotestsrc ! appsink")
    assert (gst.kind, gst.target, gst.raw, gst.is_live) == ("gst", "videotestsrc ! appsink",
                                                            "gst: videotestsrc ! appsink", True)
    v4l2 = uri.parse_source("v4l2:///dev/video2")
    assert (v4l2.kind, v4l2.target, v4l2.raw, v4l2.is_live) == ("v4l2", "/dev/video2",
                                                               "v4l2:///dev/video2", True)
    assert uri.parse_source("v4l2://video0").target == "video0"
    for text, kind in (("rtsp://cam/1", "rtsp"), ("rtsps://cam/1", "rtsp"), ("http://x/mjpg", "http"),
                       ("https://x/mjpg", "http")):
        parsed = uri.parse_source(text)
        assert (parsed.kind, parsed.target, parsed.raw, parsed.is_live) == (kind, text, text, True)
    f = uri.parse_source("file:///data/clip.mp4")
    assert (f.kind, f.target, f.raw, f.is_live, f.width, f.height, f.fps) == (
        "file", "/data/clip.mp4", "file:///data/clip.mp4", False, 0, 0, 0.0)
    plain = uri.parse_source("clip.mp4")
    assert (plain.kind, plain.target, plain.raw) == ("file", "clip.mp4", "clip.mp4")


@pytest.mark.parametrize(("text", "message"), [
    ("  ", "empty source; give a video file path, v4l2:///dev/video0, rtsp://..., gst:PIPELINE or "
           "synthetic://WxH@FPS"),
    ("synthetic://640x480@", "malformed synthetic source 'synthetic://640x480@'; expected "
                             "synthetic://WxH@FPS, e.g. synthetic://640x480@15"),
    ("synthetic://15x480", "synthetic source 'synthetic://15x480' out of range: 16..7680 x 16..4320 "
                           "pixels, 0 < fps <= 240"),
    ("synthetic://7681x480", "synthetic source 'synthetic://7681x480' out of range: 16..7680 x "
                             "16..4320 pixels, 0 < fps <= 240"),
    ("synthetic://640x15", "synthetic source 'synthetic://640x15' out of range: 16..7680 x 16..4320 "
                           "pixels, 0 < fps <= 240"),
    ("synthetic://640x4321", "synthetic source 'synthetic://640x4321' out of range: 16..7680 x "
                             "16..4320 pixels, 0 < fps <= 240"),
    ("synthetic://640x480@0", "synthetic source 'synthetic://640x480@0' out of range: 16..7680 x "
                              "16..4320 pixels, 0 < fps <= 240"),
    ("synthetic://640x480@241", "synthetic source 'synthetic://640x480@241' out of range: 16..7680 x "
                                "16..4320 pixels, 0 < fps <= 240"),
    ("gst:  ", "gst: source needs a GStreamer pipeline after 'gst:'"),
    ("v4l2:", "v4l2 source 'v4l2:' names no device; use v4l2:///dev/video0"),
    ("ftp://x", "unknown source scheme in 'ftp://x'; use a file path, v4l2://, rtsp://, gst: or "
                "synthetic://"),
])
def test_malformed_sources_say_what_is_accepted(text: str, message: str) -> None:
    with raises(ValueError, message):
        uri.parse_source(text)


def test_broker_urls() -> None:
    b = uri.parse_broker(" mqtt://broker.local ")
    assert (b.host, b.port, b.tls, b.raw, str(b)) == ("broker.local", 1883, False, "mqtt://broker.local",
                                                      "mqtt://broker.local")
    t = uri.parse_broker("mqtts://10.0.0.2")
    assert (t.host, t.port, t.tls) == ("10.0.0.2", 8883, True)
    assert uri.parse_broker("mqtts://h:9000").port == 9000
    assert uri.parse_broker("mqtt://h:1884").port == 1884
    with raises(ValueError, "broker URL 'http://h' must start with mqtt:// or mqtts://"):
        uri.parse_broker("http://h")
    with raises(ValueError, "broker URL 'mqtt://u:***@h' carries credentials; put the password in "
                            "$CREDENTIALS_DIRECTORY/mqtt-password and the user in [mqtt] username"):
        uri.parse_broker("mqtt://u:secret@h")
    with pytest.raises(ValueError, match=r"^broker URL 'mqtt://\[::1' is malformed: "):
        uri.parse_broker("mqtt://[::1")
    with raises(ValueError, "broker URL 'mqtt://:1883' names no host; e.g. mqtt://127.0.0.1:1883"):
        uri.parse_broker("mqtt://:1883")
    with raises(ValueError, "broker URL 'mqtt://h:99999' has an invalid port"):
        uri.parse_broker("mqtt://h:99999")


def test_redaction() -> None:
    assert uri.redact_url("mqtt://user:pa/ss@host:1") == "mqtt://user:***@host:1"
    assert uri.redact_url("mqtt://user@host") == "mqtt://user@host"
    assert uri.redact_url("mqtt://a:b@c@host") == "mqtt://a:***@host"
    assert uri.redact_url("no-scheme:x@y") == "no-scheme:x@y"
    assert uri.redact_url("mqtt://host") == "mqtt://host"


# --- acks ------------------------------------------------------------------------------------

def test_ack_round_trip_with_blobs() -> None:
    payload = acks.encode_ack({"b": [(1, 3)], "a": [(5, 5), (7, 9)]}, ingest="i1",
                              blobs_complete=[BLOB, BLOB], blobs_held={"cd" * 32: [(0, 4)]})
    body = json.loads(payload)
    assert payload.startswith(b'{"schema":{"id":"lepton.ack","version":1},"ingest":"i1"')
    assert list(body["streams"]) == ["a", "b"]
    assert body["blobs"] == {"complete": [BLOB], "held": {"cd" * 32: [[0, 4]]}}
    ack = acks.decode_ack_full(payload)
    assert ack.streams == {"a": [(5, 5), (7, 9)], "b": [(1, 3)]}
    assert ack.blobs_complete == [BLOB] and ack.blobs_held == {"cd" * 32: [(0, 4)]}
    plain = acks.encode_ack({"s": [(1, 2)]}, ingest="x")
    assert "blobs" not in json.loads(plain)
    assert acks.decode_ack_full(plain) == acks.Ack({"s": [(1, 2)]}, [], {})
    only_held = json.loads(acks.encode_ack({}, ingest="x", blobs_held={BLOB: [(0, 0)]}))
    assert only_held["blobs"] == {"complete": [], "held": {BLOB: [[0, 0]]}}
    assert acks.Ack() == acks.Ack({}, [], {})


def _ack(**extra: object) -> bytes:
    return json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [[1, 2]]},
                       **extra}).encode()


@pytest.mark.parametrize(("payload", "message"), [
    (_ack(blobs=[1]), "ack 'blobs' is not an object"),
    (_ack(blobs={"complete": "x"}), "ack 'blobs.complete' must list sha256 hex ids"),
    (_ack(blobs={"complete": [BLOB.upper()]}), "ack 'blobs.complete' must list sha256 hex ids"),
    (_ack(blobs={"complete": [5]}), "ack 'blobs.complete' must list sha256 hex ids"),
    (_ack(blobs={"held": []}), "ack 'blobs.held' must map sha256 hex ids to ranges"),
    (_ack(blobs={"held": {"zz": [[0, 1]]}}), "ack 'blobs.held' must map sha256 hex ids to ranges"),
    (_ack(blobs={"held": {BLOB: {}}}), f"ack ranges of blob {BLOB} are not a list"),
    (_ack(blobs={"held": {BLOB: [[-1, 0]]}}), f"bad range [-1, 0] for blob {BLOB}"),
    (b"\xff", None),
    (b"[1]", "ack lacks schema lepton.ack v1"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 2}}).encode(), "ack lacks schema lepton.ack v1"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}}).encode(), "ack lacks a 'streams' object"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [[0, 1]]}}).encode(),
     "bad range [0, 1] for stream 's'"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [[2, 1]]}}).encode(),
     "bad range [2, 1] for stream 's'"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [[1, True]]}}).encode(),
     "bad range [1, True] for stream 's'"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [[1, 2, 3]]}}).encode(),
     "bad range [1, 2, 3] for stream 's'"),
    (json.dumps({"schema": {"id": "lepton.ack", "version": 1}, "streams": {"s": [(1.0, 2)]}}).encode(),
     "bad range [1.0, 2] for stream 's'"),
])
def test_malformed_acks_say_what(payload: bytes, message: str | None) -> None:
    if message is None:
        with pytest.raises(ValueError, match=r"^ack is not JSON: "):
            acks.decode_ack_full(payload)
        return
    with raises(ValueError, message):
        acks.decode_ack_full(payload)


def test_ack_edges() -> None:
    assert acks.decode_ack(_ack()) == {"s": [(1, 2)]}
    ok = acks.decode_ack_full(_ack(blobs={"held": {BLOB: [[0, 0], [2, 5]]}}))
    assert ok.blobs_held == {BLOB: [(0, 0), (2, 5)]} and ok.blobs_complete == []
    assert acks.decode_ack_full(_ack(blobs=None)).blobs_held == {}
    assert acks.to_ranges([5, 3, 4, 4, 9, 1]) == [(1, 1), (3, 5), (9, 9)]
    assert acks.to_ranges([]) == []
    kept, ignored = acks.within_published({"a": [(1, 3), (5, 9), (20, 30)], "b": [(1, 1)]},
                                          {"a": 7})
    assert kept == {"a": [(1, 3), (5, 7)]} and ignored == 3
    assert acks.within_published({"a": [(7, 7)]}, {"a": 7}) == ({"a": [(7, 7)]}, 0)
    assert acks.within_published({"a": [(8, 8)]}, {"a": 7}) == ({}, 1)


# --- topics ----------------------------------------------------------------------------------

def test_topics_build_and_parse() -> None:
    t = topics.DeviceTopics("site-1", "dev.A:2")
    assert t.base == "lepton/v1/site-1/dev.A:2"
    assert (t.status, t.telemetry, t.ack, t.reply) == (
        "lepton/v1/site-1/dev.A:2/status", "lepton/v1/site-1/dev.A:2/telemetry",
        "lepton/v1/site-1/dev.A:2/ack", "lepton/v1/site-1/dev.A:2/reply")
    assert t.results("cam_0") == "lepton/v1/site-1/dev.A:2/results/cam_0"
    assert t.events("cam") == "lepton/v1/site-1/dev.A:2/events/cam"
    assert t.sensors("imu") == "lepton/v1/site-1/dev.A:2/sensors/imu"
    assert t.shards(BLOB) == f"lepton/v1/site-1/dev.A:2/shards/{BLOB}"
    assert topics.results_subscription(None) == "lepton/v1/+/+/results/+"
    assert topics.results_subscription("g1", "shards") == "$share/g1/lepton/v1/+/+/shards/+"
    assert topics.check_segment("x", "a" * 64) == "a" * 64
    with raises(ValueError, "site 'a b' is not a valid topic segment: use 1-64 characters from "
                            "letters, digits, '_', '.', ':' and '-' (no '/', '+', '#' or spaces)"):
        topics.DeviceTopics("a b", "d")
    with pytest.raises(ValueError, match=r"^device 'd/e' is not"):
        topics.DeviceTopics("s", "d/e")
    with pytest.raises(ValueError, match=r"^stream '' is not"):
        t.results("")
    for bad in ("a" * 65, "x+", "#"):
        with pytest.raises(ValueError):
            topics.check_segment("k", bad)
    with pytest.raises(ValueError, match=r"^group 'a/b' is not"):
        topics.results_subscription("a/b")
    for method, kind in ((t.events, "stream"), (t.sensors, "sensor"), (t.shards, "blob")):
        with pytest.raises(ValueError, match=f"^{kind} 'x y' is not"):
            method("x y")
    assert topics.parse_topic("lepton/v1/s/d/results/cam") == topics.ParsedTopic("s", "d", "results", "cam")
    assert topics.parse_topic("lepton/v1/s/d/events/e").stream == "e"
    assert topics.parse_topic("lepton/v1/s/d/sensors/imu").kind == "sensors"
    assert topics.parse_topic(f"lepton/v1/s/d/shards/{BLOB}").stream == BLOB
    assert topics.parse_topic("lepton/v1/s/d/status") == topics.ParsedTopic("s", "d", "status", None)
    for bad_topic, message in (
            ("lepton/v1/s/d", "not a lepton topic: 'lepton/v1/s/d'"),
            ("other/v1/s/d/status", "not a lepton topic: 'other/v1/s/d/status'"),
            ("lepton/v2/s/d/status", "unsupported contract version 'v2' in 'lepton/v2/s/d/status'"),
            ("lepton/v1/s/d/results", "topic 'lepton/v1/s/d/results' needs exactly one segment after "
                                      "'results'"),
            ("lepton/v1/s/d/results/a/b", "topic 'lepton/v1/s/d/results/a/b' needs exactly one segment "
                                          "after 'results'"),
            ("lepton/v1/s/d/status/x", "unexpected segments after 'status' in 'lepton/v1/s/d/status/x'"),
            ("lepton/v1/s s/d/status", "site 's s' is not a valid topic segment: use 1-64 characters "
                                       "from letters, digits, '_', '.', ':' and '-' (no '/', '+', '#' "
                                       "or spaces)")):
        with raises(ValueError, message):
            topics.parse_topic(bad_topic)
    with pytest.raises(ValueError, match=r"^device '' is not"):
        topics.parse_topic("lepton/v1/s//status")
    with pytest.raises(ValueError, match=r"^stream 'a b' is not"):
        topics.parse_topic("lepton/v1/s/d/shards/a b")


# --- manifest --------------------------------------------------------------------------------

IMG = TensorSpec(0, "image", (1, 96, 96, 3), "uint8", 0.0078, 128)


def _t(name: str, shape: tuple[int, ...], dtype: str = "float32", index: int = 1, scale: float = 0.0,
       zp: int = 0) -> TensorSpec:
    return TensorSpec(index, name, shape, dtype, scale, zp)


def test_tensor_spec_matching() -> None:
    a = _t("a", (1, 8), "int8", scale=0.5, zp=3)
    assert a.quantized and not _t("f", (1,)).quantized
    assert a.matches(_t("b", (1, 8), "int8", scale=0.5 + 1e-10, zp=3))
    assert not a.matches(_t("b", (1, 9), "int8", scale=0.5, zp=3))
    assert not a.matches(_t("b", (1, 8), "uint8", scale=0.5, zp=3))
    assert not a.matches(_t("b", (1, 8), "int8", scale=0.5 + 1e-6, zp=3))
    assert not a.matches(_t("b", (1, 8), "int8", scale=0.5, zp=4))


def test_infer_classification_and_ssd() -> None:
    cls = infer_manifest("m", [IMG], [_t("probs", (1, 10))])
    assert (cls.name, cls.task, cls.decoder, cls.input, cls.color, cls.score_threshold, cls.max_results,
            cls.outputs, cls.state, cls.inferred, cls.label_offset) == (
        "m", "classification", "softmax", "image", "rgb", 0.1, 5, {"scores": "probs"}, [], True, 0)
    gray = infer_manifest("g", [_t("img", (1, 32, 32, 1), "uint8")], [_t("p", (1, 2))])
    assert gray.color == "gray"
    heads = [_t("boxes", (1, 10, 4)), _t("classes", (1, 10)), _t("scores", (1, 10)), _t("count", (1,))]
    ssd = infer_manifest("d", [IMG], heads)
    assert (ssd.task, ssd.decoder, ssd.score_threshold, ssd.max_results, ssd.label_offset, ssd.outputs,
            ssd.inferred, ssd.color, ssd.input) == (
        "detection", "ssd_postprocess", 0.3, 10, 1,
        {"boxes": "boxes", "classes": "classes", "scores": "scores", "count": "count"}, True, "rgb", "image")
    swapped = infer_manifest("d", [IMG], [heads[0], heads[2], heads[1], heads[3]])
    assert swapped.outputs["classes"] == "scores" and swapped.outputs["scores"] == "classes"
    for bad_heads in ([heads[0], heads[1], heads[2], _t("n", (2,))],            # no (1,) count
                      [heads[0], heads[1], _t("s", (1, 9)), heads[3]],          # per-box mismatch
                      [_t("b", (2, 10, 4)), heads[1], heads[2], heads[3]],      # batch 2
                      [_t("b", (1, 10, 5)), heads[1], heads[2], heads[3]],      # not 4 coords
                      [_t("b", (1, 10, 4), "uint8"), heads[1], heads[2], heads[3]],
                      heads[:3],
                      [_t("a", (1, 10)), _t("b", (1, 10))],
                      [_t("v", (2, 10))]):
        with pytest.raises(ManifestError, match=r"^cannot infer the task from outputs "):
            infer_manifest("x", [IMG], bad_heads)
    with raises(ManifestError, "cannot infer the task from outputs o[1, 2, 3]:int8; "
                               "expected a score vector (classification), TFLite_Detection_PostProcess or a "
                               "YOLO head (detection), MoveNet (pose), a class map or logits (segmentation) "
                               "or a feature vector (embedding)"):
        infer_manifest("x", [IMG], [_t("o", (1, 2, 3), "int8")])


def test_image_input_choice_and_checks() -> None:
    small = _t("small", (1, 8, 8, 3), "uint8", index=1)
    big = _t("big", (1, 64, 32, 1), "uint8", index=2)
    assert _image_input([small, big, _t("h", (1, 4))]) is big
    assert _image_input([big, small]) is big
    m = infer_manifest("m", [big, _t("h", (1, 4), index=3)], [_t("p", (1, 3)), _t("h2", (1, 4))])
    assert m.input == "big" and m.state == [StatePair("h2", "h")] and m.outputs == {"scores": "p"}
    with raises(InputShapeError, "no image input among inputs a[1, 8], b[2, 8, 8, 3]; the runner feeds "
                                 "frames only to an input of shape [1, H, W, 1|3] of uint8, int8 or float32"):
        infer_manifest("m", [_t("a", (1, 8)), _t("b", (2, 8, 8, 3))], [_t("p", (1, 3))])
    with pytest.raises(InputShapeError, match=r"^no image input"):
        infer_manifest("m", [_t("a", (1, 8, 8, 2))], [_t("p", (1, 3))])
    with raises(InputShapeError, "image input 'x' has shape [1, 0, 8, 3]; the runner feeds frames only "
                                 "to an input of shape [1, H, W, 1|3] of uint8, int8 or float32"):
        check_image_input(_t("x", (1, 0, 8, 3), "uint8"))
    for shape in ((1, 8, 8), (2, 8, 8, 3), (1, 8, 8, 4)):
        with pytest.raises(InputShapeError, match="has shape"):
            check_image_input(_t("x", shape, "uint8"))
    with raises(InputShapeError, "image input 'x' is int16; the runner feeds frames only to an input "
                                 "of shape [1, H, W, 1|3] of uint8, int8 or float32"):
        check_image_input(_t("x", (1, 8, 8, 3), "int16"))
    for dtype in ("uint8", "int8", "float32"):
        check_image_input(_t("x", (1, 1, 1, 1), dtype))
    with raises(ManifestError, "inputs other than the image with no matching state output: h, k"):
        infer_manifest("m", [IMG, _t("h", (1, 4)), _t("k", (1, 5))], [_t("p", (1, 3))])


def test_state_pairs_use_each_output_once() -> None:
    ins = [IMG, _t("h1", (1, 4)), _t("h2", (1, 4))]
    outs = [_t("o1", (1, 4)), _t("o2", (1, 4)), _t("p", (1, 3))]
    assert find_state_pairs(ins, outs) == [StatePair("o1", "h1"), StatePair("o2", "h2")]
    assert find_state_pairs([IMG], outs) == []


def _manifest(decoder: str, outputs: dict[str, str], **kw: object) -> Manifest:
    return Manifest(name="m", task="detection", decoder=decoder, input="image",  # type: ignore[arg-type]
                    outputs=outputs, **kw)  # type: ignore[arg-type]


def test_check_manifest_names_what_is_missing() -> None:
    outs = [_t("p", (1, 3))]
    check_manifest(_manifest("softmax", {"scores": "p"}), [IMG], outs)
    with raises(ManifestError, "input 'nope' not in model inputs ['image']"):
        check_manifest(Manifest("m", "classification", "softmax", input="nope"), [IMG], outs)
    with raises(ManifestError, "output scores='q' not in model outputs ['p']"):
        check_manifest(_manifest("softmax", {"scores": "q"}), [IMG], outs)
    with raises(ManifestError, "state pair 'p' -> 'h' names a missing tensor"):
        check_manifest(_manifest("softmax", {"scores": "p"}, state=[StatePair("p", "h")]), [IMG], outs)
    with raises(ManifestError, "state pair 'zz' -> 'image' names a missing tensor"):
        check_manifest(_manifest("softmax", {"scores": "p"}, state=[StatePair("zz", "image")]), [IMG], outs)
    with raises(ManifestError, "decoder 'softmax' needs outputs ['scores']"):
        check_manifest(_manifest("softmax", {}), [IMG], outs)
    with raises(ManifestError, "decoder 'ssd_postprocess' needs outputs ['classes', 'count']"):
        check_manifest(_manifest("ssd_postprocess", {"boxes": "p", "scores": "p"}), [IMG], outs)
    with raises(ManifestError, "decoder 'grid' needs outputs ['grid']"):
        check_manifest(_manifest("grid", {}), [IMG], outs)
    with pytest.raises(InputShapeError):
        check_manifest(Manifest("m", "classification", "softmax", input="v", outputs={"scores": "p"}),
                       [_t("v", (1, 30))], outs)
    check_manifest(Manifest("m", "classification", "softmax", input="v", outputs={"scores": "p"},
                            sensor={"window": 30}), [_t("v", (1, 30))], outs)


def test_output_shapes_the_decoders_read() -> None:
    ssd_outs = [_t("b", (1, 10, 4)), _t("c", (1, 10)), _t("s", (1, 10)), _t("n", (1,))]
    ssd = {"boxes": "b", "classes": "c", "scores": "s", "count": "n"}
    check_manifest(_manifest("ssd_postprocess", ssd), [IMG], ssd_outs)
    check_manifest(_manifest("ssd_postprocess", ssd), [IMG], [*ssd_outs[:3], _t("n", ())])
    message = ("SSD outputs have shapes boxes {}, classes {}, scores {}, count {}; the ssd_postprocess "
               "decoder reads [1, N, 4], [1, N], [1, N], [1]")
    for i, bad in ((0, _t("b", (1, 10))), (0, _t("b", (2, 10, 4))), (0, _t("b", (1, 10, 5))),
                   (1, _t("c", (1, 9))), (2, _t("s", (1, 11))), (3, _t("n", (2,)))):
        outs = list(ssd_outs)
        outs[i] = bad
        shapes = [list(t.shape) for t in outs]
        with raises(ManifestError, message.format(*shapes)):
            check_manifest(_manifest("ssd_postprocess", ssd), [IMG], outs)
    check_manifest(_manifest("grid", {"grid": "g"}), [IMG], [_t("g", (1, 4, 4, 6))])
    for shape in ((1, 4, 4, 5), (2, 4, 4, 6), (1, 4, 6)):
        with raises(ManifestError, f"grid output 'g' has shape {list(shape)}; the grid decoder reads "
                                   "[1, GH, GW, grid_slots x (5 + classes)]"):
            check_manifest(_manifest("grid", {"grid": "g"}), [IMG], [_t("g", shape)])
    with raises(ManifestError, "scores output 'p' is empty"):
        check_manifest(_manifest("softmax", {"scores": "p"}), [IMG], [_t("p", (1, 0))])
    check_manifest(_manifest("softmax", {"scores": "p"}), [IMG], [_t("p", ())])
    check_manifest(_manifest("softmax", {"scores": "p"}), [IMG], [_t("p", (1, 1))])


def test_output_classes_and_labels() -> None:
    assert output_classes(_manifest("softmax", {"scores": "p"}), [_t("p", (1, 7))]) == 7
    assert output_classes(_manifest("softmax", {"scores": "p"}), [_t("p", ())]) == 1
    assert output_classes(_manifest("softmax", {}), [_t("p", (1, 7))]) is None
    assert output_classes(_manifest("grid", {"grid": "g"}), [_t("g", (1, 4, 4, 9))]) == 4
    assert output_classes(_manifest("grid", {}), [_t("g", (1, 4, 4, 9))]) is None
    assert output_classes(_manifest("ssd_postprocess", {"scores": "p"}), [_t("p", (1, 7))]) is None
    m = Manifest("m", "classification", "softmax", labels={2: "car", 0: "bg"}, label_offset=1)
    assert m.label(1) == "car" and m.label(-1) == "bg" and m.label(5) == "class_5"
    data = m.to_json()
    assert data["labels"] == {"0": "bg", "2": "car"} and list(data["labels"]) == ["0", "2"]
    assert (data["name"], data["version"], data["score_threshold"], data["max_results"], data["color"],
            data["inferred"]) == ("m", "0", 0.5, 20, "rgb", False)


# --- NMEA ------------------------------------------------------------------------------------

def _sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body):02X}"


def test_nmea_sentences() -> None:
    p = Nmea0183("gps", clock=lambda: 5.0)
    gga = p.parse_line("noise" + _sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    assert gga == {"lat": pytest.approx(48 + 7.038 / 60), "lon": pytest.approx(11 + 31.0 / 60),
                   "fix": 1.0, "satellites": 8.0, "altitude_m": 545.4}
    south = p.parse_line(_sentence("GNGGA,1,4807.038,S,01131.000,W,2,,0.9,,M,,M,,"))
    assert south is not None and south["lat"] < 0 and south["lon"] < 0 and south["fix"] == 2.0
    assert south["satellites"] == 0.0 and np.isnan(south["altitude_m"])
    assert p.parse_line(_sentence("GPGGA,1,,,,,0,,,,,,,,")) == {"fix": 0.0}
    assert p.parse_line(_sentence("GPGGA,1,,,,,,,,,,,,,")) == {"fix": 0.0}
    rmc = p.parse_line(_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"))
    assert rmc == {"lat": pytest.approx(48.1173), "lon": pytest.approx(11.516666, rel=1e-6),
                   "speed_kn": 22.4, "course_deg": 84.4}
    still = p.parse_line(_sentence("GPRMC,1,A,4807.038,N,01131.000,E,,,x"))
    assert still is not None and still["speed_kn"] == 0.0 and still["course_deg"] == 0.0
    assert p.parse_line(_sentence("GPRMC,1,V,,,,,,,")) == {"fix": 0.0}
    assert p.parse_line(_sentence("GPGSV,3,1,11")) is None
    assert p.parse_line(_sentence("PGRME,1")) is None
    assert nmea_checksum("GPGLL") == ord("G") ^ ord("P") ^ ord("G") ^ ord("L") ^ ord("L")


@pytest.mark.parametrize(("line", "message"), [
    ("GPGGA,1*00", "no '$' sentence start"),
    ("$GPGGA,1", "no checksum"),
    ("$GPGGA,1*4", "no checksum"),
    ("$GPGGA,1*ZZ", "malformed checksum"),
    ("$GPGGA,1*00", "checksum mismatch in 'GPGGA,'"),
    (_sentence("GPGGA,1,2"), "GGA sentence with 3 fields"),
    (_sentence("GPRMC,1,A"), "RMC sentence with 3 fields"),
    (_sentence("GPGGA,1,,N,01131.000,E,1,08,0.9,545.4"), "bad GGA field: empty coordinate"),
    (_sentence("GPGGA,1,48x7.0,N,01131.000,E,1,08,0.9,545.4"), "bad GGA field: bad coordinate '48x7.0'"),
    (_sentence("GPGGA,1,4860.0,N,01131.000,E,1,08,0.9,545.4"), "bad GGA field: bad coordinate '4860.0'"),
    (_sentence("GPGGA,1,4807.0,X,01131.000,E,1,08,0.9,545.4"), "bad GGA field: bad hemisphere 'X'"),
    (_sentence("GPGGA,1,4807.0,N,01131.000,E,q,08,0.9,545.4"),
     "bad GGA field: invalid literal for int() with base 10: 'q'"),
    (_sentence("GPRMC,1,A,4807.0,N,01131.000,E,fast,0"),
     "bad RMC field: could not convert string to float: 'fast'"),
])
def test_nmea_errors_say_why(line: str, message: str) -> None:
    with raises(ProtocolError, message):
        Nmea0183("gps", clock=lambda: 0.0).parse_line(line)


def test_nmea_coordinate_boundaries() -> None:
    p = Nmea0183("gps", clock=lambda: 0.0)
    edge = p.parse_line(_sentence("GPGGA,1,0059.999,N,00000.000,E,1,08,0.9,1"))
    assert edge is not None and edge["lat"] == pytest.approx(59.999 / 60) and edge["lon"] == 0.0
    readings = p.feed((_sentence("GPGGA,1,4807.038,N,01131.000,E,1,08,0.9,545.4") + "\r\n").encode())
    assert [r.values["fix"] for r in readings] == [1.0] and readings[0].ts == 0.0 and p.frames == 1


# --- grid ------------------------------------------------------------------------------------

def test_grid_detections_known_answer() -> None:
    grid = np.zeros((1, 2, 4, 7), np.float32)
    grid[0, 1, 2] = [0.9, 0.5, 0.25, 0.4, 0.2, 0.1, 0.8]   # class 1, confidence 0.72
    grid[0, 0, 0] = [0.5, 0.0, 0.0, 2.0, 2.0, 0.9, 0.0]    # class 0, 0.45, clipped box
    grid[0, 0, 3] = [0.4, 0.5, 0.5, 0.1, 0.1, 0.5, 0.2]    # 0.2: under the threshold
    m = Manifest("m", "detection", "grid", labels={0: "person", 1: "car"}, score_threshold=0.3)
    dets = grid_detections(grid, m)
    assert [(d.class_id, d.label) for d in dets] == [(1, "car"), (0, "person")]
    assert dets[0].score == pytest.approx(0.72)
    # cy = (1 + 0.5) / 2, cx = (2 + 0.25) / 4, h 0.4, w 0.2
    assert dets[0].box == pytest.approx((0.75 - 0.2, 0.5625 - 0.1, 0.75 + 0.2, 0.5625 + 0.1))
    assert dets[1].box == pytest.approx((0.0, 0.0, 1.0, 1.0))
    assert grid_detections(grid, Manifest("m", "detection", "grid", score_threshold=0.95)) == []
    one = grid_detections(grid, Manifest("m", "detection", "grid", score_threshold=0.3, max_results=1))
    assert len(one) == 1 and one[0].class_id == 1



def test_grid_detections_two_slots_per_cell() -> None:
    # Two vehicles whose centres share a cell (a car drawn over a truck): one box each.
    grid = np.zeros((1, 2, 2, 2 * 7), np.float32)
    grid[0, 1, 0, :7] = [0.9, 0.5, 0.5, 0.2, 0.25, 0.9, 0.1]   # slot 0: car, 0.81
    grid[0, 1, 0, 7:] = [0.8, 0.5, 0.25, 0.3, 0.5, 0.25, 0.75]  # slot 1: truck, 0.6
    grid[0, 0, 1, 7:] = [0.2, 0.5, 0.5, 0.1, 0.1, 1.0, 0.0]     # slot 1, under the threshold
    m = Manifest("m", "detection", "grid", labels={0: "car", 1: "truck"}, score_threshold=0.5,
                 grid_slots=2)
    dets = grid_detections(grid, m)
    assert [(d.class_id, d.label) for d in dets] == [(0, "car"), (1, "truck")]
    assert [d.score for d in dets] == pytest.approx([0.81, 0.6])
    # cy = (1 + 0.5) / 2 = 0.75; cx = (0 + 0.5) / 2 = 0.25 and (0 + 0.25) / 2 = 0.125
    assert dets[0].box == pytest.approx((0.65, 0.125, 0.85, 0.375))
    assert dets[1].box == pytest.approx((0.6, 0.0, 0.9, 0.375))


def test_grid_slots_must_divide_the_channels() -> None:
    out = [_t("g", (1, 4, 4, 14))]
    check_manifest(_manifest("grid", {"grid": "g"}, grid_slots=2), [IMG], out)
    assert output_classes(_manifest("grid", {"grid": "g"}, grid_slots=2), out) == 2
    with raises(ManifestError, "grid_slots = 3 does not divide the 14 channels of grid output 'g'"):
        check_manifest(_manifest("grid", {"grid": "g"}, grid_slots=3), [IMG], out)
    with raises(ManifestError, "grid_slots = 0: give the boxes per grid cell, 1 or more"):
        check_manifest(_manifest("grid", {"grid": "g"}, grid_slots=0), [IMG], out)
    # 2 slots of 5: no room for a class
    with raises(ManifestError, "grid output 'g' has shape [1, 4, 4, 10]; the grid decoder reads "
                               "[1, GH, GW, grid_slots x (5 + classes)]"):
        check_manifest(_manifest("grid", {"grid": "g"}, grid_slots=2), [IMG], [_t("g", (1, 4, 4, 10))])

# --- records ---------------------------------------------------------------------------------

def test_result_payload_is_exact() -> None:
    from agent.core.contract.result import (
        Classification,
        Detection,
        FrameResult,
        ModelRef,
        encode_result,
    )
    from agent.core.contract.status import encode_status
    from agent.core.contract.telemetry import encode_telemetry

    det = FrameResult("cam0", 7, 1795000000.25, 123, 640, 480, "detection",
                      detections=[Detection(2, "car", 0.876543, (-0.1, 0.1234567, 0.5, 1.2))],
                      latency_ms={"infer": 1.23456}, discontinuity=True, snapshot=b"jpeg")
    payload = encode_result(det, seq=5, device="d", site="s", model=ModelRef("m", "1", "ab"),
                            sensors={"imu": {"ax": 1.0}})
    assert payload == (
        b'{"schema":{"id":"lepton.result","version":1},"device":"d","site":"s","stream":"cam0",'
        b'"seq":5,"ts":"2026-11-18T11:06:40.250000Z","mono_ns":123,"frame":{"index":7,"width":640,'
        b'"height":480,"discontinuity":true},"model":{"name":"m","version":"1","sha256":"ab"},'
        b'"task":"detection","latency_ms":{"infer":1.235},"snapshot":"'
        + hashlib.sha256(b"jpeg").hexdigest().encode() + b'","sensors":{"imu":{"ax":1.0}},'
        b'"detections":[{"label":"car","class_id":2,"score":0.8765,"box":[0.0,0.12346,0.5,1.0]}]}')
    cls = FrameResult("cam0", 0, 0.0, 0, 1, 1, "classification",
                      classes=[Classification(3, "cat", 0.123456)])
    body = json.loads(encode_result(cls, seq=1, device="d", site="s", model=ModelRef("m", "1", "ab")))
    assert body["classes"] == [{"label": "cat", "class_id": 3, "score": 0.1235}]
    assert "detections" not in body and "snapshot" not in body and "sensors" not in body
    assert body["frame"]["discontinuity"] is False and body["ts"] == "1970-01-01T00:00:00.000000Z"
    assert encode_status(state="online", device="d", site="s", wall_time=0.5, extra={"v": 1}) == (
        b'{"schema":{"id":"lepton.status","version":1},"state":"online","device":"d","site":"s",'
        b'"ts":"1970-01-01T00:00:00.500000Z","v":1}')
    assert json.loads(encode_status(state="offline", device="d", site="s", wall_time=0)).keys() == {
        "schema", "state", "device", "site", "ts"}
    assert encode_telemetry(device="d", site="s", wall_time=1.0, health={"fps": 2}) == (
        b'{"schema":{"id":"lepton.telemetry","version":1},"device":"d","site":"s",'
        b'"ts":"1970-01-01T00:00:01.000000Z","fps":2}')


# --- thermal ---------------------------------------------------------------------------------

def test_thermal_levels_step_with_hysteresis() -> None:
    from agent.core.thermal import ThermalGovernor, ThermalReading

    g = ThermalGovernor()
    assert (g.max_temp_c, g.hysteresis_c, g.max_level, g.step_c, g.level, g.changes) == (
        75.0, 5.0, 3, 3.0, 0, 0)
    assert g.update(ThermalReading(74.9)) == 0
    assert g.update(ThermalReading(75.0)) == 1 and g.changes == 1
    assert g.update(ThermalReading(77.9)) == 1           # level 1 steps up at 78
    assert g.update(ThermalReading(78.0)) == 2
    assert g.update(ThermalReading(None, throttled=True)) == 3
    assert g.update(ThermalReading(200.0, throttled=True)) == 3 and g.changes == 3  # capped
    assert g.update(ThermalReading(76.0)) == 3           # level 3 steps down below 76
    assert g.update(ThermalReading(75.9)) == 2
    assert g.update(ThermalReading(72.9, throttled=True)) == 3  # throttled: never down
    g.level = 1
    assert g.update(ThermalReading(70.0)) == 1           # level 1 steps down below 70
    assert g.update(ThermalReading(None)) == 0           # no reading: down
    assert g.update(ThermalReading(None)) == 0 and g.changes == 6
    strides = []
    for level in range(4):
        g.level = level
        strides.append((g.frame_stride(False), g.frame_stride(True), g.static_every_n_factor(True),
                        g.static_every_n_factor(False)))
    assert strides == [(1, 1, 1, 1), (2, 1, 4, 1), (4, 2, 4, 1), (8, 4, 4, 1)]


# --- JSON lines ------------------------------------------------------------------------------

def test_json_lines() -> None:
    from agent.core.sensors import JsonLines

    p = JsonLines("env", clock=lambda: 1.0)
    assert p.parse_line('{"t": 21.5, "h": 40, "ts": 5, "ok": true, "name": "x", "bad": NaN}') == {
        "t": 21.5, "h": 40.0}
    for line, message in (("{", "not JSON: Expecting property name enclosed in double quotes"),
                          ("[1]", "JSON line is not an object"),
                          ('{"ts": 1, "ok": false}', "no numeric fields"),
                          ('{"inf": Infinity}', "no numeric fields")):
        with raises(ProtocolError, message):
            p.parse_line(line)


# --- sensors: anomaly hysteresis, windows, latest readings ----------------------------------

def test_anomaly_state_boundaries() -> None:
    from agent.core.sensors import AnomalyState

    for off, on in ((0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (0.0, 1.0)):
        AnomalyState(on=on, off=off)
    for off, on in ((-0.1, 0.5), (0.6, 0.5), (0.5, 1.5)):
        with raises(ValueError, "anomaly thresholds need 0 <= off <= on <= 1"):
            AnomalyState(on=on, off=off)
    a = AnomalyState(on=0.7, off=0.4, min_windows=2)
    assert [a.update(s) for s in (0.7, 0.69, 0.7, 0.7)] == [None, None, None, "start"]
    assert a.active
    assert [a.update(s) for s in (0.4, 0.39, 0.8, 0.39, 0.39)] == [None, None, None, None, "end"]
    b = AnomalyState(on=0.7, off=0.4, min_windows=1)
    assert [b.update(s) for s in (0.7, 0.4, 0.39, 0.7)] == ["start", None, "end", "start"]


def test_windower_and_latest_readings() -> None:
    from agent.core.sensors import LatestReadings, Reading, Windower

    w = Windower(["x"], rate_hz=1.0, size=2, hop=1)
    assert w.add(Reading("s", 0.0, {"y": 1.0})) == []  # lacks the channel
    assert w.add(Reading("s", 0.0, {"x": 1.0})) == []
    assert w.add(Reading("s", 1.0, {"x": 2.0})) == []   # sample at t=0 only (t=1 is not before 1)
    assert w.add(Reading("s", 2.0, {"x": 3.0})) == [(1.0, [[1.0], [2.0]])]
    assert w.add(Reading("s", 7.0, {"x": 9.0})) == [(2.0, [[2.0], [3.0]]), (3.0, [[3.0], [3.0]]),
                                                     (4.0, [[3.0], [3.0]]), (5.0, [[3.0], [3.0]]),
                                                     (6.0, [[3.0], [3.0]])]  # a 5 s gap is no gap
    assert w.add(Reading("s", 13.0, {"x": 4.0})) == []  # 6 s: start over
    assert w.add(Reading("s", 15.0, {"x": 5.0})) == [(14.0, [[4.0], [4.0]])]
    latest = LatestReadings()
    latest.update(Reading("imu", 10.0, {"a": 1.0}))
    latest.update(Reading("gps", 8.0, {"fix": 1.0}))
    assert set(latest.around(["imu", "gps", "none"], 10.0, 2.0)) == {"imu", "gps"}
    assert set(latest.around(["imu", "gps"], 10.0, 1.999)) == {"imu"}


# --- declared labels, binary frames, grid clipping -------------------------------------------

def test_declared_labels_against_the_model() -> None:
    from agent.core.labels import LabelError, check_declared_labels

    check_declared_labels({}, 0, 5)
    check_declared_labels({0: "a", 7: "b"}, 0, 0)      # classes unknown: nothing to check
    with raises(LabelError, "1 labels with label_offset 0 for a model with 1 output classes: label id 1 "
                            "has no class"):
        check_declared_labels({1: "a"}, 0, 1)
    check_declared_labels({0: "bg", 1: "a"}, 0, 2)
    check_declared_labels({1: "a", 2: "b"}, 1, 3)      # one unnamed class (background) is fine
    check_declared_labels({1: "a"}, 0, 2)
    with raises(LabelError, "2 labels with label_offset 1 for a model with 2 output classes: label id 3 "
                            "has no class"):
        check_declared_labels({1: "a", 3: "b"}, 1, 2)
    with raises(LabelError, "2 labels with label_offset 0 for a model with 2 output classes: label id 2 "
                            "has no class"):
        check_declared_labels({2: "x", 5: "y"}, 0, 2)
    with raises(LabelError, "1 labels with label_offset 0 for a model with 4 output classes: 3 classes "
                            "have no label"):
        check_declared_labels({0: "a"}, 0, 4)
    with raises(LabelError, "2 labels with label_offset 2 for a model with 5 output classes: 3 classes "
                            "have no label"):
        check_declared_labels({2: "a", 3: "b"}, 2, 5)
    check_declared_labels({0: "a", 1: "b"}, 0, 2)
    check_declared_labels({0: "a"}, 0, 2)
    with pytest.raises(LabelError):
        check_declared_labels({0: "a"}, 0, 3)


def test_binary_frame_limits() -> None:
    from agent.core.sensors import BinaryCrc16, encode_binary_frame

    frame = encode_binary_frame([1.0] * 63)
    assert len(frame) == 2 + 1 + 252 + 2 and frame[2] == 252
    with raises(ValueError, "at most 63 values per frame"):
        encode_binary_frame([1.0] * 64)
    parser = BinaryCrc16("b", clock=lambda: 0.0)
    assert [len(r.values) for r in parser.feed(frame)] == [63]


def test_grid_boxes_are_clipped_to_the_image() -> None:
    grid = np.zeros((1, 1, 1, 6), np.float32)
    grid[0, 0, 0] = [1.0, 0.9, 0.9, 0.8, 0.8, 0.5]  # centre (0.9, 0.9), 0.8 wide: past 1.0
    m = Manifest("m", "detection", "grid", score_threshold=0.5)
    (det,) = grid_detections(grid, m)  # confidence exactly the threshold is kept
    assert det.box == pytest.approx((0.5, 0.5, 1.0, 1.0)) and det.score == 0.5


# --- serial parsers: lines, CSV, binary frames ------------------------------------------------

def test_line_parser_framing_and_errors() -> None:
    from agent.core.sensors import MAX_LINE, Csv

    ticks = itertools.count(1)
    p = Csv("env", clock=lambda: float(next(ticks)), columns=["t", "h"])
    assert (p.sensor, p.errors, p.frames, p.last_error) == ("env", 0, 0, None)
    got = p.feed(b"t,h\r\n1.5, 2\r\n\r\n  \n3,4")
    assert [(r.sensor, r.ts, r.values) for r in got] == [("env", 1.0, {"t": 1.5, "h": 2.0})]
    assert p.feed(b"\n")[0].values == {"t": 3.0, "h": 4.0} and p.frames == 2
    assert p.feed(b"\xff\xfe\n") == []
    assert (p.errors, p.last_error) == (1, "line is not UTF-8 (wrong baud rate?)")
    assert p.feed(b"1,x\n") == [] and p.last_error == "non-numeric field in '1,x'"
    assert p.feed(b"1,inf\n") == [] and p.last_error == "non-finite value"
    assert p.feed(b"1,2,3\n") == [] and p.last_error == "3 fields, expected 2" and p.errors == 4
    long = "x" * 60
    assert p.feed(f"1,{long}\n".encode()) == []
    assert p.last_error == f"non-numeric field in {('1,' + long)[:40]!r}"
    exact = b"1," + b"0" * (MAX_LINE - 2)  # MAX_LINE bytes without the newline: kept
    assert [r.values["t"] for r in p.feed(exact + b"\n")] == [1.0]
    errors = p.errors
    assert p.feed(b"9" * (MAX_LINE + 1)) == [] and p.errors == errors + 1
    assert p.last_error == f"line longer than {MAX_LINE} bytes dropped"
    assert p.feed(b"9" * 10) == [] and p.errors == errors + 1  # still the same long line
    assert p.feed(b"9\n5,6\n")[0].values == {"t": 5.0, "h": 6.0}  # its end dropped, then parsing resumes
    plain = Csv("c", clock=lambda: 0.0)
    assert plain.columns is None and plain.feed(b"1,2,3\n")[0].values == {"c0": 1.0, "c1": 2.0, "c2": 3.0}
    assert plain.feed(b"a,b\n") == [] and plain.errors == 0  # a header


def test_binary_frames_resync_and_errors() -> None:
    from agent.core.sensors import SYNC, BinaryCrc16, crc16_ccitt, encode_binary_frame

    class Recording(BinaryCrc16):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, **kw)  # type: ignore[arg-type]
            self.reasons: list[str] = []

        def _error(self, reason: str) -> None:
            self.reasons.append(reason)
            super()._error(reason)

    ticks = itertools.count()
    p = Recording("imu", clock=lambda: float(next(ticks)), columns=["x", "y"])
    assert p.feed(b"") == [] and p.feed(b"\x00") == [] and p.reasons == []  # may start a sync
    good = encode_binary_frame([1.0, 2.0])
    got = p.feed(b"\x01" + good + good[:5])
    assert [(r.sensor, r.ts, r.values) for r in got] == [("imu", 0.0, {"x": 1.0, "y": 2.0})]
    assert p.reasons == ["2 byte(s) of garbage skipped"]
    assert [r.values for r in p.feed(good[5:])] == [{"x": 1.0, "y": 2.0}] and p.frames == 2
    assert p.feed(b"\x07\x07\x07") == [] and p.reasons[-1] == "2 byte(s) of garbage skipped"
    p.reasons.clear()
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    assert [r.values for r in p.feed(bad_crc + good)] == [{"x": 1.0, "y": 2.0}] and p.frames == 3
    assert p.reasons[:2] == ["1 byte(s) of garbage skipped", "bad CRC"]  # the 0x07 kept, then the CRC
    p.reasons.clear()
    body = bytes([3]) + b"\x00\x00\x00"
    p.feed(b"\x07" + SYNC + body + crc16_ccitt(body).to_bytes(2, "little"))
    assert p.reasons[:2] == ["1 byte(s) of garbage skipped", "length not a multiple of 4"]
    p.reasons.clear()
    three = encode_binary_frame([1.0, 2.0, 3.0])
    assert p.feed(three + good) != [] and p.reasons[-1] == "3 values, expected 2" and p.frames == 4
    assert [r.values for r in p.feed(good + good)] == [{"x": 1.0, "y": 2.0}] * 2 and p.frames == 6
    r = Recording("raw", clock=lambda: 7.0)
    assert r.feed(encode_binary_frame([4.0]))[0].values == {"c0": 4.0}
    frame = encode_binary_frame([0.0])
    assert r.feed(frame[:2]) == [] and r.feed(frame[2:3]) == [] and r.feed(frame[3:-1]) == []  # waits
    assert r.feed(frame[-1:])[0].values == {"c0": 0.0} and r.reasons == []


def test_nmea_finds_the_first_start_and_the_last_star() -> None:
    p = Nmea0183("gps", clock=lambda: 0.0)
    body = "GPGGA,1,4807.038,N,01131.000,E,1,08,0.9,545.4"
    line = f"x$y${body}*{nmea_checksum(body):02X}"
    with raises(ProtocolError, "checksum mismatch in 'y$GPGG'"):
        p.parse_line(line)
    star_body = "GPGSV,1*2"
    assert p.parse_line(f"${star_body}*{nmea_checksum(star_body):02X}") is None
    assert p.parse_line(f"${body}*{nmea_checksum(body):02X}9") is not None  # one more char is ignored
    assert p.parse_line(_sentence("GPGGA,1,4807.038,N,01131.000,E,1,08,0.9,")) is not None
    assert p.parse_line(_sentence("GPGGAX,1,4807.038,N,01131.000,E,1,08,0.9,1")) is None


# --- backoff, postprocess, labels, window, manifest odds and ends ----------------------------

def test_backoff_bounds_and_messages() -> None:
    from agent.core.backoff import Backoff

    Backoff(initial=1.0, maximum=1.0, multiplier=1.0, jitter=1.0)
    Backoff(jitter=0.0)
    for kw, message in (({"initial": 0.0}, "backoff needs 0 < initial <= maximum"),
                        ({"initial": 2.0, "maximum": 1.0}, "backoff needs 0 < initial <= maximum"),
                        ({"jitter": 1.5}, "backoff jitter must be within [0, 1]"),
                        ({"jitter": -0.1}, "backoff jitter must be within [0, 1]"),
                        ({"multiplier": 0.99}, "backoff multiplier must be >= 1")):
        with raises(ValueError, message):
            Backoff(**kw)  # type: ignore[arg-type]
    b = Backoff(initial=1.0, maximum=1e300, multiplier=1.5, jitter=0.0)
    b.attempts = 70
    assert b.next_delay() == 1.5 ** 64  # the exponent is capped at 64


def test_postprocess_edges() -> None:
    from agent.core.postprocess import dequantize, iou_matrix, nms, ssd_detections, top_classes

    raw = np.array([1, 2], np.int8)
    same = dequantize(raw, 0.0, 5)
    assert same.dtype == np.float32 and same.tolist() == [1.0, 2.0]
    one = dequantize(raw, 1.0, 1)
    assert one.dtype == np.float32 and one.tolist() == [0.0, 1.0]
    m = Manifest("m", "classification", "softmax", labels={0: "a", 1: "b", 2: "c", 3: "d"},
                 score_threshold=0.25, max_results=3)
    scores = np.array([[0.25, 0.5, 0.5, 0.1]], np.float32)
    top = top_classes(scores, m)
    assert [(c.class_id, c.label, c.score) for c in top] == [(1, "b", 0.5), (2, "c", 0.5), (0, "a", 0.25)]
    assert [c.class_id for c in top_classes(np.array([0.1, 0.9, 0.3, 0.8], np.float32),
                                            Manifest("m", "classification", "softmax",
                                                     score_threshold=0.0, max_results=2))] == [1, 3]
    det_m = Manifest("m", "detection", "ssd_postprocess", labels={1: "car", 2: "bus"}, label_offset=1,
                     score_threshold=0.5, max_results=10)
    boxes = np.array([[[-0.1, 0.2, 0.6, 1.3], [0, 0, 1, 1], [0.1, 0.1, 0.2, 0.2]]], np.float32)
    classes = np.array([[0, 1, 0]], np.float32)
    ssd_scores = np.array([[0.5, 0.4, 0.9]], np.float32)
    dets = ssd_detections(boxes, classes, ssd_scores, np.array([5.0], np.float32), det_m)
    assert [(d.class_id, d.label, round(d.score, 3)) for d in dets] == [(0, "car", 0.5), (0, "car", 0.9)]
    assert dets[0].box == pytest.approx((0.0, 0.2, 0.6, 1.0))
    assert len(ssd_detections(boxes, classes, ssd_scores, np.array([[2.0]], np.float32), det_m)) == 1
    few = Manifest("m", "detection", "ssd_postprocess", score_threshold=0.0, max_results=2)
    assert len(ssd_detections(boxes, classes, ssd_scores, np.array([3.0], np.float32), few)) == 2
    apart = np.array([[0, 0, 0.1, 0.1]], np.float32)
    far = np.array([[0.5, 0.5, 0.6, 0.6], [0.05, 0.2, 0.1, 0.3], [0.2, 0.05, 0.3, 0.1]], np.float32)
    assert iou_matrix(apart, far).tolist() == [[0.0, 0.0, 0.0]] and iou_matrix(apart, far).dtype == np.float32
    empty = np.array([[0.3, 0.3, 0.3, 0.3]], np.float32)
    assert iou_matrix(empty, empty).tolist() == [[0.0]]
    half = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0, 1, 1]], np.float32)
    sc = np.array([0.9, 0.8, 0.7], np.float32)
    cl = np.zeros(3, np.int32)
    assert nms(half, sc, cl, 0.5, 10) == [0, 1]  # IoU exactly 0.5 is kept
    assert nms(half, sc, cl, 0.49, 10) == [0]
    assert nms(half, sc, cl, 0.5, 0) == [] and nms(half, sc, cl, 0.5, 1) == [0]
    grid = np.zeros((1, 1, 2, 6), np.float32)
    grid[0, 0, 0] = [0.9, 0.5, 0.5, 0.5, 0.5, 1.0]
    grid[0, 0, 1] = [0.8, 0.5, 0.0, 0.5, 0.6, 1.0]  # overlaps the first by IoU 0.375
    gm = Manifest("m", "detection", "grid", score_threshold=0.1)
    assert len(grid_detections(grid, gm)) == 2  # the default IoU threshold (0.45) keeps both
    assert len(grid_detections(grid, gm, iou_threshold=0.3)) == 1
    assert [d.class_id for d in grid_detections(grid, gm)] == [0, 0]


def test_labels_parsing_edges() -> None:
    from agent.core.labels import LabelError, parse_labels

    assert parse_labels("5 car\n", pbtxt=False) == {0: "5 car"}  # one line: a name, not an id
    assert parse_labels("1 car\n3 bus\n", pbtxt=False) == {1: "car", 3: "bus"}
    with raises(LabelError, "id 1 appears twice"):
        parse_labels("1 car\n1 bus\n", pbtxt=False)
    with raises(LabelError, "the file holds no labels"):
        parse_labels("\n  \n", pbtxt=False)
    text = 'item { id: 1 name: "a" }  # item { id: 2 name: "hidden" }\nitem { id: 3 }\nitem { name: "x" }'
    assert parse_labels(text, pbtxt=True) == {1: "a"}


def test_window_and_manifest_edges() -> None:
    from agent.core.outbox import PublishWindow

    PublishWindow(1)
    with raises(ValueError, "publish window must be >= 1"):
        PublishWindow(0)
    w = PublishWindow(2)
    w.on_connected()
    w.on_disconnected()
    assert w.connected is False
    assert w.on_fetched([], exhausted=True) == [] and w.has_unsent is False
    wide = _t("wide", (1, 10, 40, 3), "uint8")
    tall = _t("tall", (1, 30, 10, 3), "uint8")
    assert _image_input([tall, wide]) is wide   # 400 pixels against 300
    square = _t("sq", (1, 18, 18, 1), "uint8")
    assert _image_input([wide, square]) is wide  # 400 against 324
    heads = [_t("boxes", (1, 10, 4)), _t("classes", (1, 10)), _t("scores", (1, 10)), _t("count", (1,))]
    gray_in = _t("g", (1, 32, 32, 1), "uint8", index=0)
    ssd = infer_manifest("det", [gray_in], heads)
    assert (ssd.name, ssd.color) == ("det", "gray")
    with raises(ManifestError, "cannot infer the task from outputs a[1, 2, 2]:int8, b[1, 3, 3]:int8; "
                               "expected a score vector (classification), TFLite_Detection_PostProcess or a "
                               "YOLO head (detection), MoveNet (pose), a class map or logits (segmentation) "
                               "or a feature vector (embedding)"):
        infer_manifest("x", [IMG], [_t("a", (1, 2, 2), "int8"), _t("b", (1, 3, 3), "int8")])
    assert output_classes(_manifest("softmax", {"scores": "p"}), [_t("p", (7, 1))]) == 1


def test_survivors_of_the_first_full_run() -> None:
    """Four survivors of the 2026-12-01 run that were test gaps, not equivalents."""
    import os
    import time as _time

    from agent.core.contract.result import iso_utc
    from agent.core.sensors import AnomalyState
    from agent.core.thermal import ThermalGovernor, ThermalReading

    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    _time.tzset()
    try:
        assert iso_utc(0.0) == "1970-01-01T00:00:00.000000Z"  # UTC whatever the local zone
    finally:
        if old is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = old
        _time.tzset()
    g = ThermalGovernor()
    g.update(ThermalReading(40.0))
    assert g.changes == 0
    a = AnomalyState(on=0.7, off=0.4, min_windows=2)
    assert [a.update(s) for s in (0.8, 0.8, 0.1, 0.1)] == [None, "start", None, "end"]
    tall = _t("tall", (1, 40, 10, 3), "uint8")
    square = _t("square", (1, 15, 15, 3), "uint8")
    assert _image_input([square, tall]) is tall  # 400 pixels against 225
