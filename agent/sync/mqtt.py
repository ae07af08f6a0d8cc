"""One MQTT 5 connection, kept up by its own thread, reporting into an asyncio loop.

paho-mqtt runs the socket in the ``mqtt-link`` thread; every callback reaches the event
loop only through ``call_soon_threadsafe``. paho's own reconnect is switched off so the
delay between attempts follows the agent's capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.backoff import Backoff
from agent.core.uri import BrokerUrl

log = logging.getLogger("agent.mqtt")


class LinkHandler(Protocol):
    """What the link reports; all methods run on the event loop."""

    def on_connected(self, session_present: bool) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...
    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None: ...
    def on_message(self, message: paho.MQTTMessage) -> None: ...


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class LinkOptions:
    client_id: str
    clean_start: bool = False
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_inflight: int = 100
    manual_ack: bool = False
    will: Will | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 60.0


class MqttLink:
    """An MQTT 5 client that reconnects by itself until stopped."""

    def __init__(self, broker: BrokerUrl, options: LinkOptions, handler: LinkHandler,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.options = options
        self.handler = handler
        self.loop = loop
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._backoff = Backoff(options.reconnect_initial_s, options.reconnect_max_s)
        self._acks: list[int] = []
        self._rejects: list[tuple[int, str]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        o = self.options
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                             protocol=paho.MQTTv5, reconnect_on_failure=False,
                             manual_ack=o.manual_ack)
        client.max_inflight_messages_set(o.max_inflight)
        client.max_queued_messages_set(0)
        if o.username:
            client.username_pw_set(o.username, o.password)
        if self.broker.tls:
            context = ssl.create_default_context(
                cafile=str(o.tls_ca_file) if o.tls_ca_file else None)
            if o.tls_cert_file:  # mutual TLS: the key comes from the credentials directory
                context.load_cert_chain(str(o.tls_cert_file),
                                        str(o.tls_key_file) if o.tls_key_file else None)
            client.tls_set_context(context)
        if o.will:
            client.will_set(o.will.topic, o.will.payload, qos=o.will.qos, retain=o.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        return props

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.connect(self.broker.host, self.broker.port,
                                    keepalive=self.options.keepalive_s,
                                    clean_start=self.options.clean_start,
                                    properties=self._connect_properties())
                self.client.loop_forever(retry_first_connection=False)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._note_error(f"cannot connect to {self.broker}: {exc}")
            except Exception as exc:
                log.exception("mqtt link failure")
                self._note_error(f"unexpected MQTT failure: {exc!r}")
            self._set_disconnected(self.last_error or "connection closed")
            if self._stop.is_set():
                break
            self._stop.wait(self._backoff.next_delay())

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    def _set_disconnected(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self.loop.call_soon_threadsafe(self.handler.on_disconnected, reason)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._note_error(f"broker {self.broker} refused the connection: {reason}")
            return
        self._backoff.reset()
        self.connects += 1
        self.connected = True
        self.last_error = None
        log.info("connected to %s (session present: %s)", self.broker, flags.session_present)
        self.loop.call_soon_threadsafe(self.handler.on_connected, bool(flags.session_present))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if not self._stop.is_set():
            self._note_error(f"disconnected from {self.broker}: {reason}")
        self._set_disconnected(str(reason))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._acks_lock:
            if reason.is_failure:
                self._rejects.append((mid, str(reason)))
            else:
                self._acks.append(mid)
            if self._acks_scheduled:
                return
            self._acks_scheduled = True
        self.loop.call_soon_threadsafe(self._deliver_acks)

    def _deliver_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            rejects, self._rejects = self._rejects, []
            self._acks_scheduled = False
        self.handler.on_puback(acks, rejects)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._note_error(f"broker {self.broker} refused a subscription: {', '.join(failed)}")
        subscribed = getattr(self.handler, "on_subscribed", None)
        if subscribed is not None:
            self.loop.call_soon_threadsafe(subscribed, not failed)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self.handler.on_message, message)

    def start(self) -> None:
        self._thread.start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None) -> int | None:
        """Hand a message to the client; its mid, or None when not connected."""
        if not self.connected:
            return None
        props = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = user_properties
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            return None
        return int(info.mid)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)

    def ack(self, mid: int, qos: int) -> None:
        self.client.ack(mid, qos)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and join the thread."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self._thread.join(timeout)
