"""`lepton-agent deploy` (issue 18 item 2): a rollout over two real agent processes on a real
mosquitto, its state in the ingest database (SQLite here, PostgreSQL for the store), a
rollout that stops on its canary's failure, and `deploy status`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.backend.deploy import Bundle, RolloutPlan, RolloutStore
from agent.ota.bundles import sign
from agent.ota.keys import generate
from tests.conftest import DEFAULT_MODEL, ROOT
from tests.e2e import AgentProcess, wait_for
from tests.ingest_support import pg_schema_url

SITE = "roll-site"


def _deploy(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "deploy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _agent(tmp: Path, device: str, broker_url: str, public: Path) -> AgentProcess:
    state = tmp / device
    (state / "ota" / "trusted").mkdir(parents=True)
    shutil.copy(public, state / "ota" / "trusted" / "release.pub")
    config = tmp / f"{device}.toml"
    config.write_text(f"""
[agent]
device_id = "{device}"
site = "{SITE}"
state_dir = "{state}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "synthetic://320x240@10"
[mqtt]
broker = "{broker_url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
""")
    return AgentProcess(config)


def _bundle(tmp: Path, key: Path, version: int, edit: Any = None) -> Path:
    folder = tmp / f"bundle-v{version}"
    shutil.copytree(DEFAULT_MODEL, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = f"roll-v{version}"
    if edit:
        edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sign(folder, key, version=version, now=time.time())
    return folder


@pytest.mark.slow  # whole runs of real processes: the default tier stays under 15 min
def test_a_rollout_succeeds_then_one_stops_on_its_canary(broker, tmp_path: Path) -> None:
    keys = generate(tmp_path / "keys")
    agents = [_agent(tmp_path, d, broker.url, keys.public) for d in ("cam-1", "cam-2")]
    db = tmp_path / "ingest.db"
    try:
        for a in agents:
            wait_for(lambda a=a: "command" in a.log or a.status() is not None,
                     "the agent to start", timeout=90)
        good = _bundle(tmp_path, keys.private, 2)
        out = _deploy(str(good), "--db", f"sqlite:///{db}", "--broker", broker.url, "--site",
                      SITE, "--devices", "cam-1,cam-2", "--batch", "1", "--health-s", "2",
                      "--id", "roll-good", "--json")
        assert out.returncode == 0, out.stderr + out.stdout
        report = json.loads(out.stdout)
        assert report["state"] == "succeeded"
        assert [(d["device"], d["batch"], d["state"]) for d in report["devices"]] == [
            ("cam-1", 0, "succeeded"), ("cam-2", 1, "succeeded")]

        def wrong_golden(manifest: dict[str, Any]) -> None:
            for e in manifest["golden"]["expect_detections"]:
                e["box"] = [0.0, 0.0, 0.05, 0.05]

        bad = _bundle(tmp_path, keys.private, 3, wrong_golden)
        out = _deploy(str(bad), "--db", f"sqlite:///{db}", "--broker", broker.url, "--site",
                      SITE, "--devices", "cam-1,cam-2", "--canary", "1", "--max-failures", "0",
                      "--health-s", "2", "--id", "roll-bad")
        assert out.returncode == 1, out.stderr + out.stdout
        assert "cam-1: rolled_back" in out.stdout and "golden self-test failed" in out.stdout
        status = _deploy("status", "roll-bad", "--db", f"sqlite:///{db}", "--json")
        assert status.returncode == 0, status.stderr
        (rollout,) = json.loads(status.stdout)
        assert rollout["state"] == "stopped" and "canary" in rollout["reason"]
        assert [(d["device"], d["state"]) for d in rollout["devices"]] == [
            ("cam-1", "rolled_back"), ("cam-2", "skipped")]
        listing = _deploy("status", "--db", f"sqlite:///{db}")
        assert "roll-good: lepton-vehicles-tiny v2 succeeded" in listing.stdout
        assert "roll-bad: lepton-vehicles-tiny v3 stopped" in listing.stdout
    finally:
        for a in agents:
            if a.running:
                a.stop(60)


def test_deploy_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    keys = generate(tmp_path / "keys")
    signed = str(_bundle(tmp_path, keys.private, 2))
    db = f"sqlite:///{tmp_path}/x.db"
    for args, words in [
        ([signed, "--db", db, "--broker", "mqtt://127.0.0.1:1", "--site", "nowhere"],
         "the ingest database has seen no device of site 'nowhere'"),
        ([signed, "--db", db, "--broker", "mqtt://127.0.0.1:1"], "give --devices D1,D2 or --site S"),
        ([signed, "--db", db, "--devices", "a"], "a rollout needs --broker"),
        ([signed, "--db", db, "--broker", "mqtt://127.0.0.1:1", "--devices", "a/b"], "a/b"),
        ([signed, "--db", db, "--broker", "mqtt://127.0.0.1:1", "--devices", "a"],
         "cannot connect to mqtt://127.0.0.1:1"),
        (["status", "nope", "--db", f"sqlite:///{tmp_path}/x.db"], "no rollout 'nope'"),
        ([str(tmp_path), "--db", f"sqlite:///{tmp_path}/x.db", "--broker", "mqtt://127.0.0.1:1",
          "--devices", "a"], "signature.json is missing"),
        (["status", "--db", "sqlite:///no/such/dir/x.db"], "x.db"),
        (["resume", "--db", db, "--broker", "mqtt://127.0.0.1:1"],
         "deploy resume needs the rollout's id"),
        (["resume", "nope", "--db", db, "--broker", "mqtt://127.0.0.1:1"], "no rollout 'nope'"),
    ]:
        out = _deploy(*args)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in out.stderr, lines


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_rollout_store_on_sqlite_and_postgresql(kind: str, tmp_path: Path) -> None:
    keys = generate(tmp_path / "keys")
    bundle = Bundle.read(_bundle(tmp_path, keys.private, 5))
    urls = [f"sqlite:///{tmp_path}/ingest.db"] if kind == "sqlite" else pg_schema_url()
    for url in urls:
        store = RolloutStore(url)
        plan = RolloutPlan(("a", "b", "c", "d"), canary=1, batch=2)
        assert plan.batches() == [["a"], ["b", "c"], ["d"]]
        store.create("r1", bundle, plan, {"health_s": 1})
        store.set_device("r1", "a", "rolled_back", "health gate: no detection")
        store.set_rollout("r1", "stopped", "1 device(s) failed")
        store.close()
        again = RolloutStore(url)  # persisted, read by another connection
        (r,) = again.status("r1")
        assert (r["model"], r["version"], r["state"]) == ("lepton-vehicles-tiny", 5, "stopped")
        assert [(d["device"], d["batch"], d["state"]) for d in r["devices"]] == [
            ("a", 0, "rolled_back"), ("b", 1, "pending"), ("c", 1, "pending"),
            ("d", 2, "pending")]
        with pytest.raises(Exception, match="exists already"):
            again.create("r1", bundle, plan, {})
        again.close()


class Commands:
    """Every command the broker carries to some devices (an observer beside the devices)."""

    def __init__(self, port: int, devices: tuple[str, ...]) -> None:
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: list[tuple[str, str]] = []  # (device, command name)
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        for d in devices:
            self.client.subscribe(f"lepton/v1/{SITE}/{d}/cmd/+", qos=1)
        self.client.loop_start()

    def _on(self, client: Any, userdata: Any, message: Any) -> None:
        parts = message.topic.split("/")
        with self.lock:
            self.seen.append((parts[3], parts[5]))

    def devices(self) -> set[str]:
        with self.lock:
            return {d for d, _ in self.seen}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow  # two agents and three rollout commands: about a minute
def test_a_rollout_survives_its_sender_being_killed(broker, tmp_path: Path) -> None:
    """SIGKILL the deploy CLI while the second batch's device deploys; `deploy resume ID`
    finishes the rollout without sending anything to the device that was done, and running
    the first command again (same --id) finds it over and sends nothing."""
    keys = generate(tmp_path / "keys")
    agents = [_agent(tmp_path, d, broker.url, keys.public) for d in ("cam-1", "cam-2")]
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    first = [str(_bundle(tmp_path, keys.private, 2)), "--db", url, "--broker", broker.url,
             "--site", SITE, "--devices", "cam-1,cam-2", "--batch", "1", "--health-s", "2",
             "--id", "roll-kill"]

    def states() -> dict[str, str]:
        try:
            store = RolloutStore(url)
            try:
                (r,) = store.status("roll-kill")
            finally:
                store.close()
        except Exception:  # not created yet
            return {}
        return {d["device"]: d["state"] for d in r["devices"]}

    sender = None
    try:
        for a in agents:
            wait_for(lambda a=a: "command" in a.log or a.status() is not None,
                     "the agent to start", timeout=90)
        sender = subprocess.Popen([sys.executable, "-m", "agent", "deploy", *first], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # killed once cam-2's own deployment has begun (the device logged its first state)
        wait_for(lambda: states().get("cam-2") == "deploying"
                 and "deployment roll-kill (" in agents[1].log,
                 "the second batch to start deploying", timeout=240)
        sender.kill()
        sender.wait(30)
        assert states() == {"cam-1": "succeeded", "cam-2": "deploying"}, states()

        watch = Commands(broker.port, ("cam-1", "cam-2"))
        try:
            out = _deploy("resume", "roll-kill", "--db", url, "--broker", broker.url, "--json")
            assert out.returncode == 0, out.stderr + out.stdout
            report = json.loads(out.stdout)
            assert report["state"] == "succeeded", report
            assert [(d["device"], d["state"]) for d in report["devices"]] == [
                ("cam-1", "succeeded"), ("cam-2", "succeeded")]
            assert watch.devices() == {"cam-2"}, watch.seen  # nothing sent to cam-1
            sent = len(watch.seen)
            again = _deploy(*first)
            assert again.returncode == 0, again.stderr + again.stdout
            assert "rollout roll-kill: succeeded" in again.stdout
            time.sleep(0.5)  # a command the CLI had sent would have reached the observer
            assert len(watch.seen) == sent, watch.seen[sent:]
        finally:
            watch.close()
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        for a in agents:
            if a.running:
                a.stop(60)
