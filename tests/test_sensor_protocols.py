"""Serial protocol plugins, windows, hysteresis and time alignment: the pure core."""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.sensors import (
    MAX_LINE,
    PROTOCOLS,
    AnomalyState,
    LatestReadings,
    Reading,
    Windower,
    crc16_ccitt,
    encode_binary_frame,
    make_parser,
    nmea_checksum,
)

CLOCK = itertools.count(1000).__next__  # a deterministic clock: one second per reading


def clock() -> float:
    return float(CLOCK())


def nmea(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body):02X}\r\n".encode()


GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


def test_nmea_gga_and_rmc_known_answers() -> None:
    parser = make_parser("nmea0183", "gps", clock)
    readings = parser.feed(nmea(GGA) + nmea(RMC) + nmea("GPGSV,1,1,00"))
    assert len(readings) == 2 and parser.errors == 0
    gga, rmc = readings[0].values, readings[1].values
    assert gga["lat"] == pytest.approx(48.1173) and gga["lon"] == pytest.approx(11.516667)
    assert gga["satellites"] == 8 and gga["altitude_m"] == 545.4 and gga["fix"] == 1
    assert rmc["speed_kn"] == 22.4 and rmc["course_deg"] == 84.4
    # The textbook checksum of that GGA sentence.
    assert nmea(GGA).endswith(b"*47\r\n")


def test_nmea_southern_western_and_no_fix() -> None:
    parser = make_parser("nmea0183", "gps", clock)
    south = "GPGGA,000001,3351.000,S,15112.000,W,1,05,1.0,10.0,M,0,M,,"
    (r,) = parser.feed(nmea(south))
    assert r.values["lat"] == pytest.approx(-33.85) and r.values["lon"] == pytest.approx(-151.2)
    (r,) = parser.feed(nmea("GPRMC,000001,V,,,,,,,230394,,"))
    assert r.values == {"fix": 0.0}


def test_nmea_bad_input_is_counted_never_raised() -> None:
    parser = make_parser("nmea0183", "gps", clock)
    good = nmea(GGA)
    bad_checksum = good.replace(b"*47", b"*48")
    half = good[:20]
    out = parser.feed(bad_checksum + b"garbage line\n" + b"\xff\xfe\xfd\n" + half)
    assert out == [] and parser.errors == 3
    assert parser.feed(good[20:]) != []  # the partial sentence completes on the next read
    assert parser.feed(b"$" + b"A" * (MAX_LINE + 10)) == []
    assert parser.feed(b"tail of the long line\n" + good)[0].values["fix"] == 1
    assert "longer than" in (parser.last_error or "") or parser.errors >= 4


def test_csv_columns_header_and_errors() -> None:
    parser = make_parser("csv", "vib0", clock, columns=["ax", "ay", "az"])
    out = parser.feed(b"ax,ay,az\n0.1,0.2,1.0\n0.1,x,1.0\n1,2\n0.3,0.4,0.9\r\n")
    assert [r.values for r in out] == [{"ax": 0.1, "ay": 0.2, "az": 1.0},
                                       {"ax": 0.3, "ay": 0.4, "az": 0.9}]
    assert parser.errors == 2
    unnamed = make_parser("csv", "t", clock)
    assert unnamed.feed(b"21.5,40\n")[0].values == {"c0": 21.5, "c1": 40.0}


def test_jsonl_numeric_fields() -> None:
    parser = make_parser("jsonl", "meter", clock)
    out = parser.feed(b'{"ts": 5, "kw": 1.5, "on": true, "id": "m1", "v": 230}\n[1]\n{bad\n')
    assert out[0].values == {"kw": 1.5, "v": 230.0}
    assert parser.errors == 2


def test_binary_frames_resync_after_garbage_and_bad_crc() -> None:
    parser = make_parser("binary", "imu", clock, columns=["x", "y"])
    frame = encode_binary_frame([1.5, -2.0])
    corrupt = bytearray(frame)
    corrupt[5] ^= 0xFF
    out = parser.feed(b"\x00\x13junk" + bytes(corrupt) + frame[:4])
    assert out == []
    out = parser.feed(frame[4:] + frame)
    assert [r.values for r in out] == [{"x": 1.5, "y": -2.0}] * 2
    assert parser.errors >= 2
    assert crc16_ccitt(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE check value


def test_unknown_protocol_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="binary, csv, jsonl, nmea0183"):
        make_parser("modbus", "x", clock)


