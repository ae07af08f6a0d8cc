"""Serial sensors in the running agent: ports -> parsers -> latest readings, windows -> the
sensor model -> anomaly events, and records for the outbox.

Reader threads hand bytes to the event loop; everything after that runs on the loop (the
sensor models are small: ~0.1 ms per window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config.schema import SensorSection
from agent.core.contract.event import encode_event, event_body, event_stream
from agent.core.contract.result import iso_utc
from agent.core.contract.sensor import encode_sensor, sensor_body
from agent.core.contract.topics import DeviceTopics
from agent.core.sensors import AnomalyState, LatestReadings, Parser, Reading, Windower, make_parser
from agent.core.uri import SensorUri, parse_sensor_uri
from agent.inference.sensor_model import SensorModel
from agent.sources.serial import SerialReader
from agent.storage.outbox import PendingRecord

log = logging.getLogger("agent.sensors")


@dataclass
class SensorState:
    """One configured sensor and what it has done."""

    uri: SensorUri
    config: SensorSection
    parser: Parser
    reader: SerialReader
    model: SensorModel | None = None
    windower: Windower | None = None
    anomaly: AnomalyState | None = None
    readings: int = 0
    windows: int = 0
    last_score: float | None = None
    last_record_at: float = 0.0
    events: int = 0
    recent: list[Reading] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        latest = self.recent[-1] if self.recent else None
        return {"port": self.uri.port, "protocol": self.uri.protocol, "baud": self.uri.baud,
                "connected": self.reader.stats.connected, "bytes": self.reader.stats.bytes,
                "readings": self.readings, "parse_errors": self.parser.errors,
                "last_parse_error": self.parser.last_error,
                "reconnects": self.reader.stats.disconnects,
                "last_error": self.reader.stats.last_error,
                "latest": {"ts": iso_utc(latest.ts), "values": latest.values} if latest else None,
                "windows": self.windows, "score": self.last_score,
                "anomaly": self.anomaly.active if self.anomaly else None}


class SensorHub:
    """All serial sensors of the agent."""

    def __init__(self, sensors: list[SensorSection], topics: DeviceTopics, *,
                 emit: Callable[[list[PendingRecord]], None],
                 loop: asyncio.AbstractEventLoop | None = None, delegate: str = "xnnpack",
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.emit = emit
        self.loop = loop
        self.clock = clock
        self.latest = LatestReadings()
        self.sensors: dict[str, SensorState] = {}
        for cfg in sensors:
            uri = parse_sensor_uri(cfg.uri)
            if uri.name in self.sensors:
                raise ValueError(f"two sensors are named {uri.name!r}; give each a name= option")
            parser = make_parser(uri.protocol, uri.name, clock, columns=list(uri.columns) or None)
            state = SensorState(uri, cfg, parser, SerialReader(uri, self._bytes_handler(uri.name)))
            if cfg.model is not None:
                model = SensorModel.load(cfg.model, delegate=delegate)
                state.model = model
                state.windower = Windower(model.channels, model.rate_hz, model.window, model.hop)
                state.anomaly = AnomalyState(cfg.anomaly_on, cfg.anomaly_off,
                                             cfg.anomaly_min_windows)
            self.sensors[uri.name] = state

    def _bytes_handler(self, name: str) -> Callable[[bytes], None]:
        def handle(data: bytes) -> None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.feed, name, data)
            else:
                self.feed(name, data)
        return handle

    def start(self) -> None:
        for state in self.sensors.values():
            state.reader.start()

    def stop(self) -> None:
        for state in self.sensors.values():
            state.reader.stop()

    def feed(self, name: str, data: bytes) -> None:
        """Bytes from a port (event-loop thread): parse, window, score, emit records."""
        state = self.sensors[name]
        records: list[PendingRecord] = []
        for reading in state.parser.feed(data):
            state.readings += 1
            state.recent = [*state.recent[-9:], reading]
            self.latest.update(reading)
            if state.windower is not None:
                for end, window in state.windower.add(reading):
                    records += self._score(state, reading, end, window)
            interval = state.config.record_interval_s
            if state.model is None and (interval == 0
                                        or reading.ts - state.last_record_at >= interval):
                state.last_record_at = reading.ts
                records.append(self._sensor_record(state, reading))
        if records:
            self.emit(records)

    def _score(self, state: SensorState, reading: Reading, end: float,
               window: list[list[float]]) -> list[PendingRecord]:
        assert state.model is not None and state.anomaly is not None
        samples = np.asarray(window, np.float32)
        score = state.model.score(samples)
        state.windows += 1
        state.last_score = score
        change = state.anomaly.update(score)
        out: list[PendingRecord] = []
        interval = state.config.record_interval_s
        if change or interval == 0 or end - state.last_record_at >= interval:
            state.last_record_at = end
            rms = {c: round(float(math.sqrt(np.mean(samples[:, i] ** 2))), 5)
                   for i, c in enumerate(state.model.channels)}
            out.append(self._sensor_record(state, reading, extra={
                "window": {"end": iso_utc(end), "samples": len(window),
                           "rate_hz": state.model.rate_hz, "rms": rms},
                "score": round(score, 4), "anomaly": state.anomaly.active}))
        if change:
            state.events += 1
            log.warning("sensor %s: anomaly %s (score %.2f)", state.uri.name,
                        "started" if change == "start" else "ended", score)
            out.append(self._event_record(state, f"anomaly_{change}", end, score))
        return out

    def _model_ref(self, state: SensorState) -> dict[str, str]:
        assert state.model is not None
        m = state.model.model.manifest
        return {"name": m.name, "version": m.version, "sha256": m.sha256}

    def _sensor_record(self, state: SensorState, reading: Reading,
                       extra: dict[str, Any] | None = None) -> PendingRecord:
        name = state.uri.name
        body = sensor_body(
            device=self.topics.device, site=self.topics.site, stream=name, ts=reading.ts,
            protocol=state.uri.protocol, values=reading.values,
            counters={"bytes": state.reader.stats.bytes, "readings": state.readings,
                      "parse_errors": state.parser.errors},
            model=self._model_ref(state) if state.model is not None else None, extra=extra)

        def build(seq: int) -> bytes:
            return encode_sensor(body, seq=seq)

        return PendingRecord(name, self.topics.sensors(name), build, kind="result")

    def _event_record(self, state: SensorState, kind: str, ts: float,
                      score: float) -> PendingRecord:
        name = state.uri.name
        assert state.model is not None
        body = event_body(
            device=self.topics.device, site=self.topics.site, source=name, ts=ts, type=kind,
            label=state.model.model.manifest.sensor["anomaly_label"], score=score,
            model=self._model_ref(state))

        def build(seq: int) -> bytes:
            return encode_event(body, seq=seq)

        return PendingRecord(event_stream(name), self.topics.events(name), build, kind="event")

    def attach(self, names: list[str], ts: float, window_s: float) -> dict[str, Any]:
        """The chosen sensors' latest readings near ``ts``, for a frame record."""
        return {name: {"ts": iso_utc(r.ts), "age_s": round(ts - r.ts, 3), "values": r.values}
                for name, r in self.latest.around(names, ts, window_s).items()}

    def snapshot(self) -> dict[str, Any]:
        return {name: s.snapshot() for name, s in self.sensors.items()}

