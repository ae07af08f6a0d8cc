"""Serial sensor protocols, windows and anomaly state, without I/O.

Parsers are incremental: ``feed(bytes)`` returns the readings completed by those bytes and
never raises on bad input; every malformed frame is counted (``errors``) with the reason of
the last one (``last_error``). They are plugins, keyed by name in ``PROTOCOLS``.
"""

from __future__ import annotations

import json
import math
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

MAX_LINE = 1024


@dataclass(frozen=True)
class Reading:
    """Values read from one sensor at one time (``ts``: seconds since the epoch, host clock)."""

    sensor: str
    ts: float
    values: dict[str, float]


class ProtocolError(ValueError):
    """A frame that does not parse; counted by the parser, never raised out of ``feed``."""


class Parser:
    """Base of the protocol plugins: bytes in, readings out, errors counted."""

    name: ClassVar[str] = ""

    def __init__(self, sensor: str, clock: Callable[[], float], **options: object) -> None:
        self.sensor = sensor
        self.clock = clock
        self.errors = 0
        self.frames = 0
        self.last_error: str | None = None

    def feed(self, data: bytes) -> list[Reading]:
        raise NotImplementedError

    def _error(self, reason: str) -> None:
        self.errors += 1
        self.last_error = reason


class LineParser(Parser):
    """Newline-delimited protocols: lines over ``MAX_LINE`` bytes are dropped and counted."""

    def __init__(self, sensor: str, clock: Callable[[], float], **options: object) -> None:
        super().__init__(sensor, clock, **options)
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Reading]:
        out: list[Reading] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._buffer.clear()
                    if not self._discarding:
                        self._error(f"line longer than {MAX_LINE} bytes dropped")
                    self._discarding = True
                return out
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._error("line is not UTF-8 (wrong baud rate?)")
                continue
            try:
                values = self.parse_line(text)
            except ProtocolError as exc:
                self._error(str(exc))
                continue
            if values is not None:
                self.frames += 1
                out.append(Reading(self.sensor, self.clock(), values))

    def parse_line(self, line: str) -> dict[str, float] | None:
        raise NotImplementedError


def nmea_checksum(body: str) -> int:
    value = 0
    for ch in body:
        value ^= ord(ch)
    return value


def _nmea_coord(value: str, hemisphere: str, degree_digits: int) -> float:
    if not value:
        raise ProtocolError("empty coordinate")
    try:
        degrees = int(value[:degree_digits])
        minutes = float(value[degree_digits:])
    except ValueError:
        raise ProtocolError(f"bad coordinate {value!r}") from None
    if minutes >= 60:
        raise ProtocolError(f"bad coordinate {value!r}")
    coord = degrees + minutes / 60
    if hemisphere in ("S", "W"):
        return -coord
    if hemisphere not in ("N", "E"):
        raise ProtocolError(f"bad hemisphere {hemisphere!r}")
    return coord


class Nmea0183(LineParser):
    """NMEA 0183 sentences with their checksum verified; GGA (fix) and RMC (position, speed,
    course) give readings, other sentences are skipped."""

    name = "nmea0183"

    def parse_line(self, line: str) -> dict[str, float] | None:
        start = line.find("$")
        if start < 0:
            raise ProtocolError("no '$' sentence start")
        line = line[start:]
        star = line.rfind("*")
        if star < 0 or len(line) < star + 3:
            raise ProtocolError("no checksum")
        body = line[1:star]
        try:
            given = int(line[star + 1:star + 3], 16)
        except ValueError:
            raise ProtocolError("malformed checksum") from None
        if nmea_checksum(body) != given:
            raise ProtocolError(f"checksum mismatch in {body[:6]!r}")
        fields = body.split(",")
        kind = fields[0][2:] if len(fields[0]) == 5 else ""
        try:
            if kind == "GGA" and len(fields) >= 10:
                quality = int(fields[6] or 0)
                if quality == 0:
                    return {"fix": 0.0}
                return {"lat": _nmea_coord(fields[2], fields[3], 2),
                        "lon": _nmea_coord(fields[4], fields[5], 3),
                        "fix": float(quality), "satellites": float(fields[7] or 0),
                        "altitude_m": float(fields[9] or "nan")}
            if kind == "RMC" and len(fields) >= 9:
                if fields[2] != "A":
                    return {"fix": 0.0}
                return {"lat": _nmea_coord(fields[3], fields[4], 2),
                        "lon": _nmea_coord(fields[5], fields[6], 3),
                        "speed_kn": float(fields[7] or 0), "course_deg": float(fields[8] or 0)}
        except ValueError as exc:
            raise ProtocolError(f"bad {kind} field: {exc}") from None
        if kind in ("GGA", "RMC"):
            raise ProtocolError(f"{kind} sentence with {len(fields)} fields")
        return None


