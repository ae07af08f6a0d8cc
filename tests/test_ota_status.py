"""The OTA state where an operator looks (issue 18 items 4 and 5): ``[ota]`` in the config
(trusted keys outside the state dir, the device's defaults for ``deploy-model``), the slot,
version and last outcome in the status socket's snapshot, ``lepton-agent status``, the
retained status and telemetry of a real agent on a real mosquitto; and ``[ota]`` refused at
load with the key named."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load_config
from agent.errors import ConfigError
from agent.ota.keys import generate
from agent.service.ota import load_trusted_keys
from tests.conftest import run_cli
from tests.e2e import AgentProcess, wait_for
from tests.test_ota_device import DEVICE, SITE, Fleet


class Topic:
    """Every message on one topic filter, decoded (retained ones marked)."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.got.append(json.loads(message.payload) | {"_retained": bool(message.retain)})

    def latest(self) -> dict[str, Any] | None:
        with self.lock:
            return self.got[-1] if self.got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
def test_ota_state_in_status_socket_cli_retained_status_and_telemetry(broker,
                                                                      tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, broker)
    try:
        first = fleet.proc.status()
        assert first is not None
        assert (first["ota"]["slot"], first["ota"]["last_outcome"]) == (None, None)
        assert first["ota"]["clock_skew_exceeds"] is False
        # [ota] trusted_keys names a key outside the state dir; the default folder goes away,
        # so only the configured key can make the deployment pass; health_s comes from [ota].
        fleet.proc.stop(60)
        shutil.rmtree(fleet.state / "ota" / "trusted")
        release = tmp_path / "release-keys"
        release.mkdir()
        shutil.copy(fleet.keys.public, release / "r2026.pub")
        text = fleet.config.read_text().replace("reconnect_max_s = 0.5",
                                                "reconnect_max_s = 0.5\ntelemetry_interval_s = 1")
        fleet.config.write_text(text + f'[ota]\ntrusted_keys = ["{release}"]\nhealth_s = 1\n')
        fleet.proc = AgentProcess(fleet.config)
        fleet.wait_up()
        telemetry = Topic(broker.port, f"lepton/v1/{SITE}/{DEVICE}/telemetry")
        try:
            wait_for(lambda: len(fleet.results.snapshot()) > 5, "results of the first model")
            outcome = fleet.deploy(fleet.bundle(2), "st-1", health_s=None)
            assert outcome.ok, (outcome, fleet.proc.log[-3000:])
            watch = outcome.result["health"]["watch"]["cam0"]
            # health_s = 1 at 10 fps: about 10 frames watched, not the 10 s default's 100
            assert 0 < watch["frames_after"] < 60, watch

            snap = fleet.proc.status()
            assert snap is not None
            ota = snap["ota"]
            assert ota["slot"] in ("a", "b") and Path(outcome.result["slot"]).name == ota["slot"]
            assert (ota["model"], ota["version"]) == ("lepton-vehicles-tiny", 2)
            assert (ota["deployment"], ota["state"]) == (None, None)
            assert (ota["last_deployment"], ota["last_outcome"]) == ("st-1", "succeeded")
            assert ota["clock_skew_threshold_s"] == 300 and ota["clock_skew_exceeds"] is False

            out = run_cli("status", "--config", str(fleet.config))
            assert out.returncode == 0, out.stderr
            assert f"ota:       slot {ota['slot']} (lepton-vehicles-tiny v2); last st-1: " \
                   "succeeded" in out.stdout, out.stdout

            status = Topic(broker.port, f"lepton/v1/{SITE}/{DEVICE}/status")
            try:
                wait_for(lambda: status.latest() is not None, "the retained status")
                retained = status.latest()
                assert retained is not None and retained["_retained"]
                assert (retained["ota"]["slot"], retained["ota"]["last_outcome"]) == (
                    ota["slot"], "succeeded")
            finally:
                status.close()

            def telemetry_has_slot() -> bool:
                last = telemetry.latest()
                return last is not None and last.get("ota", {}).get("slot") == ota["slot"]

            wait_for(telemetry_has_slot, "telemetry with the slot", timeout=30)
        finally:
            telemetry.close()
    finally:
        fleet.close()
    assert "Traceback" not in fleet.proc.log


@pytest.mark.parametrize(("body", "words"), [
    ("min_fps_ratio = 1.5", "[ota.min_fps_ratio]"),
    ("health_s = -1", "[ota.health_s]"),
    ("clock_skew_threshold_s = 0", "[ota.clock_skew_threshold_s]"),
    ("deadline_scale = 0", "[ota.deadline_scale]"),
    ('trusted_keys = ["a.pub", "a.pub"]', "[ota.trusted_keys]"),
    ('trusted_keys = "a.pub"', "[ota.trusted_keys]"),
    ("bogus = 1", "[ota.bogus]: unknown key"),
])
def test_ota_config_is_refused_at_load_naming_the_key(tmp_path: Path, body: str,
                                                      words: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[agent]\ndevice_id = 'x'\n\n[ota]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert words in str(err.value) and f"{path}:5" in str(err.value), str(err.value)


def test_trusted_keys_are_files_or_folders_and_a_missing_one_is_skipped(tmp_path: Path) -> None:
    one, two = generate(tmp_path / "k1"), generate(tmp_path / "k2")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(two.public, folder / "second.pub")
    (folder / "notes.txt").write_text("not a key")
    trust = load_trusted_keys([one.public, folder, tmp_path / "gone.pub"])
    assert len(trust.ids()) == 2
    assert load_trusted_keys([tmp_path / "gone.pub"]).ids() == []
