#!/usr/bin/env python3
"""Train, quantize and bundle the agent's default model, ``lepton-vehicles-tiny``.

A small single-scale grid detector (cars, trucks) trained on frames of the project's own
synthetic scenes (agent/sources/synthetic.py: the road scene, horizontal traffic, and the
junction scene, both roads, with their exact boxes; some frames turned about the diagonal), so
nothing is downloaded. It is fully int8-quantized with uint8 input and output, converted to
TFLite and written with its manifest to models/lepton-vehicles-tiny/, with recall and
precision per scene, orientation and class on held-out scenes measured through the agent's own
runner. Rerunnable; deterministic for a seed (up to TensorFlow's own thread nondeterminism).

    make model            # creates .venv-train with tensorflow-cpu and runs this script
    python models/make_default_model.py --out models/lepton-vehicles-tiny --seed 7
    python models/make_default_model.py --evaluate models/lepton-vehicles-tiny   # no TF needed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sources.synthetic import CLASSES, JunctionScene, SyntheticScene  # noqa: E402

INPUT = 128
GRID = 16
# Boxes per cell (the manifest's grid_slots). With one, a car drawn over a truck in its lane, or
# two vehicles side by side whose centres fall in one 40 x 30 px cell (at 640x480), gave one
# box: replaying the model's detections through the tracker (docs/analytics.md), most missed
# crossings were such a pair followed by one track.
SLOTS = 2
CHANNELS = 5 + len(CLASSES)
SIZES = [(640, 480), (1280, 720), (320, 240), (800, 600), (960, 540)]
# Scene seeds below this are kept for evaluation (the counting clips of docs/analytics.md use
# junction seeds 1-3); training draws its scenes from above it.
HELD_OUT_SEEDS = 1000
# A truth box is a training target when this much of the vehicle shows (visibility: its own
# pixels in the frame over its whole area) and it is longer than 2 % of the frame along its
# road (the road scene's own rule); a box that shows less is neither target nor background.
# 0.4 left vehicles passing under others and cut by the frame edge undetected at the lines:
# with the truth's boxes as detections, >= 40 % visible counted 1.3 % off, every box 0.3 %.
MIN_VISIBLE = 0.25
MIN_LENGTH = 0.02


@dataclass(frozen=True)
class Obj:
    """One vehicle in a frame: class, normalized (ymin, xmin, ymax, xmax), how much of it shows,
    and whether it drives vertically in the image."""

    class_id: int
    box: tuple[float, float, float, float]
    visibility: float
    vertical: bool


def scene_frames(kind: str, width: int, height: int, seed: int, density: float, lanes: int = 4,
                 ) -> Iterator[tuple[np.ndarray, list[Obj]]]:
    """Endless frames (BGR) of the road or junction scene with every vehicle's exact box.

    The road scene's truth (:class:`GroundTruth`) is clipped to the frame and has no occlusion
    measure: its vehicles count as fully visible, as the model's own evaluation always took
    them. The junction's truth is :class:`TruthBox` (whole pixels, amodal, with visibility);
    which road a vehicle is on comes from the scene's movers, by object id."""
    if kind == "road":
        road = SyntheticScene(width, height, 15.0, seed=seed, lanes=lanes, density=density)
        while True:
            frame, truth = road.step()
            yield frame, [Obj(t.class_id, t.box, 1.0, False) for t in truth]
    elif kind == "junction":
        junction = JunctionScene(width, height, 15.0, seed=seed, density=density)
        while True:
            frame, boxes = junction.step()
            vertical = {v.object_id: v.vertical for v in junction.vehicles}
            yield frame, [Obj(b.class_id, (b.y / height, b.x / width, (b.y + b.h) / height,
                                           (b.x + b.w) / width), b.visibility,
                              vertical[b.object_id]) for b in boxes]
    else:
        raise ValueError(f"unknown scene {kind!r}")


def transposed(frame: np.ndarray, objs: list[Obj]) -> tuple[np.ndarray, list[Obj]]:
    """The frame mirrored about its diagonal (rows become columns): horizontal traffic turns
    vertical and the other way round, with the boxes exactly following."""
    return (np.ascontiguousarray(frame.transpose(1, 0, 2)),
            [Obj(o.class_id, (o.box[1], o.box[0], o.box[3], o.box[2]), o.visibility,
                 not o.vertical) for o in objs])


