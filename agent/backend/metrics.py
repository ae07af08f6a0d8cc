"""Prometheus endpoint of the ingest consumer (``--metrics-listen HOST:PORT``): what it received,
stored, dropped as duplicates and rejected, each reject reason a label of its own; its lag
(received, not committed: how many and the age of the oldest) and the batch commit time."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from agent.backend.ingest import IngestStats
from agent.errors import ConfigError


class IngestCollector(Collector):
    """Reads ingest's counters at each scrape (they live on the event loop's thread; a scrape
    reads plain ints, so no lock is needed)."""

    def __init__(self, stats: Callable[[], IngestStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        for name, doc, value in (
                ("received", "Messages received from the broker", s.received),
                ("stored", "Records stored for the first time", s.stored),
                ("duplicates", "Records already stored (redeliveries), not stored again",
                 s.duplicates),
                ("chunks", "Shard chunks received", s.chunks),
                ("blobs_completed", "Shard blobs reassembled, verified and written",
                 s.blobs_completed),
                ("acks_sent", "Ingest acknowledgements published to devices", s.acks_sent),
                ("connects", "Connections made to the broker", s.connects),
                ("store_outages", "Times the database went away (ingest held its messages "
                                  "unacknowledged and reconnected)", s.store_outages)):
            yield CounterMetricFamily(f"lepton_ingest_{name}", doc, value=value)
        # records/s is rate(lepton_ingest_stored_total[1m]); these tell how far behind it is.
        yield GaugeMetricFamily("lepton_ingest_lag_messages", "Messages received but not yet "
                                "committed (in the batch, or held while the database is away)",
                                value=s.lag_messages)
        yield GaugeMetricFamily("lepton_ingest_lag_oldest_seconds", "Age of the oldest message "
                                "received and not yet committed (0: none)",
                                value=round(s.lag_oldest_s(), 6))
        yield SummaryMetricFamily("lepton_ingest_batch_commit_seconds", "Time to commit a batch "
                                  "of records", count_value=s.commits, sum_value=s.commit_s)
        rejects = CounterMetricFamily("lepton_ingest_rejected", "Messages rejected (stored in "
                                      "rejects and acknowledged), by reason code",
                                      labels=["reason"])
        for reason, count in sorted(s.rejects.items()):
            rejects.add_metric([reason], count)
        yield rejects


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of ``--metrics-listen``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{value!r} is not HOST:PORT", key="--metrics-listen",
                          fix="e.g. 127.0.0.1:9101")
    return host.strip("[]"), int(port)


def serve_ingest_metrics(host: str, port: int, stats: Callable[[], IngestStats]) -> Any:
    """Serve /metrics on host:port in a daemon thread; a place it cannot listen is a
    ConfigError naming host:port and what to do (ingest has not started yet)."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(stats))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError, UnicodeError) as exc:  # ValueError: a NUL in the host
        reason = ("the port is in use by another process"
                  if getattr(exc, "errno", None) == errno.EADDRINUSE
                  else getattr(exc, "strerror", None) or str(exc))
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {reason}",
                          key="--metrics-listen",
                          fix="choose a free port of 1024 or more on an address of this "
                              "host, e.g. 127.0.0.1:9101") from exc
    return server
