"""Running a loaded model: preprocess a frame, invoke, feed recurrent state back, decode."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent import kernels
from agent.core import heads
from agent.core.contract.result import Classification, Detection, Embedding, Pose, Segment
from agent.core.manifest import ManifestError, TensorSpec, check_image_input
from agent.core.postprocess import dequantize, grid_detections, ssd_detections, top_classes
from agent.errors import ModelError
from agent.inference.model import LoadedModel

_FAILED_OP = re.compile(r"Node number \d+ \(([^)]+)\) failed")


def mask_png(mask: np.ndarray) -> bytes:
    """A class map as an 8-bit (ids up to 255) or 16-bit PNG, lossless."""
    dtype = np.uint8 if mask.max(initial=0) <= 255 else np.uint16
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask.astype(dtype)))
    if not ok:
        raise ModelError("cannot encode the mask as PNG", path="-")
    return bytes(buf)


@dataclass
class Inference:
    """The decoded output of one invoke and how long its parts took."""

    detections: list[Detection]
    classes: list[Classification]
    invoke_ms: float
    decode_ms: float
    poses: list[Pose] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    embedding: Embedding | None = None
    # segmentation: the class map [H, W] at the model's resolution (for a mask PNG shard:
    # :func:`mask_png`).
    mask: np.ndarray | None = None


class ModelRunner:
    """Owns one interpreter. Not thread-safe: call it from one thread (the inference thread)."""

    def __init__(self, model: LoadedModel, preprocess: str = "native") -> None:
        self.model = model
        self.use_kernels = preprocess == "native"
        self.manifest = model.manifest
        spec = model.input_spec()
        if self.manifest.sensor:
            raise ModelError("this is a sensor model: it scores windows of serial readings, "
                             "not camera frames", path=str(model.path),
                             fix="give it as a [[sensors]] model; --model takes an image model")
        try:
            check_image_input(spec)
        except ManifestError as exc:
            raise ModelError(str(exc), path=str(model.path),
                             fix="give a model with an image input, or a manifest naming it") from exc
        self.input_index = spec.index
        self.height, self.width, self.channels = spec.shape[1], spec.shape[2], spec.shape[3]
        self.input_dtype = spec.dtype
        self.input_scale, self.input_zero = spec.scale, spec.zero_point
        interp = model.interpreter
        self._state = [(model.tensor(p.output), model.tensor(p.input)) for p in self.manifest.state]
        self._outputs = {role: model.tensor(name) for role, name in self.manifest.outputs.items()}
        self._interp = interp
        self._yolo: heads.YoloLayout | None = None
        self._yolo_norm: tuple[float, float] | None = None
        self._anchors: np.ndarray | None = None
        common = {"out_w": self.width, "out_h": self.height, "out_c": self.channels,
                  "rgb": self.manifest.color != "bgr"}
        if self.input_dtype == "uint8":
            self.spec = kernels.Preprocess(**common, dtype="uint8")  # type: ignore[arg-type]
        elif self.input_dtype == "int8":  # pixel - 128: the usual int8 input quantization
            self.spec = kernels.Preprocess(**common, dtype="int8",  # type: ignore[arg-type]
                                           add=(-128.0, -128.0, -128.0))
        else:  # float input normalized to [-1, 1]
            self.spec = kernels.Preprocess(**common, dtype="float32",  # type: ignore[arg-type]
                                           mul=(1 / 127.5,) * 3, add=(-1.0,) * 3)
        self.reset_state()

    def reset_state(self) -> None:
        """Zero the recurrent state (start of a clip, or after a source discontinuity)."""
        for _out, tin in self._state:
            fill = np.full(tin.shape, tin.zero_point, dtype=np.dtype(tin.dtype))
            self._interp.set_tensor(tin.index, fill)

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """The input tensor for a BGR frame: resized, colour-ordered, typed per the model.

        The fused native kernel (or its numpy reference when the native module is missing)
        does it in one pass; ``[kernels] preprocess = "opencv"`` uses cv2 instead."""
        if self.use_kernels:
            out, _ = kernels.active.preprocess(kernels.Image.packed("bgr", image_bgr), self.spec)
            tensor: np.ndarray = out[None]
            return tensor
        resized = cv2.resize(image_bgr, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.channels == 1:
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[..., None]
        elif self.manifest.color == "rgb":
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        else:
            pixels = resized
        if self.input_dtype == "uint8":
            return pixels[None]
        if self.input_dtype == "int8":
            return (pixels.astype(np.int16) - 128).astype(np.int8)[None]
        return ((pixels.astype(np.float32) - 127.5) / 127.5)[None]

    def infer(self, tensor: np.ndarray, *, discontinuity: bool = False) -> Inference:
        """Invoke on a prepared tensor and decode the outputs."""
        if discontinuity:
            self.reset_state()
        interp = self._interp
        started = time.perf_counter()
        try:
            interp.set_tensor(self.input_index, tensor)
            interp.invoke()
        except (ValueError, RuntimeError) as exc:
            text = re.sub(r"\s*Node number", "; node number", str(exc).strip())
            op = _FAILED_OP.search(str(exc))
            what = f"invoke failed in op {op.group(1)}" if op else "invoke failed"
            raise ModelError(f"{what}: {text}", path=str(self.model.path),
                             fix="check the model runs with `lepton-agent models inspect`; "
                                 "try [model] delegate = \"none\"") from exc
        invoked = time.perf_counter()
        for tout, tin in self._state:
            interp.set_tensor(tin.index, interp.get_tensor(tout.index))
        out = Inference([], [], 0.0, 0.0)
        try:
            self._decode(out)
        except (ValueError, IndexError) as exc:  # a tensor the manifest mapped wrongly
            raise ModelError(f"cannot decode the outputs with decoder "
                             f"{self.manifest.decoder!r}: {exc}", path=str(self.model.path),
                             fix="check the manifest's outputs against `lepton-agent models "
                                 "inspect`") from exc
        done = time.perf_counter()
        out.invoke_ms, out.decode_ms = (invoked - started) * 1e3, (done - invoked) * 1e3
        return out

    def _raw(self, role: str) -> tuple[np.ndarray, TensorSpec]:
        spec = self._outputs[role]
        return self._interp.get_tensor(spec.index), spec

    def _real(self, role: str) -> np.ndarray:
        raw, spec = self._raw(role)
        return dequantize(raw, spec.scale, spec.zero_point)

    def _decode(self, out: Inference) -> None:
        m = self.manifest
        decoder = m.decoder
        kern = kernels.active
        if decoder == "ssd_postprocess":
            out.detections = ssd_detections(self._real("boxes"), self._real("classes"),
                                            self._real("scores"), self._real("count"), m)
        elif decoder == "grid":
            out.detections = grid_detections(self._real("grid"), m, m.iou_threshold)
        elif decoder.startswith("yolo"):
            raw, spec = self._raw("predictions")
            if self._yolo is None:
                self._yolo = heads.yolo_layout(spec.shape, decoder)
            layout = self._yolo
            if self._yolo_norm is None:
                rows = heads.yolo_rows(raw, layout, spec.scale, spec.zero_point)
                self._yolo_norm = heads.box_norm(float(np.abs(rows[:, :4]).max(initial=0.0)),
                                                 self.width, self.height, m.box_units)
            boxes, scores, classes, _ = kern.yolo_head(
                raw, layout, spec.scale, spec.zero_point, m.score_threshold, *self._yolo_norm)
            out.detections = heads.detections_from(boxes, scores, classes, m, kern.nms)
        elif decoder == "ssd_raw":
            if self._anchors is None:
                anchors = (self._real("anchors") if "anchors" in self._outputs
                           else np.asarray(m.anchors, np.float32))
                self._anchors = np.ascontiguousarray(anchors.reshape(-1, 4), dtype=np.float32)
            boxes = kern.ssd_decode(np.ascontiguousarray(self._real("boxes").reshape(-1, 4)),
                                    self._anchors, m.box_scales)
            b, sc, cl = heads.ssd_raw_candidates(boxes, self._real("scores")[0], m)
            out.detections = heads.detections_from(b, sc, cl, m, kern.nms)
        elif decoder == "movenet":
            out.poses = heads.movenet_single(self._real("keypoints"), m)
        elif decoder == "movenet_multi":
            out.poses = heads.movenet_multi(self._real("keypoints"), m)
        elif decoder in ("argmax", "logits"):
            raw, spec = self._raw("mask" if decoder == "argmax" else "logits")
            if decoder == "logits" and spec.scale < 0:  # argmax of raw values needs scale > 0
                raw = dequantize(raw, spec.scale, spec.zero_point)
            out.mask = heads.class_map(raw, logits=decoder == "logits")
            out.segments = heads.segments(out.mask, m)
        elif decoder == "embedding":
            raw, spec = self._raw("embedding")
            out.embedding = heads.embedding(raw, spec.scale, spec.zero_point, m.normalize)
        else:
            out.classes = top_classes(self._real("scores"), m)
