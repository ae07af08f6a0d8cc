"""Model manifests: what a model does and how to read its tensors.

A bundle ships a manifest; for a bare ``.tflite`` the manifest is inferred from the
tensor signature (:func:`infer_manifest`). Pure data and logic, no file access.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Task = Literal["classification", "detection", "pose", "segmentation", "embedding", "sequence"]
Decoder = Literal["softmax", "ssd_postprocess", "grid", "yolo_v5", "yolo_v8", "yolo_v11",
                  "ssd_raw", "movenet", "movenet_multi", "argmax", "logits", "embedding"]
ColorOrder = Literal["rgb", "bgr", "gray"]

TASKS: tuple[str, ...] = ("classification", "detection", "pose", "segmentation", "embedding",
                          "sequence")
# The decoders of each task, and the output roles each decoder reads.
DECODERS: dict[str, tuple[str, ...]] = {
    "classification": ("softmax",),
    "detection": ("ssd_postprocess", "grid", "yolo_v5", "yolo_v8", "yolo_v11", "ssd_raw"),
    "pose": ("movenet", "movenet_multi"),
    "segmentation": ("argmax", "logits"),
    "embedding": ("embedding",),
    "sequence": ("softmax",),
}
ROLES: dict[str, frozenset[str]] = {
    "softmax": frozenset({"scores"}),
    "ssd_postprocess": frozenset({"boxes", "classes", "scores", "count"}),
    "grid": frozenset({"grid"}),
    "yolo_v5": frozenset({"predictions"}),
    "yolo_v8": frozenset({"predictions"}),
    "yolo_v11": frozenset({"predictions"}),
    "ssd_raw": frozenset({"boxes", "scores"}),
    "movenet": frozenset({"keypoints"}),
    "movenet_multi": frozenset({"keypoints"}),
    "argmax": frozenset({"mask"}),
    "logits": frozenset({"logits"}),
    "embedding": frozenset({"embedding"}),
}
COCO17_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as the interpreter describes it."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def matches(self, other: TensorSpec) -> bool:
        """Same shape, dtype and quantization (a recurrent state pair)."""
        return (
            self.shape == other.shape
            and self.dtype == other.dtype
            and abs(self.scale - other.scale) <= 1e-9
            and self.zero_point == other.zero_point
        )


@dataclass(frozen=True)
class StatePair:
    """An output fed back into an input on the next frame."""

    output: str
    input: str


@dataclass
class Manifest:
    """Everything the runner needs to use a model."""

    name: str
    task: Task
    decoder: Decoder
    version: str = "0"
    file: str = ""
    sha256: str = ""
    input: str = ""
    color: ColorOrder = "rgb"
    labels: dict[int, str] = field(default_factory=dict)
    label_offset: int = 0
    score_threshold: float = 0.5
    max_results: int = 20
    outputs: dict[str, str] = field(default_factory=dict)
    state: list[StatePair] = field(default_factory=list)
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    golden: dict[str, Any] = field(default_factory=dict)
    sensor: dict[str, Any] = field(default_factory=dict)  # window geometry and normalization
    # Detection heads decoded here (yolo_*, ssd_raw, grid): class-wise NMS overlap.
    iou_threshold: float = 0.45
    # grid: boxes per cell; the grid's last axis is grid_slots x (5 + classes), slot after slot,
    # so objects whose centres share a cell (one vehicle partly over another) each get a box.
    grid_slots: int = 1
    # yolo_*: box values in input pixels, normalized to [0, 1], or "auto" (decided on the
    # first frame from the largest box value).
    box_units: Literal["auto", "pixels", "normalized"] = "auto"
    # ssd_raw: anchors (ycenter, xcenter, h, w) as a list of rows or the name of a .npy/.json
    # file in the bundle; box scales (y, x, h, w); the class scores' activation; whether the
    # first score column is background.
    anchors: Any = None
    box_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    skip_background: bool = True
    # pose: keypoint names in output order, and the skeleton as pairs of keypoint indices.
    keypoints: list[str] = field(default_factory=list)
    skeleton: list[tuple[int, int]] = field(default_factory=list)
    # segmentation: classes below this fraction of the frame are left out.
    min_area: float = 0.0
    # embedding: L2-normalize the vector.
    normalize: bool = False
    inferred: bool = False

    def label(self, class_id: int) -> str:
        return self.labels.get(class_id + self.label_offset, f"class_{class_id}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        return data


class ManifestError(ValueError):
    """A manifest is inconsistent with the model's tensors."""


