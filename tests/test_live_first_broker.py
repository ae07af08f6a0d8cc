"""Live-first publishing through a real mosquitto: a real agent with a large backlog in its
outbox publishes its new results ahead of the catch-up, as a subscriber sees them arrive."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.core.contract.topics import DeviceTopics
from agent.devtools.mosquitto import LocalBroker
from agent.storage.outbox import Outbox, PendingRecord
from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess, wait_for

pytestmark = pytest.mark.broker
BACKLOG = 20_000  # at the broker's pace a catch-up of seconds; a live result comes in ~0.1 s


class Arrivals:
    """A subscriber noting the seq of each result in the order the broker delivers them."""

    def __init__(self, broker: LocalBroker, topic: str) -> None:
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=0)
        self.client.loop_start()
        assert self._subscribed.wait(30), "the subscriber was not subscribed"

    def _on_message(self, client: paho.Client, userdata: object,
                    message: paho.MQTTMessage) -> None:
        with self._lock:
            self.seqs.append(int(json.loads(message.payload)["seq"]))

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self.seqs)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_live_results_overtake_a_backlog_through_a_real_broker(tmp_path: Path,
                                                              broker: LocalBroker) -> None:
    topics = DeviceTopics("test-site", "dev-live")
    topic = topics.results("cam0")
    state = tmp_path / "state"
    state.mkdir()
    # The backlog an outage leaves: records committed while no broker was reachable.
    backlog = Outbox(state / "outbox.db", until_ingested=False)
    backlog.append([PendingRecord("cam0", topic, lambda seq: json.dumps(
        {"seq": seq, "backlog": True}).encode()) for _ in range(BACKLOG)])
    backlog.close()

    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
device_id = "dev-live"
site = "test-site"
state_dir = "{state}"
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "synthetic://160x120@30"
[mqtt]
broker = "{broker.url}"
[outbox]
delivery = "broker"
""")
    arrivals = Arrivals(broker, topic)
    agent = AgentProcess(config)
    try:
        seqs = wait_for(lambda: (s := arrivals.snapshot()) and max(s) > BACKLOG + 10 and s,
                        "ten live results at the subscriber")
        first_live = next(i for i, seq in enumerate(seqs) if seq > BACKLOG)
        # Before the first live result, only part of the backlog had gone out: it did not wait.
        assert first_live < BACKLOG // 2, (first_live, len(seqs))
        live = [seq for seq in seqs if seq > BACKLOG]
        assert live == sorted(live)  # live results keep their own order
        summary = agent.stop()  # delivery = "broker": it stops once the broker has it all
        assert summary["backlog"] == 0 and summary["results_committed"] >= 10
        everything = set(range(1, BACKLOG + summary["results_committed"] + 1))
        wait_for(lambda: everything <= set(arrivals.snapshot()),
                 "every record, backlog and live, at the subscriber")
    finally:
        agent.kill()
        arrivals.close()
    got = arrivals.snapshot()
    assert len(got) == len(set(got))  # each record published once
