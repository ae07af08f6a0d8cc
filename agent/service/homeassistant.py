"""Home Assistant MQTT discovery: the agent as an HA device, over its own broker link.

An optional profile (``[homeassistant] enabled``, off by default; docs/web.md). Through the
agent's MQTT link it publishes, retained, one discovery config per entity under
``{discovery_prefix}/{component}/{node_id}/{object_id}/config``:

- a ``sensor`` per pipeline for its fps, one per counting line of each pipeline (this run's
  crossings, per direction and class as attributes), one for the outbox backlog and one for
  the temperature;
- an ``update`` entity per pipeline for its model: the installed version, the version a model
  OTA deploys while it runs (``in_progress``, ``update_percentage`` from its phase).

Every entity's availability is the agent's retained ``status`` (``online`` at connect, the
last will's ``offline``), so HA shows the device unavailable when the agent is gone. The
states are published every ``interval_s`` from the typed health snapshot. Discovery goes out
at each connect, whenever the set of entities changes (a line added in the editor: removed
entities get an empty retained config, which deletes them in HA), and again when HA's birth
message on ``{discovery_prefix}/status`` says ``online``.

The payloads are built by pure functions (:func:`discovery`, :func:`sensor_state`,
:func:`update_state`) from a :class:`View`; :class:`HomeAssistant` gathers the view from the
running agent and publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import StorageError

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from agent.config import AgentConfig
    from agent.service.app import AgentApp
    from agent.service.pipelines import Pipeline
    from agent.sync.mqtt import MqttLink
    from agent.sync.uplink import Uplink

log = logging.getLogger("agent.homeassistant")

# The model OTA's phases in order (agent.service.ota): an update in progress is this far.
OTA_PHASES = ("receiving", "verifying", "installing", "warming", "self_test", "switching",
              "watching", "committing")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def node_id_of(device: str) -> str:
    """HA's node id for a device id: letters, digits, ``_`` and ``-`` (the rest become ``_``)."""
    return _UNSAFE.sub("_", device)


def _key(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON's quoting is valid Jinja)."""
    return json.dumps(text)


@dataclass(frozen=True)
class Node:
    """Who publishes and where."""

    device: str
    site: str
    node_id: str
    prefix: str  # the discovery prefix
    status_topic: str  # the agent's retained status (its LWT says offline)
    base: str  # the device's own topic prefix (lepton/v1/{site}/{device})
    board: str = ""
    version: str = __version__

    @property
    def state_topic(self) -> str:
        return f"{self.base}/ha/state"

    def update_topic(self, stream: str) -> str:
        return f"{self.base}/ha/model/{stream}"

    @property
    def birth_topic(self) -> str:
        return f"{self.prefix}/status"


@dataclass(frozen=True)
class PipelineView:
    """One pipeline as HA sees it."""

    stream: str
    fps: float
    model: str
    model_version: str | None
    model_sha256: str | None
    # this run's crossings per line: rule -> direction -> label -> count
    lines: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class OtaProgress:
    """A model OTA as the update entities show it: the one in progress (``deployment`` set)
    or how the last one ended."""

    deployment: str | None = None
    phase: str | None = None
    model: str | None = None
    version: int | str | None = None  # the signed bundle version it deploys, when known
    streams: tuple[str, ...] | None = None  # its target pipelines (None: not known, all)
    last_outcome: str | None = None
    last_reason: str | None = None

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None,
           snapshot: Mapping[str, Any] | None) -> OtaProgress | None:
        """From the OTA service's deployment record (``Deployment.status()``: ``phase``,
        ``outcome``, ``version``, ``streams``), else the health snapshot's ``ota`` object
        (``deployment``, ``state``, ``last_outcome``, ``last_reason``)."""
        if deployment:
            streams = deployment.get("streams")
            base = cls(model=deployment.get("model"), version=deployment.get("version"),
                       streams=tuple(streams) if streams else None)
            if deployment.get("outcome") is None:
                return replace(base, deployment=deployment.get("deployment"),
                               phase=deployment.get("phase"))
            return replace(base, last_outcome=deployment.get("outcome"),
                           last_reason=deployment.get("reason"))
        if snapshot:
            return cls(deployment=snapshot.get("deployment"), phase=snapshot.get("state"),
                       model=snapshot.get("model") if snapshot.get("deployment") else None,
                       last_outcome=snapshot.get("last_outcome"),
                       last_reason=snapshot.get("last_reason"))
        return None


