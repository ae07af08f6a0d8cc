"""Home Assistant MQTT discovery (docs/web.md): the payloads, built without a loop, and the
agent on a real mosquitto seen by a subscriber as Home Assistant would see it.

The entities' templates are rendered by real Jinja (the language HA evaluates them in, with
its ``tojson`` filter) against the state documents the agent published, so a template that
names a key the state lacks fails here as it would in HA. The counts are checked against an
independent reference: the crossing events the agent publishes on its own events topic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devtools.mosquitto import LocalBroker
from agent.devtools.rig import write_agent_config
from agent.service.homeassistant import (
    Node,
    OtaProgress,
    PipelineView,
    View,
    discovery,
    node_id_of,
    sensor_state,
    update_state,
)
from tests.conftest import DEFAULT_MODEL, run_cli
from tests.e2e import AgentProcess, wait_for
from tests.test_web_support import Client, free_port

jinja2 = pytest.importorskip("jinja2")

SITE, DEVICE = "ha-site", "cam.ha:1"
BASE = f"lepton/v1/{SITE}/{DEVICE}"
NODE = node_id_of(DEVICE)
MANIFEST = json.loads((DEFAULT_MODEL / "manifest.json").read_text())


def render(template: str, payload: bytes) -> str:
    """``template`` as HA renders a value template: ``value`` and ``value_json`` bound."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value=payload.decode(),
                                            value_json=json.loads(payload))


def check_config(topic: str, cfg: dict[str, Any], status_topic: str) -> None:
    """The fields HA's MQTT discovery needs for an entity tied to a device."""
    component, node, object_id, last = topic.split("/")[-4:]
    assert last == "config" and node == NODE and component in ("sensor", "update"), topic
    assert cfg["unique_id"].startswith(f"lepton_{NODE}_") and object_id in cfg["unique_id"]
    assert cfg["state_topic"] and "+" not in cfg["state_topic"] and "#" not in cfg["state_topic"]
    assert cfg["device"]["identifiers"] == [f"lepton_{NODE}"]
    assert cfg["device"]["name"] == DEVICE and cfg["device"]["sw_version"]
    (availability,) = cfg["availability"]
    assert availability["topic"] == status_topic
    assert availability["payload_available"] == "online"
    assert availability["payload_not_available"] == "offline"
    assert cfg["name"]


# -- the payloads, without a loop ----------------------------------------------------------------

NODE_ = Node(device=DEVICE, site=SITE, node_id=NODE, prefix="homeassistant",
             status_topic=f"{BASE}/status", base=BASE, board="rpi5")
VIEW = View(
    pipelines=(
        PipelineView("cam0", 14.93, "lepton-vehicles-tiny", "2026.12.01", "ab" * 32,
                     {"mid": {"in": {"car": 3, "truck": 1}, "out": {"car": 2}}, "empty": {}}),
        PipelineView("cam.1", 0.0, "other", None, "cd" * 32, {})),
    backlog=17, oldest_unsent_s=2.345, temperature_c=None)


def test_node_id_keeps_only_what_ha_accepts() -> None:
    assert node_id_of("cam.ha:1") == "cam_ha_1"
    assert node_id_of("dev-01_A") == "dev-01_A"


def test_discovery_configs_render_against_the_state() -> None:
    configs = {t: json.loads(p) for t, p in discovery(NODE_, VIEW).items()}
    for topic, cfg in configs.items():
        check_config(topic, cfg, f"{BASE}/status")
    ids = [c["unique_id"] for c in configs.values()]
    assert len(ids) == len(set(ids)) == 9  # 2 fps, 2 lines, 2 models, backlog, oldest, temp
    state = sensor_state(VIEW)
    shown = {c["name"]: render(c["value_template"], state)
             for c in configs.values() if c["state_topic"] == NODE_.state_topic}
    assert shown == {"cam0 fps": "14.93", "cam.1 fps": "0.0", "cam0 mid count": "6",
                     "cam0 empty count": "0", "Outbox backlog": "17",
                     "Oldest unsent record": "2.3", "Temperature": "None"}
    mid = next(c for c in configs.values() if c["name"] == "cam0 mid count")
    assert mid["state_class"] == "total_increasing"
    attrs = json.loads(render(mid["json_attributes_template"], state))
    assert attrs == {"total": 6, "in": 4, "out": 2, "by_class": {"car": 5, "truck": 1}}
    temp = next(c for c in configs.values() if c["name"] == "Temperature")
    assert temp["device_class"] == "temperature" and temp["unit_of_measurement"] == "°C"
    models = [c for t, c in configs.items() if t.startswith("homeassistant/update/")]
    assert {c["state_topic"] for c in models} == {f"{BASE}/ha/model/cam0",
                                                  f"{BASE}/ha/model/cam.1"}


