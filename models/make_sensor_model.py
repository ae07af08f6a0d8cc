#!/usr/bin/env python3
"""Train, quantize and bundle the shipped sensor model, ``lepton-bearing-anomaly``.

A small 1-D convolutional classifier over windows of a 3-axis accelerometer (400 Hz, 128
samples = 0.32 s, one window every 64 samples) telling a healthy bearing from one with an
outer-race fault, trained on the project's own generated vibration
(agent/sources/vibration.py): nothing is downloaded. Fully int8-quantized (int8 input and
output), written with its manifest (including the per-channel normalization and the
window geometry the agent must use) to models/lepton-bearing-anomaly/. Rerunnable;
deterministic for a seed up to TensorFlow's thread nondeterminism. Takes about a minute.

    make sensor-model
    python models/make_sensor_model.py --out models/lepton-bearing-anomaly --seed 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sources.vibration import CHANNELS, RATE_HZ, VibrationSignal  # noqa: E402

WINDOW, HOP = 128, 64


def windows(fault: float, count: int, seed: int) -> np.ndarray:
    """``count`` windows of a machine with fault severity ``fault`` (shaft speed varied)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count // 16):
        signal = VibrationSignal(seed=seed * 1000 + i, shaft_hz=float(rng.uniform(18, 32)),
                                 fault_hz=float(rng.uniform(80, 96)), fault=fault)
        samples = signal.samples(WINDOW + HOP * 15)
        out += [samples[k * HOP:k * HOP + WINDOW] for k in range(16)]
    return np.stack(out)


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    healthy = windows(0.0, n // 2, seed)
    faulty = np.concatenate([windows(float(f), n // 8, seed + k + 1)
                             for k, f in enumerate(rng.uniform(0.02, 1.0, 4))])
    x = np.concatenate([healthy, faulty])
    y = np.concatenate([np.zeros(len(healthy)), np.ones(len(faulty))]).astype(np.int64)
    order = rng.permutation(len(x))
    return x[order], y[order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "lepton-bearing-anomaly")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--train", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    x, y = dataset(args.train, args.seed)
    mean = x.reshape(-1, 3).mean(axis=0)
    std = x.reshape(-1, 3).std(axis=0) + 1e-6
    xn = (x - mean) / std
    model = tf.keras.Sequential([
        tf.keras.Input((WINDOW, 3)),
        tf.keras.layers.Conv1D(8, 7, strides=2, activation="relu"),
        tf.keras.layers.Conv1D(16, 5, strides=2, activation="relu"),
        tf.keras.layers.Conv1D(16, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling1D(),
        tf.keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xn, y, epochs=args.epochs, batch_size=64, verbose=2, validation_split=0.1)

    def representative():  # type: ignore[no-untyped-def]
        for i in range(0, 512, 4):
            yield [xn[i:i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = converter.convert()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.tflite").write_bytes(tflite)

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    test_x, test_y = dataset(2048, args.seed + 100)
    correct = 0
    for window, label in zip((test_x - mean) / std, test_y, strict=True):
        scale, zero = inp["quantization"]
        q = np.clip(np.round(window / scale + zero), -128, 127).astype(np.int8)[None]
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        correct += int(np.argmax(interp.get_tensor(out["index"])[0]) == label)
    accuracy = correct / len(test_y)
    print(f"int8 accuracy on {len(test_y)} held-out windows: {accuracy:.4f}")
    manifest = {
        "name": "lepton-bearing-anomaly",
        "version": "2026.11.22",
        "description": "Bearing outer-race fault detector over 3-axis accelerometer windows; "
                       "trained on generated vibration by models/make_sensor_model.py",
        "task": "classification", "decoder": "softmax", "file": "model.tflite",
        "sha256": hashlib.sha256(tflite).hexdigest(), "input": inp["name"], "color": "gray",
        "labels": {"0": "normal", "1": "bearing_fault"}, "score_threshold": 0.0,
        "max_results": 2, "outputs": {"scores": out["name"]},
        "sensor": {"channels": list(CHANNELS), "rate_hz": RATE_HZ, "window": WINDOW, "hop": HOP,
                   "mean": [round(float(v), 6) for v in mean],
                   "std": [round(float(v), 6) for v in std], "anomaly_label": "bearing_fault"},
        "metrics": {"accuracy": round(accuracy, 4), "test_windows": len(test_y),
                    "train_windows": len(y), "epochs": args.epochs, "seed": args.seed},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out} ({len(tflite)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
