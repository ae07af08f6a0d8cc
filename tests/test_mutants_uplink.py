"""The uplink over a real outbox and blob store with a recording link: what the mutation run
(``make mutants``) found untested: shard messages and their properties, acks from ingest
(records and blobs, malformed, forged), PUBACKs and rejections of shards, the birth message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.config.schema import OutboxSection
from agent.core.contract.ack import encode_ack
from agent.core.contract.shard import MANIFEST, OutgoingPart, shard_properties
from agent.core.outbox import PublishWindow
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync import uplink as uplink_module
from agent.sync.uplink import FIRST_SENT_KEPT, LIVE_RESERVE, AckTimeout, Uplink
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
        self.retain_as_published: dict[str, bool | None] = {}

    # Defaults unlike MqttLink's (qos 1), so a call that leaves qos out shows in what is recorded.
    def publish(self, topic: str, payload: bytes, qos: int = -1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None) -> int | None:
        if len(self.sent) >= self.accept:
            return None
        self.sent.append({"topic": topic, "payload": payload, "qos": qos, "retain": retain,
                          "props": user_properties})
        return len(self.sent)

    def subscribe(self, topic: str, qos: int = -1, retain_as_published: bool | None = None) -> None:
        self.subscribed.append((topic, qos))
        self.retain_as_published[topic] = retain_as_published


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


# --- What the mutation run of stop 14 found untested: commands and listeners, the ack delay
# samples (exact, on a manual clock), the resend timer's boundaries, batching of sent marks,
# the live path beside in-flight records, shards beside live records, and the rejection hint.


class Clock:
    """The uplink module's ``time`` (it reads only ``time.monotonic()``), set by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    manual = Clock()
    monkeypatch.setattr(uplink_module, "time", manual)
    return manual


def _ewma(samples: list[float]) -> float | None:
    """The smoothed delay the docstring of AckTimeout names: the first sample, then 1/8 of
    each new one (RFC 6298's alpha)."""
    delay: float | None = None
    for s in samples:
        delay = s if delay is None else delay * 7 / 8 + s / 8
    return delay


def test_commands_and_listeners_are_subscribed_and_handed_their_messages(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path)
    commands: list[paho.MQTTMessage] = []
    ha: list[paho.MQTTMessage] = []
    other: list[paho.MQTTMessage] = []
    uplink.command_filter = "lepton/v1/s/d/cmd/+"
    uplink.on_command = commands.append
    uplink.listeners = [("homeassistant/status", ha.append), ("lepton/v1/s/d/x/#", other.append)]
    hooks: list[int] = []
    uplink.connected_hooks.append(lambda: hooks.append(len(link.sent)))
    uplink.on_connected(False)
    assert link.subscribed == [(ACK_TOPIC, 1), ("lepton/v1/s/d/cmd/+", 1),
                               ("homeassistant/status", 1), ("lepton/v1/s/d/x/#", 1)]
    # commands keep their retain flag (a retained command is ignored even when it comes live)
    assert link.retain_as_published["lepton/v1/s/d/cmd/+"] is True
    assert hooks == [1]  # after the birth
    cmd = _message("lepton/v1/s/d/cmd/reboot", b"{}")
    status = _message("homeassistant/status", b"online")
    deep = _message("lepton/v1/s/d/x/y/z", b"1")
    for msg in (cmd, status, deep):
        uplink.on_message(msg)
    assert len(commands) == 1 and commands[0] is cmd
    assert len(ha) == 1 and ha[0] is status
    assert len(other) == 1 and other[0] is deep
    outbox.append(_records(2))
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 2)]}, ingest="i")))
    assert uplink.ingested == 2 and (len(commands), len(ha), len(other)) == (1, 1, 1)
    uplink.on_message(_message("lepton/v1/s/d/cmd/a/b", b"{}"))  # beyond the filter: no command
    assert len(commands) == 1 and uplink.bad_acks == 0


def test_commands_need_both_a_filter_and_a_handler(tmp_path: Path) -> None:
    """A filter without a handler (or a handler without a filter) hands nothing over: acks under
    the filter are still acks."""
    outbox, _, uplink, _link = _setup(tmp_path)
    outbox.append(_records(3))
    uplink.command_filter = "lepton/v1/s/d/#"  # the ack topic is under it; no handler set
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 1)]}, ingest="i")))
    assert uplink.ingested == 1
    commands: list[paho.MQTTMessage] = []
    uplink.command_filter = None
    uplink.on_command = commands.append
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(2, 3)]}, ingest="i")))
    assert uplink.ingested == 3 and commands == []


