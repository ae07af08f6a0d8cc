"""Real quantized models from ../shared/data and the project's own default model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import ModelError
from agent.inference.model import LoadedModel, load_model
from agent.inference.runner import ModelRunner
from tests.conftest import DEFAULT_MODEL, run_cli, shared_file
from tests.tflite_models import rename_custom_op, write_model


@pytest.fixture(scope="module")
def classifier() -> ModelRunner:
    # imagenet_labels.txt is not named after the model: it is given, as a user would.
    return ModelRunner(load_model(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"),
                                  num_threads=2,
                                  labels=shared_file("classify", "imagenet_labels.txt")))


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


DELEGATES = ["xnnpack", "none"]  # each compared with the builtin reference kernels


def _raw_outputs(model: LoadedModel) -> list[np.ndarray]:
    interp = model.interpreter
    return [interp.get_tensor(o["index"]).astype(np.int32) for o in interp.get_output_details()]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.mark.parametrize("delegate", DELEGATES)
def test_delegates_agree_with_the_reference_kernels_on_a_real_classifier(delegate: str) -> None:
    """The same quantized MobileNet v2 and images give the same answer under each delegate:
    the uint8 scores within a few output steps (rounding differs between kernel libraries)."""
    path = shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite")
    runners = {d: ModelRunner(load_model(path, num_threads=1, delegate=d))
               for d in (delegate, "reference")}
    # imagenet_labels.txt lines (0 = background): 286 "Egyptian cat", 653 "military uniform"
    for image, class_id in (("cat.bmp", 286), ("grace_hopper.bmp", 653)):
        frame = cv2.imread(str(shared_file("classify", image)))
        results = {d: r.infer(r.prepare(frame)) for d, r in runners.items()}
        raw = {d: _raw_outputs(r.model) for d, r in runners.items()}
        assert [int(raw[d][0].argmax()) for d in runners] == [class_id, class_id], image
        diff = np.abs(raw[delegate][0] - raw["reference"][0])
        assert diff.max() <= 8, (image, int(diff.max()))  # of 256 steps; measured <= 6
        assert results[delegate].invoke_ms > 0


@pytest.mark.parametrize("delegate", DELEGATES)
def test_delegates_agree_with_the_reference_kernels_on_the_default_detector(
        delegate: str) -> None:
    """Every confident detection of the reference kernels is found under each delegate: same
    class, nearly the same box and score (XNNPACK requantizes differently: marginal cells move)."""
    frame = cv2.imread(str(shared_file("traffic", "frames", "0001.bmp")))
    found = {}
    for d in (delegate, "reference"):
        runner = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1, delegate=d))
        found[d] = runner.infer(runner.prepare(frame)).detections
    confident = [det for det in found["reference"] if det.score >= 0.9]
    assert len(confident) >= 3  # cars in the frame: the comparison has something to compare
    for ref in confident:
        match = max(found[delegate], key=lambda det: _iou(det.box, ref.box))
        assert match.label == ref.label and _iou(match.box, ref.box) >= 0.8, (ref, match)
        assert abs(match.score - ref.score) <= 0.05, (ref, match)


XNNPACK_INFO = "Created TensorFlow Lite XNNPACK delegate"


def _bundle_28x28(folder: Path) -> Path:
    """A bundle whose manifest names a [1, 28, 28] input (MNIST-like, no channel axis)."""
    folder.mkdir()
    write_model(folder / "model.tflite", [1, 28, 28], [1, 784])
    (folder / "manifest.json").write_text(json.dumps({
        "name": "mnist-like", "task": "classification", "decoder": "softmax", "input": "x",
        "outputs": {"scores": "y"}}))
    return folder


def test_input_shape_the_runner_cannot_feed_is_refused(tmp_path: Path) -> None:
    """Issue 13, defect 12: it passed `models inspect`, then `run` died with an IndexError."""
    bundle = _bundle_28x28(tmp_path / "mnist")
    with pytest.raises(ModelError, match=r"shape \[1, 28, 28\].*\[1, H, W, 1\|3\]"):
        load_model(bundle)
    # Issue 17: inspect never fails on a valid TFLite file; it shows the tensors and says why
    # the model cannot run as declared.
    inspect = run_cli("models", "inspect", str(bundle))
    assert inspect.returncode == 0, inspect.stderr
    assert "x [1, 28, 28] float32" in inspect.stdout
    assert "cannot run as it is" in inspect.stdout and "[1, H, W, 1|3]" in inspect.stdout
    run = run_cli("run", "--offline", "--model", str(bundle), "--max-frames", "2",
                  "--source", "synthetic://64x48@5", "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "IndexError" not in run.stderr
    assert "[1, 28, 28]" in run.stderr, run.stderr
    # A bare window model is a sequence (sensor) model: it loads, and the image runner refuses it.
    bare = write_model(tmp_path / "bare.tflite", [1, 28, 28], [1, 784])
    model = load_model(bare)
    assert model.manifest.task == "sequence" and model.manifest.sensor["window"] == 28
    with pytest.raises(ModelError, match="sensor model"):
        ModelRunner(model)


def test_declared_decoder_outputs_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    write_model(bundle / "model.tflite", [1, 4, 4, 3], [1, 48])
    (bundle / "manifest.json").write_text(json.dumps({
        "name": "g", "task": "detection", "decoder": "grid", "input": "x",
        "outputs": {"grid": "y"}}))
    with pytest.raises(ModelError, match=r"grid output 'y' has shape \[1, 48\]"):
        load_model(bundle)


@pytest.mark.parametrize("source", ["built", "traffic"])
def test_custom_op_the_runtime_lacks_is_named(tmp_path: Path, source: str) -> None:
    """Issue 13, defect 13: `models inspect` said "check it is not truncated"."""
    if source == "built":
        model = write_model(tmp_path / "m.tflite", [1, 4, 4, 3], [1, 48],
                            custom_op="LeptonMysteryOp")
        op = "LeptonMysteryOp"
    else:  # the real LSTM-SSD with its (provided) post-processing op renamed
        op = "LeptonPostProcess"
        model = rename_custom_op(shared_file("traffic", "traffic_model.tflite"),
                                 tmp_path / "traffic.tflite", "TFLite_Detection_PostProcess", op)
    # Issue 17: inspect still shows the tensors (read from the file), names the op and says
    # what to do; `run` refuses the model with the same message.
    out = run_cli("models", "inspect", str(model))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f"custom op '{op}', which LiteRT does not provide" in out.stdout, out.stdout
    assert f"custom op: {op} (NOT provided by LiteRT)" in out.stdout
    assert "outputs:" in out.stdout and "truncated" not in out.stdout + out.stderr
    run = run_cli("run", "--offline", "--model", str(model), "--max-frames", "1",
                  "--source", "synthetic://64x48@5", "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"custom op '{op}', which LiteRT does not provide" in run.stderr, run.stderr


def test_inspect_lists_provided_custom_ops_and_label_source() -> None:
    out = run_cli("models", "inspect", str(shared_file("traffic", "traffic_model.tflite")))
    assert out.returncode == 0, out.stderr
    assert "custom op: TFLite_Detection_PostProcess (provided by LiteRT)" in out.stdout
    assert "classes: 3; labels from" in out.stdout and "traffic_label_map.pbtxt" in out.stdout


def test_no_xnnpack_info_line_on_stderr() -> None:
    """Issue 13, defect 17: every command printed LiteRT's INFO line."""
    out = run_cli("models", "inspect", str(DEFAULT_MODEL))
    assert out.returncode == 0 and "decoder=grid" in out.stdout
    assert XNNPACK_INFO not in out.stderr and XNNPACK_INFO not in out.stdout, out.stderr


