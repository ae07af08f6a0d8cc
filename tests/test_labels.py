"""Labels: where they come from, that their count fits the model, and the formats read.

Regression tests for issue 13's defect 7 (a bird model next to ``imagenet_labels.txt``
reported a parrot as "menu"; the traffic LSTM-SSD labelled vehicles "tench").
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.labels import LabelError, fit_labels, parse_labels
from agent.errors import ModelError
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from tests.conftest import run_cli, shared_file
from tests.tflite_models import write_model

IMAGENET_FIRST = {"background", "tench, Tinca tinca", "goldfish, Carassius auratus"}


def _link(target: Path, folder: Path, name: str | None = None) -> Path:
    """The shared file, seen from ``folder`` (a symlink: nothing is copied)."""
    link = folder / (name or target.name)
    link.symlink_to(target)
    return link


def _classifier(folder: Path, classes: int, name: str = "tiny") -> Path:
    """A [1, 4, 4, 3] uint8 image reshaped to [1, 48]: a "classifier" with 48 outputs."""
    assert classes == 48
    folder.mkdir(parents=True, exist_ok=True)
    return write_model(folder / f"{name}.tflite", [1, 4, 4, 3], [1, 48], uint8=True)


# --- formats -----------------------------------------------------------------------------------

def test_plain_numbered_and_pbtxt_formats() -> None:
    assert parse_labels("background\ncat\n\ndog\n", pbtxt=False) == {0: "background", 1: "cat",
                                                                     3: "dog"}
    assert parse_labels("0  background\n1  tench\n2  goldfish\n", pbtxt=False) == {
        0: "background", 1: "tench", 2: "goldfish"}
    pbtxt = """# a TF Object Detection label map
item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item { id: 2 name: 'bicycle' }
"""
    assert parse_labels(pbtxt, pbtxt=True) == {1: "person", 2: "bicycle"}
    with pytest.raises(LabelError, match="no 'item"):
        parse_labels("not a map", pbtxt=True)
    with pytest.raises(LabelError, match="id 1 appears twice"):
        parse_labels("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", pbtxt=True)


def test_the_shipped_traffic_label_map_is_read() -> None:
    path = shared_file("traffic", "traffic_label_map.pbtxt")
    assert parse_labels(path.read_text(), pbtxt=True) == {1: "sedan", 2: "pickup_suv_van",
                                                          3: "large_veh_bus"}


# --- fitting the count to the model ------------------------------------------------------------

def test_fit_labels_examples() -> None:
    imagenet = {i: f"c{i}" for i in range(1001)} | {0: "background"}
    assert fit_labels(imagenet, 1001) == 0  # the model outputs the background row too
    assert fit_labels(imagenet, 1000) == 1  # it does not: class 0 is "c1"
    with pytest.raises(LabelError, match="1001 labels for a model with 965 output classes"):
        fit_labels(imagenet, 965)
    assert fit_labels({1: "sedan", 2: "suv", 3: "bus"}, 3) == 1  # pbtxt numbered from 1
    with pytest.raises(LabelError, match="'c0', is not a background row"):
        fit_labels({i: f"c{i}" for i in range(11)}, 10)
    with pytest.raises(LabelError, match=r"1001 labels .* 3 output classes"):
        fit_labels(imagenet, 3)


@given(st.integers(1, 3000), st.integers(-3000, 3000), st.booleans())
def test_fit_labels_refuses_every_count_that_does_not_fit(classes: int, delta: int,
                                                          background: bool) -> None:
    count = max(1, classes + delta)
    labels = {i: f"c{i}" for i in range(count)}
    if background:
        labels[0] = "background"
    # As they are; one more with a background row first; or one fewer without one (a model
    # that outputs background first: class 0 stays unnamed).
    fits = (count == classes or (count == classes + 1 and background)
            or (count == classes - 1 and not background))
    if fits:
        offset = fit_labels(labels, classes)
        assert {labels[c + offset] for c in range(max(0, -offset), classes)} == {
            labels[i] for i in range(max(0, offset), count)}
    else:
        with pytest.raises(LabelError) as info:
            fit_labels(labels, classes)
        assert f"{count} labels" in str(info.value) and f"{classes} output classes" in str(
            info.value)


# --- where a bare model's labels come from -----------------------------------------------------

def test_only_a_label_file_named_after_the_model_is_taken(tmp_path: Path) -> None:
    model = _classifier(tmp_path, 48)
    (tmp_path / "imagenet_labels.txt").write_text("\n".join(f"wrong{i}" for i in range(48)))
    assert load_model(model).manifest.labels == {}
    (tmp_path / "tiny_labels.txt").write_text("\n".join(f"right{i}" for i in range(48)))
    loaded = load_model(model)
    assert loaded.manifest.label(5) == "right5" and loaded.labels_source.endswith("tiny_labels.txt")
    (tmp_path / "tiny.labels.txt").write_text("\n".join(f"dotted{i}" for i in range(48)))
    assert load_model(model).manifest.label(5) == "dotted5"


def test_explicit_labels_win_and_are_checked(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    model = _classifier(tmp_path, 48)
    good = tmp_path / "mine.txt"
    good.write_text("background\n" + "\n".join(f"x{i}" for i in range(48)))
    loaded = load_model(model, labels=good)
    assert loaded.manifest.label_offset == 1 and loaded.manifest.label(0) == "x0"
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(f"x{i}" for i in range(50)))
    # Issue 17: a wrong count is a warning naming both counts and the fix; the labels are not
    # used (names borrowed from another file would be wrong for every result).
    with caplog.at_level(logging.WARNING, logger="agent.inference"):
        unfit = load_model(model, labels=bad)
    assert "50 labels for a model with 48 output classes" in caplog.text
    assert "--labels" in caplog.text
    assert unfit.manifest.labels == {} and unfit.manifest.label(0) == "class_0"
    with pytest.raises(ModelError, match="label file does not exist"):
        load_model(model, labels=tmp_path / "absent.txt")


def test_bundle_uses_its_manifest_labels_and_refuses_ones_that_do_not_fit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = tmp_path / "bundle"
    _classifier(bundle, 48, name="model")
    (bundle / "model_labels.txt").write_text("\n".join(f"sibling{i}" for i in range(48)))
    manifest = {"name": "tiny", "task": "classification", "decoder": "softmax", "input": "x",
                "outputs": {"scores": "y"}, "labels": {str(i): f"m{i}" for i in range(48)}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_model(bundle)
    assert loaded.manifest.label(7) == "m7" and loaded.labels_source == "manifest"
    manifest["labels"] = {str(i): f"m{i}" for i in range(60)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="agent.inference"):
        unfit = load_model(bundle)
    assert re.search(r"manifest .* do not fit.*60 labels.*48 output", caplog.text), caplog.text
    assert unfit.manifest.labels == {} and unfit.manifest.label(7) == "class_7"


def test_bird_like_model_next_to_imagenet_labels_gets_no_imagenet_names(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The 965-class bird model of the report is not in ../shared; the 1022-class insect
    model stands in: a classifier whose width is not imagenet's, in imagenet's folder."""
    model = _link(shared_file("insects", "inat_insect.tflite"), tmp_path, "birds.tflite")
    imagenet = _link(shared_file("classify", "imagenet_labels.txt"), tmp_path)
    loaded = load_model(model, num_threads=1)
    # Issue 17: the model carries its own label file (TFLite metadata); that one is used.
    assert loaded.labels_source == "birds.tflite:inat_insect_labels.txt"
    runner = ModelRunner(loaded)
    out = runner.infer(runner.prepare(cv2.imread(str(shared_file("insects", "dragonfly.bmp")))))
    imagenet_names = set(shared_file("classify", "imagenet_labels.txt").read_text().splitlines())
    assert out.classes and not {c.label for c in out.classes} & imagenet_names
    assert "(" in out.classes[0].label  # "Genus species (Common Name)", the iNat file's form
    with caplog.at_level(logging.WARNING, logger="agent.inference"):
        assert load_model(model, labels=imagenet).manifest.labels == {}
    assert "1001 labels for a model with 1022 output classes" in caplog.text
    named = load_model(shared_file("insects", "inat_insect.tflite"), num_threads=1)
    assert named.manifest.labels[0].startswith("Nicrophorus")  # inat_insect_labels.txt


