"""MqttLink on the event loop against a real mosquitto: PUBACKs come back in batches on the
loop, the link reconnects after the broker restarts, and stop() is prompt whether or not a
broker is there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator

import pytest

from agent.core.uri import parse_broker
from agent.devtools.mosquitto import LocalBroker, free_port
from agent.sync.mqtt import LinkOptions, MqttLink


class Recorder:
    """A LinkHandler that notes what reaches it and on which thread."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.batches = 0
        self.connected = 0
        self.disconnected: list[str] = []
        self.threads: set[int] = set()

    def on_connected(self, session_present: bool) -> None:
        self.threads.add(threading.get_ident())
        self.connected += 1

    def on_disconnected(self, reason: str) -> None:
        self.threads.add(threading.get_ident())
        self.disconnected.append(reason)

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        self.threads.add(threading.get_ident())
        self.acked.extend(acked)
        self.batches += 1

    def on_message(self, message: object) -> None:
        self.threads.add(threading.get_ident())


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def _link(url: str, handler: Recorder, loop: asyncio.AbstractEventLoop,
          backoff_s: tuple[float, float] = (0.05, 0.2)) -> MqttLink:
    return MqttLink(parse_broker(url), LinkOptions(client_id=f"link-test-{id(handler)}",
                                                  clean_start=True, reconnect_initial_s=backoff_s[0],
                                                  reconnect_max_s=backoff_s[1]), handler, loop)


@contextlib.asynccontextmanager
async def _connected_link(url: str) -> AsyncIterator[tuple[MqttLink, Recorder]]:
    """A started link, connected, and the Recorder it reports to; stopped on the way out."""
    rec = Recorder()
    link = _link(url, rec, asyncio.get_running_loop())
    link.start()
    try:
        await _until(lambda: link.connected)
        yield link, rec
    finally:
        await link.stop(2.0)


@pytest.mark.broker
def test_pubacks_come_back_on_the_loop_in_batches(broker: LocalBroker) -> None:
    async def main() -> Recorder:
        async with _connected_link(broker.url) as (link, rec):
            mids = [link.publish("t/link", b"x" * 200) for _ in range(2000)]
            assert None not in mids
            await _until(lambda: len(rec.acked) == 2000)
        assert sorted(rec.acked) == sorted(m for m in mids if m is not None)
        return rec

    rec = asyncio.run(main())
    assert rec.threads == {threading.get_ident()}  # every handler call ran on the loop
    assert rec.batches < 2000  # acks read together are delivered together


@pytest.mark.broker
def test_reconnects_after_the_broker_restarts(broker: LocalBroker) -> None:
    async def main() -> None:
        async with _connected_link(broker.url) as (link, rec):
            broker.kill()
            await _until(lambda: not link.connected)
            assert link.publish("t/link", b"while away") is None
            broker.start()
            await _until(lambda: link.connected and link.connects == 2)
            assert link.publish("t/link", b"back") is not None
            await _until(lambda: len(rec.acked) == 1)
        assert rec.connected == 2 and rec.disconnected

    asyncio.run(main())


def test_stop_is_prompt_with_no_broker() -> None:
    """stop() cuts short the wait before the next attempt: with an hour's backoff, a stop that
    waited it out would never return (the 60 s is only a hang guard)."""
    async def main() -> MqttLink:
        rec = Recorder()
        link = _link(f"mqtt://127.0.0.1:{free_port()}", rec, asyncio.get_running_loop(),
                     backoff_s=(3600.0, 3600.0))
        link.start()
        await _until(lambda: link.last_error is not None)  # refused; now waiting out the backoff
        stopping = asyncio.ensure_future(link.stop(2.0))
        done, _ = await asyncio.wait({stopping}, timeout=60)  # not cancelled: only observed
        assert stopping in done, "stop() is waiting out the reconnect backoff"
        stopping.result()
        return link

    link = asyncio.run(main())
    assert not link.connected and link.connects == 0
    assert link.last_error and "cannot connect" in link.last_error


def test_a_tls_refusal_is_logged_once_while_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    """A refused certificate is one log line however often the link retries and however the
    refusal arrives (the handshake's error, or the alert read after a TLS 1.3 handshake with
    paho's "Unspecified error" echo of the same attempt); after another failure it is news
    again. The broker's timing decides which path an attempt takes, so they are driven here
    through paho's callbacks in each order."""
    loop = asyncio.new_event_loop()
    try:
        link = _link("mqtt://127.0.0.1:1", Recorder(), loop)
        alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
        alert.reason = "TLSV1_ALERT_UNKNOWN_CA"

        def refused_after_handshake() -> None:
            link.client.tls_failure = alert
            link._on_disconnect(link.client, None, None, "Unspecified error", None)
            link._on_disconnect(link.client, None, None, "Unspecified error", None)

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

        with caplog.at_level(logging.WARNING, logger="agent.mqtt"):
            link._note_refusal(alert)  # during the handshake
            refused_after_handshake()
            link._note_refusal(alert)
            refused_after_handshake()
            assert len(warnings()) == 1, warnings()
            assert "not signed by a CA the broker trusts" in warnings()[0]
            assert link.last_error == warnings()[0]

            link._note_error("cannot connect to mqtt://127.0.0.1:1: [Errno 111] refused")
            refused_after_handshake()
            assert len(warnings()) == 3, warnings()
            assert "not signed by a CA" in warnings()[2]
    finally:
        loop.close()
