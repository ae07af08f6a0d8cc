"""What each decoder accepts of a model's output tensors, at the edges of every rule, with the
exact message a model author reads; how many classes each decoder reports; and which tasks an
output signature is read as (``models inspect``).

Written from a mutation run that left the shape checks' boundaries alive: the model tests reach
them only through whole, valid models.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.core.manifest import (
    Manifest,
    ManifestError,
    TensorSpec,
    check_manifest,
    head_candidates,
    infer_manifest,
    output_classes,
)

IMAGE = TensorSpec(0, "image", (1, 96, 96, 3), "uint8", 1 / 255, 0)
TASK = {"grid": "detection", "ssd_postprocess": "detection", "yolo_v5": "detection",
        "yolo_v8": "detection", "ssd_raw": "detection", "movenet": "pose",
        "movenet_multi": "pose", "argmax": "segmentation", "logits": "segmentation",
        "embedding": "embedding", "softmax": "classification"}


def _model(decoder: str, shapes: dict[str, tuple[int, ...]],
           **fields: Any) -> tuple[Manifest, list[TensorSpec]]:
    outputs = [TensorSpec(i + 1, role, shape, "float32") for i, (role, shape) in
               enumerate(shapes.items())]
    manifest = Manifest(name="m", task=TASK[decoder], decoder=decoder,  # type: ignore[arg-type]
                        input="image", outputs={role: role for role in shapes}, **fields)
    return manifest, outputs


def _check(decoder: str, shapes: dict[str, tuple[int, ...]], **fields: Any) -> str | None:
    """The ManifestError's message, or None when the model is accepted."""
    manifest, outputs = _model(decoder, shapes, **fields)
    try:
        check_manifest(manifest, [IMAGE], outputs)
    except ManifestError as exc:
        return str(exc)
    return None


GRID_SHAPE = ("grid output 'grid' has shape {}; the grid decoder reads "
              "[1, GH, GW, grid_slots x (5 + classes)]")


@pytest.mark.parametrize(("shape", "slots", "error"), [
    ((1, 8, 8, 6), 1, None),
    ((1, 8, 8, 14), 2, None),
    ((1, 8, 8, 12), 2, None),  # 6 channels a slot: one class
    ((1, 8, 8, 5), 1, GRID_SHAPE.format([1, 8, 8, 5])),
    ((1, 8, 8, 10), 2, GRID_SHAPE.format([1, 8, 8, 10])),
    ((2, 8, 8, 6), 1, GRID_SHAPE.format([2, 8, 8, 6])),
    ((1, 8, 48), 1, GRID_SHAPE.format([1, 8, 48])),
    ((1, 8, 8, 15), 2, "grid_slots = 2 does not divide the 15 channels of grid output 'grid'"),
    ((1, 8, 8, 14), 0, "grid_slots = 0: give the boxes per grid cell, 1 or more"),
    ((1, 8, 8, 14), -2, "grid_slots = -2: give the boxes per grid cell, 1 or more"),
    ((1, 8, 8, 14), "2", "grid_slots = '2': give the boxes per grid cell, 1 or more"),
])
def test_grid_outputs(shape: tuple[int, ...], slots: Any, error: str | None) -> None:
    assert _check("grid", {"grid": shape}, grid_slots=slots) == error


def _ssd_message(boxes: Any, classes: Any, scores: Any, count: Any) -> str:
    return (f"SSD outputs have shapes boxes {boxes}, classes {classes}, scores {scores}, count "
            f"{count}; the ssd_postprocess decoder reads [1, N, 4], [1, N], [1, N], [1]")


