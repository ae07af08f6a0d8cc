"""Prometheus endpoint on localhost (off by default), fed from the cached health snapshot.

The endpoint has no authentication: bound to anything but loopback, whoever reaches the port
reads the device's figures. A port that cannot be bound is a warning, not a stop: the agent's
results matter more than its metrics."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.uri import is_loopback
from agent.errors import AgentError
from agent.service.snapshot import HealthSnapshot, PipelineStatus

# Every state a pipeline can be in (agent.service.pipelines.PipelineState): each pipeline has
# one lepton_pipeline_state series per state, 1 for the current one (Prometheus' state-set
# pattern), so a dashboard or alert matches state="failed" without knowing the others.
PIPELINE_STATES = ("starting", "running", "stopping", "stopped", "finished", "failed")


class MetricsUnavailable(AgentError):
    """The Prometheus endpoint could not be started on host:port."""

    def __init__(self, message: str, *, host: str, port: int, fix: str) -> None:
        super().__init__(f"Prometheus metrics on {host}:{port}: {message}", fix=fix)
        self.host = host
        self.port = port


def exposure_warning(host: str, port: int) -> str | None:
    """A warning when the endpoint is reachable from other machines, else None."""
    if not port or is_loopback(host):
        return None
    return (f"[metrics] prometheus_host = {host!r}: the endpoint http://{host}:{port}/metrics has "
            "no authentication, so anyone who can reach port "
            f"{port} reads this device's figures; keep 127.0.0.1 and scrape through a tunnel or "
            "a proxy with authentication, or restrict the port with a firewall")


class SnapshotCollector(Collector):
    """Exposes one snapshot as metrics named per Prometheus conventions (``lepton_*``)."""

    def __init__(self, snapshot: Callable[[], HealthSnapshot | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        if snap is None:
            return
        cap, inf = snap.stages.capture, snap.stages.inference
        q, ob, br, th = snap.queues.frames, snap.outbox, snap.broker, snap.thermal

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("lepton_frames_captured", "Frames read from the source", cap.frames)
        yield counter("lepton_frames_processed", "Frames run through the model", inf.frames)
        yield counter("lepton_frames_dropped", "Frames dropped by the frame queue's policy",
                      q.dropped)
        yield counter("lepton_frames_skipped_static", "Frames the motion gate skipped",
                      cap.skipped_static)
        yield counter("lepton_detections", "Objects detected", inf.detections)
        yield counter("lepton_inference_failures", "Failed invokes", inf.failures)
        yield counter("lepton_source_reconnects", "Times the source was reopened", cap.reconnects)
        yield counter("lepton_results_published", "Results acknowledged by the broker",
                      ob.published)
        yield counter("lepton_results_ingested", "Results acknowledged by ingest", ob.ingested)
        yield counter("lepton_acks_ignored", "Ack ranges for seqs this device never assigned "
                      "(a confused or forged ack)", ob.acks_ignored)
        yield counter("lepton_storage_errors", "Outbox commits that failed (full or failing "
                      "disk; results held in memory and retried)", ob.storage_errors)
        yield gauge("lepton_inference_fps", "Results per second over the last 10 s", snap.fps)
        yield gauge("lepton_frame_queue_depth", "Frames waiting for inference", q.depth)
        yield gauge("lepton_outbox_backlog_records", "Records not yet delivered", ob.backlog)
        yield gauge("lepton_outbox_oldest_unsent_seconds", "Age of the oldest undelivered record",
                    ob.oldest_unsent_s or 0.0)
        yield gauge("lepton_disk_free_bytes", "Free bytes on the state directory's filesystem",
                    ob.disk_free_bytes)
        yield gauge("lepton_broker_connected", "1 when connected to the broker",
                    1.0 if br.connected else 0.0)
        if th.temp_c is not None:
            yield gauge("lepton_cpu_temperature_celsius", "CPU temperature", th.temp_c)
        yield gauge("lepton_cpu_throttled", "1 when the SoC reports throttling",
                    1.0 if th.throttled else 0.0)
        yield gauge("lepton_thermal_level", "0 full rate; each level halves inference", th.level)
        yield gauge("lepton_uptime_seconds", "Seconds since the agent started", snap.uptime_s)
        yield from pipeline_metrics(snap.pipelines)


def pipeline_metrics(pipelines: tuple[PipelineStatus, ...]) -> Iterator[Metric]:
    """Each pipeline's series, labelled by its ``stream`` (the aggregate ``lepton_*`` series
    above are all pipelines together)."""
    state = GaugeMetricFamily("lepton_pipeline_state", "1 for the pipeline's current state "
                              "(starting, running, stopping, stopped, finished, failed)",
                              labels=["stream", "state"])
    info = GaugeMetricFamily("lepton_pipeline_info", "The pipeline's source and model "
                             "(always 1)", labels=["stream", "source", "model", "model_sha256"])
    fps = GaugeMetricFamily("lepton_pipeline_inference_fps", "The pipeline's results per "
                            "second over the last 10 s", labels=["stream"])
    depth = GaugeMetricFamily("lepton_pipeline_frame_queue_depth", "The pipeline's frames "
                              "waiting for inference", labels=["stream"])
    counters = {
        "frames_captured": CounterMetricFamily("lepton_pipeline_frames_captured", "Frames the "
                                               "pipeline read from its source", labels=["stream"]),
        "frames_processed": CounterMetricFamily("lepton_pipeline_frames_processed", "Frames the "
                                                "pipeline ran through its model",
                                                labels=["stream"]),
        "frames_dropped": CounterMetricFamily("lepton_pipeline_frames_dropped", "Frames the "
                                              "pipeline's frame queue dropped by its policy",
                                              labels=["stream"]),
        "detections": CounterMetricFamily("lepton_pipeline_detections", "Objects the pipeline "
                                          "detected", labels=["stream"]),
        "inference_failures": CounterMetricFamily("lepton_pipeline_inference_failures", "The "
                                                  "pipeline's failed invokes", labels=["stream"]),
        "source_reconnects": CounterMetricFamily("lepton_pipeline_source_reconnects", "Times "
                                                 "the pipeline's source was reopened",
                                                 labels=["stream"]),
    }
    for p in pipelines:
        known = PIPELINE_STATES if p.state in PIPELINE_STATES else (*PIPELINE_STATES, p.state)
        for value in known:
            state.add_metric([p.stream, value], 1.0 if p.state == value else 0.0)
        info.add_metric([p.stream, p.source, p.model, p.model_sha256 or ""], 1.0)
        fps.add_metric([p.stream], p.fps)
        depth.add_metric([p.stream], p.frames.depth)
        figures: tuple[tuple[str, float], ...] = (
            ("frames_captured", p.capture.frames), ("frames_processed", p.inference.frames),
            ("frames_dropped", p.frames.dropped), ("detections", p.inference.detections),
            ("inference_failures", p.inference.failures),
            ("source_reconnects", p.capture.reconnects))
        for key, figure in figures:
            counters[key].add_metric([p.stream], figure)
    yield state
    yield info
    yield fps
    yield depth
    yield from counters.values()


def start_metrics_server(host: str, port: int,
                         snapshot: Callable[[], HealthSnapshot | None]) -> Any:
    """Serve /metrics on host:port in a daemon thread; returns the server. Raises
    MetricsUnavailable naming host:port and what to do when it cannot listen there."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise MetricsUnavailable(f"unknown host ({exc.strerror})", host=host, port=port,
                                 fix="set [metrics] prometheus_host to an address of this "
                                     "board, e.g. 127.0.0.1") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsUnavailable(
                "the port is in use by another process", host=host, port=port,
                fix=f"choose another [metrics] prometheus_port, or find the process with "
                    f"`ss -ltnp 'sport = :{port}'` and stop it") from exc
        if exc.errno == errno.EACCES:
            raise MetricsUnavailable(
                "not allowed to listen there (ports below 1024 need privileges)", host=host,
                port=port, fix="choose a [metrics] prometheus_port of 1024 or more, e.g. 9100"
            ) from exc
        raise MetricsUnavailable(f"cannot listen: {exc.strerror or exc}", host=host, port=port,
                                 fix="set [metrics] prometheus_host to an address of this board "
                                     "(127.0.0.1, or 0.0.0.0 for every interface)") from exc
    return server
