"""Loading a model: a bundle (manifest + .tflite, sha256 checked) or a bare .tflite."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.contract.result import ModelRef
from agent.core.labels import LabelError, check_declared_labels, fit_labels, is_background, parse_labels
from agent.core.manifest import (
    DECODERS,
    TASKS,
    InputShapeError,
    Manifest,
    ManifestError,
    StatePair,
    TensorSpec,
    check_manifest,
    infer_manifest,
    output_classes,
)
from agent.errors import ModelError
from agent.inference.litert import interpreter_class, make_interpreter
from agent.inference.tflite_file import detection_classes, read_ops
from agent.paths import resolve_model

log = logging.getLogger("agent.inference")

MANIFEST_NAME = "manifest.json"
_MANIFEST_KEYS = {"name", "version", "description", "task", "decoder", "file", "sha256", "input",
                  "color", "labels", "label_offset", "score_threshold", "max_results", "outputs",
                  "state", "metrics", "golden", "sensor", "iou_threshold", "grid_slots",
                  "box_units",
                  "anchors", "box_scales", "score_activation", "skip_background", "keypoints",
                  "skeleton", "min_area", "normalize"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_specs(details: list[dict[str, Any]]) -> list[TensorSpec]:
    specs = []
    for d in details:
        scale, zero = d.get("quantization", (0.0, 0))
        specs.append(TensorSpec(int(d["index"]), str(d["name"]), tuple(int(v) for v in d["shape"]),
                                str(d["dtype"].__name__), float(scale), int(zero)))
    return specs


def read_label_file(path: Path) -> dict[int, str]:
    try:
        return parse_labels(path.read_text(encoding="utf-8"), pbtxt=path.suffix == ".pbtxt")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"cannot read labels {path}: {exc}", path=str(path),
                         fix="give a text file with one label per line or a .pbtxt label map") from exc


LABEL_SUFFIXES = (".labels.txt", "_labels.txt", ".labels.pbtxt", "_labels.pbtxt",
                  ".label_map.pbtxt", "_label_map.pbtxt")
LABELS_FIX = ("give the label file written for this model: --labels FILE or [model] labels, "
              "one line per output class (plus a first 'background' line when the model has "
              "no background class), or a .pbtxt label map")


def label_file_candidates(model_file: Path) -> list[Path]:
    """Label files named after a bare model, in order of preference: ``MODEL.labels.txt``,
    ``MODEL_labels.txt``, ``MODEL_label_map.pbtxt``, ...; MODEL is the file's stem, or the stem
    without a ``_model`` suffix (``traffic_model.tflite`` -> ``traffic_label_map.pbtxt``)."""
    stem = model_file.stem
    bases = [stem] + [stem[: -len(s)] for s in ("_model", "-model", ".model")
                      if stem.endswith(s) and len(stem) > len(s)]
    return [model_file.with_name(base + suffix) for base in bases for suffix in LABEL_SUFFIXES]


def find_sibling_labels(model_file: Path) -> Path | None:
    """The label file named after a bare model, if there is one. Any other file in the folder
    (``imagenet_labels.txt`` next to a bird model) is never taken: it would name every class
    wrongly, silently."""
    return next((p for p in label_file_candidates(model_file) if p.is_file()), None)


def embedded_labels(model_file: Path) -> tuple[dict[int, str], str]:
    """Labels packed in the model (TFLite metadata's associated files), and where from."""
    from agent.inference.tflite_file import read_associated_file

    try:
        with zipfile.ZipFile(model_file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}, ""
    for name in names:
        if "label" in name.lower() and name.endswith((".txt", ".pbtxt")):
            text = read_associated_file(model_file, name)
            try:
                if text:
                    return parse_labels(text, pbtxt=name.endswith(".pbtxt")), \
                        f"{model_file.name}:{name}"
            except ValueError:
                continue
    return {}, ""


def fit_label_file(manifest: Manifest, labels_file: Path | None, classes: int | None,
                   parsed: dict[int, str] | None = None) -> None:
    """Read ``labels_file`` (or take ``parsed``) into ``manifest``, with the offset that fits
    ``classes``; a count that does not fit is a warning naming both counts."""
    labels = parsed if parsed is not None else read_label_file(labels_file)  # type: ignore[arg-type]
    if classes is None and manifest.task == "segmentation":
        offset = 0  # a class map's values are the label ids, background included
    elif classes is None:  # the model does not say; a background row or a 1-based map shifts by 1
        offset = 1 if 0 not in labels or is_background(labels[0]) else 0
    else:
        try:
            offset = fit_labels(labels, classes)
        except LabelError as exc:
            # A warning, not a refusal (issue 17), but the labels are not used: names shifted
            # or borrowed from another model would be wrong for every result, silently.
            log.warning("labels %s do not fit the model: %s; results name classes class_N. "
                        "Fix: %s", labels_file or "packed in the model", exc, LABELS_FIX)
            return
    manifest.labels = labels
    manifest.label_offset = offset


def model_classes(manifest: Manifest, outputs: list[TensorSpec], model_file: Path) -> int | None:
    """How many classes the model reports: the score vector's width, the grid's class
    channels, or TFLite_Detection_PostProcess's ``num_classes`` read from the file."""
    classes = output_classes(manifest, outputs)
    if classes is None and manifest.decoder == "ssd_postprocess":
        classes = detection_classes(read_ops(model_file) or [])
    return classes



def ssd_anchor_count(manifest: Manifest, outputs: list[TensorSpec]) -> None:
    """An ssd_raw manifest's anchors must give one row per box."""
    if manifest.decoder != "ssd_raw" or manifest.anchors is None:
        return
    boxes = next(t for t in outputs if t.name == manifest.outputs["boxes"])
    if len(manifest.anchors) != boxes.shape[1]:
        raise ManifestError(f"{len(manifest.anchors)} anchors for {boxes.shape[1]} boxes of "
                            f"output {boxes.name!r}; give one anchor per box")

@dataclass
class LoadedModel:
    """A model ready to run: its file, manifest, interpreter and tensor specs."""

    path: Path
    manifest: Manifest
    interpreter: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    runtime: str = "ai-edge-litert"
    labels_source: str = ""  # where the labels came from, for `models inspect`
    classes: int | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.manifest.name, self.manifest.version, self.manifest.sha256)

    def input_spec(self) -> TensorSpec:
        return next(t for t in self.inputs if t.name == self.manifest.input)

    def tensor(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs + self.outputs if t.name == name)