def test_an_uplink_without_blobs_takes_record_acks_and_resets_its_timer(
        tmp_path: Path, clock: Clock) -> None:
    outbox = Outbox(tmp_path / "o.db")
    uplink = Uplink(outbox, PublishWindow(5), ack_topic=ACK_TOPIC)
    outbox.append(_records(2))
    clock.now = 1234.5
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(1, 2)]}, ingest="i")))
    assert uplink.ingested == 2 and uplink.ack_timeout.last_ack == 1234.5
    uplink.ack_timeout.resending(1235.0)  # an ack half a second ago: no backoff
    assert uplink.ack_timeout.timeout_s == uplink.ack_timeout.base_s
    outbox.append(_records(1))
    uplink.on_message(_message(ACK_TOPIC, encode_ack({"cam0": [(3, 3)]}, ingest="i",
                                                     blobs_complete=["ab" * 32],
                                                     blobs_held={"cd" * 32: [(0, 1)]})))
    assert uplink.ingested == 3 and uplink.blobs_completed == 0  # no store: blob words ignored


def test_the_uplinks_own_timer_is_the_default_configs(tmp_path: Path) -> None:
    """Before Housekeeping sets one from ``[outbox] ack_timeout_s`` (cap: ten times it), the
    uplink's timer is what the default configuration gives."""
    base = OutboxSection().ack_timeout_s
    timer = Uplink(Outbox(tmp_path / "o.db"), PublishWindow(5)).ack_timeout
    assert (timer.base_s, timer.max_s, timer.timeout_s) == (base, 10 * base, base)


def test_the_resend_timer_at_its_boundaries() -> None:
    never = AckTimeout(2.0, 20.0)
    never.resending(2.5)  # no ack and no backoff yet, ever: a whole timeout is over
    assert never.timeout_s == 4.0
    no_delay = AckTimeout(0.5, 10.0)
    no_delay.acked(1.0)  # an ack before any sample: the configured least wait
    assert no_delay.timeout_s == 0.5
    timer = AckTimeout(2.0, 20.0)
    timer.acked(10.0)
    timer.resending(12.0)  # the last ack exactly one timeout ago: not yet a whole timeout without
    assert timer.timeout_s == 2.0
    timer = AckTimeout(2.0, 20.0)
    timer.resending(10.0)
    timer.resending(14.0)  # exactly one (doubled) timeout after the last doubling: again
    assert timer.timeout_s == 8.0
    timer.sample(1.0)
    timer.sample(9.0)
    assert timer.delay_s == _ewma([1.0, 9.0]) == 2.0


def test_sent_marks_are_flushed_once_a_window_of_them_is_held(tmp_path: Path) -> None:
    outbox, _, uplink, _link = _setup(tmp_path, window=3)
    uplink.on_connected(False)  # the birth is mid 1
    uplink.committed(outbox.append(_records(4)))  # mids 2-5: the window and one live slot
    uplink.on_puback([2, 3], [])
    assert sent_not_acked(outbox) == 0  # two held, two in flight
    uplink.on_puback([4], [])
    assert sent_not_acked(outbox) == 3  # a window's worth: written though one is in flight
    assert uplink.window.in_flight_count == 1


def test_the_backlog_continues_after_what_was_fetched(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path, window=2)
    outbox.append(_records(3))
    uplink.on_connected(False)  # birth (mid 1), then records 1 and 2 (mids 2, 3)
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2"]
    uplink.on_puback([2], [])  # one slot free (the mark still held): the next record goes
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2", b"cam0:3"]


def test_a_live_record_goes_past_one_already_in_flight(tmp_path: Path) -> None:
    outbox, _, uplink, link = _setup(tmp_path, window=2)
    backlog = outbox.append(_records(2))
    uplink.on_connected(False)  # the window is full with the backlog
    live = outbox.append(_records(1))
    uplink.committed([backlog[1], *live])  # the one in flight is skipped, the live one goes
    assert [m["payload"] for m in link.sent[1:]] == [b"cam0:1", b"cam0:2", b"cam0:3"]
    assert uplink.window.in_flight_count == 3