@pytest.mark.parametrize(("boxes", "classes", "scores", "count", "ok"), [
    ((1, 10, 4), (1, 10), (1, 10), (1,), True),
    ((1, 10, 4), (1, 10), (1, 10), (), True),
    ((1, 10, 4), (1, 10), (1, 10), (2,), False),
    ((1, 10, 4), (1, 10), (1, 10), (1, 1), False),
    ((2, 10, 4), (2, 10), (2, 10), (1,), False),
    ((1, 10, 5), (1, 10), (1, 10), (1,), False),
    ((1, 10), (1, 10), (1, 10), (1,), False),
    ((1, 10, 4), (1, 9), (1, 10), (1,), False),
    ((1, 10, 4), (1, 10), (1, 9), (1,), False),
])
def test_ssd_postprocess_outputs(boxes: tuple[int, ...], classes: tuple[int, ...],
                                 scores: tuple[int, ...], count: tuple[int, ...],
                                 ok: bool) -> None:
    got = _check("ssd_postprocess", {"boxes": boxes, "classes": classes, "scores": scores,
                                     "count": count})
    assert got == (None if ok else _ssd_message(list(boxes), list(classes), list(scores),
                                                list(count)))


@pytest.mark.parametrize(("decoder", "shape", "ok"), [
    ("yolo_v8", (1, 84, 8400), True),
    ("yolo_v8", (1, 8400, 84), True),
    ("yolo_v8", (1, 5, 8400), True),
    ("yolo_v8", (1, 1, 84, 8400), True),  # a unit axis is dropped
    ("yolo_v8", (1, 4, 8400), False),
    ("yolo_v8", (2, 84, 8400), False),
    ("yolo_v8", (1, 84, 8400, 3), False),
    ("yolo_v8", (1, 8400), False),
    ("yolo_v5", (1, 8400, 6), True),
    ("yolo_v5", (1, 8400, 5), False),
])
def test_yolo_outputs(decoder: str, shape: tuple[int, ...], ok: bool) -> None:
    need = 5 if decoder == "yolo_v5" else 4
    assert _check(decoder, {"predictions": shape}) == (None if ok else (
        f"predictions output 'predictions' has shape {list(shape)}; {decoder} reads "
        f"[1, {need} + classes, N] or [1, N, {need} + classes]"))


ANCHORS = [[0.5, 0.5, 0.1, 0.1]] * 10


@pytest.mark.parametrize(("boxes", "scores", "ok"), [
    ((1, 10, 4), (1, 10, 3), True),
    ((1, 10, 4), (1, 10, 1), True),
    ((2, 10, 4), (2, 10, 3), False),
    ((1, 10, 3), (1, 10, 3), False),
    ((1, 10), (1, 10, 3), False),
    ((1, 10, 4), (1, 9, 3), False),
    ((1, 10, 4), (1, 10), False),
])
def test_ssd_raw_outputs(boxes: tuple[int, ...], scores: tuple[int, ...], ok: bool) -> None:
    got = _check("ssd_raw", {"boxes": boxes, "scores": scores}, anchors=ANCHORS)
    assert got == (None if ok else (f"ssd_raw outputs have shapes boxes {list(boxes)}, scores "
                                    f"{list(scores)}; the decoder reads [1, N, 4] and [1, N, C]"))


def test_ssd_raw_needs_anchors_from_the_manifest_or_an_output() -> None:
    shapes: dict[str, tuple[int, ...]] = {"boxes": (1, 10, 4), "scores": (1, 10, 3)}
    assert _check("ssd_raw", shapes) == (
        "decoder 'ssd_raw' needs anchors: 'anchors' in the manifest (rows of ycenter, xcenter, "
        "h, w, or a .npy/.json file)")
    assert _check("ssd_raw", {**shapes, "anchors": (10, 4)}) is None


