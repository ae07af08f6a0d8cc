"""A segmentation model's class map as a PNG shard ([shards] mask_interval_s): a real agent on
the bird image, a private mosquitto, the ingest consumer reassembling the blob; the PNG that
arrives agrees with the shared hand-made bird mask, and the result names it by sha256."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.devtools.rig import Rig, write_agent_config
from agent.schemas import load_schema
from tests.conftest import shared_file
from tests.e2e import wait_for

pytestmark = pytest.mark.broker
BIRD = 3  # pascal_voc_labels.txt


def test_the_class_map_arrives_as_a_png_the_result_names(tmp_path: Path) -> None:
    from jsonschema import Draft202012Validator

    model = shared_file("segment", "deeplabv3_mnv2_pascal_quant.tflite")
    image = shared_file("segment", "bird.bmp")
    with Rig(tmp_path / "rig") as rig:
        ingest = rig.ingest(client_id="mask-ingest")
        config = write_agent_config(tmp_path / "agent.toml", device_id="dev-seg", site="rig",
                                    state_dir=tmp_path / "state", broker_url=rig.broker.url,
                                    model=model)
        config.write_text(config.read_text() + "\n[shards]\nmask_interval_s = 3600\n")
        summary = rig.agent(config, "--source", str(image), "--loop", "--pace", "fast",
                            "--max-frames", "3").finish()
        assert summary["results_published"] == 3, summary
        with sqlite3.connect(ingest.db) as conn:
            def blobs() -> list[tuple[str, str, str]]:
                try:
                    return conn.execute("SELECT blob, kind, path FROM blobs").fetchall()
                except sqlite3.OperationalError:
                    return []

            stored = wait_for(blobs, "the mask blob at ingest", timeout=60)
            payloads = [json.loads(p) for (p,) in conn.execute(
                "SELECT payload FROM records WHERE device = 'dev-seg' ORDER BY seq")]
        ingest.stop()
    assert len(stored) == 1 and stored[0][1] == "mask", stored
    blob, _, path = stored[0]
    png = (ingest.db.parent / path if not Path(path).is_absolute() else Path(path)).read_bytes()
    assert hashlib.sha256(png).hexdigest() == blob
    # One mask per interval (an hour): the first result names it, the next two do not.
    assert [p.get("mask") for p in payloads] == [blob, None, None]
    validator = Draft202012Validator(load_schema("result.v1"))
    assert all(not list(validator.iter_errors(p)) for p in payloads)

    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    truth = cv2.imread(str(shared_file("segment", "bird_mask.bmp")), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == truth.shape == (513, 513)
    agreement = float(np.mean((mask == BIRD) == (truth == BIRD)))
    assert agreement >= 0.97, agreement  # the shared data's README: 97.9%