def _manifest_from_json(path: Path, data: dict[str, Any]) -> Manifest:
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise ModelError(f"unknown manifest keys {sorted(unknown)}", path=str(path),
                         fix=f"allowed keys: {', '.join(sorted(_MANIFEST_KEYS))}")
    try:
        labels_value = data.get("labels", {})
        if isinstance(labels_value, str):
            labels = read_label_file(path.parent / labels_value)
        else:
            labels = {int(k): str(v) for k, v in labels_value.items()}
        state = [StatePair(output=p["output"], input=p["input"]) for p in data.get("state", [])]
        fields = {k: v for k, v in data.items() if k not in ("labels", "state")}
        if "box_scales" in fields:
            fields["box_scales"] = tuple(float(v) for v in fields["box_scales"])
        if "skeleton" in fields:
            fields["skeleton"] = [(int(a), int(b)) for a, b in fields["skeleton"]]
        manifest = Manifest(labels=labels, state=state, **fields)
        if isinstance(manifest.anchors, str):
            manifest.anchors = read_anchors(path.parent / manifest.anchors)
        elif manifest.anchors is not None:
            manifest.anchors = np.asarray(manifest.anchors, np.float32).reshape(-1, 4)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"malformed manifest: {exc}", path=str(path),
                         fix="compare it with models/lepton-vehicles-tiny/manifest.json") from exc
    if manifest.task not in TASKS:
        raise ModelError(f"unknown task {manifest.task!r}", path=str(path),
                         fix=f"use one of {', '.join(TASKS)}")
    if manifest.decoder not in DECODERS[manifest.task]:
        raise ModelError(f"decoder {manifest.decoder!r} does not decode task {manifest.task!r}",
                         path=str(path), fix=f"use one of {', '.join(DECODERS[manifest.task])}")
    return manifest


def read_anchors(path: Path) -> np.ndarray:
    """SSD anchors (rows of ycenter, xcenter, h, w) from a .npy file or a JSON list of rows."""
    try:
        if path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        else:
            rows = np.asarray(json.loads(path.read_text(encoding="utf-8")), np.float32)
        return np.asarray(rows, np.float32).reshape(-1, 4)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read anchors: {exc}", path=str(path),
                         fix="give a .npy array or a JSON list of [ycenter, xcenter, h, w] "
                             "rows, one per box") from exc


