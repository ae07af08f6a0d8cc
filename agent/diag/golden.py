"""Golden self-test: a known input and the output the model must give for it.

A manifest's ``golden`` names the input (a frame of the synthetic scene, or an image file
beside the manifest) and the expected detections or top class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.core.postprocess import iou_matrix
from agent.inference.model import LoadedModel
from agent.inference.runner import ModelRunner


def golden_input(spec: dict[str, Any], base: Path) -> np.ndarray:
    if "scene" in spec:
        from agent.sources.synthetic import SyntheticScene

        s = spec["scene"]
        scene = SyntheticScene(int(s["width"]), int(s["height"]), 15.0, seed=int(s["seed"]))
        frame = None
        for _ in range(int(s["frame"])):
            frame, _ = scene.step()
        assert frame is not None
        return frame
    image = cv2.imread(str(base / spec["image"]))
    if image is None:
        raise ValueError(f"golden image {base / spec['image']} is missing or unreadable")
    return image


def make_golden(model: LoadedModel, scene: dict[str, int]) -> dict[str, Any]:
    """The golden entry for a model: its current output on a synthetic frame."""
    runner = ModelRunner(model)
    out = runner.infer(runner.prepare(golden_input({"scene": scene}, model.path.parent)))
    expect = [{"label": d.label, "box": [round(v, 4) for v in d.box]} for d in out.detections]
    return {"scene": scene, "expect_detections": expect, "min_iou": 0.5}


def run_golden(model: LoadedModel) -> dict[str, Any]:
    spec = model.manifest.golden
    if not spec:
        runner = ModelRunner(model)
        runner.infer(runner.prepare(np.zeros((240, 320, 3), np.uint8)))
        return {"status": "none", "reason": "no golden input"}
    try:
        runner = ModelRunner(model)
        out = runner.infer(runner.prepare(golden_input(spec, model.path.parent)))
    except (ValueError, KeyError) as exc:
        return {"status": "fail", "reason": f"golden input: {exc}"}
    if "expect_top" in spec:
        top = out.classes[0].label if out.classes else None
        ok = top == spec["expect_top"]
        return {"status": "pass" if ok else "fail",
                "reason": f"top class {top!r}, expected {spec['expect_top']!r}"}
    expected = spec.get("expect_detections", [])
    got = out.detections
    boxes = np.array([d.box for d in got], np.float32).reshape(-1, 4)
    missing = []
    for e in expected:
        same = [i for i, d in enumerate(got) if d.label == e["label"]]
        ious = iou_matrix(np.array([e["box"]], np.float32), boxes[same])[0] if same else []
        if not len(ious) or max(ious) < spec.get("min_iou", 0.5):
            missing.append(e["label"])
    extra = max(0, len(got) - len(expected))
    ok = not missing and extra <= 1
    return {"status": "pass" if ok else "fail",
            "reason": f"{len(got)} detections for {len(expected)} expected; "
                      f"missed {missing or 'none'}, {extra} extra"}