def test_update_state_follows_an_ota() -> None:
    cam0 = VIEW.pipelines[0]
    idle = json.loads(update_state(cam0, None))
    assert idle == {"installed_version": "2026.12.01", "latest_version": "2026.12.01",
                    "title": "lepton-vehicles-tiny", "in_progress": False,
                    "update_percentage": None}
    no_version = json.loads(update_state(VIEW.pipelines[1], None))
    assert no_version["installed_version"] == "cd" * 6
    record = {"deployment": "d1", "model": "lepton-vehicles-tiny", "version": 7,
              "phase": "warming", "outcome": None, "streams": ["cam0"]}
    ota = OtaProgress.of(record, None)
    running = json.loads(update_state(cam0, ota))
    assert running["in_progress"] is True and running["latest_version"] == "bundle 7"
    assert 0 < running["update_percentage"] < 100
    other = json.loads(update_state(VIEW.pipelines[1], ota))  # not a target of that OTA
    assert other["in_progress"] is False
    failed = json.loads(update_state(cam0, OtaProgress.of(
        {**record, "outcome": "rolled_back", "reason": "fps fell"}, None)))
    assert failed["in_progress"] is False and "rolled_back: fps fell" in failed["release_summary"]
    # the health snapshot's ota object: nothing in progress, nothing to say
    quiet = OtaProgress.of(None, {"slot": None, "model": None, "version": None,
                                  "deployment": None, "state": None, "last_outcome": None,
                                  "last_reason": None})
    assert json.loads(update_state(cam0, quiet)) == idle
    busy = OtaProgress.of(None, {"slot": "a", "model": "m", "version": 3, "deployment": "d2",
                                 "state": "watching", "last_outcome": None, "last_reason": None})
    shown = json.loads(update_state(cam0, busy))
    assert shown["in_progress"] is True and shown["update_percentage"] == 75


# -- the agent on a real broker ------------------------------------------------------------------

@dataclass
class Watcher:
    """A subscriber to HA's discovery prefix and the device's topics, as HA would be."""

    broker: LocalBroker
    messages: list[tuple[float, str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.subscribe([("homeassistant/#", 1), (f"{BASE}/#", 1)])
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), message.topic, bytes(message.payload),
                                  bool(message.retain)))

    def on(self, topic_filter: str, since: float = 0.0) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for at, t, p, _ in self.messages
                    if at >= since and paho.topic_matches_sub(topic_filter, t)]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1][1] if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(broker: LocalBroker, topic_filter: str) -> dict[str, bytes]:
    """What a client subscribing now gets as retained messages."""
    got: dict[str, bytes] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(c: Any, u: Any, message: paho.MQTTMessage) -> None:
        if message.retain:
            got[message.topic] = bytes(message.payload)

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    time.sleep(1.0)  # retained messages come right after the SUBACK; none is expected later
    client.loop_stop()
    client.disconnect()
    return got


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "road.mp4"
    out = run_cli("synth-clip", str(path), "--frames", "300")
    assert out.returncode == 0, out.stderr
    return path


@pytest.fixture
def ha_agent(broker: LocalBroker, tmp_path: Path, clip: Path) -> Iterator[AgentProcess]:
    config = write_agent_config(tmp_path / "agent.toml", device_id=DEVICE, site=SITE,
                                state_dir=tmp_path / "state", broker_url=broker.url)
    config.write_text(config.read_text() + f"""
[source]
uri = "{clip}"
loop = true
pace = "realtime"

[[lines]]
name = "mid"
points = [[0.5, 0.0], [0.5, 1.0]]

[homeassistant]
enabled = true
interval_s = 1
""")
    # the web console on loopback (no users: no login) to change the lines as an installer would
    port = free_port()
    config.write_text(config.read_text().replace('[web]\nlisten = ""',
                                                  f'[web]\nlisten = "127.0.0.1:{port}"'))
    proc = AgentProcess(config)
    proc.web_port = port  # type: ignore[attr-defined]
    yield proc
    if proc.running:
        proc.stop(60)
    assert "Traceback" not in proc.log, proc.log[-3000:]