def make_dataset(n: int, seed: int, junction_share: float = 0.5, transpose_share: float = 0.35,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames resized to the model input as the runtime resizes them, and grid targets.

    A mix of scenes: ``junction_share`` of them the junction (both roads), the rest the road
    scene; ``transpose_share`` of either turned about the diagonal (more vertical traffic, and
    a junction whose wide road is vertical). Gain jitter, and JPEG at quality 50-95 for half of
    them (the evaluation clips are MJPG). Target channels per slot: objectness (1 target,
    0 background, -1 ignored: a vehicle that shows too little), centre offset in the cell, box
    size, class. A cell's targets fill its slots in a fixed order the model can learn: the
    vehicle that shows most first (the one on top), equal ones top to bottom, left to right."""
    import cv2

    rng = np.random.default_rng(seed)
    images = np.empty((n, INPUT, INPUT, 3), np.uint8)
    targets = np.zeros((n, GRID, GRID, SLOTS, CHANNELS), np.float32)
    i = 0
    while i < n:
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        kind = "junction" if rng.random() < junction_share else "road"
        turn = rng.random() < transpose_share
        frames = scene_frames(kind, w, h, int(rng.integers(HELD_OUT_SEEDS, 1 << 31)),
                              float(rng.uniform(0.3, 0.9)), lanes=int(rng.integers(2, 6)))
        for _ in range(int(rng.integers(5, 20))):
            next(frames)
        for _ in range(12):
            if i >= n:
                break
            for _ in range(int(rng.integers(2, 6))):
                frame, objs = next(frames)
            if turn:
                frame, objs = transposed(frame, objs)
            # The runtime's resize (agent/inference/runner.py: INTER_LINEAR); a quarter with
            # INTER_AREA so the model does not lean on one filter's aliasing.
            interp = cv2.INTER_AREA if rng.random() < 0.25 else cv2.INTER_LINEAR
            small = cv2.resize(frame, (INPUT, INPUT), interpolation=interp)
            if rng.random() < 0.5:
                _, jpg = cv2.imencode(".jpg", small,
                                       [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
                small = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
            gain = rng.uniform(0.75, 1.25)
            images[i] = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            cells: dict[tuple[int, int], list[tuple[float, float, float, Obj]]] = {}
            ignored: set[tuple[int, int]] = set()
            for o in objs:
                y0, x0, y1, x1 = o.box
                cy, cx = (y0 + y1) / 2 * GRID, (x0 + x1) / 2 * GRID
                gy, gx = min(max(int(cy), 0), GRID - 1), min(max(int(cx), 0), GRID - 1)
                length = (y1 - y0) if o.vertical else (x1 - x0)
                if o.visibility < MIN_VISIBLE or length <= MIN_LENGTH:
                    ignored.add((gy, gx))
                else:
                    cells.setdefault((gy, gx), []).append((cy, cx, o.visibility, o))
            for (gy, gx), found in cells.items():
                found.sort(key=lambda f: (-round(f[2], 1), f[0], f[1]))
                for slot, (cy, cx, _, o) in enumerate(found[:SLOTS]):
                    y0, x0, y1, x1 = o.box
                    targets[i, gy, gx, slot, :5] = (1.0, cy - gy, cx - gx, y1 - y0, x1 - x0)
                    targets[i, gy, gx, slot, 5 + o.class_id] = 1.0
            for gy, gx in ignored:  # slots without a target: neither target nor background
                targets[i, gy, gx, len(cells.get((gy, gx), ())):, 0] = -1.0
            i += 1
    return images, targets.reshape(n, GRID, GRID, SLOTS * CHANNELS)


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
    box = L.Reshape((GRID, GRID, SLOTS, 5))(L.Conv2D(SLOTS * 5, 1, activation="sigmoid",
                                                     name="box")(x))
    cls = L.Softmax()(L.Reshape((GRID, GRID, SLOTS, len(CLASSES)))(
        L.Conv2D(SLOTS * len(CLASSES), 1, name="cls")(x)))
    out = L.Reshape((GRID, GRID, SLOTS * CHANNELS), name="grid")(L.Concatenate()([box, cls]))
    return tf.keras.Model(inp, out)


def loss_fn(y_true, y_pred):
    import tensorflow as tf

    eps = 1e-6
    y_true = tf.reshape(y_true, (-1, GRID, GRID, SLOTS, CHANNELS))
    y_pred = tf.reshape(y_pred, (-1, GRID, GRID, SLOTS, CHANNELS))
    obj_t, obj_p = y_true[..., 0], tf.clip_by_value(y_pred[..., 0], eps, 1 - eps)
    pos = tf.cast(obj_t > 0.5, tf.float32)
    neg = tf.cast(tf.abs(obj_t) < 0.5, tf.float32)  # -1: a vehicle that shows too little
    obj_loss = -(4.0 * pos * tf.math.log(obj_p) + neg * tf.math.log(1 - obj_p))
    box_loss = tf.reduce_sum(tf.square(y_true[..., 1:5] - y_pred[..., 1:5]) * [1, 1, 4, 4], -1)
    cls_loss = -tf.reduce_sum(y_true[..., 5:] * tf.math.log(y_pred[..., 5:] + eps), -1)
    n_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
    return (tf.reduce_sum(obj_loss) + tf.reduce_sum(pos * (5.0 * box_loss + cls_loss))) / n_pos


# Held-out evaluation: (scene, width, height, seed); 20 s at 15 fps, every 3rd frame. The
# junction clips are those of docs/analytics.md's counting figures (640x480, seeds 1-3), plus
# one at another size; the road scene at its default 4 lanes, density 0.5.
EVAL_SCENES = [("road", 640, 480, 1), ("road", 640, 480, 2), ("road", 960, 540, 3),
               ("junction", 640, 480, 1), ("junction", 640, 480, 2), ("junction", 640, 480, 3),
               ("junction", 960, 540, 4)]
EVAL_FRAMES, EVAL_EVERY = 300, 3


def evaluate(bundle: Path, threads: int = 2) -> dict[str, dict[str, float | int]]:
    """Recall and precision at IoU 0.5 of the bundle as the agent runs it (``ModelRunner``: its
    resize, its int8 model, its decoder and score threshold) on :data:`EVAL_SCENES`, per scene,
    vehicle orientation and class.

    A detection is a true positive when it overlaps an unmatched truth box of its own class at
    IoU >= 0.5 (best first, any visibility: a partly hidden vehicle found is no false alarm).
    Recall is over the fully visible vehicles (``full``: visibility 1, inside the frame) and
    over those at least half visible (``half``). An unmatched detection's orientation is its
    box's: wider than tall in pixels is horizontal."""
    from agent.core.postprocess import iou_matrix
    from agent.inference.model import load_model
    from agent.inference.runner import ModelRunner

    runner = ModelRunner(load_model(bundle, num_threads=threads))
    counts: dict[str, dict[str, int]] = {}

    def add(key: str, field: str) -> None:
        counts.setdefault(key, {"full": 0, "full_hit": 0, "half": 0, "half_hit": 0, "dets": 0,
                                "tp": 0})[field] += 1

    for kind, w, h, seed in EVAL_SCENES:
        frames = scene_frames(kind, w, h, seed, 0.5)
        for index in range(EVAL_FRAMES):
            frame, objs = next(frames)
            if index % EVAL_EVERY:
                continue
            dets = sorted(runner.infer(runner.prepare(frame)).detections, key=lambda d: -d.score)
            gts = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
            hit: set[int] = set()
            for d in dets:
                match = -1
                if len(gts):
                    ious = iou_matrix(np.array([d.box], np.float32), gts)[0]
                    for j in np.argsort(-ious):
                        if ious[j] < 0.5:
                            break
                        if j not in hit and objs[j].class_id == d.class_id:
                            match = int(j)
                            break
                if match >= 0:
                    hit.add(match)
                    vertical = objs[match].vertical
                else:
                    y0, x0, y1, x1 = d.box
                    vertical = (y1 - y0) * h > (x1 - x0) * w
                key = f"{kind}/{'vertical' if vertical else 'horizontal'}/{CLASSES[d.class_id]}"
                add(key, "dets")
                if match >= 0:
                    add(key, "tp")
            for j, o in enumerate(objs):
                key = f"{kind}/{'vertical' if o.vertical else 'horizontal'}/{CLASSES[o.class_id]}"
                for field, least in (("full", 0.999), ("half", 0.5)):
                    if o.visibility >= least:
                        add(key, field)
                        if j in hit:
                            add(key, field + "_hit")
    out: dict[str, dict[str, float | int]] = {}
    for key in sorted(counts):
        c = counts[key]
        out[key] = {"recall_full": round(c["full_hit"] / max(c["full"], 1), 3), "n_full": c["full"],
                    "recall_half": round(c["half_hit"] / max(c["half"], 1), 3), "n_half": c["half"],
                    "precision": round(c["tp"] / max(c["dets"], 1), 3), "detections": c["dets"]}
    return out


def table(metrics: dict[str, dict[str, float | int]]) -> str:
    """The evaluation as a Markdown table."""
    rows = ["| scene / orientation / class | recall (fully visible) | recall (>= half visible) "
            "| precision |", "|---|---|---|---|"]
    def cell(value: float | int, n: float | int) -> str:
        return f"{value:.3f} ({n})" if n else "- (0)"

    for key, m in metrics.items():
        rows.append(f"| {key} | {cell(m['recall_full'], m['n_full'])} | "
                    f"{cell(m['recall_half'], m['n_half'])} | "
                    f"{cell(m['precision'], m['detections'])} |")
    return "\n".join(rows)


def finish_bundle(out: Path, training: dict[str, float | int]) -> dict[str, dict[str, float | int]]:
    """Measure the bundle in ``out`` (model.tflite and a manifest naming it, sha256 and all)
    through the agent's own loader and runner, and write the manifest's ``metrics`` (the
    held-out figures and ``training``, how it was trained) and ``golden`` (the self-test of
    ``lepton-agent diag model``: this model's own output on a fixed road-scene frame)."""
    from agent.diag.golden import make_golden
    from agent.inference.model import load_model

    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("golden", None)
    per_scene = evaluate(out)
    manifest["metrics"] = {"iou": 0.5, **training,
                           "eval_scenes": [list(e) for e in EVAL_SCENES],
                           "eval_frames": f"{EVAL_FRAMES} at 15 fps, one in {EVAL_EVERY}",
                           "per_scene": per_scene}
    manifest["golden"] = make_golden(load_model(out),
                                     {"width": 640, "height": 480, "seed": 12345, "frame": 30})
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return per_scene


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "lepton-vehicles-tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-frames", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--junction-share", type=float, default=0.5,
                        help="share of training frames from the junction scene (rest: road)")
    parser.add_argument("--evaluate", type=Path, metavar="BUNDLE",
                        help="only evaluate BUNDLE on the held-out scenes (no TensorFlow needed) "
                             "and print the table and JSON")
    parser.add_argument("--manifest-only", action="store_true",
                        help="keep --out's model.tflite; re-measure it and rewrite the manifest's "
                             "metrics and golden (no TensorFlow needed)")
    args = parser.parse_args()

    if args.manifest_only:
        old = json.loads((args.out / "manifest.json").read_text()).get("metrics", {})
        training = {k: old[k] for k in ("seed", "train_frames", "epochs", "junction_share",
                                        "train_seconds") if k in old}
        print(table(finish_bundle(args.out, training)))
        return 0
    if args.evaluate is not None:
        started = time.monotonic()
        result = evaluate(args.evaluate)
        print(table(result))
        print(json.dumps({"bundle": str(args.evaluate), "per_scene": result,
                          "seconds": round(time.monotonic() - started, 1)}))
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    started = time.monotonic()
    x, y = make_dataset(args.train_frames, args.seed, junction_share=args.junction_share)
    print(f"generated {len(x)} training frames in {time.monotonic() - started:.1f}s", flush=True)

    model = build_model()
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss=loss_fn)
    schedule = tf.keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 2e-3 * (0.5 ** (epoch // max(1, args.epochs // 4))))
    model.fit(x.astype(np.float32), y, batch_size=64, epochs=args.epochs, verbose=2,
              callbacks=[schedule])
    trained = time.monotonic() - started

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

    interp = tf.lite.Interpreter(model_path=str(model_path))
    manifest: dict = {
        "name": "lepton-vehicles-tiny",
        "version": time.strftime("%Y.%m.%d"),
        "description": "Grid detector for cars and trucks seen from above, driving horizontally "
                       "or vertically; trained on the synthetic road and junction scenes by "
                       "models/make_default_model.py",
        "task": "detection",
        "decoder": "grid",
        "file": "model.tflite",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "input": interp.get_input_details()[0]["name"],
        "color": "rgb",
        "labels": {str(i): name for i, name in enumerate(CLASSES)},
        "score_threshold": 0.5,
        "max_results": 50,
        "grid_slots": SLOTS,
        "outputs": {"grid": interp.get_output_details()[0]["name"]},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    per_scene = finish_bundle(args.out, {"seed": args.seed, "train_frames": args.train_frames,
                                         "epochs": args.epochs,
                                         "junction_share": args.junction_share,
                                         "train_seconds": round(trained)})
    print(table(per_scene))
    print(json.dumps({"model": str(model_path), "bytes": len(blob), "sha256": manifest["sha256"],
                      "train_seconds": round(trained, 1),
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
