"""The uplink over a real outbox with a recording link: live results go ahead of a backlog, and
PUBACKed records are marked in batches without being published twice."""

from __future__ import annotations

from pathlib import Path

from agent.core.outbox import PublishWindow
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.uplink import LIVE_RESERVE, Uplink


class RecordingLink:
    """Stands in for MqttLink at the uplink's boundary: records what would go on the wire."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None) -> int:
        self.sent.append((len(self.sent) + 1, topic, payload))
        return len(self.sent)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        pass


def _records(n: int, tag: str) -> list[PendingRecord]:
    return [PendingRecord("cam0", "t/cam0", lambda seq, tag=tag: f"{tag}:{seq}".encode())
            for _ in range(n)]


def test_live_records_jump_the_backlog_and_nothing_goes_twice(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", until_ingested=False)
    outbox.append(_records(1000, "backlog"))
    uplink = Uplink(outbox, PublishWindow(100))
    link = RecordingLink()
    uplink.attach(link)  # type: ignore[arg-type]
    uplink.on_connected(False)
    assert len(link.sent) == 100  # the window is full of backlog
    uplink.committed(outbox.append(_records(3, "live")))
    assert [p for _, _, p in link.sent[100:]] == [b"live:1001", b"live:1002", b"live:1003"]
    # Drain: PUBACK everything in flight until the outbox is empty.
    while uplink.window.in_flight:
        uplink.on_puback(list(uplink.window.in_flight), [])
    uplink.flush_sent()
    payloads = [p for _, _, p in link.sent]
    assert len(payloads) == len(set(payloads)) == 1003  # each record published once
    assert outbox.backlog()[0] == 0


def test_live_reserve_is_bounded(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", until_ingested=False)
    outbox.append(_records(200, "backlog"))
    uplink = Uplink(outbox, PublishWindow(100))
    link = RecordingLink()
    uplink.attach(link)  # type: ignore[arg-type]
    uplink.on_connected(False)
    uplink.committed(outbox.append(_records(100, "live")))
    assert uplink.window.in_flight_count == 100 + LIVE_RESERVE
