"""Real quantized models from ../shared/data and the project's own default model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import ModelError
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from tests.conftest import DEFAULT_MODEL, run_cli, shared_file


@pytest.fixture(scope="module")
def classifier() -> ModelRunner:
    return ModelRunner(load_model(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"),
                                  num_threads=2))


@pytest.mark.parametrize(("image", "label"), [("cat.bmp", "Egyptian cat"),
                                               ("grace_hopper.bmp", "military uniform")])
def test_classifier_top1(classifier: ModelRunner, image: str, label: str) -> None:
    frame = cv2.imread(str(shared_file("classify", image)))
    out = classifier.infer(classifier.prepare(frame))
    assert out.classes[0].label == label
    assert classifier.manifest.inferred and classifier.manifest.task == "classification"


def test_traffic_detector_with_state_fed_back() -> None:
    model = load_model(shared_file("traffic", "traffic_model.tflite"), num_threads=2)
    m = model.manifest
    assert m.task == "detection" and m.decoder == "ssd_postprocess"
    assert sorted(p.input for p in m.state) == ["raw_inputs/init_lstm_c", "raw_inputs/init_lstm_h"]
    assert set(m.labels.values()) == {"sedan", "pickup_suv_van", "large_veh_bus"}
    runner = ModelRunner(model)
    interp = model.interpreter
    frames = sorted(shared_file("traffic", "frames").glob("*.bmp"))
    assert len(frames) == 3
    for i, path in enumerate(frames):
        out = runner.infer(runner.prepare(cv2.imread(str(path))), discontinuity=i == 0)
        assert out.detections, f"no vehicle detected in {path.name}"
        assert {d.label for d in out.detections} <= {"sedan", "pickup_suv_van", "large_veh_bus"}
        for d in out.detections:
            assert 0.0 <= d.box[0] < d.box[2] <= 1.0 and 0.0 <= d.box[1] < d.box[3] <= 1.0
        for pair in m.state:
            fed = interp.get_tensor(model.tensor(pair.input).index)
            produced = interp.get_tensor(model.tensor(pair.output).index)
            assert np.array_equal(fed, produced), "state output was not fed back into its input"


def test_default_model_detects_synthetic_vehicles() -> None:
    from agent.core.postprocess import iou_matrix
    from agent.sources.synthetic import SyntheticScene

    model = load_model(DEFAULT_MODEL, num_threads=2)
    assert model.manifest.name == "lepton-vehicles-tiny" and not model.manifest.inferred
    assert model.inputs[0].dtype == "uint8"
    runner = ModelRunner(model)
    scene = SyntheticScene(640, 480, 15.0, seed=12345)
    hits = total = 0
    for _ in range(40):
        frame, truth = scene.step()
        dets = runner.infer(runner.prepare(frame)).detections
        boxes = np.array([d.box for d in dets], np.float32).reshape(-1, 4)
        for gt in truth:
            total += 1
            if len(boxes) and iou_matrix(np.array([gt.box], np.float32), boxes).max() >= 0.5:
                hits += 1
    assert total > 50 and hits / total >= 0.7, f"recall {hits}/{total}"


def test_models_inspect_json() -> None:
    out = run_cli("models", "inspect", str(shared_file("traffic", "traffic_model.tflite")), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["manifest"]["task"] == "detection" and len(data["manifest"]["state"]) == 2
    assert data["inputs"][0]["dtype"] == "uint8"
    text = run_cli("models", "inspect", str(DEFAULT_MODEL))
    assert text.returncode == 0 and "decoder=grid" in text.stdout


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL, bundle)
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch") as info:
        load_model(bundle)
    assert "make model" in str(info.value)


def test_not_a_tflite_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"\x00" * 1000)
    with pytest.raises(ModelError, match="not a loadable TFLite model") as info:
        load_model(bogus)
    assert str(bogus) in str(info.value)


def test_missing_model_and_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.tflite")
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"name": "x", "task": "detection", "decoder": "grid",'
                                          ' "colour": "rgb"}')
    with pytest.raises(ModelError, match="unknown manifest keys"):
        load_model(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_model(bundle)


@pytest.mark.parametrize("delegate", ["none", "reference"])
def test_delegate_choices_run(delegate: str) -> None:
    model = load_model(DEFAULT_MODEL, num_threads=1, delegate=delegate)
    runner = ModelRunner(model)
    out = runner.infer(runner.prepare(np.zeros((100, 100, 3), np.uint8)))
    assert out.invoke_ms > 0
