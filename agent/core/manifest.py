"""Model manifests: what a model does and how to read its tensors.

A bundle ships a manifest; for a bare ``.tflite`` the manifest is inferred from the
tensor signature (:func:`infer_manifest`). Pure data and logic, no file access.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Task = Literal["classification", "detection"]
Decoder = Literal["softmax", "ssd_postprocess", "grid"]
ColorOrder = Literal["rgb", "bgr", "gray"]


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


def infer_manifest(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Manifest:
    """Guess the task and the tensor roles of a bare model from its signature."""
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
    color: ColorOrder = "gray" if image.shape[3] == 1 else "rgb"

    f32 = [t for t in heads if t.dtype == "float32"]
    boxes = [t for t in f32 if len(t.shape) == 3 and t.shape[0] == 1 and t.shape[2] == 4]
    if len(heads) == 4 and len(boxes) == 1:
        n = boxes[0].shape[1]
        per_box = [t for t in f32 if t.shape == (1, n)]
        counts = [t for t in f32 if t.shape == (1,)]
        if len(per_box) == 2 and len(counts) == 1:
            # TFLite_Detection_PostProcess emits boxes, classes, scores, count in that order.
            ordered = sorted(per_box, key=lambda t: heads.index(t))
            return Manifest(
                name=name, task="detection", decoder="ssd_postprocess", input=image.name,
                color=color, score_threshold=0.3, max_results=n, label_offset=1,
                outputs={"boxes": boxes[0].name, "classes": ordered[0].name,
                         "scores": ordered[1].name, "count": counts[0].name},
                state=state, inferred=True,
            )
    vectors = [t for t in heads if len(t.shape) == 2 and t.shape[0] == 1]
    if len(heads) == 1 and len(vectors) == 1:
        return Manifest(
            name=name, task="classification", decoder="softmax", input=image.name, color=color,
            score_threshold=0.1, max_results=5, outputs={"scores": vectors[0].name},
            state=state, inferred=True,
        )
    shapes = ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in heads)
    raise ManifestError(
        f"cannot infer the task from outputs {shapes}; expected one score vector "
        "(classification) or the 4 outputs of TFLite_Detection_PostProcess (SSD)"
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
        grid = shape("grid")
        if len(grid) != 4 or grid[0] != 1 or grid[3] < 6:
            raise ManifestError(f"grid output {manifest.outputs['grid']!r} has shape {list(grid)}; "
                                "the grid decoder reads [1, GH, GW, 5 + classes]")
    elif manifest.decoder == "ssd_postprocess":
        boxes, classes, scores = shape("boxes"), shape("classes"), shape("scores")
        if len(boxes) != 3 or boxes[0] != 1 or boxes[2] != 4 or classes != boxes[:2] \
                or scores != boxes[:2] or shape("count") not in ((1,), ()):
            raise ManifestError(
                f"SSD outputs have shapes boxes {list(boxes)}, classes {list(classes)}, scores "
                f"{list(scores)}, count {list(shape('count'))}; the ssd_postprocess decoder reads "
                "[1, N, 4], [1, N], [1, N], [1]")
    elif min(shape("scores"), default=1) < 1:
        raise ManifestError(f"scores output {manifest.outputs['scores']!r} is empty")


def output_classes(manifest: Manifest, outputs: list[TensorSpec]) -> int | None:
    """How many classes the decoder can report (None when the tensors do not say)."""
    by_name = {t.name: t for t in outputs}
    if manifest.decoder == "softmax" and "scores" in manifest.outputs:
        shape = by_name[manifest.outputs["scores"]].shape
        return shape[-1] if shape else 1
    if manifest.decoder == "grid" and "grid" in manifest.outputs:
        return by_name[manifest.outputs["grid"]].shape[-1] - 5
    return None


def check_manifest(manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Raise ManifestError if a declared manifest names tensors the model does not have, or
    tensors of shapes the runner cannot feed or decode."""
    in_names = {t.name for t in inputs}
    out_names = {t.name for t in outputs}
    if manifest.input not in in_names:
        raise ManifestError(f"input {manifest.input!r} not in model inputs {sorted(in_names)}")
    if not manifest.sensor:  # a sensor model is fed windows of readings, checked by its runner
        check_image_input(next(t for t in inputs if t.name == manifest.input))
    for role, tensor in manifest.outputs.items():
        if tensor not in out_names:
            raise ManifestError(f"output {role}={tensor!r} not in model outputs {sorted(out_names)}")
    for pair in manifest.state:
        if pair.input not in in_names or pair.output not in out_names:
            raise ManifestError(f"state pair {pair.output!r} -> {pair.input!r} names a missing tensor")
    required = {"softmax": {"scores"}, "ssd_postprocess": {"boxes", "classes", "scores", "count"},
                "grid": {"grid"}}[manifest.decoder]
    missing = required - set(manifest.outputs)
    if missing:
        raise ManifestError(f"decoder {manifest.decoder!r} needs outputs {sorted(missing)}")
    _check_output_shapes(manifest, {t.name: t for t in outputs})