class InputShapeError(ManifestError):
    """The model's image input is not one the runner can feed a frame to."""


def _image_input(inputs: list[TensorSpec]) -> TensorSpec:
    images = [t for t in inputs if len(t.shape) == 4 and t.shape[0] == 1 and t.shape[3] in (1, 3)]
    if not images:
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in inputs)
        raise InputShapeError(f"no image input among inputs {shapes}; the runner feeds frames "
                              f"only to an input of shape {RUNNER_INPUT}")
    return max(images, key=lambda t: t.shape[1] * t.shape[2])


def find_state_pairs(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> list[StatePair]:
    """Pair each non-image input with an output of identical shape and quantization."""
    image = _image_input(inputs)
    pairs: list[StatePair] = []
    used: set[str] = set()
    for tin in inputs:
        if tin.name == image.name:
            continue
        for tout in outputs:
            if tout.name not in used and tout.matches(tin):
                pairs.append(StatePair(output=tout.name, input=tin.name))
                used.add(tout.name)
                break
    return pairs


@dataclass(frozen=True)
class Candidate:
    """A task a model's signature could have, and what a manifest must add for it (empty:
    nothing, it can run as inferred)."""

    task: str
    decoder: str
    outputs: dict[str, str]
    lacks: str = ""
    why: str = ""

    @property
    def complete(self) -> bool:
        return not self.lacks


def _integer(t: TensorSpec) -> bool:
    return t.dtype in ("int32", "int64", "uint8", "int8", "int16") and not t.quantized


# The smallest map read as segmentation (DeepLab gives 513 x 513, small heads 32 x 32); a tiny
# [1, 4, 4, 8] output is more likely recurrent state or features than a class map.
MIN_MAP = 8


def head_candidates(heads: list[TensorSpec]) -> list[Candidate]:
    """Every task the output tensors ``heads`` could be decoded as, most likely first."""
    out: list[Candidate] = []
    f32 = [t for t in heads if t.dtype == "float32"]
    boxes = [t for t in f32 if len(t.shape) == 3 and t.shape[0] == 1 and t.shape[2] == 4]
    if len(heads) == 4 and len(boxes) == 1:
        n = boxes[0].shape[1]
        per_box = [t for t in f32 if t.shape == (1, n)]
        counts = [t for t in f32 if t.shape == (1,)]
        if len(per_box) == 2 and len(counts) == 1:
            # TFLite_Detection_PostProcess emits boxes, classes, scores, count in that order.
            ordered = sorted(per_box, key=lambda t: heads.index(t))
            out.append(Candidate("detection", "ssd_postprocess", {
                "boxes": boxes[0].name, "classes": ordered[0].name, "scores": ordered[1].name,
                "count": counts[0].name}, why="the 4 outputs of TFLite_Detection_PostProcess"))
    if len(heads) == 1:
        t = heads[0]
        shape = t.shape
        if len(shape) == 2 and shape[0] == 1:
            out.append(Candidate("classification", "softmax", {"scores": t.name},
                                 why=f"one score vector of {shape[1]}"))
            out.append(Candidate("embedding", "embedding", {"embedding": t.name},
                                 lacks="a manifest with task 'embedding' (a [1, D] vector "
                                       "reads as class scores unless the manifest says so)",
                                 why=f"a [1, {shape[1]}] vector"))
        elif len(shape) == 4 and shape[:3] == (1, 1, 1):
            out.append(Candidate("embedding", "embedding", {"embedding": t.name},
                                 why=f"a pooled feature vector [1, 1, 1, {shape[3]}]"))
            out.append(Candidate("classification", "softmax", {"scores": t.name},
                                 lacks="a manifest with task 'classification' and labels",
                                 why="a pooled vector can also be class scores"))
        elif len(shape) == 4 and shape[:2] == (1, 1) and shape[3] == 3:
            out.append(Candidate("pose", "movenet", {"keypoints": t.name},
                                 why=f"MoveNet single-pose [1, 1, {shape[2]}, 3] (y, x, score)"))
        elif len(shape) == 3 and shape[0] == 1 and shape[2] == 56 and shape[1] <= 10:
            out.append(Candidate("pose", "movenet_multi", {"keypoints": t.name},
                                 why=f"MoveNet multi-pose [1, {shape[1]}, 56]"))
        elif (len(shape) == 3 and shape[0] == 1 and min(shape[1:]) >= 5
              and max(shape[1:]) > min(shape[1:]) and not _integer(t)):
            # More anchors than channels: 8400 for 640x640 input, 525 for 160x160.
            first = shape[1] < shape[2]
            v8 = Candidate("detection", "yolo_v8", {"predictions": t.name},
                           why=f"YOLO v8/v11 head [1, 4 + {min(shape[1:]) - 4}, "
                               f"{max(shape[1:])}]")
            v5 = Candidate("detection", "yolo_v5", {"predictions": t.name},
                           why=f"YOLO v5 head [1, {max(shape[1:])}, 5 + {min(shape[1:]) - 5}]")
            out.extend([v8, v5] if first else [v5, v8])
        elif len(shape) == 3 and shape[0] == 1 and min(shape[1:]) >= MIN_MAP and _integer(t):
            out.append(Candidate("segmentation", "argmax", {"mask": t.name},
                                 why=f"a class map [1, {shape[1]}, {shape[2]}]"))
        elif len(shape) == 4 and shape[0] == 1 and min(shape[1:3]) >= MIN_MAP and shape[3] > 1:
            out.append(Candidate("segmentation", "logits", {"logits": t.name},
                                 why=f"per-pixel scores of {shape[3]} classes"))
            if shape[3] >= 6:
                out.append(Candidate("detection", "grid", {"grid": t.name},
                                     lacks="a manifest with decoder 'grid' (objectness, box, "
                                           "classes per cell)",
                                     why="a detection grid [1, GH, GW, 5 + classes]"))
    if len(heads) in (2, 3):
        scores = [t for t in heads if len(t.shape) == 3 and t.shape[0] == 1 and t.shape[2] > 1
                  and t.shape[2] != 4]
        if len(boxes) >= 1 and len(scores) == 1 and scores[0].shape[1] == boxes[0].shape[1]:
            consts = [t for t in heads if t not in (boxes[0], scores[0])
                      and t.shape[-2:] == (boxes[0].shape[1], 4)]
            roles = {"boxes": boxes[0].name, "scores": scores[0].name}
            if consts:
                roles["anchors"] = consts[0].name
            out.append(Candidate("detection", "ssd_raw", roles,
                                 lacks="" if consts else "anchors (ycenter, xcenter, h, w) "
                                 "per box in the manifest ('anchors': a .npy/.json file)",
                                 why=f"raw SSD boxes [1, {boxes[0].shape[1]}, 4] and scores"))
    return out


def sequence_manifest(name: str, spec: TensorSpec, heads: list[TensorSpec]) -> Manifest:
    """A window model (``[1, T, F]`` input): the sensor-model path, with what the file says
    filled in (window T, F channels, no normalization, a hop of one window); the manifest
    still needs ``rate_hz`` and ``anomaly_label`` (``models inspect --write-manifest``)."""
    window, channels = spec.shape[1], spec.shape[2]
    vectors = [t for t in heads if len(t.shape) == 2 and t.shape[0] == 1]
    if len(heads) != 1 or not vectors:
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in heads)
        raise ManifestError(f"window input {spec.name}{list(spec.shape)} but outputs {shapes}; "
                            "a sequence model gives one score vector [1, C]")
    return Manifest(name=name, task="sequence", decoder="softmax", input=spec.name,
                    score_threshold=0.0, max_results=vectors[0].shape[1],
                    outputs={"scores": vectors[0].name},
                    sensor={"channels": [f"ch{i}" for i in range(channels)], "window": window,
                            "hop": window, "mean": [0.0] * channels, "std": [1.0] * channels},
                    inferred=True)


