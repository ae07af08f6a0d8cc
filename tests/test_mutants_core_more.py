"""Known answers for agent/core that the full mutation run still found untested or unchecked
(issue 14): the heads' activations and decoders, ``models inspect`` candidates, loopback hosts,
the result payload's rounding, OTA counters, documents and refusals. Each test asserts an exact
value computed here independently (by hand or by a formula written in the test) or the exact
text the user sees, so a changed operator, bound, index or word fails."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import math
import re
import time

import numpy as np
import pytest

from agent.core import heads, uri
from agent.core.contract.command import (
    CommandError,
    accepts_response_topic,
    command_name,
    decode_command,
)
from agent.core.contract.count import (
    CountBucket,
    CountEntry,
    CountRecord,
    count_from_json,
    encode_count,
)
from agent.core.contract.event import (
    SnapshotRef,
    TrackEvent,
    decode_track_event,
    downsample,
    encode_event,
    event_body,
    track_event_body,
)
from agent.core.contract.result import (
    Embedding,
    FrameResult,
    Keypoint,
    ModelRef,
    Pose,
    Segment,
    encode_result,
)
from agent.core.contract.topics import DeviceTopics
from agent.core.labels import LabelError, fit_labels, parse_labels
from agent.core.manifest import (
    COCO17_KEYPOINTS,
    Candidate,
    Manifest,
    ManifestError,
    TensorSpec,
    candidates,
    head_candidates,
    manifest_for,
    sequence_manifest,
)
from agent.core.ota.chunks import ChunkError, ChunkPlan, ReceiveState, plan_chunks
from agent.core.ota.clock import TrustedClock
from agent.core.ota.document import (
    MAX_ENVELOPE_BYTES,
    BundleDocument,
    DocumentError,
    FileEntry,
    canonical_bytes,
    check_path,
    decode_envelope,
    encode_envelope,
    key_id,
    parse_document,
)
from agent.core.ota.verify import (
    ObservedBundle,
    RollbackCounters,
    TrustedKeys,
    check_document,
    check_files,
    verify_bundle,
)
from agent.core.outbox import FetchUnsent, PublishWindow
from agent.core.postprocess import top_classes
from agent.core.sensors import BinaryCrc16, Reading, Windower, encode_binary_frame, make_parser
from tests.test_heads import components_by_flood


def raises(exc: type[Exception], message: str):  # type: ignore[no-untyped-def]
    """pytest.raises matching the whole message."""
    return pytest.raises(exc, match=r"^" + re.escape(message) + "$")


# --- uri.is_loopback -------------------------------------------------------------------------

def test_loopback_hosts() -> None:
    assert uri.is_loopback("localhost") is True
    assert uri.is_loopback("LOCALHOST") is False  # not an address, and not the exact name
    assert uri.is_loopback("127.0.0.1") is True
    assert uri.is_loopback("127.5.6.7") is True
    assert uri.is_loopback("::1") is True
    assert uri.is_loopback("[::1]") is True  # a URL's bracketed IPv6 host
    assert uri.is_loopback("0.0.0.0") is False
    assert uri.is_loopback("192.168.1.10") is False
    assert uri.is_loopback("[::]") is False
    assert uri.is_loopback("camera.local") is False
    assert uri.is_loopback("X127.0.0.1X") is False  # only brackets are stripped


# --- heads: activations --------------------------------------------------------------------

def _softmax_rows(rows: list[list[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def test_softmax_is_per_row_and_float32_even_for_large_logits() -> None:
    # A row of large logits (1000 would overflow exp without the max subtracted) beside a row
    # of small ones (each row needs its own max: the other row's would underflow to 0 / 0).
    x = np.array([[1000.0, 999.0, 997.0], [0.0, -1.0, -3.0]], np.float32)
    got = heads.softmax(x)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(got, _softmax_rows(x.tolist()), rtol=1e-6)
    # The activation is over the last axis whatever the rank.
    x3 = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]], [[2.0, 1.0, 0.0], [4.0, 4.0, 4.0]]],
                  np.float32)
    got3 = heads.softmax(x3)
    assert got3.dtype == np.float32 and got3.shape == (2, 2, 3)
    np.testing.assert_allclose(got3.reshape(4, 3), _softmax_rows(x3.reshape(4, 3).tolist()),
                               rtol=1e-6)


def test_sigmoid_values_and_dtype() -> None:
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    got = heads.sigmoid(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-3.0))]],
                               rtol=1e-6)


# --- heads: box units, SSD raw ---------------------------------------------------------------

def test_box_norm_units() -> None:
    assert heads.box_norm(300.0, 320, 240, "normalized") == (1.0, 1.0)  # whatever the values
    assert heads.box_norm(0.5, 320, 240, "pixels") == (320.0, 240.0)
    assert heads.box_norm(2.0, 320, 240, "auto") == (1.0, 1.0)  # the bound is normalized
    assert heads.box_norm(2.5, 320, 240, "auto") == (320.0, 240.0)
    assert heads.box_norm(0.9, 640, 480, "auto") == (1.0, 1.0)


def test_ssd_decode_known_boxes() -> None:
    scales = (10.0, 5.0, 2.0, 4.0)
    # (ty, tx, th, tw) per box against anchors (ycenter, xcenter, h, w):
    # box 0: yc = 1/10 * 0.2 + 0.5 = 0.52, xc = 1/5 * 0.4 + 0.25 = 0.33, h = 0.2, w = 0.4;
    # box 1: centre at its anchor, h = exp(2 ln 2 / 2) * 0.1 = 0.2, w = exp(4 ln 0.5 / 4) * 0.2 = 0.1.
    enc = np.array([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2 * math.log(2.0), 4 * math.log(0.5)]]],
                   np.float32)
    anchors = np.array([[0.5, 0.25, 0.2, 0.4], [0.4, 0.6, 0.1, 0.2]], np.float32)
    got = heads.ssd_decode(enc, anchors, scales)
    assert got.dtype == np.float32 and got.shape == (2, 4)
    np.testing.assert_allclose(got, [[0.42, 0.13, 0.62, 0.53], [0.3, 0.55, 0.5, 0.65]],
                               atol=1e-6)


def _ssd_manifest(**kw: object) -> Manifest:
    return Manifest(name="m", task="detection", decoder="ssd_raw", **kw)  # type: ignore[arg-type]


def test_ssd_raw_candidates_softmax_without_background() -> None:
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]], np.float32)
    logits = np.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]], np.float32)
    m = _ssd_manifest(score_activation="softmax", skip_background=True, score_threshold=0.5)
    b, scores, classes = heads.ssd_raw_candidates(boxes, logits, m)
    # Row 0: softmax (0, 2, 1) -> e^2 / (1 + e^2 + e) for class 0 after the background column;
    # row 1: its best non-background score is 1 / (e^3 + 2), below the threshold.
    assert b.tolist() == boxes[:1].tolist()
    assert classes.tolist() == [0]
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [math.exp(2) / (1 + math.exp(2) + math.e)], rtol=1e-6)


def test_ssd_raw_candidates_without_activation_keep_the_threshold_itself() -> None:
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6]],
                     np.float32)
    # float64 scores (a caller's array): compared as float32, so 0.3 reaches a 0.3 threshold.
    scores_in = np.array([[0.1, 0.6, 0.55], [0.2, 0.3, 0.1], [0.29, 0.0, 0.1]])
    m = _ssd_manifest(score_activation="none", skip_background=False, score_threshold=0.3)
    b, scores, classes = heads.ssd_raw_candidates(boxes, scores_in, m)
    assert b.tolist() == boxes[:2].tolist()
    assert classes.tolist() == [1, 1]
    assert scores.dtype == np.float32
    assert scores.tolist() == np.array([0.6, 0.3], np.float32).tolist()


# --- heads: MoveNet multi-pose ---------------------------------------------------------------

def test_movenet_multi_best_first_ties_in_row_order_and_at_most_max_results() -> None:
    scores = [0.9, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]
    raw = np.zeros((1, len(scores), 56), np.float32)
    for p, score in enumerate(scores):
        raw[0, p, :51] = np.tile([0.5, p / 20, 0.8], 17)  # y, x (the person's mark), score
        raw[0, p, 51:55] = [0.1, 0.2, 1.5, -0.3]          # a box partly outside the frame
        raw[0, p, 55] = score
    m = Manifest(name="m", task="pose", decoder="movenet_multi", score_threshold=0.5,
                 max_results=3)
    poses = heads.movenet_multi(raw, m)
    # Persons reaching 0.5: 0 and 9 (0.9), then 1 and 2 (0.5, equal: row order); 3 kept.
    assert [(round(p.score, 6), p.keypoints[0].x) for p in poses] == [
        (0.9, np.float32(0 / 20).item()), (0.9, np.float32(9 / 20).item()),
        (0.5, np.float32(1 / 20).item())]
    for p in poses:
        assert p.box == (np.float32(0.1).item(), np.float32(0.2).item(), 1.0, 0.0)
        assert len(p.keypoints) == 17 and p.keypoints[16].name == "right_ankle"
    m.max_results = 10
    assert len(heads.movenet_multi(raw, m)) == 4


# --- result payload: keypoints and poses -----------------------------------------------------

def test_keypoint_and_pose_json_clip_and_round() -> None:
    assert Keypoint("nose", 1.5, 0.1234567, 0.123456).to_json() == {
        "name": "nose", "x": 1.0, "y": 0.12346, "score": 0.1235}
    assert Keypoint("nose", 0.7654321, 1.25, 1.5).to_json() == {
        "name": "nose", "x": 0.76543, "y": 1.0, "score": 1.0}
    assert Keypoint("nose", -0.5, -0.5, -0.5).to_json() == {
        "name": "nose", "x": 0.0, "y": 0.0, "score": 0.0}
    pose = Pose(0.987654, [Keypoint("nose", 0.5, 0.5, 0.5)], (0.1234567, -0.2, 1.5, 0.7654321))
    assert pose.to_json() == {"score": 0.9877,
                              "keypoints": [{"name": "nose", "x": 0.5, "y": 0.5, "score": 0.5}],
                              "box": [0.12346, 0.0, 1.0, 0.76543]}
    assert Pose(1.5, []).to_json() == {"score": 1.0, "keypoints": []}
    assert Pose(0.25, []).to_json() == {"score": 0.25, "keypoints": []}


# --- manifest.candidates (models inspect) ----------------------------------------------------

def _spec(name: str, shape: tuple[int, ...], dtype: str = "float32", index: int = 0) -> TensorSpec:
    return TensorSpec(index, name, shape, dtype)


def test_candidates_of_a_window_model() -> None:
    window = _spec("window", (1, 50, 6))
    outs = [_spec("probs", (1, 3)), _spec("features", (1, 4, 2)), _spec("batch", (2, 3)),
            _spec("column", (3, 1))]
    found = candidates([window], outs)
    assert [(c.task, c.decoder, c.outputs, c.lacks, c.why, c.complete) for c in found] == [
        ("sequence", "softmax", {"scores": "probs"},
         "rate_hz and anomaly_label in the manifest's sensor section", "a window input [1, 50, 6]",
         False)]


def test_candidates_of_an_image_model_leave_out_state_outputs() -> None:
    image = _spec("image", (1, 96, 96, 3), "uint8")
    state_in = _spec("state_in", (1, 16))
    scores = _spec("scores", (1, 10))
    state_out = _spec("state_out", (1, 16))
    found = candidates([image, state_in], [state_out, scores])
    assert [(c.task, c.decoder, c.outputs) for c in found] == [
        ("classification", "softmax", {"scores": "scores"}),
        ("embedding", "embedding", {"embedding": "scores"})]
    # No image input (two [1, N] inputs): nothing to offer, and no exception.
    assert candidates([_spec("a", (1, 4)), _spec("b", (1, 4))], [scores]) == []


# --- heads: segmentation and embeddings ------------------------------------------------------

def test_class_maps_are_int32() -> None:
    argmax_map = np.array([[[0, 200], [3, 1]]], np.uint8)
    got = heads.class_map(argmax_map, logits=False)
    assert got.dtype == np.int32 and got.tolist() == [[0, 200], [3, 1]]
    logits = np.array([[[[0.1, 0.9, 0.0], [0.5, 0.2, 0.6]]]], np.float32)  # [1, 1, 2, 3]
    got = heads.class_map(logits, logits=True)
    assert got.dtype == np.int32 and got.tolist() == [[1, 2]]


def _components(mask: list[list[bool]]) -> tuple[int, int, int, int, int]:
    """The largest 8-connected component by flood fill (tests/test_heads.py's reference):
    (pixels, ymin, xmin, ymax, xmax), ties to the one whose first pixel comes first in row order."""
    comps = components_by_flood(np.array(mask, dtype=bool))
    return max(comps, key=lambda c: c[0]) if comps else (0, 0, 0, 0, 0)

MASKS = [
    # A U-shape whose arms meet only at the bottom, beside a larger blob joined diagonally.
    ["X.X...XX",
     "X.X...XX",
     "XXX....X",
     ".......X",
     "..XX..X.",
     "..XX.X..",
     "......XX"],
    # Two runs per row, alternating which one ends first; a diagonal chain.
    ["XX..XXX.",
     ".XXX..XX",
     "X...XX..",
     ".X.X...X",
     "..X...X.",
     "X....X.."],
    # Ties: two components of 4 pixels; the first in row order wins.
    ["....XX",
     "XX..XX",
     "XX....",
     "......"],
]


def test_largest_component_against_a_flood_fill() -> None:
    rng = np.random.default_rng(7)
    masks = [np.array([[c == "X" for c in row] for row in m]) for m in MASKS]
    masks += [rng.random((9, 11)) < p for p in (0.3, 0.45, 0.55, 0.6)]
    for mask in masks:
        assert heads.largest_component(mask) == _components(mask.tolist()), mask.astype(int)
    assert heads.largest_component(np.zeros((3, 4), bool)) == (0, 0, 0, 0, 0)


def test_segments_areas_background_and_min_area() -> None:
    classes = np.array([[0, 0, 1, 2],
                        [0, 0, 2, 2],
                        [3, 3, 3, 3],
                        [3, 3, 3, 3]], np.int32)
    # Class 0 is not background when the labels name it otherwise.
    m = Manifest(name="m", task="segmentation", decoder="argmax",
                 labels={0: "road", 1: "person", 2: "car", 3: "sky"}, skip_background=True,
                 min_area=3 / 16, max_results=10)
    got = [(s.class_id, s.label, s.area, s.box) for s in heads.segments(classes, m)]
    # Class 1 (1/16) is below min_area; class 2 (3/16) is exactly at it and kept; classes
    # after a left-out one are still looked at.
    assert got == [(3, "sky", 0.5, (0.5, 0.0, 1.0, 1.0)),
                   (0, "road", 0.25, (0.0, 0.0, 0.5, 0.5)),
                   (2, "car", 3 / 16, (0.0, 0.5, 0.5, 1.0))]
    m.labels = {0: "background", 1: "person", 2: "car", 3: "sky"}
    assert [s.class_id for s in heads.segments(classes, m)] == [3, 2]
    m.skip_background = False
    assert [s.class_id for s in heads.segments(classes, m)] == [3, 0, 2]


def test_embedding_normalizes_a_short_vector_too() -> None:
    e = heads.embedding(np.array([[0.3, 0.4]], np.float32), 0.0, 0, normalize=True)
    assert e.dim == 2 and e.normalized is True
    np.testing.assert_allclose(e.values, [0.6, 0.8], rtol=1e-6)
    e = heads.embedding(np.array([[3.0, 4.0]], np.float32), 0.0, 0, normalize=False)
    assert e.values == (3.0, 4.0) and e.normalized is False
    assert heads.embedding(np.zeros((1, 3), np.float32), 0.0, 0, True).values == (0.0, 0.0, 0.0)


# --- contract: topics and commands -----------------------------------------------------------

SEGMENT_RULE = ("is not a valid topic segment: use 1-64 characters from letters, digits, '_', "
                "'.', ':' and '-' (no '/', '+', '#' or spaces)")


def test_count_topics() -> None:
    t = DeviceTopics("site-1", "dev.7")
    assert t.counts("cam_0") == "lepton/v1/site-1/dev.7/counts/cam_0"
    with raises(ValueError, f"stream 'a/b' {SEGMENT_RULE}"):
        t.counts("a/b")


def test_command_names_refused_say_why() -> None:
    t = DeviceTopics("s", "d")
    assert command_name(t, "lepton/v1/s/d/cmd/set-config") == "set-config"
    with pytest.raises(CommandError) as info:
        command_name(t, "lepton/v1/s/d/cmd/Reboot")
    reason = "command name 'Reboot' is not 1-32 of a-z, 0-9 and '-' (starting with a letter)"
    assert (info.value.code, info.value.reason, str(info.value), info.value.fix) == (
        "unknown_command", reason, reason, "send one of the commands docs/commands.md lists")


def test_response_topics_up_to_the_mqtt_limit() -> None:
    t = DeviceTopics("s", "d")
    base = t.reply + "/"
    longest = base + "a" * (65535 - len(base))  # 65535 bytes: the most an MQTT topic holds
    assert len(longest.encode()) == 65535
    assert accepts_response_topic(t, longest) is True
    assert accepts_response_topic(t, longest + "a") is False
    assert accepts_response_topic(t, t.reply) is True
    assert accepts_response_topic(t, base + "x/+") is False


# --- OTA: trusted clock skew, rollback counters ----------------------------------------------

def test_clock_skew_reports_its_threshold() -> None:
    clock = TrustedClock(floor=1000.0, learned=900.0)
    skew = clock.skew(float("nan"), threshold_s=60.0)
    assert (skew.seconds, skew.threshold_s, skew.exceeds) == (math.inf, 60.0, True)
    skew = clock.skew(-5.0)
    assert (skew.seconds, skew.threshold_s, skew.exceeds) == (math.inf, 300.0, True)
    skew = clock.skew(950.0, threshold_s=60.0)
    assert (skew.seconds, skew.threshold_s, skew.exceeds) == (50.0, 60.0, False)
    skew = clock.skew(930.0, threshold_s=60.0)
    assert (skew.seconds, skew.threshold_s, skew.exceeds) == (70.0, 60.0, True)


def test_rollback_counters() -> None:
    counters = RollbackCounters({"det": 5})
    assert counters.version("det") == 5
    assert counters.version("other") == 0
    assert counters.installed("det", 3).versions == {"det": 5}  # never lowered
    assert counters.installed("det", 7).versions == {"det": 7}
    assert counters.installed("new", 2).versions == {"det": 5, "new": 2}
    assert RollbackCounters.from_json('{"a": 0, "b": 3}').versions == {"a": 0, "b": 3}
    with raises(ValueError, "rollback counters are not JSON: Expecting value: line 1 column 1 "
                            "(char 0)"):
        RollbackCounters.from_json("nope")
    rule = "rollback counters must map model names to integers >= 0"
    for text in ('{"a": -1}', '{"a": 1.5}', '{"a": true}', '{"a": "3"}', "[1]", '"a"'):
        with raises(ValueError, rule):
            RollbackCounters.from_json(text)


# --- OTA: signature envelope, document, refusals ---------------------------------------------
# A stand-in for Ed25519 (check_document takes the check from its caller): a "signature" is the
# sha512 of key + message, 64 bytes like an Ed25519 one.

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
KID = hashlib.sha256(KEY).hexdigest()[:16]
OTHER_KID = hashlib.sha256(OTHER_KEY).hexdigest()[:16]
H_MANIFEST = "a" * 64
H_MODEL = "b" * 64
CONTEXT = b"lepton-bundle-signature/1\n"


def _sign(key: bytes, message: bytes) -> bytes:
    return hashlib.sha512(key + message).digest()


def _check(key: bytes, message: bytes, signature: bytes) -> bool:
    return _sign(key, message) == signature


def _doc_bytes(model: str = "det", version: int = 3, key: str = KID, issued: int = 1000,
               expires: int = 5000, **extra: object) -> bytes:
    data = {"format": "lepton-bundle-signature/1", "model": model, "version": version,
            "manifest_sha256": H_MANIFEST,
            "files": [{"path": "manifest.json", "size": 10, "sha256": H_MANIFEST},
                      {"path": "model.tflite", "size": 100, "sha256": H_MODEL}],
            "issued_at": issued, "expires_at": expires, "key_id": key}
    data.update(extra)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("ascii")


def _envelope(document: bytes, key: bytes = KEY, kid: str = KID, **override: object) -> bytes:
    data: dict[str, object] = {
        "format": "lepton-bundle-signature/1", "key_id": kid,
        "signature": base64.b64encode(_sign(key, CONTEXT + document)).decode("ascii"),
        "document": document.decode("ascii")}
    data.update(override)
    return json.dumps(data).encode("utf-8")


def _verdict(envelope: bytes, installed: int = 2, device_now: float = 2000.0,
             trust: TrustedKeys | None = None, model: str | None = None):  # type: ignore[no-untyped-def]
    return check_document(envelope, trust=trust or TrustedKeys({KID: KEY}), check_signature=_check,
                          counters=RollbackCounters({"det": installed}),
                          clock=TrustedClock(floor=1500.0), device_now=device_now,
                          expected_model=model)


def _document() -> BundleDocument:
    return BundleDocument("det", 3, H_MANIFEST, (FileEntry("manifest.json", 10, H_MANIFEST),
                                                 FileEntry("model.tflite", 100, H_MODEL)),
                          1000, 5000, KID)


def test_an_accepted_document_says_what_to_persist() -> None:
    v = _verdict(_envelope(_doc_bytes(issued=1800)), device_now=1200.0)
    assert v.refusal is None and v.document == _document().__class__(
        "det", 3, H_MANIFEST, _document().files, 1800, 5000, KID)
    assert v.counters.versions == {"det": 3}
    assert (v.clock.floor, v.clock.learned, v.trusted_now) == (1800.0, 1800.0, 1800.0)
    assert _document().entry("model.tflite") == FileEntry("model.tflite", 100, H_MODEL)
    assert _document().entry("labels.txt") is None


def _refused(v) -> str:  # type: ignore[no-untyped-def]
    assert v.refusal is not None
    assert v.counters.versions == {"det": 2}  # nothing to persist on a refusal
    return str(v.refusal)


def test_document_refusals_say_what_and_how_to_fix() -> None:
    v = _verdict(b"nope")
    assert _refused(v) == ("[malformed] signature file unreadable: signature file is not JSON: "
                           "Expecting value: line 1 column 1 (char 0) (fix: sign the bundle again "
                           "with `lepton-agent models sign`)")
    assert (v.document, v.trusted_now, v.clock.floor) == (None, 2000.0, 2000.0)
    fix_key = "sign with a trusted key, or add the signer's public key to the trusted keys"
    v = _verdict(_envelope(_doc_bytes()), trust=TrustedKeys({}))
    assert _refused(v) == (f"[unknown_key] signed by key {KID}, which is not trusted "
                           f"(trusted: none) (fix: {fix_key})")
    third = hashlib.sha256(b"\x07" * 32).hexdigest()[:16]
    v = _verdict(_envelope(_doc_bytes()),
                 trust=TrustedKeys({OTHER_KID: OTHER_KEY, third: b"\x07" * 32}))
    ids = ", ".join(sorted([OTHER_KID, third]))
    assert _refused(v) == (f"[unknown_key] signed by key {KID}, which is not trusted "
                           f"(trusted: {ids}) (fix: {fix_key})")
    v = _verdict(_envelope(_doc_bytes(), key=OTHER_KEY))
    assert _refused(v) == (f"[bad_signature] the signature by key {KID} does not match the "
                           "document (edited after signing, or forged) (fix: use the bundle as "
                           "it was signed, or sign it again)")
    spaced = _doc_bytes().replace(b",", b", ")
    v = _verdict(_envelope(spaced))
    assert _refused(v) == ("[malformed] signed document unreadable: the signed document is not "
                           "in canonical form (fix: sign the bundle again with this version's "
                           "`lepton-agent models sign`)")
    assert v.document is None
    v = _verdict(_envelope(_doc_bytes(key=OTHER_KID)))
    assert _refused(v) == (f"[malformed] document names key {OTHER_KID} but was signed by {KID} "
                           "(fix: sign the bundle again with `lepton-agent models sign`)")
    assert v.document is not None and v.document.key_id == OTHER_KID
    v = _verdict(_envelope(_doc_bytes()), model="cls")
    assert _refused(v) == ("[wrong_model] bundle is model 'det', not the expected 'cls' "
                           "(fix: deploy a bundle of 'cls')")
    assert v.document == _document()
    v = _verdict(_envelope(_doc_bytes()), installed=3)
    assert str(v.refusal) == ("[rollback] model 'det' version 3 is not newer than the installed "
                              "version 3 (fix: sign the bundle with --version 4 or higher)")
    assert v.document == _document() and v.counters.versions == {"det": 3}
    v = _verdict(_envelope(_doc_bytes()), device_now=5000.5)
    assert _refused(v) == ("[expired] the document expired at 5000 (Unix s); trusted time is "
                           "5000 (fix: sign the bundle again with a later --expires)")
    assert v.document == _document()
    assert (v.trusted_now, v.clock.floor, v.clock.learned) == (5000.5, 5000.5, 1000.0)


def _observed(*files: FileEntry, irregular: tuple[str, ...] = ()) -> ObservedBundle:
    return ObservedBundle(tuple(files), irregular)


MANIFEST_ENTRY = FileEntry("manifest.json", 10, H_MANIFEST)
MODEL_ENTRY = FileEntry("model.tflite", 100, H_MODEL)


def test_file_refusals_say_what_and_how_to_fix() -> None:
    doc = _document()
    assert check_files(doc, _observed(MANIFEST_ENTRY, MODEL_ENTRY)) is None
    assert str(check_files(doc, _observed(MANIFEST_ENTRY, irregular=("z.bin", "model.tflite")))) == (
        "[unsafe_file] not a regular file: model.tflite, z.bin (fix: a bundle holds only "
        "regular files; replace links with the files)")
    assert str(check_files(doc, _observed(MODEL_ENTRY))) == (
        "[manifest_changed] manifest.json is missing (fix: restore the signed manifest, or sign "
        "the bundle again after editing it)")
    assert str(check_files(doc, _observed(FileEntry("manifest.json", 10, "c" * 64), MODEL_ENTRY))) == (
        "[manifest_changed] manifest.json differs from the signed one (fix: restore the signed "
        "manifest, or sign the bundle again after editing it)")
    three = BundleDocument("det", 3, H_MANIFEST, (FileEntry("a.txt", 1, H_MODEL), MANIFEST_ENTRY,
                                                  MODEL_ENTRY), 1000, 5000, KID)
    assert str(check_files(three, _observed(MANIFEST_ENTRY))) == (
        "[missing_file] signed file(s) missing: a.txt, model.tflite (fix: copy the whole signed "
        "bundle)")
    assert str(check_files(doc, _observed(FileEntry("z", 1, H_MODEL), MANIFEST_ENTRY, MODEL_ENTRY,
                                          FileEntry("b", 1, H_MODEL)))) == (
        "[extra_file] file(s) not covered by the signature: b, z (fix: remove them, or sign the "
        "bundle again with them)")
    changed = FileEntry("model.tflite", 101, "0123456789abcdef" * 4)
    assert str(check_files(doc, _observed(MANIFEST_ENTRY, changed))) == (
        "[file_changed] model.tflite differs from the signed file (size 101 vs 100, sha256 "
        "0123456789ab vs bbbbbbbbbbbb) (fix: copy the signed file again (corrupted or tampered), "
        "or sign again)")


def test_verify_bundle_keeps_the_first_refusal_and_the_verdict_state() -> None:
    def run(installed: int, observed: ObservedBundle):  # type: ignore[no-untyped-def]
        return verify_bundle(_envelope(_doc_bytes()), observed, trust=TrustedKeys({KID: KEY}),
                             check_signature=_check, counters=RollbackCounters({"det": installed}),
                             clock=TrustedClock(floor=1500.0), device_now=2000.0)
    bad_files = _observed(MODEL_ENTRY)
    v = run(3, bad_files)  # refused for the version: the files are not looked at
    assert v.refusal is not None and v.refusal.reason.value == "rollback"
    v = run(2, bad_files)
    assert v.refusal is not None and v.refusal.reason.value == "manifest_changed"
    assert v.document == _document() and v.counters.versions == {"det": 2}
    assert (v.clock.floor, v.clock.learned, v.trusted_now) == (2000.0, 1000.0, 2000.0)
    v = run(2, _observed(MANIFEST_ENTRY, MODEL_ENTRY))
    assert v.refusal is None and v.counters.versions == {"det": 3}


def test_malformed_documents_say_why() -> None:
    keys = ("['expires_at', 'files', 'format', 'issued_at', 'key_id', 'manifest_sha256', "
            "'model', 'version']")
    with raises(DocumentError, f"the signed document must have exactly the keys {keys}"):
        parse_document(b'{"format": "lepton-bundle-signature/1"}')
    with raises(DocumentError, f"the signed document must have exactly the keys {keys}"):
        parse_document(b"[1, 2]")
    with raises(DocumentError, "the signed document is not ASCII JSON: Expecting value: line 1 "
                               "column 1 (char 0)"):
        parse_document(b"nope")
    with raises(DocumentError, "document format 'other/2' is not 'lepton-bundle-signature/1'"):
        parse_document(_doc_bytes(format="other/2"))
    file_rule = "files must be a list of objects with the keys ['path', 'sha256', 'size']"
    for files in ("x", [{"path": "manifest.json"}], [["path", "sha256", "size"]]):
        with raises(DocumentError, file_rule):
            parse_document(_doc_bytes(files=files))
    with raises(DocumentError, "the model name and file paths must be strings"):
        parse_document(_doc_bytes(model=5))
    with raises(DocumentError, "the model name and file paths must be strings"):
        parse_document(_doc_bytes(files=[{"path": 1, "size": 10, "sha256": H_MANIFEST}]))
    assert parse_document(_doc_bytes()) == _document()


def test_malformed_envelopes_say_why() -> None:
    good = json.loads(_envelope(_doc_bytes()))
    assert decode_envelope(_envelope(_doc_bytes())).key_id == KID
    with raises(DocumentError, f"signature file is {MAX_ENVELOPE_BYTES + 1} bytes, more than "
                               f"{MAX_ENVELOPE_BYTES}"):
        decode_envelope(b" " * (MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(DocumentError, match=r"^signature file is not JSON: "):
        decode_envelope(b" " * MAX_ENVELOPE_BYTES)  # the limit itself is read
    with raises(DocumentError, "signature file is not JSON: 'utf-8' codec can't decode byte 0xff "
                               "in position 0: invalid start byte"):
        decode_envelope(b"\xff")
    keys_rule = "signature file must have exactly the keys document, format, key_id, signature"
    for data in ([1], {k: v for k, v in good.items() if k != "signature"}):
        with raises(DocumentError, keys_rule):
            decode_envelope(json.dumps(data).encode())
    cases = [
        ({"format": "x/1"}, "signature format 'x/1' is not 'lepton-bundle-signature/1'"),
        ({"key_id": KID.upper()}, "key_id is not 16 lowercase hex digits"),
        ({"key_id": 7}, "key_id is not 16 lowercase hex digits"),
        ({"document": "caf\u00e9"}, "document is not an ASCII string"),
        ({"document": 7}, "document is not an ASCII string"),
        ({"signature": "QUJD*"}, "signature is not base64: Only base64 data is allowed"),
        ({"signature": good["signature"][:4] + "*" + good["signature"][4:]},
         "signature is not base64: Only base64 data is allowed"),
        ({"signature": base64.b64encode(bytes(63)).decode()},
         "an Ed25519 signature is 64 bytes, this one is 63"),
    ]
    for override, message in cases:
        with raises(DocumentError, message):
            decode_envelope(json.dumps({**good, **override}).encode())


# --- heads: YOLO layouts, rows and candidates ------------------------------------------------

def test_yolo_layouts() -> None:
    assert heads.yolo_layout((1, 84, 8400), "yolo_v8") == heads.YoloLayout(8400, 84, True, False)
    assert heads.yolo_layout((1, 25200, 85), "yolo_v5") == heads.YoloLayout(25200, 85, False, True)
    # Exports with an extra unit axis: the axes of size 1 are dropped.
    assert heads.yolo_layout((1, 1, 84, 8400), "yolo_v8") == heads.YoloLayout(8400, 84, True, False)
    assert heads.yolo_layout((1, 8400, 1, 84), "yolo_v8") == heads.YoloLayout(8400, 84, False, False)
    # Square: read as anchors first (channels on the last axis).
    assert heads.yolo_layout((1, 6, 6), "yolo_v8") == heads.YoloLayout(6, 6, False, False)
    with raises(ValueError, "YOLO head [1, 1, 84] has 1 channels: yolo_v8 needs 4 box values plus "
                            "at least one class"):
        heads.yolo_layout((1, 1, 84), "yolo_v8")
    with raises(ValueError, "YOLO head [1, 5, 100] has 5 channels: yolo_v5 needs 5 box values plus "
                            "at least one class"):
        heads.yolo_layout((1, 5, 100), "yolo_v5")
    with raises(ValueError, "YOLO head [1, 4, 100] has 4 channels: yolo_v8 needs 4 box values plus "
                            "at least one class"):
        heads.yolo_layout((1, 4, 100), "yolo_v8")
    with raises(ValueError, "a YOLO head is [1, 4 + classes, N] or [1, N, 5 + classes], not "
                            "[1, 2, 84, 8400]"):
        heads.yolo_layout((1, 2, 84, 8400), "yolo_v8")


def test_yolo_rows_ignore_a_float_tensors_quantization() -> None:
    layout = heads.YoloLayout(2, 6, True, False)
    raw = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    rows = heads.yolo_rows(raw, layout, 0.5, 3)
    assert rows.tolist() == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
    q = heads.yolo_rows(np.arange(12, dtype=np.uint8).reshape(1, 6, 2), layout, 0.5, 3)
    assert q[0].tolist() == [-1.5, -0.5, 0.5, 1.5, 2.5, 3.5]


def test_yolo_candidates_known_answer() -> None:
    layout = heads.YoloLayout(3, 7, False, True)  # v5: cx, cy, w, h, objectness, 2 classes
    raw = np.array([[[320, 240, 64, 48, 0.9, 0.2, 0.8],
                     [100, 100, 10, 10, 0.5, 0.9, 0.1],
                     [50, 60, 20, 20, 0.9, 0.5, 0.5]]], np.float32)
    boxes, conf, classes, index = heads.yolo_candidates(raw, layout, 0.0, 0, 0.45, 640.0, 480.0)
    # Row 0: 0.9 * 0.8 = 0.72 (class 1); row 1: 0.5 * 0.9 = 0.45, at the threshold (class 0);
    # row 2: 0.9 * 0.5 = 0.45 too, equal class scores: the first class.
    assert index.tolist() == [0, 1, 2] and classes.tolist() == [1, 0, 0]
    assert boxes.dtype == np.float32 and conf.dtype == np.float32
    np.testing.assert_allclose(conf, [0.72, 0.45, 0.45], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[0.45, 0.45, 0.55, 0.55],
                                       [(100 - 5) / 480, (100 - 5) / 640, (100 + 5) / 480,
                                        (100 + 5) / 640],
                                       [50 / 480, 40 / 640, 70 / 480, 60 / 640]], rtol=1e-6)


# --- manifest: integer maps, tensor matching -------------------------------------------------

def test_integer_maps_read_as_class_maps() -> None:
    for dtype in ("int32", "int64", "uint8", "int8", "int16"):
        found = head_candidates([TensorSpec(0, "map", (1, 16, 16), dtype)])
        assert [(c.task, c.decoder) for c in found] == [("segmentation", "argmax")], dtype
    # A quantized uint8 output holds real values, not class ids.
    assert head_candidates([TensorSpec(0, "map", (1, 16, 16), "uint8", 0.1, 0)]) == []
    assert head_candidates([TensorSpec(0, "map", (1, 16, 16), "float32")]) == []


def test_tensor_spec_scales_match_within_1e_9() -> None:
    a = TensorSpec(0, "a", (1, 4), "int8", 0.0, 0)
    assert a.matches(TensorSpec(1, "b", (1, 4), "int8", 1e-9, 0)) is True
    assert a.matches(TensorSpec(1, "b", (1, 4), "int8", 2e-9, 0)) is False


# --- result payload: segments ------------------------------------------------------------------

def test_segment_json_clips_and_rounds() -> None:
    assert Segment(2, "car", 0.1234567, (-0.1, 0.1234567, 1.5, 0.5)).to_json() == {
        "label": "car", "class_id": 2, "area": 0.12346, "box": [0.0, 0.12346, 1.0, 0.5]}
    assert Segment(2, "car", 1.5, (0.25, 0.25, 0.75, 0.75)).to_json()["area"] == 1.0
    assert Segment(2, "car", -0.5, (0.25, 0.25, 0.75, 0.75)).to_json()["area"] == 0.0


# --- labels: pbtxt ------------------------------------------------------------------------------

def test_pbtxt_comments_and_incomplete_items() -> None:
    text = ('item # the first\n{ id: 1 }\n'          # no name: skipped, and the rest still read
            'item {\n  id: 2  # sedan\n  display_name: "car"\n}\n'
            "item { id: 3 name: 'truck' }\n")
    assert parse_labels(text, pbtxt=True) == {2: "car", 3: "truck"}
    assert parse_labels('item # c\n{ id: 4 name: "bus" }', pbtxt=True) == {4: "bus"}
    with raises(LabelError, "no 'item { id: ... name: ... }' entries found"):
        parse_labels("# nothing here\n", pbtxt=True)


# --- sensors: windows every hop ----------------------------------------------------------------

def test_windower_first_window_waits_for_the_hop() -> None:
    w = Windower(["a"], rate_hz=1.0, size=2, hop=3)
    out = []
    for ts in range(7):
        out += w.add(Reading("s", float(ts), {"a": ts * 10.0}))
    # Samples at t = 0, 1, 2, ... (the latest reading at or before t); the first window ends
    # at the third sample, the next three samples later.
    assert out == [(2.0, [[10.0], [20.0]]), (5.0, [[40.0], [50.0]])]


# --- contract: events --------------------------------------------------------------------------

def test_event_body_rounds_the_score() -> None:
    body = event_body(device="d", site="s", source="imu", ts=0.0, type="anomaly_start",
                      label="spike", score=0.123456, model={"name": "m"})
    assert body == {"schema": {"id": "lepton.event", "version": 1}, "device": "d", "site": "s",
                    "stream": "imu.events", "ts": "1970-01-01T00:00:00.000000Z", "source": "imu",
                    "type": "anomaly_start", "label": "spike", "score": 0.1235,
                    "model": {"name": "m"}}


def test_downsample_bounds() -> None:
    assert downsample([]) == ()
    assert downsample([(0.123456, 1.5), (-0.2, 0.654321)], limit=2) == ((0.1235, 1.0),
                                                                        (0.0, 0.6543))
    # 5 points into 3: indexes round(i * 4 / 2) = 0, 2, 4.
    pts = [(i / 10, i / 10) for i in range(5)]
    assert downsample(pts, limit=3) == ((0.0, 0.0), (0.2, 0.2), (0.4, 0.4))
    with raises(ValueError, "trajectory limit 1 must be at least 2"):
        downsample(pts, limit=1)


SHA = "0123456789abcdef" * 4


def _event(**kw: object) -> TrackEvent:
    base: dict[str, object] = {"type": "zone_enter", "rule": "door", "track_id": 7,
                               "label": "person", "confidence": 0.5,
                               "trajectory": ((0.1, 0.2),)}
    base.update(kw)
    return TrackEvent(**base)  # type: ignore[arg-type]


def test_snapshot_refs() -> None:
    assert SnapshotRef(SHA, "image/png").to_json() == {"sha256": SHA, "content_type": "image/png"}
    with raises(ValueError, f"snapshot sha256 {SHA.upper()!r} is not 64 lowercase hex digits"):
        SnapshotRef(SHA.upper())
    with raises(ValueError, "snapshot content type 'Image/JPEG' is not like image/jpeg"):
        SnapshotRef(SHA, "Image/JPEG")


class Side(enum.Enum):
    IN = "in"
    OUT = "out"


def test_track_event_fields_and_bounds() -> None:
    e = _event(type="crossing", direction=Side.OUT, trajectory=[[0.1, 0.2], [1, 0]])
    assert e.direction == "out" and e.trajectory == ((0.1, 0.2), (1.0, 0.0))
    assert _event(type="crossing", direction="in").direction == "in"
    # Bounds that are accepted.
    _event(track_id=2**63 - 1)
    _event(label="a")
    _event(label="x" * 128)
    _event(confidence=1)
    _event(trajectory=tuple((0.0, 1.0) for _ in range(32)))
    _event(type="overcrowding", occupancy=0)
    _event(type="overcrowding", occupancy=1_000_000)
    _event(type="loitering", dwell_s=31536000.0)
    cases: list[tuple[dict[str, object], str]] = [
        ({"type": "bogus"}, "event type 'bogus' is not one of crossing, zone_enter, zone_exit, "
                            "loitering, overcrowding"),
        ({"rule": 5}, "event rule 5 is not a string"),
        ({"rule": "a/b"}, f"rule 'a/b' {SEGMENT_RULE}"),
        ({"track_id": -1}, "track id -1 must be an integer >= 0"),
        ({"track_id": True}, "track id True must be an integer >= 0"),
        ({"track_id": 2**63}, f"track id {2**63} must be an integer >= 0"),
        ({"label": ""}, "event label '' must be 1-128 characters"),
        ({"label": "x" * 129}, f"event label {'x' * 129!r} must be 1-128 characters"),
        ({"confidence": 1.5}, "vote confidence 1.5 must be a number in 0..1"),
        ({"confidence": True}, "vote confidence True must be a number in 0..1"),
        ({"confidence": "0.5"}, "vote confidence '0.5' must be a number in 0..1"),
        ({"confidence": math.nan}, "vote confidence nan must be a number in 0..1"),
        ({"trajectory": tuple((0.0, 1.0) for _ in range(33))},
         "trajectory of 33 points: give 1-32 (downsample() bounds it)"),
        ({"trajectory": ((1.5, 0.5),)}, "trajectory x 1.5 must be a number in 0..1"),
        ({"trajectory": ((0.5, 1.5),)}, "trajectory y 1.5 must be a number in 0..1"),
        ({"type": "crossing", "direction": "up"}, "crossing direction 'up' is not 'in' or 'out'"),
        ({"type": "loitering", "dwell_s": -1}, "dwell_s -1 must be a number in 0..3.1536e+07"),
        ({"type": "overcrowding", "occupancy": -1}, "occupancy -1 must be an integer in 0..1000000"),
        ({"type": "overcrowding", "occupancy": True},
         "occupancy True must be an integer in 0..1000000"),
        ({"type": "overcrowding", "occupancy": 1_000_001},
         "occupancy 1000001 must be an integer in 0..1000000"),
    ]
    for kw, message in cases:
        with raises(ValueError, message):
            _event(**kw)


def test_track_event_json_rounds() -> None:
    e = _event(type="loitering", confidence=0.123456, dwell_s=12.34567)
    assert e.to_json() == {"rule": "door", "track_id": 7, "label": "person", "confidence": 0.1235,
                           "trajectory": [[0.1, 0.2]], "dwell_s": 12.346}


def test_track_events_round_trip_and_malformed_ones_say_why() -> None:
    e = _event(snapshot=SnapshotRef(SHA, "image/png"))
    with raises(ValueError, f"source 'a b' {SEGMENT_RULE}"):
        track_event_body(device="d", site="s", source="a b", ts=0.0, event=e)
    body = track_event_body(device="d", site="s", source="cam", ts=1.5, event=e,
                            model={"name": "det", "version": "2"})
    got = decode_track_event(encode_event(body, seq=4))
    assert (got.device, got.site, got.source, got.seq, got.ts, got.model) == (
        "d", "s", "cam", 4, "1970-01-01T00:00:01.500000Z", {"name": "det", "version": "2"})
    assert got.event == e and got.event.snapshot == SnapshotRef(SHA, "image/png")
    for seq in (0, True):
        with raises(ValueError, f"seq {seq!r} must be an integer >= 1"):
            decode_track_event(encode_event(body, seq=seq))  # type: ignore[arg-type]
    broken = {**body, "trajectory": [[0.1]]}
    with raises(ValueError, "track event is malformed: list index out of range"):
        decode_track_event(encode_event(broken, seq=4))


# --- OTA: chunk plans --------------------------------------------------------------------------

def test_chunk_plan_checks_and_messages() -> None:
    h = [hashlib.sha256(b"abcd").hexdigest(), hashlib.sha256(b"ef").hexdigest()]
    plan = ChunkPlan("m.bin", 6, 4, tuple(h), SHA)
    assert (plan.span(0), plan.span(1)) == ((0, 4), (4, 2))
    with raises(ChunkError, "m.bin: chunk 2 out of range 0..1"):
        plan.span(2)
    with raises(ChunkError, "m.bin: size -1 is not an integer >= 0"):
        ChunkPlan("m.bin", -1, 4, (), SHA)
    with raises(ChunkError, "m.bin: size 1.5 is not an integer >= 0"):
        ChunkPlan("m.bin", 1.5, 4, (), SHA)  # type: ignore[arg-type]
    with raises(ChunkError, "m.bin: chunk size 0 is not an integer >= 1"):
        ChunkPlan("m.bin", 0, 0, (), SHA)
    with raises(ChunkError, "m.bin: chunk size 2.0 is not an integer >= 1"):
        ChunkPlan("m.bin", 4, 2.0, tuple(h), SHA)  # type: ignore[arg-type]
    with raises(ChunkError, "m.bin: hashes must be 64 lowercase hex digits"):
        ChunkPlan("m.bin", 6, 4, tuple(h), SHA.upper())
    with raises(ChunkError, "chunk plan is not an object: list"):
        ChunkPlan.from_json([1])
    with raises(ChunkError, "chunk plan is unreadable: KeyError('size')"):
        ChunkPlan.from_json({"path": "m.bin"})
    with raises(ChunkError, "m.bin: chunk 1 is 0 bytes; only the last chunk may be shorter than 4"):
        plan_chunks("m.bin", [b"abcd", b""], chunk_size=4)
    with raises(ChunkError, "m.bin: chunk 0 is 0 bytes; only the last chunk may be shorter than 4"):
        plan_chunks("m.bin", [b""], chunk_size=4)
    entry = FileEntry("m.bin", 7, "f" * 64)
    with raises(ChunkError, "m.bin: the chunk plan (6 bytes, sha256 0123456789ab) is not for the "
                            "signed file (7 bytes, sha256 ffffffffffff)"):
        ReceiveState.start(plan, budget_bytes=100, entry=entry)
    with raises(ChunkError, "receiver state is unreadable: KeyError('plan')"):
        ReceiveState.from_json("{}")


# --- OTA: bundle paths, documents, envelopes -----------------------------------------------------

def test_bundle_paths_are_plain_and_relative() -> None:
    assert check_path("labels/labels.txt") == "labels/labels.txt"
    assert check_path("a..b/.c") == "a..b/.c"
    for bad in ("", "/abs", "a//b", "a/", "./a", "a/./b", "a/../b", "..", "a\\b", "a\x00b"):
        with raises(DocumentError, f"file path {bad!r} is not a plain relative path inside the "
                                   "bundle"):
            check_path(bad)
    with raises(DocumentError, "signature.json cannot be one of the signed files"):
        check_path("signature.json")


def _bundle_doc(**kw: object) -> BundleDocument:
    base: dict[str, object] = {"model": "det", "version": 3, "manifest_sha256": H_MANIFEST,
                               "files": (MANIFEST_ENTRY, MODEL_ENTRY), "issued_at": 1000,
                               "expires_at": 5000, "key_id": KID}
    base.update(kw)
    return BundleDocument(**base)  # type: ignore[arg-type]


def test_bundle_document_checks_and_messages() -> None:
    assert _bundle_doc(issued_at=0).issued_at == 0
    assert _bundle_doc(files=(MANIFEST_ENTRY, FileEntry("z", 0, H_MODEL))).total_size == 10
    cases: list[tuple[dict[str, object], str]] = [
        ({"model": ""}, "the model name is empty"),
        ({"model": 5}, "the model name is empty"),
        ({"version": 0}, "bundle version 0 is not an integer >= 1"),
        ({"manifest_sha256": H_MANIFEST.upper()}, "manifest_sha256 is not 64 lowercase hex digits"),
        ({"issued_at": -1}, "time -1 is not a non-negative integer of Unix seconds"),
        ({"issued_at": 1.5}, "time 1.5 is not a non-negative integer of Unix seconds"),
        ({"expires_at": 1000}, "expires_at 1000 is not after issued_at 1000"),
        ({"key_id": KID.upper()}, f"key_id {KID.upper()!r} is not 16 lowercase hex digits"),
        ({"files": (MODEL_ENTRY, MANIFEST_ENTRY)}, "files are not sorted by path without duplicates"),
        ({"files": (MANIFEST_ENTRY, MODEL_ENTRY, MODEL_ENTRY)},
         "files are not sorted by path without duplicates"),
        ({"files": (MANIFEST_ENTRY, FileEntry("model.tflite", -1, H_MODEL))},
         "file entry 'model.tflite' needs a size >= 0 and a sha256 hex digest"),
        ({"files": (MANIFEST_ENTRY, FileEntry("model.tflite", 1.5, H_MODEL))},
         "file entry 'model.tflite' needs a size >= 0 and a sha256 hex digest"),
        ({"files": (MANIFEST_ENTRY, FileEntry("model.tflite", 1, "x"))},
         "file entry 'model.tflite' needs a size >= 0 and a sha256 hex digest"),
        ({"files": (MODEL_ENTRY,)}, "the signed files do not include manifest.json"),
        ({"manifest_sha256": H_MODEL}, "manifest_sha256 differs from the manifest.json file entry"),
    ]
    for kw, message in cases:
        with raises(DocumentError, message):
            _bundle_doc(**kw)


def test_canonical_bytes_are_ascii_escaped() -> None:
    got = canonical_bytes(_bundle_doc(model="caf\u00e9"))
    assert b'"model":"caf\\u00e9"' in got
    assert got == _doc_bytes(model="caf\u00e9")


def test_envelope_bytes_are_indented_and_sorted() -> None:
    sig = bytes(range(64))
    got = encode_envelope(b"{}", KID, sig)
    b64 = base64.b64encode(sig).decode("ascii")
    assert got == (f'{{\n  "document": "{{}}",\n  "format": "lepton-bundle-signature/1",\n'
                   f'  "key_id": "{KID}",\n  "signature": "{b64}"\n}}\n').encode("ascii")


# --- outbox: publish window -------------------------------------------------------------------

def test_committed_records_need_a_fetch_unless_all_were_published() -> None:
    w = PublishWindow(window=10, connected=True, has_unsent=False)
    assert w.on_committed([3]) == [FetchUnsent(0, 10)] and w.cursor == 0 and w.has_unsent
    w = PublishWindow(window=10, connected=True, has_unsent=False)
    assert w.on_committed([3, 4], all_published=True) == [] and w.cursor == 4


# --- contract: counts ---------------------------------------------------------------------------

class Kind(enum.Enum):
    LINE = "line"


def test_count_entries() -> None:
    e = CountEntry("door", Kind.LINE, "car", Side.IN, 3)
    assert (e.kind, e.direction, e.key) == ("line", "in", ("door", "line", "car", "in"))
    CountEntry("door", "zone", "c", "out", 0)
    CountEntry("door", "zone", "x" * 128, "out", 2**31 - 1)
    cases: list[tuple[tuple[object, ...], str]] = [
        ((5, "line", "car", "in", 1), "count rule 5 is not a string"),
        (("a b", "line", "car", "in", 1), f"rule 'a b' {SEGMENT_RULE}"),
        (("door", "area", "car", "in", 1), "count kind 'area' is not one of line, zone"),
        (("door", "line", "", "in", 1), "count label '' must be 1-128 characters"),
        (("door", "line", "x" * 129, "in", 1),
         f"count label {'x' * 129!r} must be 1-128 characters"),
        (("door", "line", "car", "up", 1), "count direction 'up' is not 'in' or 'out'"),
        (("door", "line", "car", "in", True),
         "count True of door/car/in must be an integer in 0..2147483647"),
        (("door", "line", "car", "in", 2**31),
         "count 2147483648 of door/car/in must be an integer in 0..2147483647"),
    ]
    for args, message in cases:
        with raises(ValueError, message):
            CountEntry(*args)  # type: ignore[arg-type]


def test_count_buckets() -> None:
    b = CountBucket(120.0005, 60.0, False)  # type: ignore[arg-type]
    assert (b.start, b.seconds, type(b.seconds), b.start_iso) == (
        120.0, 60, int, "1970-01-01T00:02:00Z")
    assert CountBucket(0.001, 60, True).start == 0.0  # 1 ms off: still the whole second
    assert CountBucket(253402300798, 1, False).start_s == 253402300798
    assert CountBucket(0, 86400, False).seconds == 86400
    seconds_rule = "must be a whole number of seconds in 1..86400"
    cases: list[tuple[tuple[object, ...], str]] = [
        ((0, True, False), f"bucket seconds True {seconds_rule}"),
        ((0, "60", False), f"bucket seconds '60' {seconds_rule}"),
        ((0, 1.5, False), f"bucket seconds 1.5 {seconds_rule}"),
        ((0, math.inf, False), f"bucket seconds inf {seconds_rule}"),
        ((0, 0, False), f"bucket seconds 0 {seconds_rule}"),
        ((0, 86401, False), f"bucket seconds 86401 {seconds_rule}"),
        ((True, 60, False), "bucket start True is not a number of epoch seconds"),
        (("0", 60, False), "bucket start '0' is not a number of epoch seconds"),
        ((math.nan, 60, False), "bucket start nan is not a number of epoch seconds"),
        ((120.5, 60, False), "bucket start 120.5 is not aligned to its 60 s interval (a whole "
                             "multiple of seconds since the epoch)"),
        ((90, 60, False), "bucket start 90 is not aligned to its 60 s interval (a whole multiple "
                          "of seconds since the epoch)"),
        ((253402300799, 1, False), "bucket start 253402300799 is outside 1970..9999"),
        ((-60, 60, False), "bucket start -60 is outside 1970..9999"),
        ((0, 60, 1), "bucket partial 1 is not true or false"),
    ]
    for args, message in cases:
        with raises(ValueError, message):
            CountBucket(*args)  # type: ignore[arg-type]


def _entry(label: str = "car") -> CountEntry:
    return CountEntry("door", "line", label, "in", 1)


def test_count_records() -> None:
    bucket = CountBucket(0, 60, False)
    r = CountRecord("d", "s", "cam", bucket, [_entry()])  # type: ignore[arg-type]
    assert r.counts == (_entry(),) and r.stream == "cam.counts"
    many = tuple(_entry(f"c{i}") for i in range(4096))
    assert len(CountRecord("d", "s", "cam", bucket, many).counts) == 4096
    with raises(ValueError, "4097 count entries in one record (at most 4096)"):
        CountRecord("d", "s", "cam", bucket, (*many, _entry("extra")))
    with raises(ValueError, "count entry door/line/car/in given twice in one bucket"):
        CountRecord("d", "s", "cam", bucket, (_entry(), _entry()))
    for kind, args in (("device", ("a b", "s", "cam")), ("site", ("d", "a b", "cam")),
                       ("source", ("d", "s", "a b"))):
        with raises(ValueError, f"{kind} 'a b' {SEGMENT_RULE}"):
            CountRecord(*args, bucket, ())  # type: ignore[arg-type]


def _count_body(seq: int = 5) -> dict[str, object]:
    r = CountRecord("d", "s", "cam", CountBucket(1_790_000_040, 60, True), (_entry(),))
    return json.loads(encode_count(r, seq=seq))  # type: ignore[no-any-return]


def test_count_seq_bounds() -> None:
    assert _count_body(seq=2**63 - 1)["seq"] == 2**63 - 1
    r = CountRecord("d", "s", "cam", CountBucket(0, 60, True), ())
    for seq in (0, True, 2**63):
        with raises(ValueError, f"seq {seq!r} must be in 1..{2**63 - 1}"):
            encode_count(r, seq=seq)  # type: ignore[arg-type]


def test_count_records_decoded_and_refused() -> None:
    got = count_from_json(_count_body())
    assert (got.seq, got.record.bucket.start, got.record.counts) == (5, 1_790_000_040.0, (_entry(),))
    assert count_from_json(_count_body(seq=2**63 - 1)).seq == 2**63 - 1
    body = _count_body()
    start_rule = "is not an RFC 3339 UTC time in whole seconds (YYYY-MM-DDTHH:MM:SSZ)"
    cases: list[tuple[dict[str, object], str]] = [
        ({"schema": {"id": "lepton.count", "version": 2}}, "payload lacks schema lepton.count v1"),
        ({"bucket": [1]}, "'bucket' must be an object and 'counts' a list"),
        ({"counts": {}}, "'bucket' must be an object and 'counts' a list"),
        ({"seq": True}, f"seq True must be in 1..{2**63 - 1}"),
        ({"seq": 0}, f"seq 0 must be in 1..{2**63 - 1}"),
        ({"counts": [5]}, "count entry 5 is not an object"),
        ({"bucket": {**body["bucket"], "start": "2026-09-21 14:14:00"}},  # type: ignore[dict-item]
         f"bucket start '2026-09-21 14:14:00' {start_rule}"),
        ({"bucket": {**body["bucket"], "start": 5}},  # type: ignore[dict-item]
         f"bucket start 5 {start_rule}"),
        ({"bucket": {**body["bucket"], "start": "2026-02-30T00:00:00Z"}},  # type: ignore[dict-item]
         "bucket start '2026-02-30T00:00:00Z' is not a real date and time"),
        ({"device": 5}, "count record is malformed: expected string or bytes-like object, got "
                        "'int'"),
        ({"stream": "cam"}, "stream 'cam' is not 'cam.counts' (the counts of source S are "
                            "stream 'S.counts')"),
    ]
    for change, message in cases:
        with raises(ValueError, message):
            count_from_json({**body, **change})
    with raises(ValueError, "count record lacks 'seq'"):
        count_from_json({k: v for k, v in body.items() if k != "seq"})


def test_count_bucket_start_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert count_from_json(_count_body()).record.bucket.start == 1_790_000_040.0
    finally:
        monkeypatch.undo()
        time.tzset()


# --- labels: fitting a label file to the model's classes -----------------------------------------

def test_fit_labels_refusals_name_both_numbers() -> None:
    assert fit_labels({}, 0) == 0
    assert fit_labels({0: "a", 1: "b"}, 2) == 0
    with raises(LabelError, "the model has 0 output classes"):
        fit_labels({0: "a"}, 0)
    with raises(LabelError, "negative label id -1"):
        fit_labels({-1: "a", 0: "b"}, 2)
    with raises(LabelError, "2 labels (ids 0..5) for a model with 3 output classes"):
        fit_labels({0: "a", 5: "b"}, 3)
    with raises(LabelError, "4 labels for a model with 9 output classes"):
        fit_labels({0: "a", 1: "b", 2: "c", 3: "d"}, 9)
    with raises(LabelError, "3 labels for a model with 2 output classes; one more label than "
                            "classes, but the first, 'cat', is not a background row"):
        fit_labels({0: "cat", 1: "dog", 2: "cow"}, 2)


# --- postprocess: top classes ----------------------------------------------------------------------

def test_top_classes_are_the_best_k() -> None:
    scores = np.array([[0.1, 0.7, 0.2, 0.05, 0.6, 0.3]], np.float32)
    m = Manifest(name="m", task="classification", decoder="softmax", score_threshold=0.0,
                 max_results=1)
    assert [c.class_id for c in top_classes(scores, m)] == [1]
    m.max_results = 2
    assert [c.class_id for c in top_classes(scores, m)] == [1, 4]
    m.max_results = 3
    assert [c.class_id for c in top_classes(scores, m)] == [1, 4, 5]
    # A wide head (ImageNet-like): the single best of 1000 shuffled scores.
    order = np.random.default_rng(1).permutation(1000)
    wide = (order / 1000).astype(np.float32).reshape(1, -1)
    m.max_results = 1
    assert [c.class_id for c in top_classes(wide, m)] == [order.tolist().index(999)]


# --- manifest: candidates' texts and inferred defaults ---------------------------------------------

def test_head_candidates_say_why() -> None:
    ssd = [TensorSpec(0, "boxes", (1, 10, 4), "float32"), TensorSpec(1, "classes", (1, 10), "float32"),
           TensorSpec(2, "scores", (1, 10), "float32"), TensorSpec(3, "count", (1,), "float32")]
    assert head_candidates(ssd) == [Candidate(
        "detection", "ssd_postprocess",
        {"boxes": "boxes", "classes": "classes", "scores": "scores", "count": "count"},
        why="the 4 outputs of TFLite_Detection_PostProcess")]
    assert head_candidates([TensorSpec(0, "v", (1, 12), "float32")]) == [
        Candidate("classification", "softmax", {"scores": "v"}, why="one score vector of 12"),
        Candidate("embedding", "embedding", {"embedding": "v"},
                  lacks="a manifest with task 'embedding' (a [1, D] vector reads as class "
                        "scores unless the manifest says so)",
                  why="a [1, 12] vector")]


def test_inferred_defaults_per_decoder() -> None:
    image = TensorSpec(0, "image", (1, 64, 64, 3), "uint8")

    def made(task: str, decoder: str) -> Manifest:
        return manifest_for("m", image, [], Candidate(task, decoder, {}))

    got = {d: (m.score_threshold, m.max_results, m.label_offset) for d, m in (
        ("ssd_postprocess", made("detection", "ssd_postprocess")),
        ("softmax", made("classification", "softmax")),
        ("yolo_v8", made("detection", "yolo_v8")), ("ssd_raw", made("detection", "ssd_raw")),
        ("grid", made("detection", "grid")), ("argmax", made("segmentation", "argmax")),
        ("embedding", made("embedding", "embedding")))}
    assert got == {"ssd_postprocess": (0.3, 20, 1), "softmax": (0.1, 5, 0),
                   "yolo_v8": (0.25, 100, 0), "ssd_raw": (0.25, 100, 0), "grid": (0.0, 20, 0),
                   "argmax": (0.0, 32, 0), "embedding": (0.0, 20, 0)}
    pose = made("pose", "movenet_multi")
    assert (pose.score_threshold, pose.max_results, pose.keypoints[0], len(pose.skeleton)) == (
        0.2, 6, COCO17_KEYPOINTS[0], 16)


# --- sensors: binary frames ----------------------------------------------------------------------

def test_binary_frames_resync_after_a_bogus_length() -> None:
    p = BinaryCrc16("imu", lambda: 7.0)
    # A sync pair whose "length" byte starts the real frame: the bad CRC drops only the sync.
    frame = encode_binary_frame([1.5, -2.0])
    assert p.feed(b"\xaa\x55" + frame + bytes(175)) == [Reading("imu", 7.0, {"c0": 1.5, "c1": -2.0})]
    assert p.last_error == "174 byte(s) of garbage skipped"
    q = BinaryCrc16("imu", lambda: 7.0)
    assert q.feed(b"\x01\x02") == []
    assert (q.errors, q.last_error) == (1, "1 byte(s) of garbage skipped")


def _f32(name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(0, name, shape, dtype)


def test_head_candidates_of_each_kind() -> None:
    assert head_candidates([_f32("v", (1, 1, 1, 256))]) == [
        Candidate("embedding", "embedding", {"embedding": "v"},
                  why="a pooled feature vector [1, 1, 1, 256]"),
        Candidate("classification", "softmax", {"scores": "v"},
                  lacks="a manifest with task 'classification' and labels",
                  why="a pooled vector can also be class scores")]
    assert head_candidates([_f32("kp", (1, 1, 17, 3))]) == [
        Candidate("pose", "movenet", {"keypoints": "kp"},
                  why="MoveNet single-pose [1, 1, 17, 3] (y, x, score)")]
    assert head_candidates([_f32("kp", (1, 6, 56))]) == [
        Candidate("pose", "movenet_multi", {"keypoints": "kp"}, why="MoveNet multi-pose [1, 6, 56]")]
    v8 = Candidate("detection", "yolo_v8", {"predictions": "p"},
                   why="YOLO v8/v11 head [1, 4 + 80, 8400]")
    v5 = Candidate("detection", "yolo_v5", {"predictions": "p"},
                   why="YOLO v5 head [1, 8400, 5 + 79]")
    assert head_candidates([_f32("p", (1, 84, 8400))]) == [v8, v5]
    assert head_candidates([_f32("p", (1, 8400, 84))]) == [v5, v8]
    assert head_candidates([_f32("mask", (1, 32, 32), "int32")]) == [
        Candidate("segmentation", "argmax", {"mask": "mask"}, why="a class map [1, 32, 32]")]
    assert head_candidates([_f32("l", (1, 32, 32, 6))]) == [
        Candidate("segmentation", "logits", {"logits": "l"}, why="per-pixel scores of 6 classes"),
        Candidate("detection", "grid", {"grid": "l"},
                  lacks="a manifest with decoder 'grid' (objectness, box, classes per cell)",
                  why="a detection grid [1, GH, GW, 5 + classes]")]
    assert head_candidates([_f32("l", (1, 32, 32, 5))]) == [
        Candidate("segmentation", "logits", {"logits": "l"}, why="per-pixel scores of 5 classes")]
    boxes, scores = _f32("b", (1, 100, 4)), _f32("s", (1, 100, 3))
    assert head_candidates([boxes, scores]) == [
        Candidate("detection", "ssd_raw", {"boxes": "b", "scores": "s"},
                  lacks="anchors (ycenter, xcenter, h, w) per box in the manifest ('anchors': a "
                        ".npy/.json file)",
                  why="raw SSD boxes [1, 100, 4] and scores")]
    assert head_candidates([boxes, scores, _f32("a", (100, 4))]) == [
        Candidate("detection", "ssd_raw", {"boxes": "b", "scores": "s", "anchors": "a"},
                  why="raw SSD boxes [1, 100, 4] and scores")]


def test_head_candidates_at_their_bounds() -> None:
    def kinds(*heads: TensorSpec) -> list[str]:
        return [c.decoder for c in head_candidates(list(heads))]

    assert kinds(_f32("kp", (1, 10, 56))) == ["movenet_multi"]
    assert kinds(_f32("kp", (1, 11, 56))) == ["yolo_v8", "yolo_v5"]  # 11 persons: not MoveNet
    assert kinds(_f32("p", (1, 5, 100))) == ["yolo_v8", "yolo_v5"]
    assert kinds(_f32("p", (1, 4, 100))) == []
    assert kinds(_f32("m", (1, 8, 8), "int32")) == ["argmax"]
    assert kinds(_f32("m", (1, 4, 100), "int32")) == []
    assert head_candidates([_f32("m", (1, 16, 32), "uint8")])[0].why == "a class map [1, 16, 32]"
    assert kinds(_f32("l", (1, 8, 8, 2))) == ["logits"]
    assert kinds(_f32("l", (1, 32, 32, 1))) == []
    assert kinds(_f32("l", (1, 4, 32, 6))) == []
    boxes = _f32("b", (1, 100, 4))
    assert kinds(boxes, _f32("s", (1, 100, 2))) == ["ssd_raw"]
    assert kinds(boxes, _f32("s", (1, 100, 1))) == []
    found = head_candidates([boxes, _f32("s", (1, 100, 3)), _f32("a", (1, 100, 4))])
    assert [(c.outputs, c.complete) for c in found] == [
        ({"boxes": "b", "scores": "s", "anchors": "a"}, True)]


# --- commands, results, poses, clocks, sensors ----------------------------------------------------

def test_refused_commands_say_why() -> None:
    with pytest.raises(CommandError) as info:
        decode_command("reboot", b" " * (256 * 1024 + 1))
    assert (info.value.code, info.value.reason, info.value.fix) == (
        "malformed", "payload of 262145 bytes is over the 262144 byte limit",
        "send a smaller command")
    body = json.dumps({"schema": {"id": "lepton.command", "version": 1}, "id": "a b"}).encode()
    with pytest.raises(CommandError) as info:
        decode_command("reboot", body)
    assert (info.value.code, info.value.reason, info.value.fix) == (
        "malformed", "id 'a b' is not 1-128 characters of A-Z a-z 0-9 _ . : -",
        "give every command a unique id (a UUID)")


def _encoded(**kw: object) -> dict[str, object]:
    r = FrameResult("cam", 1, 0.0, 5, 8, 8, **kw)  # type: ignore[arg-type]
    return json.loads(encode_result(r, seq=1, device="d", site="s",  # type: ignore[no-any-return]
                                    model=ModelRef("m", "1", "0" * 64)))


def test_result_records_of_masks_and_embeddings() -> None:
    got = _encoded(task="segmentation", mask_png=b"PNG!")
    assert got["mask"] == hashlib.sha256(b"PNG!").hexdigest() and got["segments"] == []
    assert "mask" not in _encoded(task="segmentation")
    assert _encoded(task="embedding")["embedding"] == {"dim": 0, "normalized": False, "values": []}
    assert _encoded(task="embedding", embedding=Embedding(2, (0.6, 0.8), True))["embedding"] == {
        "dim": 2, "normalized": True, "values": [0.6, 0.8]}


def test_single_pose_keypoints_names_and_threshold() -> None:
    m = Manifest(name="m", task="pose", decoder="movenet", score_threshold=0.5,
                 keypoints=["nose", "tail"])
    raw = np.array([[[[0.25, 1.5, 0.5], [0.75, -0.5, 0.5], [0.5, 0.5, 0.5]]]], np.float32)
    poses = heads.movenet_single(raw, m)  # mean score 0.5: exactly the threshold
    assert len(poses) == 1 and poses[0].score == 0.5 and poses[0].box is None
    assert poses[0].keypoints == [Keypoint("nose", 1.0, 0.25, 0.5), Keypoint("tail", 0.0, 0.75, 0.5),
                                  Keypoint("kp_2", 0.5, 0.5, 0.5)]
    assert heads.movenet_single(np.zeros((1, 1, 0, 3), np.float32), m) == []
    m.score_threshold = 0.0
    assert heads.movenet_single(np.zeros((1, 1, 0, 3), np.float32), m) == [Pose(0.0, [], None)]


def test_clock_at_epoch_zero_and_bad_state() -> None:
    skew = TrustedClock().skew(0.0)
    assert (skew.seconds, skew.exceeds) == (0.0, False)
    assert TrustedClock().now(0.0)[0] == 0.0
    with raises(ValueError, "trusted clock floor -1.0 is not a finite time >= 0"):
        TrustedClock(floor=-1.0)


def test_line_parsers_framing() -> None:
    csv = make_parser("csv", "imu", lambda: 3.0)
    assert csv.feed(b"\n1,2\n") == [Reading("imu", 3.0, {"c0": 1.0, "c1": 2.0})]
    line = b"0" * 1020 + b",2.5"  # exactly MAX_LINE (1024) bytes: kept
    assert csv.feed(line) == []
    assert csv.feed(b"\n") == [Reading("imu", 3.0, {"c0": 0.0, "c1": 2.5})]
    assert csv.errors == 0
    assert csv.feed(b"9" * 1100) == [] and csv.feed(b"9" * 1100) == []
    # The rest of the dropped line is dropped too; the next line is read.
    assert csv.feed(b"1,2\n3,4\n") == [Reading("imu", 3.0, {"c0": 3.0, "c1": 4.0})]
    assert (csv.errors, csv.last_error) == (1, "line longer than 1024 bytes dropped")
    assert csv.feed(b"1,X\r\n") == []
    assert csv.last_error == "non-numeric field in '1,X'"


def test_sensor_names_must_be_topic_segments() -> None:
    with raises(ValueError, f"sensor name 'a b' {SEGMENT_RULE}"):
        uri.parse_sensor_uri("serial:///dev/ttyUSB0?name=a%20b")


def test_window_models_get_a_sequence_manifest() -> None:
    window = _f32("win", (1, 50, 3))
    m = sequence_manifest("imu-model", window, [_f32("probs", (1, 4))])
    assert (m.name, m.task, m.decoder, m.input, m.score_threshold, m.max_results, m.outputs,
            m.inferred) == ("imu-model", "sequence", "softmax", "win", 0.0, 4,
                            {"scores": "probs"}, True)
    assert m.sensor == {"channels": ["ch0", "ch1", "ch2"], "window": 50, "hop": 50,
                        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    for heads_ in ([_f32("a", (1, 4)), _f32("b", (1, 2))], [_f32("c", (2, 4, 1))], []):
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in heads_)
        with raises(ManifestError, f"window input win[1, 50, 3] but outputs {shapes}; a sequence "
                                   "model gives one score vector [1, C]"):
            sequence_manifest("imu-model", window, heads_)
    with raises(ManifestError, "window input win[1, 50, 3] but outputs c[1, 4, 1]; a sequence "
                               "model gives one score vector [1, C]"):
        sequence_manifest("imu-model", window, [_f32("c", (1, 4, 1))])


def test_key_ids() -> None:
    assert key_id(KEY) == KID
    with raises(DocumentError, "an Ed25519 public key is 32 bytes, this one is 31"):
        key_id(KEY[:31])
    with raises(DocumentError, "an Ed25519 public key is 32 bytes, this one is 33"):
        key_id(KEY + b"\x00")
