"""Model OTA on a real mosquitto with a real agent process (issue 18 item 4): the happy path
switches between two frames and survives a restart, a failing self-test and a failing health
gate roll back with the reason, tampered bundles are rejected each with its reason, and a
second deployment supersedes a stuck one.

The reference the tests check against is independent of the device's code: the results the
agent publishes (frame indices, seqs and the model each names), the bundle files as signed,
and the device's own reply."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.backend.deploy import Bundle, deploy_device
from agent.cli.ctl import CommandClient
from agent.core.contract.command import CommandReply
from agent.ota.bundles import sign
from agent.ota.keys import generate
from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess, wait_for

SITE, DEVICE = "ota-site", "ota-dev"
SRC = "synthetic://320x240@10"
OLD = json.loads((DEFAULT_MODEL / "manifest.json").read_text())["version"]  # the running one


class Results:
    """Every result the agent publishes: (seq, frame index, model version), in arrival order."""

    def __init__(self, port: int) -> None:
        self.items: list[tuple[int, int, str]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"lepton/v1/{SITE}/{DEVICE}/results/#", qos=1)
        self.client.loop_start()

    def _on(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self.lock:
            self.items.append((body["seq"], body["frame"]["index"], body["model"]["version"]))

    def snapshot(self) -> list[tuple[int, int, str]]:
        with self.lock:
            return sorted(set(self.items))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Fleet:
    """One device (agent process) that trusts a release key, a command client, the results."""

    def __init__(self, tmp: Path, broker: Any) -> None:
        self.tmp = tmp
        self.keys = generate(tmp / "keys")
        self.state = tmp / "state"
        trusted = self.state / "ota" / "trusted"
        trusted.mkdir(parents=True)
        shutil.copy(self.keys.public, trusted / "release.pub")
        self.config = tmp / "agent.toml"
        self.config.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "{SITE}"
state_dir = "{self.state}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "{SRC}"
[mqtt]
broker = "{broker.url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
""")
        self.broker_port = broker.port
        self.results = Results(broker.port)
        self.client = CommandClient(broker.url)
        self.proc = AgentProcess(self.config)
        self.wait_up()

    def wait_up(self) -> None:
        def answered() -> bool:
            assert self.proc.running, self.proc.log[-3000:]
            try:
                return self.send("ping", {}, 2.0) is not None
            except Exception:
                return False

        wait_for(answered, "the agent to answer a ping", timeout=90)

    def send(self, name: str, args: dict[str, Any], timeout: float,
             command_id: str | None = None) -> CommandReply | None:
        try:
            reply: CommandReply = self.client.send(SITE, DEVICE, name, args, timeout, command_id)
        except Exception:
            return None
        return reply

    def bundle(self, version: int, *, key: Path | None = None, expires_days: float = 30,
               edit: Any = None, name: str | None = None) -> Path:
        """A copy of the default model signed as ``version`` (manifest version v{version})."""
        folder = self.tmp / (name or f"bundle-v{version}-{uuid.uuid4().hex[:6]}")
        shutil.copytree(DEFAULT_MODEL, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = f"ota-v{version}"
        if edit is not None:
            edit(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
        sign(folder, key or self.keys.private, version=version, now=time.time(),
             expires_days=expires_days)
        return folder

    def deploy(self, folder: Path, deployment: str | None = None, timeout_s: float = 180,
               chunk_size: int = 96 * 1024, **options: Any):
        options.setdefault("health_s", 3.0)
        return deploy_device(Bundle.read(folder, chunk_size), deployment or f"d-{uuid.uuid4().hex[:8]}",
                             DEVICE, lambda n, a, t: self.send(n, a, t), timeout_s=timeout_s,
                             chunk_timeout_s=5, **options)

    def model_version(self) -> str:
        reply = self.send("pipelines", {}, 10)
        assert reply is not None and reply.ok
        return str((reply.result or {})["pipelines"][0]["model"])

    def close(self) -> None:
        self.results.close()
        self.client.close()
        if self.proc.running:
            self.proc.stop(60)


@pytest.fixture
def fleet(broker, tmp_path: Path):
    f = Fleet(tmp_path, broker)
    yield f
    f.close()
    assert "Traceback" not in f.proc.log, f.proc.log[-3000:]


def _retained(fleet: Fleet, topic: str) -> dict[str, Any]:
    got: list[dict[str, Any]] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload) | {"_r": m.retain})
    client.connect("127.0.0.1", fleet.broker_port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        wait_for(lambda: got, f"the retained message on {topic}", timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got[0]["_r"] is True
    return got[0]


def _switch_is_seamless(results: list[tuple[int, int, str]], old: str, new: str) -> None:
    """Across the switch: seqs and frame indices consecutive (no frame lost), one switch."""
    versions = [v for _, _, v in results]
    assert old in versions and new in versions, versions
    switch = versions.index(new)
    assert all(v == old for v in versions[:switch]) and all(v == new for v in versions[switch:])
    around = results[max(0, switch - 20): switch + 20]
    seqs = [s for s, _, _ in around]
    frames = [f for _, f, _ in around]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert frames == list(range(frames[0], frames[0] + len(frames))), frames


def test_happy_path_switches_between_two_frames_and_survives_a_restart(fleet: Fleet) -> None:
    v2 = fleet.bundle(2)
    wait_for(lambda: len(fleet.results.snapshot()) > 10, "results of the first model")
    outcome = fleet.deploy(v2, "happy-1")
    assert outcome.ok, (outcome, fleet.proc.log[-3000:])
    assert outcome.result["outcome"] == "succeeded"
    assert outcome.result["health"]["self_test"] == "pass"
    before = len(fleet.results.snapshot())
    wait_for(lambda: len(fleet.results.snapshot()) > before + 20, "results after the switch")
    _switch_is_seamless(fleet.results.snapshot(), OLD, "ota-v2")
    status = _retained(fleet, f"lepton/v1/{SITE}/{DEVICE}/ota")
    assert (status["deployment"], status["outcome"], status["version"]) == (
        "happy-1", "succeeded", 2)
    # A replay of the same version (a new deployment id) is refused: anti-rollback.
    replay = fleet.deploy(v2, "happy-2")
    assert replay.outcome == "rejected" and "[rollback]" in (replay.reason or ""), replay
    # After a restart the committed model runs (config.applied.toml names the slot).
    fleet.proc.stop(60)
    fleet.proc = AgentProcess(fleet.config)
    fleet.wait_up()
    seen = len(fleet.results.snapshot())
    wait_for(lambda: len(fleet.results.snapshot()) > seen + 5, "results after the restart")
    assert {v for _, _, v in fleet.results.snapshot()[seen:]} == {"ota-v2"}
    # and the counter survived it: version 2 is still refused, version 3 goes in
    assert fleet.deploy(v2, "happy-3").outcome == "rejected"
    assert fleet.deploy(fleet.bundle(3), "happy-4").ok


def test_a_failing_self_test_rolls_back_with_the_reason(fleet: Fleet) -> None:
    def wrong_golden(manifest: dict[str, Any]) -> None:
        for e in manifest["golden"]["expect_detections"]:
            e["box"] = [0.0, 0.0, 0.05, 0.05]  # where the golden frame has no car

    outcome = fleet.deploy(fleet.bundle(2, edit=wrong_golden), "selftest-1")
    assert outcome.outcome == "rolled_back", outcome
    assert "golden self-test failed" in (outcome.reason or "")
    time.sleep(1.0)
    assert {v for _, _, v in fleet.results.snapshot()} == {OLD}
    assert not list((fleet.state / "ota" / "slots").rglob("model.tflite")), \
        "a rolled-back slot is removed"
    # the version was not burnt: the same version, fixed, goes in
    assert fleet.deploy(fleet.bundle(2), "selftest-2").ok


def test_a_health_gate_failure_rolls_back_between_two_frames(fleet: Fleet) -> None:
    def blind(manifest: dict[str, Any]) -> None:
        manifest["score_threshold"] = 0.999  # finds nothing on the stream
        del manifest["golden"]  # the self-test has nothing to compare (a warning, not a fail)

    wait_for(lambda: len(fleet.results.snapshot()) > 10, "results of the first model")
    outcome = fleet.deploy(fleet.bundle(2, edit=blind), "health-1", health_s=4.0)
    assert outcome.outcome == "rolled_back", outcome
    assert "health gate" in (outcome.reason or "") and "no detection" in (outcome.reason or "")
    seen = len(fleet.results.snapshot())
    wait_for(lambda: len(fleet.results.snapshot()) > seen + 10, "results after the rollback")
    results = fleet.results.snapshot()
    versions = [v for _, _, v in results]
    assert versions[-1] == OLD
    frames = [f for _, f, _ in results]
    seqs = [s for s, _, _ in results]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, both switches
    assert frames == list(range(frames[0], frames[0] + len(frames)))
    assert "ota-v2" in versions  # it did run for the watch


def test_tampered_bundles_are_rejected_each_with_its_reason(fleet: Fleet) -> None:
    # a flipped bit in the model file after signing
    flipped = fleet.bundle(2)
    data = bytearray((flipped / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.tflite").write_bytes(bytes(data))
    got = fleet.deploy(flipped, "tamper-bit")
    assert got.outcome == "rejected" and "[file_changed]" in (got.reason or ""), got
    # signed with a key the device does not trust
    other = generate(fleet.tmp / "other-keys")
    got = fleet.deploy(fleet.bundle(2, key=other.private), "tamper-key")
    assert got.outcome == "rejected" and "[unknown_key]" in (got.reason or ""), got
    # an expired document (one second of validity)
    expired = fleet.bundle(2, expires_days=1e-6)
    time.sleep(1.5)
    got = fleet.deploy(expired, "tamper-expired")
    assert got.outcome == "rejected" and "[expired]" in (got.reason or ""), got
    # a replayed older version, after version 3 is installed
    v2 = fleet.bundle(2)
    assert fleet.deploy(fleet.bundle(3), "tamper-v3").ok
    got = fleet.deploy(v2, "tamper-replay")
    assert got.outcome == "rejected" and "[rollback]" in (got.reason or ""), got
    # a chunk flipped in transit is not accepted (the sender is asked for it again)
    v4 = Bundle.read(fleet.bundle(4))
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fleet.send(
        "deploy-model", v4.deploy_args("tamper-chunk", health_s=1.0), 120)))
    t.start()
    _, first = next(v4.chunks("tamper-chunk"))
    raw = bytearray(__import__("base64").b64decode(first["data"]))
    raw[0] ^= 0x80
    bad = dict(first, data=__import__("base64").b64encode(bytes(raw)).decode())
    reply = wait_for(lambda: (r := fleet.send("deploy-chunk", bad, 10)) and r.ok and r, "a chunk reply")
    assert reply.result["outcome"] == "bad_hash" and reply.result["missing"] > 0
    for _, args in v4.chunks("tamper-chunk"):
        assert fleet.send("deploy-chunk", args, 30).ok
    t.join(120)
    assert box and box[0] is not None and box[0].ok, box
    assert fleet.model_version()


def test_a_transfer_that_never_completes_times_out(fleet: Fleet) -> None:
    bundle = Bundle.read(fleet.bundle(2))
    reply = fleet.send("deploy-model", bundle.deploy_args("late-1", transfer_timeout_s=2.0), 60)
    assert reply is not None and not reply.ok and reply.code == "timeout", reply
    assert reply.reason.startswith("timed_out: the receiving state did not end"), reply
    assert not (fleet.state / "ota" / "staging" / "late-1").exists()
    # a chunk that comes too late is answered, not acted on
    _, first = next(bundle.chunks("late-1"))
    late = fleet.send("deploy-chunk", first, 10)
    assert late is not None and late.ok, late
    assert (late.result["outcome"], late.result["state"]) == ("closed", "timed_out")


def test_the_sender_rejoins_a_deployment_across_a_device_restart(fleet: Fleet) -> None:
    """deploy_device sends deploy-model again while it has no reply: after a SIGKILL in the
    health watch the restarted device answers the repeat with how the deployment ended."""
    folder = fleet.bundle(2)
    box: list[Any] = []
    sender = threading.Thread(target=lambda: box.append(fleet.deploy(
        folder, "rejoin-1", timeout_s=120, health_s=20.0, retry_s=3.0)), daemon=True)
    sender.start()
    wait_for(lambda: "deployment rejoin-1 (lepton-vehicles-tiny v2): watching" in fleet.proc.log,
             "the health watch")
    fleet.proc.kill()
    fleet.proc.proc.wait(30)
    fleet.proc = AgentProcess(fleet.config)
    sender.join(120)
    assert box, "deploy_device did not return"
    assert box[0].outcome == "rolled_back", box[0]
    assert "restarted during the watching state" in box[0].reason


def test_a_second_deployment_supersedes_a_stuck_one(fleet: Fleet) -> None:
    stuck = Bundle.read(fleet.bundle(2))
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fleet.send(
        "deploy-model", stuck.deploy_args("stuck-1", transfer_timeout_s=3600), 120)))
    t.start()  # no chunk is ever sent: it would wait an hour
    wait_for(lambda: "deployment stuck-1" in fleet.proc.log, "the stuck deployment to start")
    outcome = fleet.deploy(fleet.bundle(3), "fresh-1")
    assert outcome.ok, outcome
    t.join(30)
    assert box and box[0] is not None and not box[0].ok
    assert box[0].reason.startswith("superseded"), box[0]
    assert "fresh-1" in box[0].reason