def sequence_input(inputs: list[TensorSpec]) -> TensorSpec | None:
    """The ``[1, T, F]`` input of a window (sequence) model, if that is all it takes."""
    if len(inputs) == 1 and len(inputs[0].shape) == 3 and inputs[0].shape[0] == 1 \
            and min(inputs[0].shape) >= 1:
        return inputs[0]
    return None


def candidates(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> list[Candidate]:
    """Every task the signature allows (never raises): for ``models inspect``."""
    seq = sequence_input(inputs)
    if seq is not None:
        return [Candidate("sequence", "softmax", {"scores": o.name},
                          lacks="rate_hz and anomaly_label in the manifest's sensor section",
                          why=f"a window input {list(seq.shape)}")
                for o in outputs if len(o.shape) == 2 and o.shape[0] == 1]
    try:
        state = find_state_pairs(inputs, outputs)
    except ManifestError:
        return []
    used = {p.output for p in state}
    return head_candidates([t for t in outputs if t.name not in used])


def _defaults(c: Candidate) -> dict[str, Any]:
    if c.decoder == "ssd_postprocess":
        return {"score_threshold": 0.3, "label_offset": 1}
    if c.decoder == "softmax":
        return {"score_threshold": 0.1, "max_results": 5}
    if c.decoder.startswith("yolo") or c.decoder == "ssd_raw":
        return {"score_threshold": 0.25, "max_results": 100}
    if c.task == "pose":
        return {"score_threshold": 0.2, "max_results": 6, "keypoints": list(COCO17_KEYPOINTS),
                "skeleton": list(COCO17_SKELETON)}
    if c.task == "segmentation":
        return {"score_threshold": 0.0, "max_results": 32}
    return {"score_threshold": 0.0}


COCO17_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
    (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))