@pytest.mark.parametrize(("decoder", "role", "shape", "ok", "reads"), [
    ("movenet", "keypoints", (1, 1, 17, 3), True, ""),
    ("movenet", "keypoints", (1, 1, 17, 2), False, "movenet reads [1, 1, K, 3]"),
    ("movenet", "keypoints", (1, 2, 17, 3), False, "movenet reads [1, 1, K, 3]"),
    ("movenet", "keypoints", (2, 1, 17, 3), False, "movenet reads [1, 1, K, 3]"),
    ("movenet", "keypoints", (1, 17, 3), False, "movenet reads [1, 1, K, 3]"),
    ("movenet_multi", "keypoints", (1, 6, 56), True, ""),
    ("movenet_multi", "keypoints", (1, 6, 8), True, ""),  # one keypoint: 3 + 5
    ("movenet_multi", "keypoints", (1, 6, 7), False, "movenet_multi reads [1, P, 3 * K + 5]"),
    ("movenet_multi", "keypoints", (1, 6, 9), False, "movenet_multi reads [1, P, 3 * K + 5]"),
    ("movenet_multi", "keypoints", (2, 6, 56), False, "movenet_multi reads [1, P, 3 * K + 5]"),
    ("movenet_multi", "keypoints", (1, 6, 56, 1), False, "movenet_multi reads [1, P, 3 * K + 5]"),
    ("argmax", "mask", (1, 64, 64), True, ""),
    ("argmax", "mask", (1, 64, 64, 1), True, ""),
    ("argmax", "mask", (1, 64, 64, 2), False, "argmax reads [1, H, W]"),
    ("argmax", "mask", (2, 64, 64), False, "argmax reads [1, H, W]"),
    ("argmax", "mask", (1, 64), False, "argmax reads [1, H, W]"),
    ("logits", "logits", (1, 64, 64, 2), True, ""),
    ("logits", "logits", (1, 64, 64, 1), False, "logits reads [1, H, W, C]"),
    ("logits", "logits", (2, 64, 64, 2), False, "logits reads [1, H, W, C]"),
    ("logits", "logits", (1, 64, 64), False, "logits reads [1, H, W, C]"),
])
def test_pose_and_segmentation_outputs(decoder: str, role: str, shape: tuple[int, ...], ok: bool,
                                       reads: str) -> None:
    assert _check(decoder, {role: shape}) == (
        None if ok else f"{role} output {role!r} has shape {list(shape)}; {reads}")


@pytest.mark.parametrize(("decoder", "role", "shape", "error"), [
    ("embedding", "embedding", (1, 128), None),
    ("embedding", "embedding", (), None),
    ("embedding", "embedding", (1, 0), "embedding output 'embedding' is empty"),
    ("softmax", "scores", (1, 10), None),
    ("softmax", "scores", (1, 1), None),
    ("softmax", "scores", (1, 0), "scores output 'scores' is empty"),
])
def test_vector_outputs(decoder: str, role: str, shape: tuple[int, ...], error: str | None) -> None:
    assert _check(decoder, {role: shape}) == error


@pytest.mark.parametrize(("decoder", "shapes", "fields", "classes"), [
    ("softmax", {"scores": (1, 10)}, {}, 10),
    ("softmax", {"scores": ()}, {}, 1),
    ("grid", {"grid": (1, 8, 8, 7)}, {}, 2),
    ("grid", {"grid": (1, 8, 8, 14)}, {"grid_slots": 2}, 2),
    ("grid", {"grid": (1, 8, 8, 21)}, {"grid_slots": 3}, 2),
    ("yolo_v8", {"predictions": (1, 84, 8400)}, {}, 80),
    ("yolo_v8", {"predictions": (1, 1, 8400, 84)}, {}, 80),
    ("yolo_v5", {"predictions": (1, 8400, 85)}, {}, 80),
    ("yolo_v8", {"predictions": (1, 84, 8400, 3)}, {}, None),
    ("ssd_raw", {"boxes": (1, 10, 4), "scores": (1, 10, 91)}, {}, 90),
    ("ssd_raw", {"boxes": (1, 10, 4), "scores": (1, 10, 91)}, {"skip_background": False}, 91),
    ("logits", {"logits": (1, 64, 64, 21)}, {}, 21),
    ("argmax", {"mask": (1, 64, 64)}, {}, None),
    ("embedding", {"embedding": (1, 128)}, {}, None),
    ("ssd_postprocess", {"boxes": (1, 10, 4), "classes": (1, 10), "scores": (1, 10),
                         "count": (1,)}, {}, None),
])
def test_the_classes_each_decoder_reports(decoder: str, shapes: dict[str, tuple[int, ...]],
                                          fields: dict[str, Any], classes: int | None) -> None:
    manifest, outputs = _model(decoder, shapes, **fields)
    assert output_classes(manifest, outputs) == classes