def test_traffic_model_next_to_imagenet_labels_never_says_tench(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _link(shared_file("traffic", "traffic_model.tflite"), tmp_path)
    imagenet = _link(shared_file("classify", "imagenet_labels.txt"), tmp_path)
    loaded = load_model(model, num_threads=1)
    assert loaded.manifest.labels == {} and loaded.classes == 3
    runner = ModelRunner(loaded)
    frame = cv2.imread(str(shared_file("traffic", "frames", "0001.bmp")))
    labels = {d.label for d in runner.infer(runner.prepare(frame), discontinuity=True).detections}
    assert labels and not labels & IMAGENET_FIRST and all(x.startswith("class_") for x in labels)
    with caplog.at_level(logging.WARNING, logger="agent.inference"):
        assert load_model(model, labels=imagenet).manifest.labels == {}
    assert "1001 labels for a model with 3 output classes" in caplog.text
    # In its own folder it finds traffic_label_map.pbtxt (named after "traffic").
    own = load_model(shared_file("traffic", "traffic_model.tflite"), num_threads=1)
    assert own.manifest.label_offset == 1 and own.manifest.label(0) == "sedan"


def test_cli_and_config_take_labels(tmp_path: Path) -> None:
    model = _link(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"), tmp_path)
    imagenet = shared_file("classify", "imagenet_labels.txt")
    cat = shared_file("classify", "cat.bmp")
    out = run_cli("run", "--offline", "--max-frames", "2", "--source", str(cat), "--model",
                  str(model), "--labels", str(imagenet), "--state-dir", str(tmp_path / "s1"),
                  "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top_classes"][0]["label"] == "Egyptian cat"
    config = tmp_path / "agent.toml"
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("\n".join(f"w{i}" for i in range(965)))
    config.write_text(f'[model]\npath = "{model}"\nlabels = "{wrong}"\n'
                      f'[source]\nuri = "{cat}"\n[agent]\nstate_dir = "{tmp_path / "s2"}"\n')
    out = run_cli("run", "--offline", "--config", str(config), "--max-frames", "1", "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "965 labels for a model with 1001 output classes" in out.stderr, out.stderr
    assert json.loads(out.stdout)["top_classes"][0]["label"].startswith("class_")
    out = run_cli("models", "inspect", str(model), "--labels", str(wrong))
    assert out.returncode == 0 and "965 labels" in out.stderr and "Traceback" not in out.stderr