def manifest_for(name: str, image: TensorSpec, state: list[StatePair], c: Candidate) -> Manifest:
    """The manifest a candidate gives (inferred: tensor roles and defaults of its task)."""
    color: ColorOrder = "gray" if image.shape[3] == 1 else "rgb"
    extra = _defaults(c)
    m = Manifest(name=name, task=c.task, decoder=c.decoder,  # type: ignore[arg-type]
                 input=image.name, color=color, outputs=dict(c.outputs), state=state,
                 inferred=True, **extra)
    return m


def infer_manifest(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Manifest:
    """Guess the task and the tensor roles of a bare model from its signature."""
    seq = sequence_input(inputs)
    if seq is not None:
        return sequence_manifest(name, seq, outputs)
    image = _image_input(inputs)
    check_image_input(image)
    state = find_state_pairs(inputs, outputs)
    unpaired_inputs = [t for t in inputs if t.name != image.name
                       and t.name not in {p.input for p in state}]
    if unpaired_inputs:
        raise ManifestError("inputs other than the image with no matching state output: "
                            + ", ".join(t.name for t in unpaired_inputs))
    state_outputs = {p.output for p in state}
    heads = [t for t in outputs if t.name not in state_outputs]
    found = head_candidates(heads)
    for c in found:
        if c.complete:
            m = manifest_for(name, image, state, c)
            if c.decoder == "ssd_postprocess":
                m.max_results = next(t for t in heads if t.name == c.outputs["boxes"]).shape[1]
            return m
    shapes = ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in heads)
    if found:
        lacking = "; ".join(f"{c.task}/{c.decoder} needs {c.lacks}" for c in found)
        raise ManifestError(f"cannot infer the task from outputs {shapes}: {lacking}")
    raise ManifestError(
        f"cannot infer the task from outputs {shapes}; expected a score vector "
        "(classification), TFLite_Detection_PostProcess or a YOLO head (detection), MoveNet "
        "(pose), a class map or logits (segmentation) or a feature vector (embedding)"
    )