def test_no_class_count_without_the_decoders_output() -> None:
    for decoder, role in (("softmax", "scores"), ("grid", "grid"), ("yolo_v8", "predictions"),
                          ("ssd_raw", "scores"), ("logits", "logits")):
        manifest, outputs = _model(decoder, {"other": (1, 10)})
        assert role not in manifest.outputs
        assert output_classes(manifest, outputs) is None


def _spec(name: str, shape: tuple[int, ...], dtype: str = "float32", scale: float = 0.0,
          index: int = 0) -> TensorSpec:
    return TensorSpec(index, name, shape, dtype, scale)


def _read(heads: list[TensorSpec]) -> list[tuple[str, str, dict[str, str], bool]]:
    """Each candidate as (task, decoder, roles, whether it lacks something)."""
    return [(c.task, c.decoder, c.outputs, bool(c.lacks)) for c in head_candidates(heads)]


def test_candidates_of_the_four_ssd_postprocess_outputs_in_their_order() -> None:
    heads = [_spec("b", (1, 10, 4)), _spec("c", (1, 10)), _spec("s", (1, 10)), _spec("n", (1,))]
    assert _read(heads) == [("detection", "ssd_postprocess",
                             {"boxes": "b", "classes": "c", "scores": "s", "count": "n"}, False)]
    # Classes and scores are told apart by their order among the outputs.
    swapped = [heads[0], heads[2], heads[1], heads[3]]
    assert _read(swapped)[0][2] == {"boxes": "b", "classes": "s", "scores": "c", "count": "n"}
    assert _read([*heads[:3], _spec("n", (2,))]) == []
    assert _read([*heads[:3], _spec("n", (1,), "int32")]) == []


@pytest.mark.parametrize(("shape", "dtype", "expected"), [
    ((1, 10), "float32", [("classification", "softmax", False), ("embedding", "embedding", True)]),
    ((1, 1, 1, 128), "float32", [("embedding", "embedding", False),
                                 ("classification", "softmax", True)]),
    ((1, 1, 17, 3), "float32", [("pose", "movenet", False)]),
    ((1, 6, 56), "float32", [("pose", "movenet_multi", False)]),
    ((1, 10, 56), "float32", [("pose", "movenet_multi", False)]),
    ((1, 11, 56), "float32", [("detection", "yolo_v8", False), ("detection", "yolo_v5", False)]),
    ((1, 84, 8400), "float32", [("detection", "yolo_v8", False), ("detection", "yolo_v5", False)]),
    ((1, 8400, 85), "float32", [("detection", "yolo_v5", False), ("detection", "yolo_v8", False)]),
    ((1, 5, 6), "float32", [("detection", "yolo_v8", False), ("detection", "yolo_v5", False)]),
    ((1, 4, 8400), "float32", []),
    ((1, 6, 6), "float32", []),
    ((1, 64, 64), "int32", [("segmentation", "argmax", False)]),
    ((1, 8, 9), "uint8", [("segmentation", "argmax", False)]),
    ((1, 7, 64), "int64", []),
    ((1, 64, 64), "uint8_q", []),
    ((1, 64, 64), "uint8", [("segmentation", "argmax", False)]),
    ((1, 32, 32, 21), "float32", [("segmentation", "logits", False), ("detection", "grid", True)]),
    ((1, 8, 8, 6), "float32", [("segmentation", "logits", False), ("detection", "grid", True)]),
    ((1, 32, 32, 5), "float32", [("segmentation", "logits", False)]),
    ((1, 7, 32, 21), "float32", []),
    ((1, 32, 32, 1), "float32", []),
    ((2, 10), "float32", []),
])
def test_candidates_of_one_output(shape: tuple[int, ...], dtype: str,
                                  expected: list[tuple[str, str, bool]]) -> None:
    # "uint8_q": a quantized uint8 tensor holds real values, not class ids: no class map.
    spec = (_spec("t", shape, "uint8", scale=0.1) if dtype == "uint8_q"
            else _spec("t", shape, dtype))
    assert [(task, decoder, lacks) for task, decoder, _, lacks in _read([spec])] == expected