@pytest.mark.slow
def test_sigkill_at_ten_random_points_resumes_or_aborts_cleanly(fleet: Fleet) -> None:
    """SIGKILL at 10 points of a deployment: each state once (receiving with a chunk of two on
    disk, verifying, installing, warming, self_test, switching, watching, committing) and two
    more drawn at random, each a random 0-200 ms after the state began. After the restart the
    same deployment (sent again) resumes or ends with a terminal outcome, the model that runs
    is always a whole one (the old or the new), and no committed result is lost (the seqs on
    the broker have no hole)."""
    import base64
    import random

    rng = random.Random(18)
    states = ["receiving", "verifying", "installing", "warming", "self_test", "switching",
              "watching", "committing"]
    points = states + rng.sample(states[1:], 2)
    version, installed = 2, OLD
    outcomes = []
    for n, state in enumerate(points):
        folder = fleet.bundle(version, name=f"kill-{n}")
        deployment = f"kill-{n}"
        bundle = Bundle.read(folder, chunk_size=64 * 1024)  # 3 chunks
        marker = f"deployment {deployment} (lepton-vehicles-tiny v{version}): {state}"
        if state == "receiving":  # only the first chunk goes: the transfer is half-way
            first = threading.Thread(target=fleet.send, daemon=True, args=(
                "deploy-model", bundle.deploy_args(deployment, health_s=2.0), 10))
            first.start()
            _, chunk = next(bundle.chunks(deployment))
            wait_for(lambda c=chunk: (r := fleet.send("deploy-chunk", c, 5)) is not None
                     and r.ok and r.result["outcome"] == "accepted", "the first chunk")
        else:
            first = threading.Thread(target=fleet.deploy, args=(folder, deployment),
                                     kwargs={"timeout_s": 12, "health_s": 2.0,
                                             "chunk_size": 64 * 1024}, daemon=True)
            first.start()
            wait_for(lambda m=marker: m in fleet.proc.log, marker, timeout=60)
        time.sleep(rng.uniform(0.0, 0.2))
        fleet.proc.kill()
        fleet.proc.proc.wait(30)
        if state == "receiving":  # what was on disk: the chunk, and its mark
            staged = fleet.state / "ota" / "staging" / deployment / chunk["path"]
            assert staged.read_bytes()[:64 * 1024] == base64.b64decode(chunk["data"])
        fleet.proc = AgentProcess(fleet.config)
        fleet.wait_up()
        # the backend repeats the deployment (same id): it resumes or reports how it ended
        outcome = fleet.deploy(folder, deployment, health_s=2.0, chunk_size=64 * 1024)
        outcomes.append((state, outcome.outcome, (outcome.reason or "")[:60]))
        assert outcome.outcome in ("succeeded", "rolled_back", "timed_out"), outcome
        if state in ("receiving", "verifying", "installing", "warming", "self_test"):
            assert outcome.ok, (state, outcome)  # before the switch: it resumes
        if state in ("switching", "watching"):
            assert outcome.outcome == "rolled_back", (state, outcome)
        assert fleet.model_version() == "lepton-vehicles-tiny"
        seen = len(fleet.results.snapshot())
        wait_for(lambda k=seen: len(fleet.results.snapshot()) > k + 3, "results after it")
        if outcome.ok:
            installed, version = f"ota-v{version}", version + 1
        assert fleet.results.snapshot()[-1][2] == installed, (outcomes, installed)
        for model_file in (fleet.state / "ota" / "slots").rglob("model.tflite"):
            assert model_file.read_bytes() == (DEFAULT_MODEL / "model.tflite").read_bytes()
        assert not list((fleet.state / "ota" / "staging").glob("*")), "staging left behind"
        first.join(30)
    seqs = [s for s, _, _ in fleet.results.snapshot()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a committed result was lost"
    print("kill points:", outcomes)