def test_shards_go_beside_live_records_when_nothing_is_unsent(tmp_path: Path) -> None:
    """Records published live, all of them, leave nothing unsent: the blob chunks need not wait
    for their PUBACKs (records always first means unsent records, not ones in flight)."""
    outbox, blobs, uplink, link = _setup(tmp_path, window=1, shard_window=2)
    uplink.on_connected(False)
    uplink.committed(outbox.append(_records(2)))  # beyond the window: the live reserve
    assert uplink.window.in_flight_count == 2 and not uplink.window.has_unsent
    blob = blobs.put(b"z" * 2000)
    uplink.blobs_added()
    assert [m["topic"] for m in link.sent[3:]] == [f"shards/{blob}"] * 2


def test_no_shards_without_a_store_a_topic_or_a_link(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    blobs = BlobStore(outbox, chunk_size=1024)
    blobs.put(b"q" * 100)
    not_attached = Uplink(outbox, PublishWindow(5), blobs=blobs, shard_topic=lambda b: b)
    not_attached.blobs_added()
    assert not_attached.shards_in_flight == {}
    for uplink in (Uplink(outbox, PublishWindow(5), blobs=blobs),
                   Uplink(outbox, PublishWindow(5), shard_topic=lambda b: b)):
        link = RecordingLink()
        uplink.attach(link)  # type: ignore[arg-type]
        uplink.on_connected(False)
        uplink.blobs_added()
        assert link.sent == [] and uplink.shards_in_flight == {} and uplink.idle


def test_the_shard_window_bounds_parts_in_flight_whatever_their_priority(tmp_path: Path) -> None:
    _, blobs, uplink, link = _setup(tmp_path, shard_window=1)
    low = blobs.put(b"l" * 100, record_class="telemetry")
    uplink.on_connected(False)
    assert [m["topic"] for m in link.sent[1:]] == [f"shards/{low}"]  # its manifest
    high = blobs.put(b"h" * 100, record_class="event")
    uplink.blobs_added()  # the window is full: the more urgent blob waits
    assert len(link.sent) == 2 and list(uplink.shards_in_flight.values()) == [(low, MANIFEST)]
    uplink.on_puback([2], [])
    assert [m["topic"] for m in link.sent[2:]] == [f"shards/{high}"]
    assert list(uplink.shards_in_flight.values()) == [(high, MANIFEST)]


def test_rejections_are_logged_with_the_acl_hint_only_when_not_authorized(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, _, uplink, _link = _setup(tmp_path)
    caplog.set_level("ERROR", logger="agent.uplink")
    uplink.on_puback([], [(90, "Not Authorized")])
    uplink.on_puback([], [(91, "quota exceeded"), (92, "packet too large")])
    assert [r.getMessage() for r in caplog.records] == [
        "broker rejected 1 publish(es): Not Authorized; they stay in the outbox; the broker's ACL "
        "refuses this device's topics: check that [agent] device_id equals the name in its "
        "certificate or MQTT user name",
        "broker rejected 2 publish(es): packet too large; they stay in the outbox"]


def _timed_uplink(tmp_path: Path) -> tuple[Outbox, Uplink]:
    outbox = Outbox(tmp_path / "o.db")
    uplink = Uplink(outbox, PublishWindow(10), ack_topic=ACK_TOPIC)
    uplink.ack_timeout = AckTimeout(0.001, 1e9)  # so that the timeout is twice the delay
    uplink.attach(RecordingLink())  # type: ignore[arg-type]
    return outbox, uplink


def _ack(uplink: Uplink, streams: dict[str, list[tuple[int, int]]]) -> None:
    uplink.on_message(_message(ACK_TOPIC, encode_ack(streams, ingest="i")))


def test_ack_delays_are_those_of_the_acked_records_published_once(
        tmp_path: Path, clock: Clock) -> None:
    outbox, uplink = _timed_uplink(tmp_path)
    sent_at: dict[tuple[str, int], float] = {}
    for t, stream in enumerate(["cam0"] * 5 + ["mic"], start=1):
        clock.now = float(t)  # each committed and published live at its own time
        (rec,) = outbox.append(_records(1, stream))
        uplink.committed([rec])
        sent_at[(stream, rec.seq)] = clock.now
    assert uplink.published == 6
    (again,) = outbox.fetch_unsent(0, 10)[3:4]
    assert (again.stream, again.seq) == ("cam0", 4)
    assert uplink._publish_record(again)  # published twice: which one was acked is unknown
    clock.now = 10.0
    _ack(uplink, {"cam0": [(3, 3)]})
    samples = [10.0 - sent_at[("cam0", 3)]]
    assert uplink.ack_timeout.delay_s == _ewma(samples) == 7.0
    assert uplink.ack_timeout.timeout_s == 14.0
    clock.now = 20.0
    _ack(uplink, {"cam0": [(1, 5)]})  # seq 3 again (no second sample), seq 4 twice published
    samples += [20.0 - sent_at[("cam0", s)] for s in (1, 2, 5)]
    assert uplink.ack_timeout.delay_s == pytest.approx(_ewma(samples), rel=1e-12)
    clock.now = 30.0
    _ack(uplink, {"mic": [(1, 1)]})
    samples.append(30.0 - sent_at[("mic", 1)])
    assert uplink.ack_timeout.delay_s == pytest.approx(_ewma(samples), rel=1e-12)
    assert uplink.ack_timeout.timeout_s == pytest.approx(2 * _ewma(samples), rel=1e-12)  # type: ignore[operator]
    assert uplink.ingested == 6


def test_ack_ranges_wider_than_the_publish_times_kept(tmp_path: Path, clock: Clock) -> None:
    """A range spanning more seqs than publish times are kept is looked up among those kept:
    the same samples, those of its own stream within the range, both ends included."""
    outbox, uplink = _timed_uplink(tmp_path)
    cam = outbox.append(_records(4200))
    mic = outbox.append(_records(10, "mic"))
    published = [cam[s - 1] for s in (1, 2, 100, FIRST_SENT_KEPT + 1, FIRST_SENT_KEPT + 2, 4150)]
    published += [mic[s - 1] for s in (1, 2, 5)]
    sent_at: dict[tuple[str, int], float] = {}
    for t, rec in enumerate(published, start=1):
        clock.now = float(t)
        assert uplink._publish_record(rec)
        sent_at[(rec.stream, rec.seq)] = clock.now
    clock.now = 100.0
    _ack(uplink, {"cam0": [(1, FIRST_SENT_KEPT + 1)]})  # hi - lo == FIRST_SENT_KEPT
    samples = [100.0 - sent_at[("cam0", s)] for s in (1, 2, 100, FIRST_SENT_KEPT + 1)]
    assert uplink.ack_timeout.delay_s == pytest.approx(_ewma(samples), rel=1e-12)
    clock.now = 200.0
    _ack(uplink, {"cam0": [(FIRST_SENT_KEPT + 2, 4150)], "mic": [(1, 5)]})  # the rest, narrow
    samples += [200.0 - sent_at[k] for k in [("cam0", FIRST_SENT_KEPT + 2), ("cam0", 4150),
                                             ("mic", 1), ("mic", 2), ("mic", 5)]]
    assert uplink.ack_timeout.delay_s == pytest.approx(_ewma(samples), rel=1e-12)
    assert uplink.ingested == 4150 + 5  # cam0 1-4150, mic 1-5


def test_only_the_latest_publish_times_are_kept(tmp_path: Path, clock: Clock) -> None:
    outbox, uplink = _timed_uplink(tmp_path)
    records = outbox.append(_records(FIRST_SENT_KEPT + 1))
    for rec in records:
        clock.now = float(rec.seq)
        assert uplink._publish_record(rec)
    clock.now = 10_000.0
    _ack(uplink, {"cam0": [(1, 1)]})  # the oldest publish time went to make room
    assert uplink.ack_timeout.delay_s is None
    _ack(uplink, {"cam0": [(2, 2)]})
    assert uplink.ack_timeout.delay_s == 10_000.0 - 2.0


def test_a_flood_of_forged_acks_is_one_line_a_minute(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    outbox, _, uplink, _ = _setup(tmp_path)
    outbox.append(_records(1))
    caplog.set_level("WARNING", logger="agent.uplink")
    for now in (1000.0, 1030.0, 1059.5, 1060.0, 1100.0, 1120.0):
        clock.now = now
        _ack(uplink, {"cam0": [(1, 7)]})
    lines = [r.getMessage() for r in caplog.records if "never assigned" in r.getMessage()]
    # at 1000, then exactly a minute later (1060), not at 1100 but at 1120 (a minute after 1060)
    assert [line.split("; ")[1].split(".")[0] for line in lines] == [
        "1 so far", "4 so far", "6 so far"]