@pytest.mark.broker
@pytest.mark.slow
def test_discovery_states_and_rediscovery_on_a_real_broker(broker: LocalBroker,
                                                            ha_agent: AgentProcess) -> None:
    watcher = Watcher(broker)
    try:
        prefix = f"homeassistant/+/{NODE}/+/config"
        wanted = {f"homeassistant/sensor/{NODE}/{x}/config" for x in
                  ("cam0_fps", "cam0_mid_count", "backlog", "oldest_unsent", "temperature")}
        wanted.add(f"homeassistant/update/{NODE}/cam0_model/config")
        wait_for(lambda: wanted <= {t for t, _ in watcher.on(prefix)},
                 "the discovery configs", timeout=90)

        # retained, so HA gets them whenever it subscribes; valid HA fields
        kept = retained(broker, "homeassistant/#")
        assert wanted <= set(kept), sorted(kept)
        configs = {t: json.loads(p) for t, p in kept.items()}
        for topic, cfg in configs.items():
            check_config(topic, cfg, f"{BASE}/status")
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        status = retained(broker, f"{BASE}/status")[f"{BASE}/status"]
        assert render(configs[next(iter(wanted))]["availability"][0]["value_template"],
                      status) == "online"

        # states arrive and every sensor's template renders to a number
        state_topic = configs[f"homeassistant/sensor/{NODE}/cam0_fps/config"]["state_topic"]

        def fps() -> float:
            state = watcher.last(state_topic)
            return float(render(configs[f"homeassistant/sensor/{NODE}/cam0_fps/config"]
                                ["value_template"], state)) if state else 0.0

        wait_for(lambda: fps() > 1.0, "a state with the pipeline's fps", timeout=60)
        state = watcher.last(state_topic)
        assert state is not None
        for topic in wanted - {f"homeassistant/update/{NODE}/cam0_model/config"}:
            shown = render(configs[topic]["value_template"], state)
            # no thermal sensor here; nothing unsent when the broker acked it all: unknown
            if not (shown == "None" and topic.split("/")[-2] in ("temperature",
                                                                 "oldest_unsent")):
                float(shown)
        # the model's update entity: the manifest's version, nothing in progress
        update = configs[f"homeassistant/update/{NODE}/cam0_model/config"]
        model_state = json.loads(wait_for(lambda: watcher.last(update["state_topic"]),
                                          "the model's update state"))
        assert model_state["installed_version"] == MANIFEST["version"]
        assert model_state["latest_version"] == MANIFEST["version"]
        assert model_state["in_progress"] is False

        # the line's count equals the crossing events the agent published (its own record of
        # each crossing), at a moment both have caught up
        count_cfg = configs[f"homeassistant/sensor/{NODE}/cam0_mid_count/config"]

        seen: list[tuple[int, int]] = [(-1, 0)]

        def counts_agree() -> bool:
            # at least once each (QoS 1): a record's identity is its seq
            crossings = len({e["seq"] for e in map(json.loads, (
                p for _, p in watcher.on(f"{BASE}/events/cam0"))) if e.get("type") == "crossing"})
            latest = watcher.last(state_topic)
            shown = int(render(count_cfg["value_template"], latest)) if latest else -1
            seen[0] = (shown, crossings)
            return crossings > 0 and shown == crossings

        try:
            wait_for(counts_agree, "the line's count to match the crossing events", timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: (shown, crossing events) = {seen[0]}") from None

        # HA restarts: its birth message on homeassistant/status makes the agent send again
        before = len(watcher.on(prefix))
        since = time.monotonic()
        watcher.client.publish("homeassistant/status", b"online", qos=1)
        wait_for(lambda: wanted <= {t for t, _ in watcher.on(prefix, since)},
                 "the discovery sent again after HA's birth", timeout=30)
        assert len(watcher.on(prefix)) >= before + len(wanted)
        # anything else there changes nothing
        since = time.monotonic()
        watcher.client.publish("homeassistant/status", b"offline", qos=1)
        wait_for(lambda: len(watcher.on(state_topic, since)) >= 3, "three more states")
        assert not watcher.on(prefix, since)

        # the installer replaces line mid by line edge in the web console: edge's entity
        # appears, mid's gets an empty retained config (HA deletes the entity)
        web = Client(ha_agent.web_port)  # type: ignore[attr-defined]
        web.session()
        _, rules = web.json("GET", "/api/v1/pipelines/cam0/rules")
        status_code, saved = web.json("PUT", "/api/v1/pipelines/cam0/rules", {
            "version": rules["version"], "zones": [],
            "lines": [{"name": "edge", "points": [[0.3, 0.0], [0.3, 1.0]]}]})
        assert status_code == 200, saved
        edge = f"homeassistant/sensor/{NODE}/cam0_edge_count/config"
        mid = f"homeassistant/sensor/{NODE}/cam0_mid_count/config"
        wait_for(lambda: watcher.on(edge) and (mid, b"") in watcher.on(mid),
                 "edge's config and mid's removal", timeout=60)
        kept = retained(broker, "homeassistant/#")
        assert edge in kept and mid not in kept, sorted(kept)
    finally:
        watcher.close()
    # a clean stop: the availability the entities follow says offline
    ha_agent.stop(60)
    status = retained(broker, f"{BASE}/status")[f"{BASE}/status"]
    assert render(configs[next(iter(wanted))]["availability"][0]["value_template"],
                  status) == "offline"


@pytest.mark.broker
@pytest.mark.slow
def test_the_update_entity_follows_a_real_model_ota(broker: LocalBroker, tmp_path: Path) -> None:
    """A signed bundle deployed through deploy-model (tests/test_ota_device.py's device): the
    model's update entity shows it in progress, then the new version installed."""
    from tests.test_ota_device import DEVICE as OTA_DEVICE
    from tests.test_ota_device import OLD, Fleet
    from tests.test_ota_device import SITE as OTA_SITE

    fleet = Fleet(tmp_path, broker)
    try:  # the same device with the Home Assistant profile on
        fleet.proc.stop(60)
        fleet.config.write_text(fleet.config.read_text()
                                + "\n[homeassistant]\nenabled = true\ninterval_s = 1\n")
        fleet.proc = AgentProcess(fleet.config)
        fleet.wait_up()
        topic = f"lepton/v1/{OTA_SITE}/{OTA_DEVICE}/ha/model/+"
        states: list[dict[str, Any]] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_message = lambda c, u, m: states.append(json.loads(m.payload))
        client.connect("127.0.0.1", broker.port)
        client.subscribe(topic, qos=1)
        client.loop_start()
        try:
            wait_for(lambda: states, "the model's update state")
            assert states[-1]["installed_version"] == OLD and not states[-1]["in_progress"]
            outcome = fleet.deploy(fleet.bundle(2), "ha-1")
            assert outcome.ok, (outcome, fleet.proc.log[-3000:])
            wait_for(lambda: states[-1]["installed_version"] == "ota-v2"
                     and not states[-1]["in_progress"], "the new version installed")
        finally:
            client.loop_stop()
            client.disconnect()
        during = [s for s in states if s["in_progress"]]
        assert during, states
        # installed: the old model, or the new one once the pipelines switched to it while
        # the deployment watches their health before it commits
        assert all(s["latest_version"] == "bundle 2" and s["installed_version"] in (OLD, "ota-v2")
                   and 0 <= s["update_percentage"] < 100 for s in during), during
        assert [s["update_percentage"] for s in during] == sorted(
            s["update_percentage"] for s in during)  # progress only goes forward
    finally:
        fleet.close()
    assert "Traceback" not in fleet.proc.log, fleet.proc.log[-3000:]


def test_enabled_without_a_broker_is_one_warning_and_the_agent_runs(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
[mqtt]
broker = ""
[source]
uri = "synthetic://160x120@30"
[web]
listen = ""
[homeassistant]
enabled = true
""")
    out = run_cli("run", "--config", str(config), "--max-frames", "20", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["frames_processed"] == 20
    warnings = [line for line in out.stderr.splitlines() if "[homeassistant]" in line]
    assert len(warnings) == 1 and "no broker is configured" in warnings[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