RUNNER_INPUT = "[1, H, W, 1|3] of uint8, int8 or float32"
_INPUT_DTYPES = ("uint8", "int8", "float32")


def check_image_input(spec: TensorSpec) -> None:
    """Raise ManifestError unless the runner can feed ``spec`` a frame."""
    shape = spec.shape
    if len(shape) != 4 or shape[0] != 1 or shape[3] not in (1, 3) or min(shape) < 1:
        raise InputShapeError(f"image input {spec.name!r} has shape {list(shape)}; the runner feeds "
                            f"frames only to an input of shape {RUNNER_INPUT}")
    if spec.dtype not in _INPUT_DTYPES:
        raise InputShapeError(f"image input {spec.name!r} is {spec.dtype}; the runner feeds "
                            f"frames only to an input of shape {RUNNER_INPUT}")


def _check_output_shapes(manifest: Manifest, by_name: dict[str, TensorSpec]) -> None:
    """The decoder can read the tensors it is given (shapes it would index into)."""
    def shape(role: str) -> tuple[int, ...]:
        return by_name[manifest.outputs[role]].shape

    if manifest.decoder == "grid":
        grid, slots = shape("grid"), manifest.grid_slots
        if not isinstance(slots, int) or slots < 1:
            raise ManifestError(f"grid_slots = {slots!r}: give the boxes per grid cell, 1 or more")
        if len(grid) == 4 and grid[3] % slots:
            raise ManifestError(f"grid_slots = {slots} does not divide the {grid[3]} channels of "
                                f"grid output {manifest.outputs['grid']!r}")
        if len(grid) != 4 or grid[0] != 1 or grid[3] // slots < 6:
            raise ManifestError(f"grid output {manifest.outputs['grid']!r} has shape {list(grid)}; "
                                "the grid decoder reads [1, GH, GW, grid_slots x (5 + classes)]")
    elif manifest.decoder == "ssd_postprocess":
        boxes, classes, scores = shape("boxes"), shape("classes"), shape("scores")
        if len(boxes) != 3 or boxes[0] != 1 or boxes[2] != 4 or classes != boxes[:2] \
                or scores != boxes[:2] or shape("count") not in ((1,), ()):
            raise ManifestError(
                f"SSD outputs have shapes boxes {list(boxes)}, classes {list(classes)}, scores "
                f"{list(scores)}, count {list(shape('count'))}; the ssd_postprocess decoder reads "
                "[1, N, 4], [1, N], [1, N], [1]")
    elif manifest.decoder.startswith("yolo"):
        pred = shape("predictions")
        dims = [d for d in pred[1:] if d != 1]
        need = 5 if manifest.decoder == "yolo_v5" else 4
        if pred[:1] != (1,) or len(dims) != 2 or min(dims) <= need:
            raise ManifestError(
                f"predictions output {manifest.outputs['predictions']!r} has shape {list(pred)}; "
                f"{manifest.decoder} reads [1, {need} + classes, N] or [1, N, {need} + classes]")
    elif manifest.decoder == "ssd_raw":
        boxes, scores = shape("boxes"), shape("scores")
        if len(boxes) != 3 or boxes[0] != 1 or boxes[2] != 4 or len(scores) != 3 \
                or scores[:2] != boxes[:2]:
            raise ManifestError(f"ssd_raw outputs have shapes boxes {list(boxes)}, scores "
                                f"{list(scores)}; the decoder reads [1, N, 4] and [1, N, C]")
        if "anchors" not in manifest.outputs and manifest.anchors is None:
            raise ManifestError("decoder 'ssd_raw' needs anchors: 'anchors' in the manifest "
                                "(rows of ycenter, xcenter, h, w, or a .npy/.json file)")
    elif manifest.decoder == "movenet":
        kp = shape("keypoints")
        if len(kp) != 4 or kp[:2] != (1, 1) or kp[3] != 3:
            raise ManifestError(f"keypoints output {manifest.outputs['keypoints']!r} has shape "
                                f"{list(kp)}; movenet reads [1, 1, K, 3]")
    elif manifest.decoder == "movenet_multi":
        kp = shape("keypoints")
        if len(kp) != 3 or kp[0] != 1 or kp[2] < 8 or (kp[2] - 5) % 3:
            raise ManifestError(f"keypoints output {manifest.outputs['keypoints']!r} has shape "
                                f"{list(kp)}; movenet_multi reads [1, P, 3 * K + 5]")
    elif manifest.decoder == "argmax":
        mask = shape("mask")
        if not (len(mask) == 3 or (len(mask) == 4 and mask[3] == 1)) or mask[0] != 1:
            raise ManifestError(f"mask output {manifest.outputs['mask']!r} has shape "
                                f"{list(mask)}; argmax reads [1, H, W]")
    elif manifest.decoder == "logits":
        logits = shape("logits")
        if len(logits) != 4 or logits[0] != 1 or logits[3] < 2:
            raise ManifestError(f"logits output {manifest.outputs['logits']!r} has shape "
                                f"{list(logits)}; logits reads [1, H, W, C]")
    elif manifest.decoder == "embedding":
        if min(shape("embedding"), default=1) < 1:
            raise ManifestError(f"embedding output {manifest.outputs['embedding']!r} is empty")
    elif min(shape("scores"), default=1) < 1:
        raise ManifestError(f"scores output {manifest.outputs['scores']!r} is empty")