def _certainly_malformed(protocol: str, line: bytes) -> bool:
    """A line the protocol's contract says is an error, judged without the parser's code."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    if protocol == "nmea0183":
        return "$" not in text
    if protocol == "jsonl":
        try:
            return not isinstance(json.loads(text), dict)
        except ValueError:
            return True
    cells = [c.strip() for c in text.split(",")]  # csv: numbers mixed with non-numbers

    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    return any(map(number, cells)) and not all(map(number, cells))


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(sorted(PROTOCOLS)), chunks=st.lists(st.binary(max_size=300),
                                                                     max_size=20))
def test_fuzzed_bytes_never_escape_and_every_bad_frame_is_counted(protocol: str,
                                                                  chunks: list[bytes]) -> None:
    parser = make_parser(protocol, "fuzz", clock, columns=None)
    readings = [r for chunk in chunks for r in parser.feed(chunk)]
    assert len(readings) == parser.frames
    stream = b"".join(chunks)
    if protocol == "binary":
        # Every byte is in a frame, still buffered, or skipped; skipping is always counted,
        # and each error skips at least one byte.
        framed = sum(2 + 1 + 4 * len(r.values) + 2 for r in readings)
        skipped = len(stream) - framed - len(parser._buffer)  # type: ignore[attr-defined]
        assert skipped >= 0
        assert (parser.errors > 0) == (skipped > 0)
        assert parser.errors <= skipped
        return
    *lines, tail = stream.split(b"\n")
    if max(len(line) for line in [*lines, tail]) > MAX_LINE:
        return  # the long-line rule: its own test above
    lines = [line.rstrip(b"\r") for line in lines]
    # Lines are independent: any split of the stream counts what each line counts alone ...
    frames = errors = 0
    for line in lines:
        alone = make_parser(protocol, "one", clock, columns=None)
        out = alone.feed(line + b"\n")
        assert len(out) + alone.errors <= 1  # a line is a reading, an error, or skipped
        frames, errors = frames + len(out), errors + alone.errors
    assert (parser.frames, parser.errors) == (frames, errors)
    # ... and every line the contract calls malformed is among the errors.
    bad = [line for line in lines if line.strip() and _certainly_malformed(protocol, line)]
    assert parser.errors >= len(bad)
    for line in bad:
        alone = make_parser(protocol, "one", clock, columns=None)
        assert alone.feed(line + b"\n") == [] and alone.errors == 1, line


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=2),
                       min_size=1, max_size=20), cut=st.integers(0, 400),
       noise=st.binary(max_size=40))
def test_binary_roundtrip_through_any_split(values: list[list[float]], cut: int, noise: bytes) -> None:
    stream = noise.replace(b"\xaa", b"") + b"".join(encode_binary_frame(v) for v in values)
    parser = make_parser("binary", "imu", clock, columns=["x", "y"])
    out = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    assert [[r.values["x"], r.values["y"]] for r in out] == [
        list(struct.unpack("<2f", struct.pack("<2f", *v))) for v in values]


def test_windower_resamples_and_hops() -> None:
    w = Windower(["a"], rate_hz=10, size=4, hop=2)
    windows = []
    for i in range(20):  # readings at 5 Hz: each value is held for two samples
        windows += w.add(Reading("s", 100 + i * 0.2, {"a": float(i)}))
    assert windows and all(len(win) == 4 for _, win in windows)
    ends = [t for t, _ in windows]
    assert all(b - a == pytest.approx(0.2) for a, b in itertools.pairwise(ends))
    assert windows[0][1] == [[0.0], [0.0], [1.0], [1.0]]
    # A gap (unplugged port) starts over instead of emitting stale windows.
    assert w.add(Reading("s", 200.0, {"a": 1.0})) == []


def test_anomaly_hysteresis() -> None:
    state = AnomalyState(on=0.7, off=0.4, min_windows=2)
    scores = [0.1, 0.8, 0.2, 0.8, 0.9, 0.6, 0.5, 0.3, 0.9, 0.35, 0.1]
    changes = [state.update(s) for s in scores]
    assert changes == [None, None, None, None, "start", None, None, None, None, None, "end"]
    with pytest.raises(ValueError):
        AnomalyState(on=0.3, off=0.5)


def test_latest_readings_within_the_window_only() -> None:
    latest = LatestReadings()
    latest.update(Reading("gps", 100.0, {"lat": 1.0}))
    latest.update(Reading("temp", 90.0, {"c": 20.0}))
    assert set(latest.around(["gps", "temp", "none"], 101.0, 2.0)) == {"gps"}


def test_sensor_and_event_records_match_their_schemas() -> None:
    """Records the sensor hub builds (NMEA without a model, vibration through the shipped
    bearing model into an anomaly) validate against sensor.v1 / event.v1, field by field."""
    from datetime import datetime

    from jsonschema import Draft202012Validator, ValidationError

    from agent.config.schema import SensorSection
    from agent.core.contract.topics import DeviceTopics
    from agent.schemas import load_schema
    from agent.service.sensors import SensorHub
    from agent.sources.vibration import VibrationSignal, csv_lines
    from agent.storage.outbox import PendingRecord
    from tests.conftest import ROOT

    emitted: list[PendingRecord] = []
    ticks = itertools.count()
    hub = SensorHub([
        SensorSection(uri="serial:///dev/ttyGPS?protocol=nmea0183&name=gps",
                      record_interval_s=1),
        SensorSection(uri="serial:///dev/ttyVIB?protocol=csv&name=vib0&columns=ax,ay,az",
                      model=ROOT / "models" / "lepton-bearing-anomaly", record_interval_s=0),
    ], DeviceTopics("site-1", "dev-1"), emit=emitted.extend, delegate="none",
        clock=lambda: 1_700_000_000 + next(ticks) / 400)
    hub.feed("gps", b"garbage\n" + nmea(GGA))
    signal = VibrationSignal(seed=5)
    for i in range(400):  # 400 Hz, 8 samples a chunk: healthy, then the bearing fails
        signal.fault = 0.0 if i < 150 else 0.8
        hub.feed("vib0", csv_lines(signal.samples(8)))

    sensor_schema = Draft202012Validator(load_schema("sensor.v1"))
    event_schema = Draft202012Validator(load_schema("event.v1"))
    bodies = [(r, json.loads(r.build(seq))) for seq, r in enumerate(emitted, start=1)]
    for record, body in bodies:
        schema = event_schema if record.kind == "event" else sensor_schema
        schema.validate(body)
        assert body["device"] == "dev-1" and body["site"] == "site-1"
        assert body["stream"] == record.stream
        assert datetime.fromisoformat(body["ts"].replace("Z", "+00:00")).year == 2023
    gps = [b for r, b in bodies if b["stream"] == "gps"]
    assert len(gps) == 1 and gps[0]["schema"] == {"id": "lepton.sensor", "version": 1}
    assert gps[0]["values"]["lat"] == pytest.approx(48.1173) and gps[0]["protocol"] == "nmea0183"
    assert gps[0]["counters"]["parse_errors"] == 1 and "score" not in gps[0]
    vib = [b for r, b in bodies if b["stream"] == "vib0"]
    assert vib and all(set(b["values"]) == {"ax", "ay", "az"} for b in vib)
    assert all(0 <= b["score"] <= 1 and b["model"]["name"] for b in vib)
    assert all(set(b["window"]["rms"]) == {"ax", "ay", "az"} for b in vib)
    assert not vib[0]["anomaly"] and any(b["anomaly"] for b in vib)
    events = [b for r, b in bodies if r.kind == "event"]
    assert events and events[0]["type"] == "anomaly_start"
    assert events[0]["source"] == "vib0" and events[0]["stream"] == "vib0.events"
    assert events[0]["label"] == "bearing_fault" and events[0]["score"] >= 0.7
    # The schemas constrain, not only parse: a wrong id, a missing field, an extra field fail.
    for broken in ({**gps[0], "schema": {"id": "lepton.event", "version": 1}},
                   {k: v for k, v in events[0].items() if k != "type"},
                   {**gps[0], "unexpected": 1}, {**vib[0], "score": 1.5}):
        schema = event_schema if broken["schema"]["id"] == "lepton.event" else sensor_schema
        with pytest.raises(ValidationError):
            schema.validate(broken)
