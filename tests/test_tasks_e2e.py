"""One model per task end to end (issue 17): a real agent process on a still image, a private
mosquitto, the ingest consumer validating every record against lepton.result v1; each stored
record carries its task's field."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.devtools.mosquitto import find_mosquitto
from agent.devtools.rig import Rig, write_agent_config
from tests.conftest import shared_file
from tests.tflite_models import write_heads_model

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _payloads(db: Path, device: str) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        return [json.loads(r[0]) for r in conn.execute(
            "SELECT payload FROM records WHERE device = ? ORDER BY seq", (device,))]


def test_one_model_per_task_through_mosquitto_to_ingest(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    yolo = write_heads_model(tmp_path / "yolo.tflite", [1, 32, 32, 3], [("pred", [1, 8, 64])],
                             dtype="uint8", scale=1 / 255)
    pose = write_heads_model(tmp_path / "movenet.tflite", [1, 16, 16, 3],
                             [("keypoints", [1, 1, 17, 3])], dtype="uint8", scale=1 / 255)
    cases = [
        ("classification", shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite"),
         shared_file("classify", "cat.bmp"), "classes"),
        ("detection", yolo, shared_file("classify", "cat.bmp"), "detections"),
        ("pose", pose, shared_file("classify", "grace_hopper.bmp"), "poses"),
        ("segmentation", shared_file("segment", "deeplabv3_mnv2_pascal_quant.tflite"),
         shared_file("segment", "bird.bmp"), "segments"),
        ("embedding", shared_file("embed", "mobilenet_v1_224_embedding_extractor.tflite"),
         shared_file("classify", "cat.bmp"), "embedding"),
    ]
    fields = {"classes", "detections", "poses", "segments", "embedding"}
    with Rig(tmp_path / "rig") as rig:
        ingest = rig.ingest(client_id="tasks-ingest")
        for task, model, image, _field in cases:
            config = write_agent_config(tmp_path / f"{task}.toml", device_id=f"dev-{task}",
                                        site="rig", state_dir=tmp_path / f"state-{task}",
                                        broker_url=rig.broker.url, model=model)
            summary = rig.agent(config, "--source", str(image), "--loop", "--pace", "fast",
                                "--max-frames", "3").finish()
            assert summary["results_published"] == 3, (task, summary)
        stats = ingest.stop()
        assert not list(rig.running())
    assert stats["rejected"] == 0 and stats["stored"] == 15, stats  # each record schema-valid
    for task, _model, _image, field in cases:
        records = _payloads(ingest.db, f"dev-{task}")
        assert len(records) == 3 and all(r["task"] == task for r in records)
        assert all(field in r and not (fields - {field}) & set(r) for r in records)
    top = _payloads(ingest.db, "dev-classification")[0]["classes"][0]  # type: ignore[index]
    assert top["label"] == "Egyptian cat"
    bird = _payloads(ingest.db, "dev-segmentation")[0]["segments"][0]  # type: ignore[index]
    assert bird["label"] == "class_3" or bird["label"] == "bird"
    assert 0.15 < bird["area"] < 0.3
    emb = _payloads(ingest.db, "dev-embedding")[0]["embedding"]
    assert emb["dim"] == 1024 and len(emb["values"]) == 1024  # type: ignore[index]
    assert _payloads(ingest.db, "dev-pose")[0]["poses"][0]["keypoints"][0]["name"] == "nose"  # type: ignore[index]
