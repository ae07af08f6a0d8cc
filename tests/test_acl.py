"""The broker ACL documented in docs/contract.md, run by a real mosquitto: a device writes only
under its own prefix and reads only its own ack; only ingest writes acks."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devtools.mosquitto import LocalBroker, find_mosquitto
from tests.conftest import ROOT

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(not find_mosquitto(), reason="needs mosquitto")]


def documented_acl() -> str:
    text = (ROOT / "docs" / "contract.md").read_text()
    found = re.search(r"## Acks and ACLs.*?```acl\n(.*?)```", text, re.S)
    assert found, "docs/contract.md lost its ACL example"
    return found.group(1)


_ids = itertools.count()


class Client:
    """One MQTT 5 client under a user name, recording PUBACK and SUBACK reasons and messages."""

    def __init__(self, broker: LocalBroker, user: str) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"acl-{user}-{next(_ids)}")
        self.client.username_pw_set(user)
        self.reasons: dict[int, Any] = {}
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self.client.on_publish = self._done
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._done(c, u, mid, reasons[0], p)
        self.client.on_message = self._message
        connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, reason, p: connected.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert connected.wait(60), f"{user} could not connect"

    def _done(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self.changed:
            self.reasons[mid] = reason
            self.changed.notify_all()

    def _message(self, c: Any, u: Any, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(message.topic)
            self.changed.notify_all()

    def _wait(self, mid: int) -> bool:
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.reasons, timeout=60)
            return not self.reasons[mid].is_failure

    def publish(self, topic: str) -> bool:
        """True when the broker took it (PUBACK success), False when not authorized."""
        return self._wait(self.client.publish(topic, b"{}", qos=1).mid)

    def subscribe(self, topic: str) -> bool:
        return self._wait(self.client.subscribe(topic, qos=1)[1])

    def wait_message(self, topic: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: topic in self.messages, timeout=60)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    (tmp_path / "lepton.acl").write_text(documented_acl())
    broker = LocalBroker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {tmp_path / 'lepton.acl'}\n")
    broker.start()
    yield broker
    broker.close()


def refused(broker: LocalBroker, user: str, action: str, topic: str) -> bool:
    """Whether the broker refuses ``user`` to publish or subscribe on ``topic``; each on a
    client of its own, since mosquitto 2.0 drops a client after refusing it a publish."""
    client = Client(broker, user)
    try:
        return not (client.publish(topic) if action == "publish" else client.subscribe(topic))
    finally:
        client.close()


def test_devices_write_only_their_own_prefix_and_only_ingest_writes_acks(
        acl_broker: LocalBroker) -> None:
    cam1, ingest = Client(acl_broker, "cam1"), Client(acl_broker, "lepton-ingest")
    try:
        assert ingest.subscribe("$share/ingest/lepton/v1/+/+/results/+")
        assert cam1.subscribe("lepton/v1/site-a/cam1/ack")
        for kind in ("status", "telemetry", "results/cam0", "sensors/imu", "events/imu",
                     "shards/" + "0" * 64, "diag"):
            assert cam1.publish(f"lepton/v1/site-a/cam1/{kind}"), kind
        ingest.wait_message("lepton/v1/site-a/cam1/results/cam0")
        # Another device's prefix, and any ack (its own included): refused.
        assert refused(acl_broker, "cam2", "publish", "lepton/v1/site-a/cam1/results/cam0")
        assert refused(acl_broker, "cam2", "publish", "lepton/v1/site-a/cam1/ack")
        assert refused(acl_broker, "cam1", "publish", "lepton/v1/site-a/cam1/ack")
        # A device may subscribe to another's topics (mosquitto checks reads on delivery) but
        # receives nothing of them: what mosquitto routed before its own ack came first.
        spy = Client(acl_broker, "cam2")
        try:
            spy.subscribe("lepton/v1/+/+/#")  # its own ack included
            assert cam1.publish("lepton/v1/site-a/cam1/results/cam0")
            assert ingest.publish("lepton/v1/site-a/cam1/ack")
            cam1.wait_message("lepton/v1/site-a/cam1/ack")  # ingest's ack reaches the device
            assert ingest.publish("lepton/v1/site-a/cam2/ack")
            spy.wait_message("lepton/v1/site-a/cam2/ack")
            assert set(spy.messages) == {"lepton/v1/site-a/cam2/ack"}
        finally:
            spy.close()
    finally:
        cam1.close()
        ingest.close()
