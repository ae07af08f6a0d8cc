"""The resend policy devices share (agent.sync.uplink.AckTimeout): the agent's uplink and
housekeeping wait for ingest's ack as long as twice the measured ack delay (Karn: records
published twice give no sample), back off while no ack comes, and never go under
``[outbox] ack_timeout_s`` or over ten times it."""

from __future__ import annotations

import time
from pathlib import Path

from agent.core.contract.ack import encode_ack
from agent.core.outbox import PublishWindow
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.uplink import AckTimeout, Uplink
from tests.ingest_support import message


def test_late_acks_stretch_the_timeout_and_fast_ones_bring_it_back() -> None:
    timer = AckTimeout(5.0, 60.0)
    assert timer.timeout_s == 5.0
    for _ in range(40):
        timer.sample(12.0)
    timer.acked(100.0)
    assert 23.9 <= timer.timeout_s <= 24.0  # twice the delay: the backend is 12 s behind
    for _ in range(40):
        timer.sample(0.1)
    timer.acked(200.0)
    assert timer.timeout_s == 5.0  # never under the configured timeout
    for _ in range(80):
        timer.sample(1000.0)
    timer.acked(300.0)
    assert timer.timeout_s == 60.0  # nor over the cap


def test_no_ack_doubles_it_once_per_timeout() -> None:
    timer = AckTimeout(2.0, 20.0)
    timer.resending(10.0)
    assert timer.timeout_s == 4.0
    timer.resending(11.0)  # the same round's other records: once per timeout
    assert timer.timeout_s == 4.0
    for now in (15.0, 20.0, 30.0, 50.0, 90.0):
        timer.resending(now)
    assert timer.timeout_s == 20.0
    timer.acked(91.0)  # an ack: back to what the delays say
    assert timer.timeout_s == 2.0
    timer.resending(92.0)  # an ack within the timeout: no backoff
    assert timer.timeout_s == 2.0


class Link:
    """The part of MqttLink the uplink's publish uses: a broker that takes everything."""

    connected = True

    def __init__(self) -> None:
        self.mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1, **kw: object) -> int:
        self.mid += 1
        return self.mid


def test_the_agent_uplink_measures_ingest_acks(tmp_path: Path) -> None:
    """Records published once and acknowledged 0.2 s later give the delay; a record
    published twice gives none; the uplink's timeout follows (base 0.1 s, so 2x the delay
    shows)."""
    outbox = Outbox(tmp_path / "outbox.db")
    uplink = Uplink(outbox, PublishWindow(10), ack_topic="ack")
    uplink.ack_timeout = AckTimeout(0.1, 30.0)
    uplink.link = Link()  # type: ignore[assignment]
    records = outbox.append([PendingRecord("cam0", "t/cam0", lambda seq: b"{}")
                             for _ in range(3)])
    assert [r.seq for r in records] == [1, 2, 3]
    for rec in records:
        assert uplink._publish_record(rec)
    assert uplink._publish_record(records[2])  # published again
    time.sleep(0.2)
    uplink.on_message(message("ack", encode_ack({"cam0": [(1, 3)]}, ingest="i")))
    assert uplink.ack_timeout.delay_s is not None and 0.2 <= uplink.ack_timeout.delay_s < 1.0
    assert uplink.ack_timeout.timeout_s == 2 * uplink.ack_timeout.delay_s
    outbox.close()
