"""The MQTT topic contract, version 1: ``lepton/v1/{site}/{device}/...``."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "lepton"
VERSION = "v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def check_segment(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid topic segment, else raise ValueError naming ``kind``."""
    if not _SEGMENT.match(value):
        raise ValueError(
            f"{kind} {value!r} is not a valid topic segment: use 1-64 characters "
            "from letters, digits, '_', '.', ':' and '-' (no '/', '+', '#' or spaces)"
        )
    return value


@dataclass(frozen=True)
class DeviceTopics:
    """Topic names for one device."""

    site: str
    device: str

    def __post_init__(self) -> None:
        check_segment("site", self.site)
        check_segment("device", self.device)

    @property
    def base(self) -> str:
        return f"{ROOT}/{VERSION}/{self.site}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    def results(self, stream: str) -> str:
        return f"{self.base}/results/{check_segment('stream', stream)}"

    def events(self, stream: str) -> str:
        return f"{self.base}/events/{check_segment('stream', stream)}"

    def counts(self, stream: str) -> str:
        """Where the ``lepton.count`` records of pipeline ``stream`` go."""
        return f"{self.base}/counts/{check_segment('stream', stream)}"

    def sensors(self, sensor: str) -> str:
        return f"{self.base}/sensors/{check_segment('sensor', sensor)}"

    def shards(self, blob: str) -> str:
        return f"{self.base}/shards/{check_segment('blob', blob)}"


RECORD_KINDS = ("results", "sensors", "events", "counts")
"""The topic kinds that carry seq-numbered records, each validated and stored by ingest."""


def results_subscription(group: str | None, kind: str = "results") -> str:
    """The subscription a backend ingest uses for ``kind`` (results, sensors, events, counts,
    shards); shared when ``group`` is given."""
    topic = f"{ROOT}/{VERSION}/+/+/{kind}/+"
    return f"$share/{check_segment('group', group)}/{topic}" if group else topic


@dataclass(frozen=True)
class ParsedTopic:
    """The parts of a device topic."""

    site: str
    device: str
    kind: str
    stream: str | None


def parse_topic(topic: str) -> ParsedTopic:
    """Split a ``lepton/v1/...`` topic into its parts, or raise ValueError saying why."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT:
        raise ValueError(f"not a {ROOT} topic: {topic!r}")
    if parts[1] != VERSION:
        raise ValueError(f"unsupported contract version {parts[1]!r} in {topic!r}")
    site, device, kind = parts[2], parts[3], parts[4]
    check_segment("site", site)
    check_segment("device", device)
    stream: str | None = None
    if kind in (*RECORD_KINDS, "shards"):
        if len(parts) != 6:
            raise ValueError(f"topic {topic!r} needs exactly one segment after {kind!r}")
        stream = check_segment("stream", parts[5])
    elif len(parts) != 5:
        raise ValueError(f"unexpected segments after {kind!r} in {topic!r}")
    return ParsedTopic(site, device, kind, stream)
