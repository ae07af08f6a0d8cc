"""A sensor model: a window of readings in, an anomaly score out, through LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.core.postprocess import dequantize
from agent.errors import ModelError
from agent.inference.model import LoadedModel, load_model


class SensorModel:
    """Scores windows (``window`` x ``channels``) with a classification model whose manifest
    has a ``sensor`` section (channels, rate_hz, window, hop, mean, std, anomaly_label).
    Use from one thread."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        m = model.manifest
        spec = m.sensor
        required = ("channels", "rate_hz", "window", "hop", "mean", "std", "anomaly_label")
        missing = [k for k in required if k not in spec]
        if m.task not in ("classification", "sequence") or missing:
            raise ModelError(f"not a sensor model (task {m.task!r}, missing sensor keys "
                             f"{missing})", path=str(model.path),
                             fix="use a bundle made like models/lepton-bearing-anomaly; for a "
                                 "bare window model, `lepton-agent models inspect MODEL "
                                 "--write-manifest DIR` writes one to fill in")
        self.channels: list[str] = [str(c) for c in spec["channels"]]
        self.rate_hz = float(spec["rate_hz"])
        self.window = int(spec["window"])
        self.hop = int(spec["hop"])
        self.mean = np.asarray(spec["mean"], np.float32)
        self.std = np.asarray(spec["std"], np.float32)
        label_ids = {v: k for k, v in m.labels.items()}
        if spec["anomaly_label"] not in label_ids:
            raise ModelError(f"anomaly_label {spec['anomaly_label']!r} is not a label",
                             path=str(model.path))
        self.anomaly_index = label_ids[spec["anomaly_label"]] - m.label_offset
        self.input = model.input_spec()
        if tuple(self.input.shape[1:]) != (self.window, len(self.channels)):
            raise ModelError(f"input shape {self.input.shape} does not match window "
                             f"{self.window} x {len(self.channels)} channels",
                             path=str(model.path))
        self.output = model.tensor(m.outputs["scores"])

    @classmethod
    def load(cls, path: Path, num_threads: int = 1, delegate: str = "xnnpack") -> SensorModel:
        return cls(load_model(path, num_threads=num_threads, delegate=delegate))

    def score(self, window: np.ndarray) -> float:
        """Probability of the anomaly label for one window of raw readings."""
        x = (np.asarray(window, np.float32) - self.mean) / self.std
        spec = self.input
        if spec.dtype in ("int8", "uint8"):
            lo, hi = (-128, 127) if spec.dtype == "int8" else (0, 255)
            x = np.clip(np.round(x / spec.scale + spec.zero_point), lo, hi).astype(spec.dtype)
        interp = self.model.interpreter
        interp.set_tensor(spec.index, x[None])
        interp.invoke()
        out = self.output
        scores = dequantize(interp.get_tensor(out.index), out.scale, out.zero_point).reshape(-1)
        return float(scores[self.anomaly_index])
