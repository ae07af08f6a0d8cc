"""Ingest validation: every malformed message is rejected with a reason, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.backend.ingest import RecordValidator
from agent.backend.store import open_store
from agent.core.records import FrameResult, ModelRef, encode_result
from agent.errors import RecordRejected, StorageError

TOPIC = "lepton/v1/site1/dev1/results/cam0"


def good(seq: int = 1) -> bytes:
    r = FrameResult("cam0", 0, 1.0, 1, 10, 10, "detection")
    return encode_result(r, seq=seq, device="dev1", site="site1", model=ModelRef("m", "1", "0" * 64))


def test_valid_record() -> None:
    rec = RecordValidator().validate(TOPIC, good(7))
    assert (rec.device, rec.stream, rec.seq) == ("dev1", "cam0", 7)


@pytest.mark.parametrize(("topic", "payload", "why"), [
    (TOPIC, b"\xff\xfe", "not UTF-8 JSON"),
    (TOPIC, b"{", "not UTF-8 JSON"),
    (TOPIC, b"[]", "schema"),
    (TOPIC, json.dumps({**json.loads(good()), "seq": 0}).encode(), "seq"),
    (TOPIC, json.dumps({**json.loads(good()), "extra": 1}).encode(), "extra"),
    (TOPIC, json.dumps({k: v for k, v in json.loads(good()).items() if k != "ts"}).encode(), "ts"),
    ("lepton/v1/site1/other/results/cam0", good(), "does not match topic"),
    ("lepton/v1/site1/dev1/results/cam9", good(), "does not match topic"),
    ("lepton/v2/site1/dev1/results/cam0", good(), "unsupported contract version"),
    ("lepton/v1/site1/dev1/status", good(), "not a record topic"),
])
def test_rejections_name_the_problem(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(RecordRejected) as info:
        RecordValidator().validate(topic, payload)
    assert why in str(info.value) and info.value.topic == topic


def test_store_is_idempotent(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/ingest.db")
    v = RecordValidator()
    recs = [v.validate(TOPIC, good(i)) for i in (1, 2, 3)]
    assert store.store(recs) == 3
    assert store.store([*recs[1:], v.validate(TOPIC, good(4))]) == 1
    assert store.count() == 4
    store.close()


def test_bad_db_urls() -> None:
    with pytest.raises(StorageError, match="sqlite:///PATH"):
        open_store("mysql://x/y")