@dataclass(frozen=True)
class View:
    """What the entities show, at one moment."""

    pipelines: tuple[PipelineView, ...]
    backlog: int
    oldest_unsent_s: float | None
    temperature_c: float | None
    ota: OtaProgress | None = None


def _device_block(node: Node) -> dict[str, Any]:
    block: dict[str, Any] = {"identifiers": [f"lepton_{node.node_id}"], "name": node.device,
                             "manufacturer": "Lepton Edge", "sw_version": node.version,
                             "suggested_area": node.site}
    if node.board:
        block["model"] = node.board
    return block


def _common(node: Node, object_id: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": f"lepton_{node.node_id}_{object_id}",
        "object_id": f"{node.node_id}_{object_id}",
        "device": _device_block(node),
        "origin": {"name": "lepton-agent", "sw_version": node.version},
        "availability": [{"topic": node.status_topic, "value_template": "{{ value_json.state }}",
                          "payload_available": "online", "payload_not_available": "offline"}],
    }


def discovery(node: Node, view: View) -> dict[str, bytes]:
    """Discovery topic -> retained config payload, for every entity of ``view``."""
    configs: dict[str, dict[str, Any]] = {}

    def sensor(object_id: str, name: str, template: str, **extra: Any) -> None:
        configs[f"{node.prefix}/sensor/{node.node_id}/{object_id}/config"] = {
            **_common(node, object_id, name), "state_topic": node.state_topic,
            "value_template": template, **extra}

    for p in view.pipelines:
        s = _key(p.stream)
        oid = node_id_of(p.stream)
        sensor(f"{oid}_fps", f"{p.stream} fps", f"{{{{ value_json.fps[{s}] }}}}",
               unit_of_measurement="fps", state_class="measurement", icon="mdi:speedometer",
               suggested_display_precision=1)
        for rule in sorted(p.lines):
            r = _key(rule)
            sensor(f"{oid}_{node_id_of(rule)}_count", f"{p.stream} {rule} count",
                   f"{{{{ value_json.lines[{s}][{r}].total }}}}", state_class="total_increasing",
                   icon="mdi:counter", json_attributes_topic=node.state_topic,
                   json_attributes_template=f"{{{{ value_json.lines[{s}][{r}] | tojson }}}}")
        configs[f"{node.prefix}/update/{node.node_id}/{oid}_model/config"] = {
            **_common(node, f"{oid}_model", f"{p.stream} model"),
            "state_topic": node.update_topic(p.stream), "device_class": "firmware",
            "entity_category": "diagnostic"}
    sensor("backlog", "Outbox backlog", "{{ value_json.backlog }}",
           unit_of_measurement="records", state_class="measurement", icon="mdi:tray-full",
           entity_category="diagnostic")
    sensor("oldest_unsent", "Oldest unsent record", "{{ value_json.oldest_unsent_s }}",
           unit_of_measurement="s", device_class="duration", state_class="measurement",
           entity_category="diagnostic")
    sensor("temperature", "Temperature", "{{ value_json.temperature_c }}",
           unit_of_measurement="°C", device_class="temperature", state_class="measurement",
           entity_category="diagnostic")
    return {topic: json.dumps(cfg, separators=(",", ":")).encode()
            for topic, cfg in configs.items()}


