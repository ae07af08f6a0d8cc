"""Running a loaded model: preprocess a frame, invoke, feed recurrent state back, decode."""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from agent import kernels
from agent.core.contract.result import Classification, Detection
from agent.core.manifest import ManifestError, check_image_input
from agent.core.postprocess import dequantize, grid_detections, ssd_detections, top_classes
from agent.errors import ModelError
from agent.inference.model import LoadedModel


@dataclass
class Inference:
    """The decoded output of one invoke and how long its parts took."""

    detections: list[Detection]
    classes: list[Classification]
    invoke_ms: float
    decode_ms: float


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
            raise ModelError(f"invoke failed: {exc}", path=str(self.model.path),
                             fix="check the model runs with `lepton-agent models inspect`; "
                                 "try [model] delegate = \"none\"") from exc
        invoked = time.perf_counter()
        for tout, tin in self._state:
            interp.set_tensor(tin.index, interp.get_tensor(tout.index))
        detections: list[Detection] = []
        classes: list[Classification] = []
        decoder = self.manifest.decoder
        if decoder == "ssd_postprocess":
            o = self._outputs
            detections = ssd_detections(
                interp.get_tensor(o["boxes"].index), interp.get_tensor(o["classes"].index),
                interp.get_tensor(o["scores"].index), interp.get_tensor(o["count"].index),
                self.manifest)
        elif decoder == "grid":
            spec = self._outputs["grid"]
            grid = dequantize(interp.get_tensor(spec.index), spec.scale, spec.zero_point)
            detections = grid_detections(grid, self.manifest)
        else:
            spec = self._outputs["scores"]
            scores = dequantize(interp.get_tensor(spec.index), spec.scale, spec.zero_point)
            classes = top_classes(scores, self.manifest)
        done = time.perf_counter()
        return Inference(detections, classes, (invoked - started) * 1e3, (done - invoked) * 1e3)
