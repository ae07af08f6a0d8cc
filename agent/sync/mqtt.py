"""One MQTT 5 connection driven by the asyncio event loop, reconnecting until stopped.

paho-mqtt's socket is registered with the loop (paho's external-loop callbacks: the loop reads
and writes it when ready, a task runs the keepalive), so publishing, PUBACKs and the outbox
all run on one thread. A network thread beside the loop spent the time the durable path
needs on GIL hand-offs (bench sync: durable/raw 0.46 with a thread). Only the blocking
TCP/TLS connect runs in a worker thread. paho's own reconnect is off so the delay between
attempts follows the agent's capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.core.backoff import Backoff
from agent.core.uri import BrokerUrl
from agent.errors import ConfigError

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
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    manual_ack: bool = False
    will: Will | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 60.0


def key_credential_location() -> str:
    """Where the mutual-TLS client key is expected: ``$CREDENTIALS_DIRECTORY/tls-key``."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        return str(Path(directory) / "tls-key")
    return "$CREDENTIALS_DIRECTORY/tls-key (CREDENTIALS_DIRECTORY is not set here)"


def tls_context(ca_file: Path | None, cert_file: Path | None,
                key_file: Path | None) -> ssl.SSLContext:
    """The client's TLS context: ``ca_file`` (else the system CAs) verifies the broker; with
    ``cert_file``, mutual TLS with the key from the ``tls-key`` credential. Raises ConfigError
    naming the missing or unusable file, never a bare ``ssl.SSLError``."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        raise ConfigError("no such file" if missing else f"not a usable PEM CA certificate: {exc}",
                          file=str(ca_file), key="mqtt.tls_ca_file",
                          fix="give the PEM file of the CA that signed the broker's "
                              "certificate") from exc
    if cert_file is None:
        return context
    if key_file is None:
        raise ConfigError(
            f"mutual TLS ([mqtt] tls_cert_file = {cert_file}) needs the client key, and the "
            f"credential tls-key is missing or empty: expected {key_credential_location()}",
            key="mqtt.tls_cert_file",
            fix="give the unit LoadCredential=tls-key:/etc/lepton/credentials/tls.key (the PEM "
                "key of that certificate), or remove tls_cert_file for server-only TLS")
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except FileNotFoundError as exc:
        raise ConfigError("no such file", file=str(cert_file), key="mqtt.tls_cert_file",
                          fix="give the PEM file of this device's client certificate") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the client certificate {cert_file} with the key {key_file}: "
            f"{getattr(exc, 'reason', None) or exc}", key="mqtt.tls_cert_file",
            fix="tls_cert_file must be a PEM certificate and the tls-key credential its PEM "
                "private key (unencrypted); check they belong together") from exc
    return context


def describe_tls_failure(exc: ssl.SSLError, ca_file: Path | None,
                         cert_file: Path | None) -> str:
    """One line for a failed TLS handshake with the broker: what was refused, naming the file,
    and what to do. OpenSSL's reason code tells the cases apart; under TLS 1.3 the broker's
    verdict on the client certificate arrives as an alert on the first read after the
    handshake, so this is also called for errors read off an established socket."""
    reason = (getattr(exc, "reason", None) or "").upper()
    cert = f"the client certificate {cert_file}" if cert_file else "this client"
    issue = ("issue a new one (lepton-agent pki issue NAME --ca CA_DIR --out DIR), replace the "
             "certificate file and its key (the tls-key credential) and restart; the outbox is "
             "kept")
    if isinstance(exc, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(exc, "verify_message", None) or "verification failed"
        trusted = f"the CA file {ca_file}" if ca_file else "the system CAs"
        return (f"TLS: the broker's certificate is not trusted by {trusted}: {detail} (fix: give "
                "the CA that signed the broker's certificate as the CA file, and connect by a "
                "name or address the certificate lists)")
    if "EXPIRED" in reason:
        return f"TLS: the broker refused {cert}: it has expired (fix: {issue})"
    if "UNKNOWN_CA" in reason:
        return (f"TLS: the broker refused {cert}: it is not signed by a CA the broker trusts "
                f"(fix: use a certificate signed by the CA in the broker's cafile; {issue})")
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not cert_file):
        return ("TLS: the broker requires a client certificate and none was sent (fix: set the "
                "client certificate (agent: [mqtt] tls_cert_file; ingest: --tls-cert) and its "
                "key as the tls-key credential)")
    if "REVOKED" in reason:
        return f"TLS: the broker refused {cert}: it is revoked (fix: {issue})"
    if "BAD_CERTIFICATE" in reason or "UNSUPPORTED_CERTIFICATE" in reason:
        return (f"TLS: the broker refused {cert} ({reason.lower()}) (fix: check it is a client "
                f"certificate (extended key usage clientAuth) within its validity; {issue})")
    return f"TLS with the broker failed: {reason.lower() or exc}"


class _BufferedClient(paho.Client):
    """paho reads a packet with up to three ``recv`` calls (command byte, length, body), so a
    PUBACK costs three syscalls; on the event loop they serialize with everything else. This
    reads what the socket holds in one call and serves paho's reads from it."""

    _rbuf = b""
    _rpos = 0
    tls_failure: ssl.SSLError | None = None
    """A TLS error read off the socket (the broker's alert), which paho reports only as a
    lost connection."""

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            try:
                data = super()._sock_recv(max(bufsize, 65536))
            except ssl.SSLError as exc:
                if not isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
                    self.tls_failure = exc
                raise
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]

    @property
    def buffered(self) -> bool:
        """Bytes read off the socket that paho has not consumed yet."""
        return self._rpos < len(self._rbuf)

    def drop_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0