def sensor_state(view: View) -> bytes:
    """The sensors' shared state document (``{base}/ha/state``). A value HA cannot know yet
    is null, which its templates render as ``None``: the sensor's state is then unknown."""
    lines: dict[str, dict[str, Any]] = {}
    for p in view.pipelines:
        per: dict[str, Any] = {}
        for rule, directions in p.lines.items():
            by_direction = {d: sum(labels.values()) for d, labels in directions.items()}
            by_class: dict[str, int] = {}
            for labels in directions.values():
                for label, n in labels.items():
                    by_class[label] = by_class.get(label, 0) + n
            per[rule] = {"total": sum(by_direction.values()), **by_direction,
                         "by_class": dict(sorted(by_class.items()))}
        lines[p.stream] = per
    return json.dumps({
        "fps": {p.stream: round(p.fps, 2) for p in view.pipelines},
        "lines": lines,
        "backlog": view.backlog,
        "oldest_unsent_s": None if view.oldest_unsent_s is None else round(view.oldest_unsent_s, 1),
        "temperature_c": view.temperature_c,
    }, separators=(",", ":")).encode()


def _version(p: PipelineView) -> str:
    if p.model_version:
        return p.model_version
    return (p.model_sha256 or "unknown")[:12]


def update_state(p: PipelineView, ota: OtaProgress | None) -> bytes:
    """The model's ``update`` entity state: HA's JSON form (installed_version, latest_version,
    title, in_progress, update_percentage). While a model OTA for this pipeline runs,
    ``latest_version`` is the bundle version it deploys and the percentage follows its phase."""
    installed = _version(p)
    out: dict[str, Any] = {"installed_version": installed, "latest_version": installed,
                           "title": p.model, "in_progress": False, "update_percentage": None}
    targets = ota is not None and (ota.streams is None or p.stream in ota.streams)
    if ota is not None and targets and ota.deployment:
        phase = ota.phase or ""
        if ota.version is not None:
            out["latest_version"] = f"bundle {ota.version}"
        out["title"] = ota.model or p.model
        out["in_progress"] = True
        if phase in OTA_PHASES:
            out["update_percentage"] = round(100 * OTA_PHASES.index(phase) / len(OTA_PHASES))
        out["release_summary"] = f"model OTA {ota.deployment}: {phase}"[:255]
    elif ota is not None and targets and ota.last_outcome not in (None, "succeeded"):
        out["release_summary"] = (f"last model OTA {ota.last_outcome}"
                                  + (f": {ota.last_reason}" if ota.last_reason else ""))[:255]
    return json.dumps(out, separators=(",", ":")).encode()


def line_counts(pipeline: Pipeline) -> dict[str, dict[str, dict[str, int]]]:
    """This run's crossings of each of ``pipeline``'s lines (closed buckets and the open one):
    rule -> direction -> label -> count. Every configured line is there, zero or not."""
    spec = pipeline.spec.analytics
    out: dict[str, dict[str, dict[str, int]]] = (
        {r.name: {} for r in spec.lines} if spec is not None else {})
    stage = pipeline.analytics
    if stage is None:
        return out
    totals = dict(stage.totals)  # both are replaced whole by the inference thread
    for key, n in stage.open_counts.items():
        totals[key] = totals.get(key, 0) + n
    for (rule, kind, label, direction), n in totals.items():
        if kind == "line" and rule in out:
            labels = out[rule].setdefault(direction, {})
            labels[label] = labels.get(label, 0) + n
    return out


