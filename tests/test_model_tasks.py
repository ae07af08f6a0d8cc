"""Each task end to end through LiteRT: models made here (tests/tflite_models.py, no TensorFlow)
whose outputs carry head values the test chose, the real public models in ../shared/data, and
every result record validated against lepton.result v1."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from agent.core.contract.result import FrameResult, ModelRef, decode_result, encode_result
from agent.errors import ModelError
from agent.inference.model import load_model
from agent.inference.runner import Inference, ModelRunner, mask_png
from agent.schemas import load_schema
from tests.conftest import shared_file
from tests.tflite_models import head_input, write_heads_model

VALIDATOR = Draft202012Validator(load_schema("result.v1"))


def record(runner: ModelRunner, out: Inference) -> dict[str, object]:
    """The lepton.result record of one inference, validated against the schema."""
    result = FrameResult(stream="cam", frame_index=0, capture_wall=1.7e9, capture_mono_ns=1,
                         width=64, height=48, task=runner.manifest.task,
                         detections=out.detections, classes=out.classes, poses=out.poses,
                         segments=out.segments, embedding=out.embedding)
    payload = encode_result(result, seq=1, device="d1", site="s1",
                            model=ModelRef("m", "1", "0" * 64))
    body = decode_result(payload)
    errors = sorted(VALIDATOR.iter_errors(body), key=str)
    assert not errors, errors[0]
    return body


def bundle(folder: Path, model: Path, manifest: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.tflite"
    target.write_bytes(model.read_bytes())
    (folder / "manifest.json").write_text(json.dumps({"name": "t", "file": "model.tflite",
                                                      **manifest}))
    return folder


# --------------------------------------------------------------------------- detection


def _yolo_scene(channels_first: bool, v5: bool, classes: int, n: int) -> np.ndarray:
    """Three objects: two overlapping boxes of class 2 (one must go), one of class 0."""
    first = 5 if v5 else 4
    rows = np.zeros((n, first + classes), np.float32)
    rows[:, :4] = [320, 320, 20, 20]
    rows[3, :4], rows[3, first + 2] = [320, 240, 160, 120], 0.9
    rows[7, :4], rows[7, first + 2] = [330, 245, 160, 120], 0.7  # IoU ~0.8 with row 3
    rows[9, :4], rows[9, first + 0] = [100, 500, 40, 80], 0.6
    rows[11, :4], rows[11, first + 0] = [500, 100, 40, 80], 0.2  # below 0.25
    if v5:
        rows[:, 4] = 1.0
    return rows.T.copy() if channels_first else rows


@pytest.mark.parametrize("v5", [False, True])
def test_yolo_pixel_boxes_through_litert(tmp_path: Path, v5: bool) -> None:
    """v8/v11 [1, 4 + C, N] and v5 [1, N, 5 + C] with boxes in input pixels (auto units)."""
    classes, n = 3, 40
    head = _yolo_scene(not v5, v5, classes, n)
    side = 640
    model = write_heads_model(tmp_path / "y.tflite", [1, side, side, 1],
                              [("pred", [1, *head.shape])])
    m = load_model(model, num_threads=1)
    assert (m.manifest.task, m.manifest.decoder) == ("detection", "yolo_v5" if v5 else "yolo_v8")
    runner = ModelRunner(m)
    out = runner.infer(head_input([1, side, side, 1], [head]))
    assert [(d.class_id, round(d.score, 3)) for d in out.detections] == [(2, 0.9), (0, 0.6)]
    # row 3: cx 320, cy 240, w 160, h 120 -> (ymin, xmin, ymax, xmax) / 640
    assert out.detections[0].box == pytest.approx((180 / 640, 240 / 640, 300 / 640, 400 / 640))
    body = record(runner, out)
    assert body["task"] == "detection" and len(body["detections"]) == 2


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
def test_yolo_normalized_boxes_quantized_end_to_end(tmp_path: Path, dtype: str) -> None:
    """Ultralytics TFLite exports give normalized boxes; int8/uint8 exports one scale for the
    whole head (values in [0, 1]): the decode reads the quantized tensor in place."""
    classes, n = 4, 30
    rows = np.zeros((n, 4 + classes), np.float32)
    rows[:, :4] = [0.5, 0.5, 0.05, 0.05]
    rows[5] = [0.5, 0.4, 0.25, 0.2, 0.0, 0.0, 0.0, 0.9]
    rows[6] = [0.52, 0.41, 0.25, 0.2, 0.0, 0.0, 0.0, 0.8]  # overlaps row 5, same class
    rows[8] = [0.2, 0.8, 0.1, 0.2, 0.0, 0.6, 0.0, 0.0]
    head = rows.T.copy()  # v8: [1, 4 + C, N]
    scale, zero = {"float32": (0.0, 0), "uint8": (1 / 255, 0), "int8": (1 / 255, -128)}[dtype]
    if dtype == "float32":
        values = head
    else:
        lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
        values = np.clip(np.round(head / scale) + zero, lo, hi)
    model = write_heads_model(tmp_path / "y.tflite", [1, head.size, 1, 1],
                              [("pred", [1, 4 + classes, n])], dtype=dtype, scale=scale,
                              zero_point=zero)
    runner = ModelRunner(load_model(model, num_threads=1))
    out = runner.infer(head_input([1, head.size, 1, 1], [values], dtype))
    got = [(d.class_id, round(d.score, 2)) for d in out.detections]
    assert got == [(3, 0.9), (1, 0.6)], got
    tol = 0.01 if dtype != "float32" else 1e-6
    assert out.detections[0].box == pytest.approx((0.3, 0.375, 0.5, 0.625), abs=tol)
    assert out.detections[1].box == pytest.approx((0.7, 0.15, 0.9, 0.25), abs=tol)
    record(runner, out)


def test_ssd_raw_with_anchors_from_the_manifest(tmp_path: Path) -> None:
    n, classes = 6, 3  # score columns: background + 2
    anchors = np.array([[0.25 + 0.1 * i, 0.5, 0.2, 0.3] for i in range(n)], np.float32)
    enc = np.zeros((n, 4), np.float32)
    enc[2] = [2.0, -1.0, 0.0, 0.0]
    logits = np.full((n, classes), -6.0, np.float32)
    logits[2, 2] = 3.0  # class 1 (after background), sigmoid 0.953
    logits[3, 1] = 1.0  # class 0, sigmoid 0.731; anchor 3's box overlaps anchor 2's but other class
    model = write_heads_model(tmp_path / "s.tflite", [1, 64, 1, 1],
                              [("boxes", [1, n, 4]), ("scores", [1, n, classes])])
    np.save(tmp_path / "anchors.npy", anchors)
    folder = bundle(tmp_path / "b", model, {
        "task": "detection", "decoder": "ssd_raw", "input": "x", "score_threshold": 0.5,
        "outputs": {"boxes": "boxes", "scores": "scores"}, "anchors": "anchors.npy",
        "labels": {"0": "background", "1": "car", "2": "bus"}, "label_offset": 1})
    (folder / "anchors.npy").write_bytes((tmp_path / "anchors.npy").read_bytes())
    runner = ModelRunner(load_model(folder, num_threads=1))
    out = runner.infer(head_input([1, 64, 1, 1], [enc, logits]))
    assert [(d.label, round(d.score, 3)) for d in out.detections] == [("bus", 0.953),
                                                                       ("car", 0.731)]
    # anchor 2: yc = 2/10*0.2 + 0.45 = 0.49, xc = -1/10*0.3 + 0.5 = 0.47, h 0.2, w 0.3
    assert out.detections[0].box == pytest.approx((0.39, 0.32, 0.59, 0.62), abs=1e-6)
    record(runner, out)


def test_ssd_raw_without_anchors_is_refused_with_the_fix(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "s.tflite", [1, 64, 1, 1],
                              [("boxes", [1, 4, 4]), ("scores", [1, 4, 3])])
    folder = bundle(tmp_path / "b", model, {
        "task": "detection", "decoder": "ssd_raw", "input": "x",
        "outputs": {"boxes": "boxes", "scores": "scores"}})
    with pytest.raises(ModelError, match=r"ssd_raw. needs anchors"):
        load_model(folder)
    (folder / "manifest.json").write_text(json.dumps({
        "name": "t", "task": "detection", "decoder": "ssd_raw", "input": "x",
        "outputs": {"boxes": "boxes", "scores": "scores"}, "anchors": [[0.5, 0.5, 1, 1]] * 3}))
    with pytest.raises(ModelError, match="3 anchors for 4 boxes"):
        load_model(folder)


# --------------------------------------------------------------------------- pose


def test_movenet_single_pose_through_litert(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "movenet.tflite", [1, 8, 8, 1],
                              [("keypoints", [1, 1, 17, 3])])
    m = load_model(model, num_threads=1)
    assert (m.manifest.task, m.manifest.decoder) == ("pose", "movenet")
    runner = ModelRunner(m)
    kps = np.stack([np.linspace(0.1, 0.9, 17), np.full(17, 0.25), np.full(17, 0.7)], axis=1)
    out = runner.infer(head_input([1, 8, 8, 1], [kps]))
    (pose,) = out.poses
    assert pose.keypoints[0].name == "nose" and pose.keypoints[16].name == "right_ankle"
    assert pose.keypoints[16].y == pytest.approx(0.9) and pose.keypoints[16].x == pytest.approx(0.25)
    body = record(runner, out)
    assert body["poses"][0]["keypoints"][0] == {"name": "nose", "x": 0.25, "y": 0.1, "score": 0.7}


def test_movenet_multi_pose_through_litert_with_manifest_names(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "multi.tflite", [1, 20, 20, 1],
                              [("keypoints", [1, 6, 56])])
    m = load_model(model, num_threads=1)
    assert (m.manifest.task, m.manifest.decoder) == ("pose", "movenet_multi")
    people = np.zeros((6, 56), np.float32)
    people[1, :51] = np.tile([0.3, 0.6, 0.8], 17)
    people[1, 51:] = [0.1, 0.5, 0.6, 0.7, 0.9]
    people[4, 51:] = [0.0, 0.0, 0.2, 0.2, 0.05]
    runner = ModelRunner(m)
    out = runner.infer(head_input([1, 20, 20, 1], [people]))
    assert [round(p.score, 2) for p in out.poses] == [0.9]
    assert out.poses[0].box == pytest.approx((0.1, 0.5, 0.6, 0.7))
    assert record(runner, out)["poses"][0]["box"] == [0.1, 0.5, 0.6, 0.7]


# --------------------------------------------------------------------------- segmentation


def test_logits_segmentation_quantized_through_litert(tmp_path: Path) -> None:
    h, w, c = 8, 10, 4
    logits = np.zeros((h, w, c), np.float32)
    logits[..., 0] = 1.0
    logits[1:4, 2:6, 2] = 3.0  # class 2: 12 px
    logits[6:8, 0:10, 3] = 2.0  # class 3: 20 px
    model = write_heads_model(tmp_path / "seg.tflite", [1, 24, 24, 1], [("logits", [1, h, w, c])],
                              dtype="uint8", scale=0.05, zero_point=10)
    m = load_model(model, num_threads=1)
    assert (m.manifest.task, m.manifest.decoder) == ("segmentation", "logits")
    runner = ModelRunner(m)
    q = np.round(logits / 0.05 + 10).astype(np.uint8)
    out = runner.infer(head_input([1, 24, 24, 1], [q], "uint8"))
    assert [(s.class_id, round(s.area, 3)) for s in out.segments] == [(3, 0.25), (2, 0.15)]
    assert out.segments[1].box == pytest.approx((1 / 8, 0.2, 4 / 8, 0.6))
    png = mask_png(out.mask)  # the full mask, lossless
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED),
                          out.mask)
    record(runner, out)


def test_deeplab_bird_mask_agrees_with_the_reference_mask() -> None:
    model = load_model(shared_file("segment", "deeplabv3_mnv2_pascal_quant.tflite"),
                       num_threads=2, labels=shared_file("segment", "pascal_voc_labels.txt"))
    assert (model.manifest.task, model.manifest.decoder) == ("segmentation", "argmax")
    runner = ModelRunner(model)
    image = cv2.imread(str(shared_file("segment", "bird.bmp")))
    truth = cv2.imread(str(shared_file("segment", "bird_mask.bmp")), cv2.IMREAD_GRAYSCALE)
    out = runner.infer(runner.prepare(image))
    assert out.mask is not None and out.mask.shape == truth.shape
    agreement = float((out.mask == truth).mean())
    assert agreement >= 0.97, agreement
    bird = out.segments[0]
    assert bird.label == "bird" and bird.class_id == 3
    assert abs(bird.area - float((truth == 3).mean())) < 0.02  # README: bird 21% of the image
    ys, xs = np.nonzero(truth == 3)
    h, w = truth.shape
    want = (ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w)
    assert bird.box == pytest.approx(want, abs=0.03)
    assert "background" not in {s.label for s in out.segments}
    record(runner, out)


# --------------------------------------------------------------------------- embedding


def test_embedding_of_near_duplicates_is_near() -> None:
    model = load_model(shared_file("embed", "mobilenet_v1_224_embedding_extractor.tflite"),
                       num_threads=2)
    assert (model.manifest.task, model.manifest.decoder) == ("embedding", "embedding")
    model.manifest.normalize = True
    runner = ModelRunner(model)
    cat = cv2.imread(str(shared_file("classify", "cat.bmp")))
    hopper = cv2.imread(str(shared_file("classify", "grace_hopper.bmp")))
    near = cv2.GaussianBlur(cv2.resize(cat, None, fx=0.9, fy=0.9), (3, 3), 0)
    shifted = np.clip(cat.astype(np.int16) + 12, 0, 255).astype(np.uint8)  # brighter

    def vec(img: np.ndarray) -> np.ndarray:
        e = runner.infer(runner.prepare(img)).embedding
        assert e is not None and e.dim == 1024 and e.normalized
        return np.asarray(e.values)

    a, b, c, d = vec(cat), vec(near), vec(shifted), vec(hopper)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert a @ b > 0.9 and a @ c > 0.9, (a @ b, a @ c)
    assert a @ d < 0.7 and a @ b - a @ d > 0.3, (a @ b, a @ d)
    body = record(runner, runner.infer(runner.prepare(cat)))
    assert body["embedding"]["dim"] == 1024 and len(body["embedding"]["values"]) == 1024


# --------------------------------------------------------------------------- classification


def test_classifier_uses_the_labels_packed_in_the_model() -> None:
    model = load_model(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"),
                       num_threads=2)  # no --labels: TFLite metadata carries imagenet_labels.txt
    assert model.labels_source.endswith(":imagenet_labels.txt")
    runner = ModelRunner(model)
    out = runner.infer(runner.prepare(cv2.imread(str(shared_file("classify", "cat.bmp")))))
    assert out.classes[0].label == "Egyptian cat"
    assert record(runner, out)["classes"][0]["label"] == "Egyptian cat"


def test_insect_classifier_with_an_id_name_label_file(tmp_path: Path) -> None:
    labels = shared_file("insects", "inat_insect_labels.txt").read_text().splitlines()
    numbered = tmp_path / "ids.txt"  # the same names with an id column
    numbered.write_text("".join(f"{i} {name}\n" for i, name in enumerate(labels)))
    for given in (shared_file("insects", "inat_insect_labels.txt"), numbered):
        runner = ModelRunner(load_model(shared_file("insects", "inat_insect.tflite"),
                                        num_threads=2, labels=given))
        frame = cv2.imread(str(shared_file("insects", "dragonfly.bmp")))
        top = runner.infer(runner.prepare(frame)).classes[0]
        assert top.label == "Micrathyria hagenii (Thornbush Dasher)", top  # a dragonfly


def test_labels_without_the_background_row(tmp_path: Path) -> None:
    names = shared_file("classify", "imagenet_labels.txt").read_text().splitlines()
    assert names[0] == "background" and len(names) == 1001
    no_background = tmp_path / "names.txt"
    no_background.write_text("\n".join(names[1:]) + "\n")
    model = load_model(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"),
                       num_threads=2, labels=no_background)
    assert model.manifest.label_offset == -1 and model.manifest.label(0) == "class_0"
    runner = ModelRunner(model)
    out = runner.infer(runner.prepare(cv2.imread(str(shared_file("classify", "cat.bmp")))))
    assert out.classes[0].label == "Egyptian cat"


# --------------------------------------------------------------------------- sequence


def test_a_bare_window_model_is_a_sequence_model(tmp_path: Path) -> None:
    from agent.inference.sensor_model import SensorModel

    model = write_heads_model(tmp_path / "lstm.tflite", [1, 28, 28], [("y", [1, 3])])
    loaded = load_model(model)
    assert loaded.manifest.task == "sequence" and loaded.manifest.sensor["window"] == 28
    with pytest.raises(ModelError, match=r"missing sensor keys.*rate_hz"):
        SensorModel(loaded)