def test_candidate_texts_name_the_shapes() -> None:
    (v5, v8) = head_candidates([_spec("p", (1, 525, 7))])
    assert v5.why == "YOLO v5 head [1, 525, 5 + 2]"
    assert v8.why == "YOLO v8/v11 head [1, 4 + 3, 525]"
    (cls, emb) = head_candidates([_spec("v", (1, 10))])
    assert cls.why == "one score vector of 10" and emb.why == "a [1, 10] vector"
    (seg, grid) = head_candidates([_spec("g", (1, 16, 12, 7))])
    assert seg.why == "per-pixel scores of 7 classes"
    assert grid.why == "a detection grid [1, GH, GW, 5 + classes]"
    (mask,) = head_candidates([_spec("m", (1, 20, 30), "int32")])
    assert mask.why == "a class map [1, 20, 30]"
    (pose,) = head_candidates([_spec("k", (1, 1, 17, 3))])
    assert pose.why == "MoveNet single-pose [1, 1, 17, 3] (y, x, score)"


def test_candidates_of_raw_ssd_heads_with_and_without_anchor_outputs() -> None:
    boxes, scores = _spec("b", (1, 100, 4)), _spec("s", (1, 100, 91))
    assert _read([boxes, scores]) == [("detection", "ssd_raw", {"boxes": "b", "scores": "s"},
                                       True)]
    anchors = _spec("a", (100, 4))
    assert _read([scores, boxes, anchors]) == [
        ("detection", "ssd_raw", {"boxes": "b", "scores": "s", "anchors": "a"}, False)]
    assert _read([boxes, _spec("s", (1, 99, 91))]) == []
    assert _read([boxes, _spec("s", (1, 100, 1))]) == []
    assert _read([boxes, scores, _spec("x", (1, 100, 91))]) == []  # two score tensors


def test_inferring_an_ssd_postprocess_model_takes_max_results_from_its_boxes() -> None:
    # The boxes come after another tensor of the same second dimension, so only the name picks them.
    heads = [_spec("b", (1, 25, 4)), _spec("c", (1, 25)), _spec("s", (1, 25)), _spec("n", (1,))]
    manifest = infer_manifest("ssd", [IMAGE], [heads[1], heads[0], heads[2], heads[3]])
    assert (manifest.name, manifest.decoder, manifest.max_results) == ("ssd", "ssd_postprocess", 25)


def test_inferring_a_window_model_keeps_its_name() -> None:
    window = TensorSpec(0, "window", (1, 64, 3), "float32")
    manifest = infer_manifest("bearing", [window], [_spec("scores", (1, 4))])
    assert (manifest.name, manifest.task, manifest.sensor["window"]) == ("bearing", "sequence", 64)


def test_a_signature_that_only_lacks_a_manifest_says_what_each_reading_needs() -> None:
    with pytest.raises(ManifestError) as caught:
        infer_manifest("raw", [IMAGE], [_spec("b", (1, 100, 4)), _spec("s", (1, 100, 91))])
    assert str(caught.value) == (
        "cannot infer the task from outputs b[1, 100, 4]:float32, s[1, 100, 91]:float32: "
        "detection/ssd_raw needs anchors (ycenter, xcenter, h, w) per box in the manifest "
        "('anchors': a .npy/.json file)")
    with pytest.raises(ManifestError) as caught:
        infer_manifest("odd", [IMAGE], [_spec("p", (1, 4, 8400))])
    assert str(caught.value).startswith(
        "cannot infer the task from outputs p[1, 4, 8400]:float32; expected a score vector")


def test_a_score_tensor_with_unit_axes_reports_its_last_dimension() -> None:
    manifest, outputs = _model("softmax", {"scores": (1, 1, 10)})
    assert output_classes(manifest, outputs) == 10


def test_a_sequence_manifest_is_not_held_to_the_image_input_rule() -> None:
    window = TensorSpec(0, "window", (1, 64, 3), "float32")
    manifest = Manifest(name="m", task="sequence", decoder="softmax", input="window",
                        outputs={"scores": "scores"})
    check_manifest(manifest, [window], [_spec("scores", (1, 4))])  # no sensor section needed here
    manifest.task = "classification"
    with pytest.raises(ManifestError, match="image input 'window' has shape"):
        check_manifest(manifest, [window], [_spec("scores", (1, 4))])
