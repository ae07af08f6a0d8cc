"""What ``models inspect`` reports: everything a user needs to write a manifest, for any valid
TFLite file, including models the agent cannot run yet.

Only a file that is not TFLite, or is truncated, is an error. Everything else (an op LiteRT
lacks, a signature no decoder reads, a manifest that does not fit) is reported, with the
tensors read from the file itself when the runtime cannot load it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.labels import parse_labels
from agent.core.manifest import (
    Candidate,
    Manifest,
    ManifestError,
    TensorSpec,
    candidates,
    find_state_pairs,
    manifest_for,
    sequence_input,
    sequence_manifest,
)
from agent.errors import ModelError
from agent.inference.model import (
    MANIFEST_NAME,
    LoadedModel,
    embedded_labels,
    find_sibling_labels,
    load_model,
    sha256_file,
)
from agent.inference.tflite_file import (
    PROVIDED_CUSTOM_OPS,
    FileTensor,
    ModelInfo,
    NotTFLiteError,
    custom_ops,
    read_model_info,
)
from agent.paths import resolve_model


@dataclass
class Inspection:
    """The report of one model file."""

    path: Path
    info: ModelInfo
    model: LoadedModel | None
    load_error: str  # why the agent cannot use it as it is ("" when it can)
    load_fix: str
    candidates: list[Candidate]
    labels: dict[int, str] = field(default_factory=dict)
    labels_source: str = ""

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.model.inputs if self.model else [_spec(t) for t in self.info.inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.model.outputs if self.model else [_spec(t) for t in self.info.outputs]

    def manifest(self) -> Manifest | None:
        """The manifest the agent uses, or the one the best candidate would give."""
        if self.model is not None:
            return self.model.manifest
        return draft_manifest(self.path.stem, self.inputs, self.outputs, self.candidates)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest()
        custom = custom_ops(self.info.ops)
        return {
            "path": str(self.path),
            "runtime": self.model.runtime if self.model else None,
            "loads": self.model is not None,
            "error": self.load_error or None,
            "fix": self.load_fix or None,
            "schema_version": self.info.version,
            "description": self.info.description or None,
            "subgraphs": self.info.subgraphs,
            "custom_ops": [{"name": c, "provided": c in PROVIDED_CUSTOM_OPS} for c in custom],
            "metadata": self.info.metadata,
            "associated_files": self.info.associated_files,
            "inputs": [_tensor_json(t) for t in self.inputs],
            "outputs": [_tensor_json(t) for t in self.outputs],
            "task": m.task if m is not None and self.model is not None else None,
            "candidates": [asdict(c) | {"complete": c.complete} for c in self.candidates],
            "classes": self.model.classes if self.model else None,
            "labels": len(self.labels) or None,
            "labels_source": self.labels_source or None,
            "manifest": manifest_json(m) if m is not None else None,
        }


def _spec(t: FileTensor) -> TensorSpec:
    return TensorSpec(t.index, t.name, t.shape, t.dtype, t.scale, t.zero_point)


def _tensor_json(t: TensorSpec) -> dict[str, Any]:
    return {"index": t.index, "name": t.name, "shape": list(t.shape), "dtype": t.dtype,
            "quantization": {"scale": t.scale, "zero_point": t.zero_point} if t.quantized else None}


def draft_manifest(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                   found: list[Candidate]) -> Manifest | None:
    """A manifest to start from: the first candidate's roles and its task's defaults."""
    seq = sequence_input(inputs)
    if seq is not None:
        try:
            return sequence_manifest(name, seq, outputs)
        except ManifestError:
            return None
    images = [t for t in inputs if len(t.shape) == 4 and t.shape[0] == 1 and t.shape[3] in (1, 3)]
    if not images or not found:
        return None
    image = max(images, key=lambda t: t.shape[1] * t.shape[2])
    try:
        state = find_state_pairs(inputs, outputs)
    except ManifestError:
        state = []
    return manifest_for(name, image, state, found[0])


def manifest_json(m: Manifest) -> dict[str, Any]:
    """A manifest as ``manifest.json`` holds it (the keys the loader accepts)."""
    data = m.to_json()
    data.pop("inferred", None)
    if isinstance(m.anchors, np.ndarray):
        data["anchors"] = m.anchors.tolist()
    data["skeleton"] = [list(e) for e in m.skeleton]
    data["box_scales"] = list(m.box_scales)
    data["state"] = [{"output": p.output, "input": p.input} for p in m.state]
    return data


def inspect_model(path: Path, *, labels: Path | None = None,
                  delegate: str = "xnnpack") -> Inspection:
    """Inspect a bundle, manifest or ``.tflite``. Raises ModelError only when the path does not
    exist or the model file is not TFLite or is truncated."""
    path = resolve_model(path)
    if not path.exists():
        raise ModelError("does not exist", path=str(path),
                         fix="give a .tflite file, a bundle directory or its manifest.json")
    model_file = path
    if path.is_dir() or path.suffix == ".json":
        manifest_path = path / MANIFEST_NAME if path.is_dir() else path
        try:
            declared = json.loads(manifest_path.read_text(encoding="utf-8"))
            model_file = manifest_path.parent / str(declared.get("file") or "model.tflite")
        except (OSError, ValueError, AttributeError):
            model_file = manifest_path.parent / "model.tflite"
    try:
        info = read_model_info(model_file)
    except NotTFLiteError as exc:
        raise ModelError(str(exc), path=str(model_file),
                         fix="give the .tflite file itself, copied whole (compare its size "
                             "with the original); a TensorFlow SavedModel or .pb must be "
                             "converted with the TFLite converter first") from exc
    model: LoadedModel | None = None
    error = fix = ""
    try:
        model = load_model(path, num_threads=1, delegate=delegate, labels=labels)
    except ModelError as exc:
        error, fix = exc.message, exc.fix or ""
    specs_in = model.inputs if model else [_spec(t) for t in info.inputs]
    specs_out = model.outputs if model else [_spec(t) for t in info.outputs]
    found = candidates(specs_in, specs_out)
    report = Inspection(model_file, info, model, error, fix, found)
    if model is not None and model.manifest.labels:
        report.labels, report.labels_source = model.manifest.labels, model.labels_source
    else:
        report.labels, report.labels_source = embedded_labels(model_file)
        sibling = labels or find_sibling_labels(model_file)
        if not report.labels and sibling is not None and sibling.is_file():
            try:
                report.labels = parse_labels(sibling.read_text(encoding="utf-8"),
                                             pbtxt=sibling.suffix == ".pbtxt")
                report.labels_source = str(sibling)
            except (OSError, UnicodeDecodeError, ValueError):
                pass
    return report


def write_bundle(report: Inspection, folder: Path) -> Path:
    """A bundle directory with the model, its labels and a manifest ready to edit."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ModelError("already exists and is not an empty directory", path=str(folder),
                         fix="give a new directory for --write-manifest")
    m = report.manifest()
    if m is None:
        raise ModelError("no task fits this model's tensors, so there is no manifest to "
                         "start from", path=str(report.path),
                         fix="write manifest.json by hand from the tensors listed above "
                             "(docs/models.md)")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / report.path.name
    shutil.copyfile(report.path, target)
    m.file = target.name
    m.sha256 = sha256_file(target)
    data = manifest_json(m)
    if report.labels:
        labels_name = "labels.txt"
        top = max(report.labels)
        (folder / labels_name).write_text(
            "".join(f"{report.labels.get(i, '')}\n" for i in range(top + 1)), encoding="utf-8")
        data["labels"] = labels_name
    else:
        data["labels"] = {}
    notes = [f"{c.task}/{c.decoder}: needs {c.lacks}" for c in report.candidates if c.lacks]
    if notes and not data.get("description"):
        data["description"] = "edit before use: " + "; ".join(notes)
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return folder / MANIFEST_NAME