def load_model(path: Path, *, num_threads: int = 2, delegate: str = "xnnpack",
               score_threshold: float | None = None, labels: Path | None = None) -> LoadedModel:
    """Load a bundle directory, a manifest file, or a bare .tflite.

    Labels: ``labels`` when given (checked against the model's class count); else a bundle's
    manifest labels; else a label file named after a bare model (:func:`find_sibling_labels`);
    else none (results carry ``class_N``)."""
    path = resolve_model(path)
    if labels is not None and not labels.is_file():
        raise ModelError("label file does not exist" if not labels.exists() else
                         "label path is not a file", path=str(labels),
                         fix="check the --labels / [model] labels path")
    if not path.exists():
        raise ModelError("does not exist", path=str(path),
                         fix="pass --model with a .tflite file or a bundle directory; "
                             "`make model` rebuilds the default one")
    manifest_path: Path | None = None
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ModelError(f"bundle directory has no {MANIFEST_NAME}", path=str(path),
                             fix="add a manifest, or pass the .tflite file itself")
    elif path.suffix == ".json":
        manifest_path = path

    declared: Manifest | None = None
    if manifest_path:
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"unreadable manifest: {exc}", path=str(manifest_path),
                             fix="fix the JSON or rebuild the bundle") from exc
        if not isinstance(data, dict):
            raise ModelError("manifest must be a JSON object", path=str(manifest_path))
        declared = _manifest_from_json(manifest_path, data)
        model_file = manifest_path.parent / (declared.file or "model.tflite")
        if not model_file.is_file():
            raise ModelError(f"manifest names {declared.file!r}, which does not exist",
                             path=str(manifest_path), fix="restore the model file")
        actual = sha256_file(model_file)
        if declared.sha256 and actual != declared.sha256:
            raise ModelError(
                f"sha256 mismatch: manifest says {declared.sha256[:12]}..., file is {actual[:12]}...",
                path=str(model_file),
                fix="the file is corrupt or was replaced: re-copy the bundle, or rebuild it with "
                    "`make model`")
        declared.sha256 = actual
    else:
        model_file = path

    interpreter = make_interpreter(str(model_file), num_threads, delegate)
    inputs = tensor_specs(interpreter.get_input_details())
    outputs = tensor_specs(interpreter.get_output_details())
    try:
        if declared:
            check_manifest(declared, inputs, outputs)
            ssd_anchor_count(declared, outputs)
            manifest = declared
        else:
            manifest = infer_manifest(model_file.stem, inputs, outputs)
            manifest.sha256 = sha256_file(model_file)
            manifest.file = model_file.name
    except ManifestError as exc:
        if isinstance(exc, InputShapeError):
            fix = ("use a model that takes one image (NHWC, 1 or 3 channels); the agent feeds it "
                   "camera frames")
        elif declared:
            fix = "correct the manifest's tensor names and decoder (`models inspect` lists them)"
        else:
            fix = "write a manifest.json beside the model that maps its tensors"
        raise ModelError(str(exc), path=str(manifest_path or model_file), fix=fix) from exc
    classes = model_classes(manifest, outputs, model_file)
    labels_file = labels or (None if declared else find_sibling_labels(model_file))
    source = ""
    packed, packed_source = ({}, "") if labels_file or declared else embedded_labels(model_file)
    if labels_file is not None:
        fit_label_file(manifest, labels_file, classes)
        source = str(labels_file) if manifest.labels else ""
    elif packed:
        fit_label_file(manifest, None, classes, packed)
        source = packed_source if manifest.labels else ""
    elif declared and manifest.labels:
        if classes is not None:
            try:
                check_declared_labels(manifest.labels, manifest.label_offset, classes)
            except LabelError as exc:
                log.warning("the labels of manifest %s do not fit the model: %s; results name "
                            "classes class_N. Fix: %s", manifest_path, exc, LABELS_FIX)
                manifest.labels, manifest.label_offset = {}, 0
        source = "manifest" if manifest.labels else ""
    else:
        log.warning("model %s has no labels: results name classes class_N; give --labels FILE "
                    "or put %s beside it", model_file, label_file_candidates(model_file)[1].name)
    if source:
        log.info("labels of %s: %d from %s (offset %d)", model_file.name, len(manifest.labels),
                 source, manifest.label_offset)
    if score_threshold is not None:
        manifest.score_threshold = score_threshold
    return LoadedModel(model_file, manifest, interpreter, inputs, outputs,
                       runtime=interpreter_class()[1], labels_source=source, classes=classes)