class Csv(LineParser):
    """Comma-separated numbers; ``columns`` names them (default ``c0, c1, ...``). A header line
    (no number in it) is skipped."""

    name = "csv"

    def __init__(self, sensor: str, clock: Callable[[], float], **options: object) -> None:
        super().__init__(sensor, clock, **options)
        columns = options.get("columns")
        self.columns = [str(c) for c in columns] if isinstance(columns, (list, tuple)) else None

    def parse_line(self, line: str) -> dict[str, float] | None:
        cells = [c.strip() for c in line.split(",")]
        try:
            numbers = [float(c) for c in cells]
        except ValueError:
            if not any(_is_number(c) for c in cells):
                return None  # a header
            raise ProtocolError(f"non-numeric field in {line[:40]!r}") from None
        if any(not math.isfinite(v) for v in numbers):
            raise ProtocolError("non-finite value")
        names = self.columns or [f"c{i}" for i in range(len(numbers))]
        if len(numbers) != len(names):
            raise ProtocolError(f"{len(numbers)} fields, expected {len(names)}")
        return dict(zip(names, numbers, strict=True))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class JsonLines(LineParser):
    """One JSON object per line; its numeric fields are the values (``ts`` excepted)."""

    name = "jsonl"

    def parse_line(self, line: str) -> dict[str, float] | None:
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"not JSON: {exc.msg}") from None
        if not isinstance(body, dict):
            raise ProtocolError("JSON line is not an object")
        values = {str(k): float(v) for k, v in body.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "ts"
                  and math.isfinite(float(v))}
        if not values:
            raise ProtocolError("no numeric fields")
        return values


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), as most sensor firmware computes it."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


SYNC = b"\xaa\x55"


def encode_binary_frame(values: Sequence[float]) -> bytes:
    """``AA 55 | len (u8) | len bytes of float32 LE | CRC-16 (u16 LE) over len and payload``."""
    payload = struct.pack(f"<{len(values)}f", *values)
    if len(payload) > 255:
        raise ValueError("at most 63 values per frame")
    head = bytes([len(payload)])
    return SYNC + head + payload + struct.pack("<H", crc16_ccitt(head + payload))


class BinaryCrc16(Parser):
    """Length-prefixed binary frames with CRC-16 (see ``encode_binary_frame``); resynchronises
    on the sync bytes after garbage or a bad CRC."""

    name = "binary"

    def __init__(self, sensor: str, clock: Callable[[], float], **options: object) -> None:
        super().__init__(sensor, clock, **options)
        columns = options.get("columns")
        self.columns = [str(c) for c in columns] if isinstance(columns, (list, tuple)) else None
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Reading]:
        out: list[Reading] = []
        buf = self._buffer
        buf += data
        while True:
            start = buf.find(SYNC)
            if start < 0:
                if len(buf) > 1:
                    self._skip(len(buf) - 1)
                return out
            if start:
                self._skip(start)
            if len(buf) < 3:
                return out
            length = buf[2]
            if len(buf) < 3 + length + 2:
                return out
            body = bytes(buf[2:3 + length])
            (crc,) = struct.unpack_from("<H", buf, 3 + length)
            if crc != crc16_ccitt(body) or length % 4:
                self._error("bad CRC" if crc != crc16_ccitt(body) else "length not a multiple of 4")
                del buf[:2]
                continue
            del buf[:3 + length + 2]
            numbers = struct.unpack(f"<{length // 4}f", body[1:])
            names = self.columns or [f"c{i}" for i in range(len(numbers))]
            if len(names) != len(numbers):
                self._error(f"{len(numbers)} values, expected {len(names)}")
                continue
            self.frames += 1
            out.append(Reading(self.sensor, self.clock(), dict(zip(names, numbers, strict=True))))

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self._error(f"{count} byte(s) of garbage skipped")


