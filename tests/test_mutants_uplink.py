"""The uplink over a real outbox and blob store with a recording link: what the mutation run
(``make mutants``) found untested: shard messages and their properties, acks from ingest
(records and blobs, malformed, forged), PUBACKs and rejections of shards, the birth message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.core.contract.ack import encode_ack
from agent.core.contract.shard import MANIFEST, OutgoingPart, shard_properties
from agent.core.outbox import PublishWindow
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.uplink import LIVE_RESERVE, Uplink
from tests.outbox_probe import sent_not_acked

ACK_TOPIC = "lepton/v1/s/d/ack"


class RecordingLink:
    """Stands in for MqttLink at the uplink's boundary: records what would go on the wire;
    ``accept`` publishes are taken, then the client refuses (returns None) like a full queue."""

    def __init__(self, accept: int = 10**9) -> None:
        self.connected = True
        self.accept = accept
        self.sent: list[dict[str, object]] = []
        self.subscribed: list[tuple[str, int]] = []

    # Defaults unlike MqttLink's (qos 1), so a call that leaves qos out shows in what is recorded.
    def publish(self, topic: str, payload: bytes, qos: int = -1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None) -> int | None:
        if len(self.sent) >= self.accept:
            return None
        self.sent.append({"topic": topic, "payload": payload, "qos": qos, "retain": retain,
                          "props": user_properties})
        return len(self.sent)

    def subscribe(self, topic: str, qos: int = -1) -> None:
        self.subscribed.append((topic, qos))


def _message(topic: str, payload: bytes) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def _records(n: int, stream: str = "cam0") -> list[PendingRecord]:
    return [PendingRecord(stream, f"t/{stream}", lambda seq, s=stream: f"{s}:{seq}".encode())
            for _ in range(n)]


def _setup(tmp_path: Path, link: RecordingLink | None = None, window: int = 10, **kw: object) -> tuple[
        Outbox, BlobStore, Uplink, RecordingLink]:
    outbox = Outbox(tmp_path / "o.db")
    blobs = BlobStore(outbox, chunk_size=1024)
    uplink = Uplink(outbox, PublishWindow(window), birth=("lepton/v1/s/d/status", b"online"),
                    ack_topic=ACK_TOPIC, blobs=blobs, shard_topic=lambda b: f"shards/{b}", **kw)  # type: ignore[arg-type]
    link = link or RecordingLink()
    uplink.attach(link)  # type: ignore[arg-type]
    return outbox, blobs, uplink, link


def test_starts_idle_with_zero_counters(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    uplink = Uplink(outbox, PublishWindow(5))
    assert (uplink.blobs, uplink.shard_topic, uplink.shard_window, uplink.birth, uplink.ack_topic,
            uplink.link, uplink.first_ack_at, uplink.last_reject) == (None, None, 4, None, None, None,
                                                                     None, None)
    assert (uplink.chunks_sent, uplink.blobs_completed, uplink.ingested, uplink.bad_acks,
            uplink.acks_ignored, uplink.published, uplink.acked, uplink.rejected) == (0,) * 8
    assert uplink.shards_in_flight == {} and LIVE_RESERVE == 32
    uplink.committed()  # no link: nothing happens, nothing breaks
    uplink.blobs_added()
    assert uplink.published == 0


def test_shard_properties_follow_the_contract() -> None:
    chunk = OutgoingPart("ab" * 32, 2, 5, 4100, b"xyz", "snapshot", "image/jpeg")
    assert shard_properties(chunk) == [
        ("lepton-part", "chunk"), ("blob-sha256", "ab" * 32), ("chunk-count", "5"),
        ("blob-size", "4100"), ("kind", "snapshot"), ("content-type", "image/jpeg"),
        ("chunk-index", "2"), ("chunk-sha256", hashlib.sha256(b"xyz").hexdigest())]
    manifest = OutgoingPart("ab" * 32, MANIFEST, 5, 4100, b"{}", "clip", "video/mp4")
    assert shard_properties(manifest) == [
        ("lepton-part", "manifest"), ("blob-sha256", "ab" * 32), ("chunk-count", "5"),
        ("blob-size", "4100"), ("kind", "clip"), ("content-type", "video/mp4")]


def test_connect_subscribes_to_acks_and_publishes_the_birth(tmp_path: Path) -> None:
    _, _, uplink, link = _setup(tmp_path)
    uplink.on_connected(False)
    assert link.subscribed == [(ACK_TOPIC, 1)]
    assert link.sent == [{"topic": "lepton/v1/s/d/status", "payload": b"online", "qos": 1,
                          "retain": True, "props": None}]
    assert uplink.idle


def test_blob_chunks_go_after_records_within_the_shard_window(tmp_path: Path) -> None:
    outbox, blobs, uplink, link = _setup(tmp_path, window=2, shard_window=3)
    outbox.append(_records(3))
    data = bytes(range(256)) * 12  # 3072 bytes: 3 chunks of 1024
    blob = blobs.put(data, kind="snapshot", content_type="image/jpeg")
    uplink.on_connected(False)
    assert [m["topic"] for m in link.sent] == ["lepton/v1/s/d/status", "t/cam0", "t/cam0"]
    uplink.blobs_added()
    assert len(link.sent) == 3  # shards wait while records are unsent
    uplink.on_puback([2, 3], [])
    assert uplink.acked == 2 and uplink.first_ack_at is not None and uplink.published == 3
    # the last record, then the manifest and two chunks (shard window 3) on the shard topic
    assert link.sent[3]["payload"] == b"cam0:3"
    shard_msgs = link.sent[4:]
    assert [m["topic"] for m in shard_msgs] == [f"shards/{blob}"] * 3
    assert [dict(m["props"])["lepton-part"] for m in shard_msgs] == ["manifest", "chunk", "chunk"]  # type: ignore[arg-type]
    assert [m["qos"] for m in shard_msgs] == [1, 1, 1]
    manifest = json.loads(shard_msgs[0]["payload"])  # type: ignore[arg-type]
    assert (manifest["blob"], manifest["size"], manifest["chunk_count"], manifest["chunk_size"]) == (
        blob, 3072, 3, 1024)
    assert shard_msgs[1]["payload"] == data[:1024] and shard_msgs[2]["payload"] == data[1024:2048]
    assert uplink.shards_in_flight == {5: (blob, MANIFEST), 6: (blob, 0), 7: (blob, 1)}
    uplink.blobs_added()  # window full: nothing more
    assert len(link.sent) == 7
    # PUBACK of the record, the manifest and one chunk, one rejected: two parts sent, room for more
    uplink.on_puback([4, 5, 6], [(7, "quota exceeded")])
    assert uplink.chunks_sent == 2 and uplink.rejected == 1 and uplink.last_reject == "quota exceeded"
    assert uplink.acked == 3
    assert [dict(m["props"]).get("chunk-index") for m in link.sent[7:]] == ["1", "2"]  # type: ignore[arg-type]
    assert set(uplink.shards_in_flight.values()) == {(blob, 1), (blob, 2)}
    uplink.on_puback(list(uplink.shards_in_flight), [])
    assert uplink.chunks_sent == 4 and uplink.shards_in_flight == {}
    assert blobs.pending(10) == []
    # ingest's ack completes the blob
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 3)]}, ingest="i",
                                                     blobs_complete=[blob])))
    assert uplink.blobs_completed == 1 and uplink.ingested == 3 and outbox.backlog()[0] == 0
    assert uplink.idle


def test_no_shards_while_disconnected_or_refused(tmp_path: Path) -> None:
    _, blobs, uplink, link = _setup(tmp_path, link=RecordingLink(accept=2))
    uplink.on_connected(False)  # the birth takes one of the two
    blobs.put(b"a" * 3000)
    link.connected = False
    uplink.blobs_added()
    assert len(link.sent) == 1
    link.connected = True
    uplink.blobs_added()
    assert len(link.sent) == 2 and len(uplink.shards_in_flight) == 1  # then the client refused


def test_held_chunk_ranges_are_never_sent_again(tmp_path: Path) -> None:
    _, blobs, uplink, link = _setup(tmp_path, shard_window=10)
    blob = blobs.put(b"b" * 4096)  # 4 chunks
    uplink.on_message(_message(ACK_TOPIC, encode_ack({}, ingest="i", blobs_held={blob: [(0, 1)]})))
    assert uplink.blobs_completed == 0
    uplink.on_connected(False)
    chunks = [dict(m["props"]).get("chunk-index") for m in link.sent if m["props"]]  # type: ignore[arg-type]
    assert chunks == [None, "2", "3"]  # the manifest, then only the chunks ingest lacks


def test_acks_from_other_topics_malformed_or_beyond_the_last_seq(tmp_path: Path) -> None:
    outbox, _, uplink, _ = _setup(tmp_path)
    outbox.append(_records(3))
    uplink.on_message(_message("lepton/v1/s/other/ack", encode_ack({"cam0": [(1, 3)]}, ingest="i")))
    assert uplink.ingested == 0 and uplink.bad_acks == 0
    uplink.on_message(_message(ACK_TOPIC, b"not json"))
    assert uplink.bad_acks == 1 and uplink.ingested == 0
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 5)], "ghost": [(1, 1)]}, ingest="i")))
    assert uplink.ingested == 3 and uplink.acks_ignored == 2 and uplink.bad_acks == 1
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(4, 9)]}, ingest="i")))
    assert uplink.acks_ignored == 3 and uplink.ingested == 3
    assert outbox.backlog()[0] == 0


def test_rejected_records_stay_unsent_and_go_again(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path)
    uplink.on_connected(False)
    uplink.committed(outbox.append(_records(2)))
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2"]
    uplink.on_puback([2], [(3, "not authorized")])
    assert uplink.rejected == 1 and uplink.last_reject == "not authorized" and uplink.acked == 1
    assert uplink.chunks_sent == 0
    uplink.on_disconnected("gone")
    uplink.requeued()
    uplink.on_connected(True)
    assert [m["payload"] for m in link.sent[4:]] == [b"cam0:2"]


def test_sent_marks_are_batched_until_the_window_drains(tmp_path: Path) -> None:
    outbox, _, uplink, _link = _setup(tmp_path)
    uplink.on_connected(False)
    uplink.committed(outbox.append(_records(4)))
    uplink.on_puback([2], [])
    assert sent_not_acked(outbox) == 0  # held back: three still in flight
    uplink.on_puback([3, 4, 5], [])
    assert sent_not_acked(outbox) == 4  # the window drained: flushed in one transaction
    assert uplink.acked == 4 and uplink.idle


@pytest.mark.parametrize("connected", [True, False])
def test_committed_records_wait_for_a_connection(tmp_path: Path, connected: bool) -> None:
    outbox, _, uplink, link = _setup(tmp_path)
    link.connected = connected
    uplink.committed(outbox.append(_records(1)))
    assert uplink.published == (1 if connected else 0)


def test_forged_acks_are_logged_once_a_minute_with_what_they_claimed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox, _, uplink, _ = _setup(tmp_path)
    outbox.append(_records(3))
    outbox.append(_records(1, "mic"))
    caplog.set_level("WARNING", logger="agent.uplink")
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 9)], "mic": [(1, 1)], "zz": [(1, 2)]},
                                                     ingest="i")))
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(5, 6)]}, ingest="i")))
    warnings = [r.getMessage() for r in caplog.records if "never assigned" in r.getMessage()]
    assert warnings == [
        f"ignoring 2 ack range(s) on {ACK_TOPIC} for seqs this device never assigned: cam0 up to 9 "
        "(last seq 3), zz up to 2 (last seq 0); 2 so far. Only ingest should write this topic (see "
        "the broker ACLs in docs/contract.md)"]
    assert uplink.acks_ignored == 3 and uplink.ingested == 4
    uplink._acks_ignored_logged -= 60.0  # a minute later (monotonic clock), the next one is logged
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(3, 4)]}, ingest="i")))
    assert len([r for r in caplog.records if "never assigned" in r.getMessage()]) == 2
    assert caplog.records[-1].getMessage().startswith(
        f"ignoring 1 ack range(s) on {ACK_TOPIC} for seqs this device never assigned: cam0 up to 4 "
        "(last seq 3); 4 so far.")


def test_counters_accumulate(tmp_path: Path) -> None:
    outbox, blobs, uplink, _ = _setup(tmp_path)
    outbox.append(_records(4))
    uplink.on_message(_message(ACK_TOPIC, b"{"))
    uplink.on_message(_message(ACK_TOPIC, b"[]"))
    assert uplink.bad_acks == 2
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 2)]}, ingest="i")))
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(3, 4)]}, ingest="i")))
    assert uplink.ingested == 4
    one, two = blobs.put(b"1" * 10), blobs.put(b"2" * 10)
    uplink.on_message(_message(ACK_TOPIC, encode_ack({}, ingest="i", blobs_complete=[one])))
    uplink.on_message(_message(ACK_TOPIC, encode_ack({}, ingest="i", blobs_complete=[two])))
    assert uplink.blobs_completed == 2
    uplink.on_puback([], [(90, "a")])
    uplink.on_puback([], [(91, "b")])
    assert uplink.rejected == 2 and uplink.last_reject == "b"


def test_no_link_no_crash_and_qos_is_the_records(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    uplink = Uplink(outbox, PublishWindow(5), birth=("b", b"x"), ack_topic=ACK_TOPIC)
    uplink.on_connected(False)  # not attached yet: nothing to subscribe or publish with
    link = RecordingLink()
    uplink.attach(link)  # type: ignore[arg-type]
    uplink.on_connected(False)
    assert link.subscribed == [(ACK_TOPIC, 1)] and link.sent[0]["qos"] == 1
    uplink.committed(outbox.append([PendingRecord("cam0", "t", lambda seq: b"q0", qos=0)]))
    assert link.sent[1]["qos"] == 0


def test_a_refused_publish_is_fetched_again(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path, link=RecordingLink(accept=2))
    uplink.on_connected(False)  # the birth: mid 1
    uplink.committed(outbox.append(_records(3)))
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1"]  # then the client refused
    assert uplink.published == 1
    link.accept = 10
    uplink.on_puback([2], [])
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2", b"cam0:3"]
    assert uplink.published == 3


def test_in_flight_records_are_not_published_twice(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path)
    first = outbox.append(_records(2))
    uplink.on_connected(False)  # fetched and published: in flight
    assert len(link.sent) == 3
    second = outbox.append(_records(1))
    uplink.committed([*first, *second])  # the ones in flight are skipped, the new one goes
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2", b"cam0:3"]
    uplink.requeued()  # the ack timeout: fetch from the start, but in flight is in flight
    assert len(link.sent) == 4
    uplink.on_puback([2], [])
    uplink.requeued()  # PUBACKed (not yet marked): flushed, so not fetched again
    assert len(link.sent) == 4 and sent_not_acked(outbox) == 1


def test_the_live_reserve_is_a_hard_limit(tmp_path: Path) -> None:
    outbox, _, uplink, _link = _setup(tmp_path, window=2)
    uplink.on_connected(False)
    uplink.committed(outbox.append(_records(2 + LIVE_RESERVE)))
    assert uplink.window.in_flight_count == 2 + LIVE_RESERVE
    uplink.committed(outbox.append(_records(1)))
    assert uplink.window.in_flight_count == 2 + LIVE_RESERVE and uplink.published == 2 + LIVE_RESERVE


def test_a_rejected_record_beside_shards_in_flight(tmp_path: Path) -> None:
    _, blobs, uplink, _link = _setup(tmp_path)
    uplink.on_connected(False)
    blobs.put(b"s" * 100)
    uplink.blobs_added()
    assert len(uplink.shards_in_flight) == 2
    uplink.on_puback([], [(99, "record refused")])  # not a shard's mid
    assert len(uplink.shards_in_flight) == 2 and uplink.rejected == 1