class HomeAssistant:
    """The ``homeassistant`` task: discovery and states over the agent's MQTT link."""

    def __init__(self, app: AgentApp, config: AgentConfig, link: MqttLink,
                 uplink: Uplink, node: Node, interval_s: float) -> None:
        self.app = app
        self.config = config
        self.link = link
        self.uplink = uplink
        self.node = node
        self.interval_s = interval_s
        self.sent: dict[str, bytes] = {}  # the discovery configs as last published
        self.updates: dict[str, bytes] = {}  # the update entities' retained states, likewise
        self.discoveries = 0  # how many times the whole discovery went out
        self.wake = asyncio.Event()

    @classmethod
    def build(cls, app: AgentApp, config: AgentConfig, link: MqttLink,
              uplink: Uplink) -> HomeAssistant:
        ha = config.homeassistant
        topics = app.parts.topics if app.parts is not None else None
        assert topics is not None
        node = Node(device=config.agent.device_id, site=config.agent.site,
                    node_id=ha.node_id or node_id_of(config.agent.device_id),
                    prefix=ha.discovery_prefix, status_topic=topics.status, base=topics.base,
                    board=config.agent.board or "")
        return cls(app, config, link, uplink, node, ha.interval_s)

    def attach(self) -> None:
        """Listen to HA's birth and publish at each connect (the uplink's hooks)."""
        self.uplink.listeners.append((self.node.birth_topic, self.on_birth))
        self.uplink.connected_hooks.append(self.on_connected)

    def on_connected(self) -> None:
        self.sent = {}  # everything again: the broker may have lost its retained messages
        self.wake.set()

    def on_birth(self, message: paho.MQTTMessage) -> None:
        if bytes(message.payload).strip() == b"online":
            log.info("Home Assistant is online: sending discovery again")
            self.sent = {}
            self.wake.set()

    def view(self) -> View:
        parts = self.app.parts
        assert parts is not None
        snap = parts.health.snapshot()
        pipelines = []
        for status in snap.pipelines:
            pipeline = parts.pipelines.get(status.stream)
            ref = pipeline.model_ref if pipeline is not None else None
            pipelines.append(PipelineView(
                stream=status.stream, fps=status.fps, model=ref.name if ref else status.model,
                model_version=ref.version if ref else None, model_sha256=status.model_sha256,
                lines=line_counts(pipeline) if pipeline is not None else {}))
        return View(pipelines=tuple(pipelines), backlog=snap.outbox.backlog,
                    oldest_unsent_s=snap.outbox.oldest_unsent_s,
                    temperature_c=snap.thermal.temp_c, ota=self._ota(snap))

    def _ota(self, snap: Any) -> OtaProgress | None:
        # The OTA service's deployment record has the version being deployed; the snapshot's
        # ota object (when the snapshot has one) says what is in progress otherwise.
        current = getattr(getattr(self.app.commands, "ota", None), "current", None)
        status: Callable[[], dict[str, Any]] | None = getattr(current, "status", None)
        slot = getattr(snap, "ota", None)
        plain = slot.to_json() if slot is not None and hasattr(slot, "to_json") else None
        return OtaProgress.of(status() if status is not None else None,
                              plain if isinstance(plain, Mapping) else None)

    def publish(self) -> None:
        """Discovery when it changed (or HA asked), then the states."""
        if not self.link.connected:
            return
        view = self.view()
        configs = discovery(self.node, view)
        if configs != self.sent:
            gone = set(self.sent) - set(configs)
            for topic in gone:  # an empty retained config deletes the entity in HA
                self.link.publish(topic, b"", qos=1, retain=True)
            for topic, payload in configs.items():
                self.link.publish(topic, payload, qos=1, retain=True)
            self.sent = configs
            self.updates = {}
            self.discoveries += 1
            log.info("Home Assistant discovery: %d entities under %s/+/%s (%d removed)",
                     len(configs), self.node.prefix, self.node.node_id, len(gone))
        self.link.publish(self.node.state_topic, sensor_state(view), qos=0)
        for p in view.pipelines:  # retained: published when it changes
            topic, state = self.node.update_topic(p.stream), update_state(p, view.ota)
            if self.updates.get(topic) != state:
                self.link.publish(topic, state, qos=1, retain=True)
                self.updates[topic] = state

    async def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                self.publish()
            except (sqlite3.Error, StorageError) as exc:  # the disk: tried again next time
                log.error("Home Assistant states not published: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)


def start_homeassistant(app: AgentApp, config: AgentConfig) -> HomeAssistant | None:
    """The task's object when ``[homeassistant] enabled`` and a broker is configured (else
    None; enabled without a broker is one warning line)."""
    if not config.homeassistant.enabled:
        return None
    parts = app.parts
    if parts is None or parts.link is None:
        log.warning("[homeassistant] enabled but no broker is configured ([mqtt] broker): "
                    "Home Assistant discovery is off")
        return None
    ha = HomeAssistant.build(app, config, parts.link, parts.uplink)
    ha.attach()
    return ha