PROTOCOLS: dict[str, type[Parser]] = {p.name: p for p in (Nmea0183, Csv, JsonLines, BinaryCrc16)}


def make_parser(protocol: str, sensor: str, clock: Callable[[], float],
                **options: object) -> Parser:
    """The parser plugin for ``protocol``; ValueError naming the known ones otherwise."""
    try:
        cls = PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown sensor protocol {protocol!r}; known: "
                         f"{', '.join(sorted(PROTOCOLS))}") from None
    return cls(sensor, clock, **options)


@dataclass
class Windower:
    """Resamples one channel set to ``rate_hz`` (each sample is the latest reading at or before
    its time) and yields windows of ``size`` samples every ``hop`` samples."""

    channels: list[str]
    rate_hz: float
    size: int
    hop: int
    _samples: deque[list[float]] = field(default_factory=deque)
    _t0: float | None = None
    _k: int = 0
    _latest: list[float] | None = None
    _since_window: int = 0

    def add(self, reading: Reading) -> list[tuple[float, list[list[float]]]]:
        """Feed a reading; returns the windows completed, each with its end time."""
        if not all(c in reading.values for c in self.channels):
            return []
        values = [reading.values[c] for c in self.channels]
        out: list[tuple[float, list[list[float]]]] = []
        step = 1.0 / self.rate_hz
        if self._t0 is not None and reading.ts - (self._t0 + self._k * step) > 5.0:
            self._t0 = None  # a gap (unplugged port): start over, no stale windows
        if self._t0 is None or self._latest is None:
            self._samples.clear()
            self._since_window = 0
            self._t0, self._k, self._latest = reading.ts, 0, values
            return out
        while (t := self._t0 + self._k * step) < reading.ts - 1e-9:
            self._samples.append(self._latest)
            self._k += 1
            if len(self._samples) > self.size:
                self._samples.popleft()
            self._since_window += 1
            if len(self._samples) == self.size and self._since_window >= self.hop:
                self._since_window = 0
                out.append((t, [list(s) for s in self._samples]))
        self._latest = values
        return out


@dataclass
class AnomalyState:
    """Threshold with hysteresis: an anomaly starts after ``min_windows`` scores at or above
    ``on``, and ends after ``min_windows`` scores below ``off``. Returns "start"/"end"."""

    on: float = 0.7
    off: float = 0.4
    min_windows: int = 2
    active: bool = False
    _run: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.off <= self.on <= 1:
            raise ValueError("anomaly thresholds need 0 <= off <= on <= 1")

    def update(self, score: float) -> str | None:
        crossing = score < self.off if self.active else score >= self.on
        self._run = self._run + 1 if crossing else 0
        if self._run >= self.min_windows:
            self._run = 0
            self.active = not self.active
            return "start" if self.active else "end"
        return None


@dataclass
class LatestReadings:
    """The latest reading of each sensor, for attaching to frame records."""

    latest: dict[str, Reading] = field(default_factory=dict)

    def update(self, reading: Reading) -> None:
        self.latest[reading.sensor] = reading

    def around(self, sensors: Sequence[str], ts: float, window_s: float) -> dict[str, Reading]:
        """The chosen sensors' latest readings taken within ``window_s`` of ``ts``."""
        return {s: r for s in sensors if (r := self.latest.get(s)) is not None
                and abs(r.ts - ts) <= window_s}
