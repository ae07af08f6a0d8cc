"""The build step: a validated config becomes the agent's parts, each built once per run.

Nothing here starts a thread, a task or a connection; the runtime (agent.service.app) starts
them in order. What every pipeline shares is built here; pipelines themselves are started
from their specs by :class:`~agent.service.pipelines.PipelineSet`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config import AgentConfig, Secrets
from agent.core.contract.status import encode_status
from agent.core.contract.topics import DeviceTopics
from agent.core.outbox import PublishWindow
from agent.core.thermal import ThermalGovernor
from agent.core.uri import parse_broker
from agent.inference.worker import MaskPolicy, SnapshotPolicy
from agent.pipeline.budget import ThreadBudget
from agent.service.health import RuntimeHealth
from agent.service.notify import Notifier
from agent.service.pipelines import PipelineParts, PipelineSet
from agent.service.snapshot import HealthSnapshot
from agent.service.tasks import (
    RESULT_SLOTS,
    Housekeeping,
    Monitor,
    OutboxWriter,
    Telemetry,
    Watchdog,
)
from agent.sources.thermal import SysfsThermal
from agent.storage.blobs import BlobStore
from agent.storage.mounts import ram_filesystem_warning
from agent.storage.outbox import Outbox
from agent.sync.mqtt import LinkOptions, MqttLink, Will
from agent.sync.uplink import Uplink

if TYPE_CHECKING:
    from agent.service.sensors import SensorHub

log = logging.getLogger("agent.app")


@dataclass(frozen=True)
class Components:
    """The parts of one run. Frozen: the assembly does not change while it runs (the parts'
    own state does; pipelines come and go inside ``pipelines``)."""

    topics: DeviceTopics
    outbox: Outbox
    blobs: BlobStore
    uplink: Uplink
    link: MqttLink | None
    governor: ThermalGovernor
    budget: ThreadBudget
    notifier: Notifier
    writer: OutboxWriter
    pipelines: PipelineSet
    health: RuntimeHealth
    hub: SensorHub | None
    telemetry: Telemetry
    monitor: Monitor
    housekeeping: Housekeeping
    watchdog: Watchdog


def _make_link(config: AgentConfig, secrets: Secrets, topics: DeviceTopics, uplink: Uplink,
               loop: asyncio.AbstractEventLoop) -> MqttLink | None:
    m = config.mqtt
    if not m.broker:
        return None
    will = Will(topics.status, encode_status(
        state="offline", device=config.agent.device_id, site=config.agent.site,
        wall_time=time.time(), extra={"reason": "connection lost"}))
    options = LinkOptions(
        client_id=m.client_id or f"lepton-{config.agent.site}-{config.agent.device_id}",
        session_expiry_s=m.session_expiry_s, keepalive_s=m.keepalive_s, username=m.username,
        password=secrets.mqtt_password, tls_ca_file=m.tls_ca_file,
        tls_cert_file=m.tls_cert_file, tls_key_file=secrets.tls_key_file,
        will=will, reconnect_initial_s=m.reconnect_initial_s,
        reconnect_max_s=m.reconnect_max_s)
    return MqttLink(parse_broker(m.broker), options, uplink, loop)


def build(config: AgentConfig, secrets: Secrets, loop: asyncio.AbstractEventLoop, *,
          started: float, birth: Callable[[HealthSnapshot], bytes],
          publish_snapshot: Callable[[HealthSnapshot], None],
          pipelines_changed: Callable[[], None], volatile: str | None = None) -> Components:
    """Build every shared part from ``config`` (opens the outbox; starts nothing).
    ``volatile``: why ``[agent] state_dir`` is a volatile stand-in for the configured one
    (agent.storage.volatile): its outbox's seqs start above any the real one gave out, and
    health says degraded with this reason."""
    cfg = config
    topics = DeviceTopics(cfg.agent.site, cfg.agent.device_id)
    until_ingested = cfg.outbox.delivery == "ingested"
    outbox = Outbox(cfg.agent.state_dir / "outbox.db", until_ingested=until_ingested,
                    budget_bytes=int(cfg.outbox.budget_bytes), priorities=cfg.outbox.priorities,
                    durability_interval_s=cfg.outbox.durability_interval_s,
                    fresh_seq_floor=volatile is not None)
    if volatile is None and (warning := ram_filesystem_warning(cfg.agent.state_dir)):
        log.warning("%s", warning)  # the agent runs on: a lab or a test may want just that
    sh = cfg.shards
    blobs = BlobStore(outbox, chunk_size=int(sh.chunk_size), expiry_s=sh.expiry_s)
    uplink = Uplink(outbox, PublishWindow(cfg.mqtt.publish_window), None,
                    ack_topic=topics.ack if until_ingested else None, blobs=blobs,
                    shard_topic=topics.shards, shard_window=sh.in_flight)
    link = _make_link(cfg, secrets, topics, uplink, loop)
    if link:
        uplink.attach(link)
    t = cfg.thermal
    governor = ThermalGovernor(t.max_temp_c, t.hysteresis_c, t.max_level, t.step_c)
    budget = ThreadBudget(cfg.thread_budget())
    writer = OutboxWriter(outbox=outbox, blobs=blobs, uplink=uplink,
                          device=cfg.agent.device_id, site=cfg.agent.site,
                          interval_s=cfg.outbox.commit_interval_ms / 1000, loop=loop)
    writer.storage.volatile = volatile

    def snapshots() -> SnapshotPolicy | None:
        return (SnapshotPolicy(sh.snapshot_interval_s, sh.snapshot_min_detections,
                               sh.snapshot_quality) if sh.snapshot_interval_s > 0 else None)

    def masks() -> MaskPolicy | None:
        return MaskPolicy(sh.mask_interval_s) if sh.mask_interval_s > 0 else None

    parts = PipelineParts(sink=writer, governor=governor, budget=budget,
                          preprocess=cfg.kernels.preprocess, snapshots=snapshots, masks=masks,
                          topics=topics, loop=loop, changed=pipelines_changed,
                          read_state=outbox.read_state, live=bool(cfg.web.listen))
    pipelines = PipelineSet(parts)
    notifier = Notifier()
    health = RuntimeHealth(
        device=cfg.agent.device_id, site=cfg.agent.site, pipelines=pipelines, outbox=outbox,
        uplink=uplink, link=link, governor=governor, started=started, broker=cfg.mqtt.broker,
        storage=writer.storage, results_held=lambda: len(writer.pending),
        result_slots=RESULT_SLOTS, stall_s=max(10.0, (notifier.watchdog_s or 30.0) / 2))
    hub: SensorHub | None = None
    if cfg.sensors:  # imported only when used: pyserial and the sensor code cost RSS
        from agent.service.sensors import SensorHub

        hub = SensorHub(cfg.sensors, topics, emit=writer.add_sensor_records, loop=loop,
                        delegate=cfg.model.delegate)
        writer.hub = hub
        health.sensors = hub
    return Components(
        topics=topics, outbox=outbox, blobs=blobs, uplink=uplink, link=link, governor=governor,
        budget=budget, notifier=notifier, writer=writer, pipelines=pipelines, health=health,
        hub=hub,
        telemetry=Telemetry(topics=topics, link=link, uplink=uplink, health=health, birth=birth,
                            interval_s=cfg.mqtt.telemetry_interval_s),
        monitor=Monitor(health=health, governor=governor, sensor=SysfsThermal(t.sysfs),
                        thermal=t, publish=publish_snapshot),
        housekeeping=Housekeeping(outbox=outbox, blobs=blobs, uplink=uplink, link=link,
                                  health=health, until_ingested=until_ingested,
                                  ack_timeout_s=cfg.outbox.ack_timeout_s,
                                  keep_delivered=cfg.outbox.keep_delivered),
        watchdog=Watchdog(notifier=notifier, health=health, stall_s=health.stall_s))