def output_classes(manifest: Manifest, outputs: list[TensorSpec]) -> int | None:
    """How many classes the decoder can report (None when the tensors do not say)."""
    by_name = {t.name: t for t in outputs}
    if manifest.decoder == "softmax" and "scores" in manifest.outputs:
        shape = by_name[manifest.outputs["scores"]].shape
        return shape[-1] if shape else 1
    if manifest.decoder == "grid" and "grid" in manifest.outputs:
        return by_name[manifest.outputs["grid"]].shape[-1] // max(manifest.grid_slots, 1) - 5
    if manifest.decoder.startswith("yolo") and "predictions" in manifest.outputs:
        dims = [d for d in by_name[manifest.outputs["predictions"]].shape[1:] if d != 1]
        return min(dims) - (5 if manifest.decoder == "yolo_v5" else 4) if len(dims) == 2 else None
    if manifest.decoder == "ssd_raw" and "scores" in manifest.outputs:
        return by_name[manifest.outputs["scores"]].shape[-1] - int(manifest.skip_background)
    if manifest.decoder == "logits" and "logits" in manifest.outputs:
        return by_name[manifest.outputs["logits"]].shape[-1]
    return None


def check_manifest(manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Raise ManifestError if a declared manifest names tensors the model does not have, or
    tensors of shapes the runner cannot feed or decode."""
    in_names = {t.name for t in inputs}
    out_names = {t.name for t in outputs}
    if manifest.input not in in_names:
        raise ManifestError(f"input {manifest.input!r} not in model inputs {sorted(in_names)}")
    if not manifest.sensor and manifest.task != "sequence":  # windows: checked by their runner
        check_image_input(next(t for t in inputs if t.name == manifest.input))
    for role, tensor in manifest.outputs.items():
        if tensor not in out_names:
            raise ManifestError(f"output {role}={tensor!r} not in model outputs {sorted(out_names)}")
    for pair in manifest.state:
        if pair.input not in in_names or pair.output not in out_names:
            raise ManifestError(f"state pair {pair.output!r} -> {pair.input!r} names a missing tensor")
    required = ROLES[manifest.decoder]
    missing = required - set(manifest.outputs)
    if missing:
        raise ManifestError(f"decoder {manifest.decoder!r} needs outputs {sorted(missing)}")
    _check_output_shapes(manifest, {t.name: t for t in outputs})