class MqttLink:
    """An MQTT 5 client on the event loop that reconnects by itself until stopped.

    ``start`` and ``stop`` are called on the loop; so are ``publish``, ``subscribe`` and
    ``ack``, and every handler method."""

    def __init__(self, broker: BrokerUrl, options: LinkOptions, handler: LinkHandler,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.options = options
        self.handler = handler
        self.loop = loop
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self._refusal: str | None = None
        """The TLS refusal already logged since the last connection that got through."""
        self._stopping = False
        self._backoff = Backoff(options.reconnect_initial_s, options.reconnect_max_s)
        self._acks: list[int] = []
        self._rejects: list[tuple[int, str]] = []
        self._acks_scheduled = False
        self._sock: socket.socket | None = None
        self._lost = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop_thread = 0
        self.client = self._make_client()

    def _make_client(self) -> _BufferedClient:
        o = self.options
        client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                                 protocol=paho.MQTTv5, reconnect_on_failure=False,
                                 manual_ack=o.manual_ack)
        # No limit inside paho: the uplink's window (plus its live reserve) bounds what is in
        # flight, and paho's own limit scans every message in flight on each PUBACK and would
        # hold the live reserve back in its queue.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if o.username:
            client.username_pw_set(o.username, o.password)
        if self.broker.tls:  # mutual TLS: the key comes from the credentials directory
            client.tls_set_context(tls_context(o.tls_ca_file, o.tls_cert_file, o.tls_key_file))
        if o.will:
            client.will_set(o.will.topic, o.will.payload, qos=o.will.qos, retain=o.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        return props

    # -- the socket on the event loop ------------------------------------------------------

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the loop: paho calls the socket callbacks from the connecting worker
        thread too."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed under a late connect
                self.loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.client.drop_buffer()  # nothing is read before the loop watches the new socket
        self._in_loop(self._watch, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch_writes, sock)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_writes, sock)

    def _watch(self, sock: socket.socket) -> None:
        if self._stopping:  # a connect that finished after stop()
            with contextlib.suppress(OSError):
                sock.close()
            return
        self._sock = sock
        # Nagle off: a command's reply (one small packet) otherwise waits for the broker's
        # delayed ACK of the last one, 40 ms on Linux. bench commands, 200 pings with the
        # broker's set_tcp_nodelay: p50 45.4 -> 1.5 ms. Interleaved A/B of bench sync's paths
        # (4 rounds each, loaded 2 cores): durable 3338 -> 3223/s and drain 4829 -> 4757/s
        # medians (within the rounds' spread, 1476-5119/s), a live record's commit-to-PUBACK
        # p50 19.8 -> 1.6 ms.
        with contextlib.suppress(OSError, AttributeError):  # not TCP (a test's socketpair)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, self._readable)

    def _unwatch(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):  # already closed
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
        self._lost.set()

    def _watch_writes(self, sock: socket.socket) -> None:
        if sock is self._sock:
            self.loop.add_writer(sock, self._writable)

    def _unwatch_writes(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    def _readable(self) -> None:
        # Bytes already read off the socket, in the client's buffer or (TLS decrypts whole
        # records) in the SSL object, are invisible to the selector: read until none are left.
        while self.client.loop_read() == paho.MQTT_ERR_SUCCESS:
            sock = self.client.socket()
            if sock is None or not (self.client.buffered or (
                    isinstance(sock, ssl.SSLSocket) and sock.pending())):
                break

    def _writable(self) -> None:
        self.client.loop_write()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.client.loop_misc()

    # -- connection lifecycle ---------------------------------------------------------------

    def _connect_blocking(self) -> None:
        self.client.connect(self.broker.host, self.broker.port,
                            keepalive=self.options.keepalive_s,
                            clean_start=self.options.clean_start,
                            properties=self._connect_properties())

    async def _run(self) -> None:
        while not self._stopping:
            self._lost.clear()
            try:
                await asyncio.to_thread(self._connect_blocking)
            except ssl.SSLError as exc:
                self._note_refusal(exc)
            except (OSError, ValueError) as exc:
                self._note_error(f"cannot connect to {self.broker}: {exc}")
            except Exception as exc:
                log.exception("mqtt link failure")
                self._note_error(f"unexpected MQTT failure: {exc!r}")
            else:
                keepalive = asyncio.create_task(self._keepalive(), name="mqtt-keepalive")
                try:
                    await self._lost.wait()
                finally:
                    keepalive.cancel()
            self._set_disconnected(self.last_error or "connection closed")
            if self._stopping:
                break
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._backoff.next_delay())

    def _note_refusal(self, exc: ssl.SSLError) -> None:
        """Log a TLS refusal once for as long as it lasts. Under TLS 1.3 the broker's verdict on
        the client certificate comes during the handshake or on the first read after it, and in
        the second case paho reports the same attempt once more as a lost connection ("Unspecified
        error"): neither a retry nor that echo is a new fact for the log."""
        text = f"{self.broker}: " + describe_tls_failure(
            exc, self.options.tls_ca_file, self.options.tls_cert_file)
        if text != self._refusal:
            log.warning("%s", text)
        self._refusal = self.last_error = text

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
            self._refusal = None  # a refusal after another failure is news again
        self.last_error = text

    def _set_disconnected(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self.loop.call_soon(self.handler.on_disconnected, reason)

    # -- paho callbacks (on the loop, inside loop_read / loop_write) -------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._note_error(f"broker {self.broker} refused the connection: {reason}")
            return
        self._backoff.reset()
        self.connects += 1
        self.connected = True
        self.last_error = self._refusal = None
        log.info("connected to %s (session present: %s)", self.broker, flags.session_present)
        self.loop.call_soon(self.handler.on_connected, bool(flags.session_present))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        tls_failure, self.client.tls_failure = self.client.tls_failure, None
        if tls_failure is not None:
            self._note_refusal(tls_failure)
        elif not self._stopping and self._refusal is None:
            self._note_error(f"disconnected from {self.broker}: {reason}")
        self._set_disconnected(str(reason))
        self._lost.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # PUBACKs read in one go reach the handler as one batch.
        if reason.is_failure:
            self._rejects.append((mid, str(reason)))
        else:
            self._acks.append(mid)
        if not self._acks_scheduled:
            self._acks_scheduled = True
            self.loop.call_soon(self._deliver_acks)

    def _deliver_acks(self) -> None:
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
            self.loop.call_soon(subscribed, not failed)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.loop.call_soon(self.handler.on_message, message)

    # -- the face the agent uses ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (on the running loop)."""
        self._loop_thread = threading.get_ident()
        self._task = self.loop.create_task(self._run(), name="mqtt-link")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None,
                correlation_data: bytes | None = None) -> int | None:
        """Hand a message to the client; its mid, or None when not connected.
        ``correlation_data``: the MQTT 5 property a command reply echoes."""
        if not self.connected:
            return None
        props = None
        if user_properties or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if user_properties:
                props.UserProperty = user_properties
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            return None
        return int(info.mid)

    def subscribe(self, topic: str, qos: int = 1, retain_as_published: bool = False) -> None:
        """``retain_as_published``: messages keep the retain flag they were published with
        (commands: a retained one is ignored even when it arrives live)."""
        if retain_as_published:
            self.client.subscribe(topic, options=SubscribeOptions(
                qos=qos, retainAsPublished=True))
        else:
            self.client.subscribe(topic, qos=qos)

    def ack(self, mid: int, qos: int) -> None:
        self.client.ack(mid, qos)

    async def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will): what is queued is written first, within
        ``timeout``; then the link stops."""
        self._stopping = True
        self._wake.set()
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:  # the broker never took the DISCONNECT: close it here
            sock, self._sock = self._sock, None
            self._unwatch(sock)
            with contextlib.suppress(OSError):
                sock.close()
        self._set_disconnected("stopped")
        # Handler calls already queued (the last PUBACKs, the disconnect) run before stop
        # returns, so the caller may close what they write to.
        await asyncio.sleep(0)
