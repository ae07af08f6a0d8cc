"""Parsing of source, broker and sensor URIs given on the command line or in config."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from agent.core.contract.topics import check_segment
from agent.core.sensors import PROTOCOLS

SourceKind = Literal["file", "v4l2", "rtsp", "gst", "synthetic", "http"]

# pyserial's Serial.BAUDRATES (tests/test_serial_ports.py checks the copy): the rates a port takes.
STANDARD_BAUDS = (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400,
                  57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000,
                  2000000, 2500000, 3000000, 3500000, 4000000)

_SYNTHETIC = re.compile(r"^synthetic://(\d{1,5})x(\d{1,5})(?:@(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class SourceUri:
    """A capture source: what kind it is and what to open."""

    kind: SourceKind
    target: str
    width: int = 0
    height: int = 0
    fps: float = 0.0
    raw: str = ""

    @property
    def is_live(self) -> bool:
        """Live sources reconnect when lost; finite ones end."""
        return self.kind in ("v4l2", "rtsp", "gst", "http", "synthetic")


def parse_source(uri: str) -> SourceUri:
    """Parse a source URI; raise ValueError with the accepted forms when it is malformed."""
    text = uri.strip()
    if not text:
        raise ValueError("empty source; give a video file path, v4l2:///dev/video0, "
                         "rtsp://..., gst:PIPELINE or synthetic://WxH@FPS")
    if text.startswith("synthetic:"):
        m = _SYNTHETIC.match(text)
        if not m:
            raise ValueError(f"malformed synthetic source {text!r}; expected synthetic://WxH@FPS, "
                             "e.g. synthetic://640x480@15")
        width, height = int(m.group(1)), int(m.group(2))
        fps = float(m.group(3) or 15.0)
        if not (16 <= width <= 7680 and 16 <= height <= 4320) or not 0 < fps <= 240:
            raise ValueError(f"synthetic source {text!r} out of range: 16..7680 x 16..4320 "
                             "pixels, 0 < fps <= 240")
        return SourceUri("synthetic", text, width, height, fps, raw=text)
    if text.startswith("gst:"):
        pipeline = text[4:].strip()
        if not pipeline:
            raise ValueError("gst: source needs a GStreamer pipeline after 'gst:'")
        return SourceUri("gst", pipeline, raw=text)
    if text.startswith("v4l2:"):
        parts = urlsplit(text)
        device = parts.path or parts.netloc
        if not device:
            raise ValueError(f"v4l2 source {text!r} names no device; use v4l2:///dev/video0")
        return SourceUri("v4l2", device, raw=text)
    if text.startswith(("rtsp://", "rtsps://")):
        return SourceUri("rtsp", text, raw=text)
    if text.startswith(("http://", "https://")):
        return SourceUri("http", text, raw=text)
    if text.startswith("file://"):
        return SourceUri("file", urlsplit(text).path, raw=text)
    if "://" in text:
        raise ValueError(f"unknown source scheme in {text!r}; use a file path, v4l2://, "
                         "rtsp://, gst: or synthetic://")
    return SourceUri("file", text, raw=text)


@dataclass(frozen=True)
class BrokerUrl:
    """An MQTT broker address."""

    host: str
    port: int
    tls: bool
    raw: str

    def __str__(self) -> str:
        return self.raw


def redact_url(url: str) -> str:
    """``url`` as it may be shown: a password in it (``scheme://user:PASSWORD@host``) becomes
    ``***``. The user information runs to the last ``@`` of the authority, as for urlsplit,
    but a password holding ``/``, ``?`` or ``#`` is masked too."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def parse_broker(url: str) -> BrokerUrl:
    """Parse ``mqtt://host:port`` or ``mqtts://host:port`` (ports default to 1883/8883).

    Error messages show the URL with any password masked."""
    text = url.strip()
    shown = redact_url(text)
    if text.partition("://")[0] not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL {shown!r} must start with mqtt:// or mqtts://")
    if "@" in text.partition("://")[2]:  # user information, perhaps a password
        raise ValueError(f"broker URL {shown!r} carries credentials; put the password in "
                         "$CREDENTIALS_DIRECTORY/mqtt-password and the user in [mqtt] username")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"broker URL {shown!r} is malformed: {exc}") from exc
    if not parts.hostname:
        raise ValueError(f"broker URL {shown!r} names no host; e.g. mqtt://127.0.0.1:1883")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"broker URL {shown!r} has an invalid port") from exc
    tls = parts.scheme == "mqtts"
    return BrokerUrl(parts.hostname, port or (8883 if tls else 1883), tls, text)


@dataclass(frozen=True)
class SensorUri:
    """``serial:///dev/ttyUSB0?baud=9600&protocol=nmea0183&name=gps&columns=ax,ay,az``."""

    raw: str
    port: str
    baud: int
    protocol: str
    name: str
    columns: tuple[str, ...] = ()


def parse_sensor_uri(uri: str) -> SensorUri:
    """Parse a sensor URI; ValueError saying what is wrong."""
    parts = urlsplit(uri)
    if parts.scheme != "serial" or not parts.path:
        raise ValueError(f"sensor {uri!r}: use serial:///dev/ttyUSB0?baud=9600&protocol=nmea0183")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"baud", "protocol", "name", "columns"}
    if unknown:
        raise ValueError(f"sensor {uri!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                         "known: baud, protocol, name, columns")
    try:
        baud = int(query.get("baud", "9600"))
    except ValueError:
        raise ValueError(f"sensor {uri!r}: baud must be a number") from None
    if baud not in STANDARD_BAUDS:
        raise ValueError(f"sensor {uri!r}: baud {baud} is not a standard rate")
    protocol = query.get("protocol", "nmea0183")
    if protocol not in PROTOCOLS:
        raise ValueError(f"sensor {uri!r}: unknown protocol {protocol!r}; known: "
                         f"{', '.join(sorted(PROTOCOLS))}")
    name = query.get("name") or PurePosixPath(parts.path).name
    check_segment("sensor name", name)
    columns = tuple(c for c in query.get("columns", "").split(",") if c)
    return SensorUri(uri, parts.path, baud, protocol, name, columns)


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
