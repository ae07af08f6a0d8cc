#!/usr/bin/env python3
"""Train, quantize and bundle the agent's default model, ``lepton-vehicles-tiny``.

A small single-scale grid detector (cars, trucks) trained on frames of the project's own
synthetic traffic scene (agent/sources/synthetic.py), so nothing is downloaded. It is
fully int8-quantized with uint8 input and output, converted to TFLite and written with
its manifest to models/lepton-vehicles-tiny/. Rerunnable; deterministic for a seed
(up to TensorFlow's own thread nondeterminism).

    make model            # creates .venv-train with tensorflow-cpu and runs this script
    python models/make_default_model.py --out models/lepton-vehicles-tiny --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sources.synthetic import CLASSES, SyntheticScene  # noqa: E402

INPUT = 128
GRID = 16
CHANNELS = 5 + len(CLASSES)
SIZES = [(640, 480), (1280, 720), (320, 240), (800, 600), (960, 540)]


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[list]]:
    """Frames resized to the model input, grid targets and the ground truth boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    images = np.empty((n, INPUT, INPUT, 3), np.uint8)
    targets = np.zeros((n, GRID, GRID, CHANNELS), np.float32)
    truths: list[list] = []
    i = 0
    while i < n:
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        scene = SyntheticScene(w, h, 15.0, seed=int(rng.integers(1 << 31)),
                               lanes=int(rng.integers(2, 6)), density=float(rng.uniform(0.3, 0.9)))
        for _ in range(int(rng.integers(5, 20))):
            scene.step()
        for _ in range(12):
            if i >= n:
                break
            for _ in range(int(rng.integers(2, 6))):
                frame, truth = scene.step()
            rgb = cv2.cvtColor(cv2.resize(frame, (INPUT, INPUT), interpolation=cv2.INTER_AREA),
                               cv2.COLOR_BGR2RGB)
            gain = rng.uniform(0.75, 1.25)
            images[i] = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            for gt in truth:
                y0, x0, y1, x1 = gt.box
                cy, cx = (y0 + y1) / 2 * GRID, (x0 + x1) / 2 * GRID
                gy, gx = min(int(cy), GRID - 1), min(int(cx), GRID - 1)
                targets[i, gy, gx, :5] = (1.0, cy - gy, cx - gx, y1 - y0, x1 - x0)
                targets[i, gy, gx, 5:] = 0.0
                targets[i, gy, gx, 5 + gt.class_id] = 1.0
            truths.append(truth)
            i += 1
    return images, targets, truths


def build_model():
    import tensorflow as tf

    L = tf.keras.layers
    inp = L.Input((INPUT, INPUT, 3), dtype=tf.float32)
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)

    def block(x, filters, stride=1, dilation=1):
        x = L.Conv2D(filters, 3, strides=stride, padding="same", dilation_rate=dilation,
                     use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x)

    x = block(x, 16, 2)
    x = block(x, 24, 2)
    x = block(x, 32)
    x = block(x, 48, 2)
    x = block(x, 48)
    x = block(x, 64, dilation=2)
    x = block(x, 64, dilation=4)
    box = L.Conv2D(5, 1, activation="sigmoid", name="box")(x)
    cls = L.Conv2D(len(CLASSES), 1, activation="softmax", name="cls")(x)
    out = L.Concatenate(name="grid")([box, cls])
    return tf.keras.Model(inp, out)


def loss_fn(y_true, y_pred):
    import tensorflow as tf

    eps = 1e-6
    obj_t, obj_p = y_true[..., 0], tf.clip_by_value(y_pred[..., 0], eps, 1 - eps)
    pos = obj_t
    obj_loss = -(4.0 * pos * tf.math.log(obj_p) + (1 - pos) * tf.math.log(1 - obj_p))
    box_loss = tf.reduce_sum(tf.square(y_true[..., 1:5] - y_pred[..., 1:5]) * [1, 1, 4, 4], -1)
    cls_loss = -tf.reduce_sum(y_true[..., 5:] * tf.math.log(y_pred[..., 5:] + eps), -1)
    n_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
    return (tf.reduce_sum(obj_loss) + tf.reduce_sum(pos * (5.0 * box_loss + cls_loss))) / n_pos


def evaluate(tflite_path: Path, images: np.ndarray, truths: list[list]) -> dict[str, float]:
    """Precision and recall at IoU 0.5 of the quantized model, decoded by the agent itself."""
    import tensorflow as tf

    from agent.core.manifest import Manifest
    from agent.core.postprocess import dequantize, grid_detections, iou_matrix

    interp = tf.lite.Interpreter(model_path=str(tflite_path))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    manifest = Manifest(name="eval", task="detection", decoder="grid", score_threshold=0.5,
                        max_results=50, labels=dict(enumerate(CLASSES)))
    tp = fp = fn = 0
    for image, truth in zip(images, truths, strict=False):
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        scale, zero = out["quantization"]
        grid = dequantize(interp.get_tensor(out["index"]), scale, zero)
        dets = grid_detections(grid, manifest)
        gts = np.array([g.box for g in truth], np.float32).reshape(-1, 4)
        matched: set[int] = set()
        for d in dets:
            if len(gts):
                ious = iou_matrix(np.array([d.box], np.float32), gts)[0]
                j = int(np.argmax(ious))
                if ious[j] >= 0.5 and j not in matched and truth[j].class_id == d.class_id:
                    matched.add(j)
                    tp += 1
                    continue
            fp += 1
        fn += len(truth) - len(matched)
    return {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4),
            "frames": len(images)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "lepton-vehicles-tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-frames", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    started = time.monotonic()
    x, y, _ = make_dataset(args.train_frames, args.seed)
    x_eval, _, truth_eval = make_dataset(300, args.seed + 1000)
    print(f"generated {len(x)} training frames in {time.monotonic() - started:.1f}s")

    model = build_model()
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss=loss_fn)
    schedule = tf.keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 2e-3 * (0.5 ** (epoch // max(1, args.epochs // 4))))
    model.fit(x.astype(np.float32), y, batch_size=64, epochs=args.epochs, verbose=2,
              callbacks=[schedule])

    def representative():
        for i in range(0, 400, 4):
            yield [x[i:i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    blob = converter.convert()

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.tflite"
    model_path.write_bytes(blob)
    metrics = evaluate(model_path, x_eval, truth_eval)

    interp = tf.lite.Interpreter(model_path=str(model_path))
    manifest: dict = {
        "name": "lepton-vehicles-tiny",
        "version": time.strftime("%Y.%m.%d"),
        "description": "Grid detector for cars and trucks seen from above; trained on the "
                       "synthetic traffic scene by models/make_default_model.py",
        "task": "detection",
        "decoder": "grid",
        "file": "model.tflite",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "input": interp.get_input_details()[0]["name"],
        "color": "rgb",
        "labels": {str(i): name for i, name in enumerate(CLASSES)},
        "score_threshold": 0.5,
        "max_results": 50,
        "outputs": {"grid": interp.get_output_details()[0]["name"]},
        "metrics": {**metrics, "iou": 0.5, "seed": args.seed, "train_frames": args.train_frames,
                    "epochs": args.epochs},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # The golden self-test of `lepton-agent diag model`: this model's own output on a fixed frame.
    from agent.diag.golden import make_golden
    from agent.inference.model import load_model

    manifest["golden"] = make_golden(load_model(args.out),
                                     {"width": 640, "height": 480, "seed": 12345, "frame": 30})
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"model": str(model_path), "bytes": len(blob), **metrics,
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