def test_other_native_stderr_is_kept() -> None:
    import os

    from agent.inference.litert import quiet_native_stderr

    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        with quiet_native_stderr() as captured:
            os.write(2, f"INFO: {XNNPACK_INFO} for CPU.\nWARNING: something real\n".encode())
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    with os.fdopen(read) as fh:
        assert fh.read() == "WARNING: something real\n"
    assert captured == ["WARNING: something real"]


def test_classification_run_summary_shows_the_top_class(tmp_path: Path) -> None:
    """Issue 13, defect 18: the summary said "detections: 0" and named no class."""
    frames = tmp_path / "frames"
    frames.mkdir()
    cat = cv2.imread(str(shared_file("classify", "cat.bmp")))
    for i in range(1, 5):  # an image sequence, OpenCV's syntax
        cv2.imwrite(str(frames / f"{i:04d}.bmp"), cat)
    args = ["run", "--offline", "--source", str(frames / "%04d.bmp"), "--max-frames", "3",
            "--model", str(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite")),
            "--labels", str(shared_file("classify", "imagenet_labels.txt")),
            "--state-dir", str(tmp_path / "state")]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert "frames: 3 captured, 3 processed" in out.stdout
    assert "top class: Egyptian cat (score up to 0." in out.stdout and "top-1 in 3 of 3" in \
        out.stdout, out.stdout
    assert "detections:" not in out.stdout and "results: 3 committed" in out.stdout
    summary = json.loads(run_cli(*args, "--json").stdout)
    assert summary["task"] == "classification" and summary["frames_processed"] == 3
    assert summary["top_classes"][0]["label"] == "Egyptian cat"
    assert summary["top_classes"][0]["frames"] == 3 and summary["results_committed"] == 3


def test_sensor_model_inspects_but_is_refused_as_a_camera_model(tmp_path: Path) -> None:
    sensor = DEFAULT_MODEL.parent / "lepton-bearing-anomaly"
    inspect = run_cli("models", "inspect", str(sensor))
    assert inspect.returncode == 0, inspect.stderr
    run = run_cli("run", "--offline", "--model", str(sensor), "--max-frames", "1",
                  "--source", "synthetic://64x48@5", "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "sensor model" in run.stderr and "[[sensors]]" in run.stderr, run.stderr


def test_models_load_with_stderr_closed() -> None:
    """A service started with fd 2 closed still loads its model (nothing to capture)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run(["bash", "-c", f"'{sys.executable}' -m agent models inspect "
                                        f"'{DEFAULT_MODEL}' 2>&-"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "decoder=grid" in out.stdout
