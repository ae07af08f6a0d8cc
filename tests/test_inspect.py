"""`models inspect` never fails on a valid TFLite file (issue 17): tensors, metadata, packed
labels, the inferred task or candidates with what each lacks, --write-manifest; one clear
line for a file that is not TFLite or is truncated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelError
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from tests.conftest import run_cli, shared_file
from tests.tflite_models import (
    head_input,
    write_failing_gather,
    write_heads_model,
    write_model,
)

SHARED = [("classify", "mobilenet_v2_1.0_224_quant.tflite", "classification"),
          ("insects", "inat_insect.tflite", "classification"),
          ("traffic", "traffic_model.tflite", "detection"),
          ("segment", "deeplabv3_mnv2_pascal_quant.tflite", "segmentation"),
          ("embed", "mobilenet_v1_224_embedding_extractor.tflite", "embedding")]


def inspect_json(*args: str) -> dict[str, object]:
    out = run_cli("models", "inspect", *args, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


@pytest.mark.parametrize(("folder", "name", "task"), SHARED)
def test_every_shared_model_is_inspected(folder: str, name: str, task: str) -> None:
    data = inspect_json(str(shared_file(folder, name)))
    assert data["loads"] and data["task"] == task
    assert data["inputs"] and data["outputs"]
    for t in data["inputs"] + data["outputs"]:  # type: ignore[operator]
        assert {"name", "shape", "dtype", "quantization"} <= set(t)


def test_packed_labels_and_metadata_are_listed() -> None:
    data = inspect_json(str(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite")))
    assert data["associated_files"] == ["imagenet_labels.txt"]
    assert "TFLITE_METADATA" in data["metadata"]  # type: ignore[operator]
    assert data["labels"] == 1001 and str(data["labels_source"]).endswith(":imagenet_labels.txt")
    out = data["outputs"][0]  # type: ignore[index]
    assert out["quantization"] == {"scale": 0.00390625, "zero_point": 0}


@pytest.mark.parametrize(("outputs", "task", "decoder"), [
    ([("kp", [1, 1, 17, 3])], "pose", "movenet"),  # the MoveNet of the report
    ([("kp", [1, 6, 56])], "pose", "movenet_multi"),
    ([("pred", [1, 84, 300])], "detection", "yolo_v8"),
    ([("pred", [1, 300, 85])], "detection", "yolo_v5"),
    ([("seg", [1, 16, 16, 21])], "segmentation", "logits"),
    ([("emb", [1, 1, 1, 64])], "embedding", "embedding"),
])
def test_signatures_of_the_report_are_inferred(tmp_path: Path, outputs: list[tuple[str, list[int]]],
                                               task: str, decoder: str) -> None:
    model = write_heads_model(tmp_path / "m.tflite", [1, 200, 200, 3], outputs)
    data = inspect_json(str(model))
    assert data["task"] == task and data["manifest"]["decoder"] == decoder  # type: ignore[index]
    assert data["candidates"][0]["complete"]  # type: ignore[index]


def test_a_window_model_shows_its_tensors_and_what_it_lacks(tmp_path: Path) -> None:
    model = write_model(tmp_path / "lstm.tflite", [1, 28, 28], [1, 784])  # the Keras LSTM's input
    out = run_cli("models", "inspect", str(model))
    assert out.returncode == 0, out.stderr
    assert "x [1, 28, 28] float32" in out.stdout and "y [1, 784] float32" in out.stdout
    assert "sequence/softmax" in out.stdout and "rate_hz and anomaly_label" in out.stdout


def test_outputs_no_decoder_reads_are_still_listed(tmp_path: Path) -> None:
    model = write_model(tmp_path / "odd.tflite", [1, 8, 8, 3], [1, 2, 3, 4, 2])
    out = run_cli("models", "inspect", str(model))
    assert out.returncode == 0, out.stderr
    assert "y [1, 2, 3, 4, 2] float32" in out.stdout
    assert "cannot run as it is" in out.stdout and "candidate tasks: none" in out.stdout


def test_write_manifest_makes_a_bundle_that_runs(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "movenet.tflite", [1, 8, 8, 1],
                              [("keypoints", [1, 1, 17, 3])])
    folder = tmp_path / "bundle"
    out = run_cli("models", "inspect", str(model), "--write-manifest", str(folder))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["task"] == "pose" and manifest["keypoints"][0] == "nose"
    assert manifest["skeleton"][0] == [0, 1] and len(manifest["sha256"]) == 64
    loaded = load_model(folder)
    assert not loaded.manifest.inferred and loaded.manifest.decoder == "movenet"
    runner = ModelRunner(loaded)
    kps = np.tile([0.5, 0.5, 0.9], (17, 1))
    assert len(runner.infer(head_input([1, 8, 8, 1], [kps])).poses) == 1
    again = run_cli("models", "inspect", str(model), "--write-manifest", str(folder))
    assert again.returncode == 2 and "not an empty directory" in again.stderr
    assert "Traceback" not in again.stderr


def test_write_manifest_carries_packed_labels(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    out = run_cli("models", "inspect", str(shared_file("insects", "inat_insect.tflite")),
                  "--write-manifest", str(folder))
    assert out.returncode == 0, out.stderr
    assert len((folder / "labels.txt").read_text().splitlines()) == 1022
    assert load_model(folder).manifest.label(0).startswith("Nicrophorus")


def test_write_manifest_for_a_candidate_that_lacks_something(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "ssd.tflite", [1, 32, 32, 1],
                              [("boxes", [1, 10, 4]), ("scores", [1, 10, 3])])
    folder = tmp_path / "b"
    out = run_cli("models", "inspect", str(model), "--write-manifest", str(folder))
    assert out.returncode == 0, out.stderr
    assert "detection/ssd_raw" in out.stdout and "needs anchors" in out.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["decoder"] == "ssd_raw" and "anchors" in manifest["description"]
    with pytest.raises(ModelError, match="needs anchors"):
        load_model(folder)  # until the user adds them, which the description says


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "directory-without-manifest"])
def test_bad_files_get_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.tflite"
    if kind == "text":
        path.write_text("this is a README, not a model\n")
        expect = "not a TFLite model: no 'TFL3' identifier"
    elif kind == "empty":
        path.write_bytes(b"")
        expect = "not a TFLite model: 0 bytes"
    elif kind == "truncated":
        data = shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
        path.write_bytes(data[:len(data) // 3])
        expect = "truncated or corrupt TFLite model"
    else:
        path = tmp_path / "bundle"
        path.mkdir()
        expect = "model.tflite"
    out = run_cli("models", "inspect", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0] and str(path) in lines[0], out.stderr
    assert "fix:" in lines[0]


def test_manifest_naming_a_missing_tensor_or_wrong_shape(tmp_path: Path) -> None:
    model = write_heads_model(tmp_path / "m.tflite", [1, 32, 32, 1], [("pred", [1, 8, 40])])
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(model.read_bytes())
    manifest = {"name": "y", "task": "detection", "decoder": "yolo_v8", "input": "x",
                "outputs": {"predictions": "output0"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"output predictions='output0' not in model outputs"):
        load_model(folder)
    manifest["outputs"] = {"predictions": "pred"}
    manifest["decoder"] = "yolo_v5"  # 8 channels: 5 + 3 classes is fine; make it too narrow
    (folder / "manifest.json").write_text(json.dumps(manifest | {"decoder": "movenet",
                                                                 "task": "pose",
                                                                 "outputs": {"keypoints": "pred"}}))
    with pytest.raises(ModelError, match=r"keypoints output 'pred' has shape \[1, 8, 40\]"):
        load_model(folder)
    out = run_cli("models", "inspect", str(folder))  # inspect reports it, with the tensors
    assert out.returncode == 0 and "cannot run as it is" in out.stdout
    assert "pred [1, 8, 40]" in out.stdout
    (folder / "manifest.json").write_text(json.dumps(manifest | {"task": "pose"}))
    with pytest.raises(ModelError, match="decoder 'yolo_v5' does not decode task 'pose'"):
        load_model(folder)


def test_a_model_that_fails_at_invoke_names_the_op(tmp_path: Path) -> None:
    model = write_failing_gather(tmp_path / "g.tflite")
    runner = ModelRunner(load_model(model))
    with pytest.raises(ModelError, match=r"invoke failed in op GATHER: gather index out of "
                                         r"bounds; node number 1 \(GATHER\)"):
        runner.infer(np.zeros((1, 4, 4, 3), np.float32))


def test_write_manifest_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    """Found by the slow command-line fuzz: an OSError here was an internal error."""
    from tests.conftest import DEFAULT_MODEL, run_cli

    out = run_cli("models", "inspect", "--write-manifest", "/proc/nope/x", str(DEFAULT_MODEL))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--write-manifest" in out.stderr and "/proc/nope/x" in out.stderr
