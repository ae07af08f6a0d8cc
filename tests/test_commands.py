"""Commands (issue 18 item 1, and item 2's ctl) on a real mosquitto with a real agent process:
each handler, a duplicate id acted on once and replayed after a restart, a retained command
ignored, rollback of a pipeline that fails to start, and ``lepton-agent ctl``'s exit codes."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.cli.ctl import CommandClient, parse_args_pairs
from agent.core.contract.command import (
    COMMAND_SCHEMA,
    CommandError,
    CommandReply,
    accepts_response_topic,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
)
from agent.core.contract.topics import DeviceTopics
from agent.errors import ConfigError
from agent.schemas import load_schema
from tests.conftest import DEFAULT_MODEL, run_cli
from tests.e2e import AgentProcess, wait_for

SITE, DEVICE = "cmd-site", "cmd-dev"
BASE = f"lepton/v1/{SITE}/{DEVICE}"
REPLY_SCHEMA = Draft202012Validator(load_schema("command-reply.v1"))
COMMAND = Draft202012Validator(load_schema("command.v1"))
SRC = "synthetic://160x120@5"


def _config(tmp: Path, broker_url: str) -> Path:
    path = tmp / "agent.toml"
    path.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "{SITE}"
state_dir = "{tmp / 'state'}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "{SRC}"
[mqtt]
broker = "{broker_url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
""")
    return path


class Device:
    """An agent process and a command client on one broker."""

    def __init__(self, tmp: Path, broker_url: str) -> None:
        self.config = _config(tmp, broker_url)
        self.state = tmp / "state"
        self.proc = AgentProcess(self.config)
        self.client = CommandClient(broker_url)
        self.wait_up()

    def wait_up(self) -> None:
        def answered() -> bool:
            assert self.proc.running, self.proc.log[-3000:]
            raw = self.client.send_raw(SITE, DEVICE, "ping", encode_command(
                f"up-{time.time_ns()}"), 1.0)
            return raw is not None

        wait_for(answered, "the agent to answer a ping", timeout=90)

    def send(self, name: str, args: dict[str, Any] | None = None, command_id: str | None = None,
             timeout: float = 60.0) -> CommandReply:
        reply: CommandReply = self.client.send(SITE, DEVICE, name, args or {}, timeout,
                                               command_id)
        REPLY_SCHEMA.validate(reply.to_json())
        return reply

    def raw(self, name: str, payload: bytes) -> dict[str, Any]:
        raw = self.client.send_raw(SITE, DEVICE, name, payload, 30.0)
        assert raw is not None, f"no reply to {payload!r}"
        body: dict[str, Any] = json.loads(raw)
        REPLY_SCHEMA.validate(body)
        return body

    def starts(self, stream: str) -> int:
        """How many times this run of the agent started pipeline ``stream`` (its log line)."""
        return len(re.findall(rf"pipeline {re.escape(stream)}: model ", self.proc.log))

    def pipelines(self) -> dict[str, dict[str, Any]]:
        reply = self.send("pipelines")
        assert reply.ok, reply
        return {p["stream"]: p for p in (reply.result or {})["pipelines"]}

    def close(self) -> None:
        self.client.close()
        if self.proc.running:
            self.proc.stop(60)


@pytest.fixture
def device(broker, tmp_path: Path):
    d = Device(tmp_path, broker.url)
    yield d
    d.close()
    assert "Traceback" not in d.proc.log, d.proc.log[-3000:]


# -- the contract, without a broker ------------------------------------------------------------

def test_the_command_contract_round_trips_and_refuses_with_a_code() -> None:
    payload = encode_command("c-1", {"stream": "cam0"})
    COMMAND.validate(json.loads(payload))
    assert decode_command("snapshot", payload).args == {"stream": "cam0"}
    for bad, code in ((b"\xff", "malformed"), (b"[]", "malformed"),
                      (json.dumps({"schema": COMMAND_SCHEMA}).encode(), "malformed"),
                      (json.dumps({"schema": COMMAND_SCHEMA, "id": "a b"}).encode(), "malformed"),
                      (json.dumps({"schema": COMMAND_SCHEMA, "id": "a", "x": 1}).encode(),
                       "malformed"),
                      (json.dumps({"schema": COMMAND_SCHEMA, "id": "a", "args": []}).encode(),
                       "malformed")):
        with pytest.raises(CommandError) as caught:
            decode_command("ping", bad)
        assert caught.value.code == code and caught.value.reason
    ok = CommandReply("c-1", "ping", "d", "s", True, "2026-01-01T00:00:00.000000Z",
                      result={"pong": True})
    err = CommandReply("c-2", "assign", "d", "s", False, "2026-01-01T00:00:00.000000Z",
                       code="bad_args", reason="args.stream: missing", fix="give a stream")
    for reply in (ok, err):
        REPLY_SCHEMA.validate(json.loads(encode_reply(reply)))
        assert decode_reply(encode_reply(reply)) == reply
    topics = DeviceTopics(SITE, DEVICE)
    assert accepts_response_topic(topics, f"{BASE}/reply")
    assert accepts_response_topic(topics, f"{BASE}/reply/ctl-1")
    for topic in (f"{BASE}/ack", f"{BASE}/reply/+", f"{BASE}/reply/", f"{BASE}/replyx",
                  "lepton/v1/cmd-site/other/reply"):
        assert not accepts_response_topic(topics, topic), topic


def test_ctl_arguments_parse_json_values_and_refuse_what_is_not_key_value() -> None:
    assert parse_args_pairs(["stream=cam1", "threads=2", 'lines=[{"name": "a"}]', "x=a b"],
                            '{"source": "s", "stream": "old"}') == {
        "source": "s", "stream": "cam1", "threads": 2, "lines": [{"name": "a"}], "x": "a b"}
    for pairs, args in ((["novalue"], None), ([], "[1]"), ([], "{")):
        with pytest.raises(ConfigError):
            parse_args_pairs(pairs, args)


# -- on a real broker and agent ----------------------------------------------------------------

def test_each_handler_over_mqtt(device: Device, broker) -> None:
    d = device
    pong = d.send("ping")
    assert pong.ok and pong.result and pong.result["pong"] is True and not pong.replay
    assert pong.device == DEVICE and pong.site == SITE

    unknown = d.send("reformat-disk", {"bundle": "x"})
    assert not unknown.ok and unknown.code == "unknown_command"
    assert "ping" in (unknown.fix or "")
    malformed = d.raw("ping", b"{not json")
    assert not malformed["ok"] and malformed["error"]["code"] == "malformed"
    assert malformed["id"] is None
    bad_args = d.send("snapshot", {"stream": 5})
    assert not bad_args.ok and bad_args.code == "bad_args" and "stream" in (bad_args.reason or "")

    assert d.pipelines()["cam0"]["state"] == "running"
    config = d.send("get-config")
    assert config.ok and config.result is not None and config.result["version"] == 0
    toml = config.result["toml"]
    assert f'uri = "{SRC}"' in toml

    same = d.send("set-config", {"toml": toml})  # what runs, sent back: nothing to do
    assert same.ok and same.result and same.result["unchanged"] is True

    # a second pipeline through set-config: only it starts, cam0 keeps running
    two = toml.replace(f'uri = "{SRC}"\n', "").replace('stream = "cam0"\n', "") + f"""
[[pipelines]]
stream = "cam0"
source = "{SRC}"

[[pipelines]]
stream = "cam2"
source = "synthetic://160x120@4"
"""
    applied = d.send("set-config", {"toml": two, "version": 0})
    assert applied.ok, applied
    assert applied.result == {"version": 1, "started": ["cam2"], "stopped": [], "restarted": [],
                              "kept": ["cam0"]}
    assert d.starts("cam0") == 1 and d.starts("cam2") == 1
    assert d.pipelines()["cam2"]["state"] == "running"
    assert "version 1" in (d.state / "config.applied.toml").read_text()

    stale = d.send("set-config", {"toml": two, "version": 0})
    assert not stale.ok and stale.code == "version_conflict"
    assert "keepalive_s = 30\n" in two
    restart = d.send("set-config", {"toml": two.replace("keepalive_s = 30\n", "keepalive_s = 45\n")})
    assert not restart.ok and restart.code == "restart_required" and "[mqtt]" in restart.reason
    moved, n = re.subn(r'(?m)^(\[web\]\n(?:.*\n)*?listen = ).*$', r'\1"127.0.0.1:9"', two)
    assert n == 1, two  # the rig's config turns the web console off: listen = ""
    web = d.send("set-config", {"toml": moved})
    assert not web.ok and web.code == "restart_required" and "[web]" in web.reason
    syntax = d.send("set-config", {"toml": "[[pipelines]\n"})
    assert not syntax.ok and syntax.code == "bad_args"
    invalid = d.send("set-config", {"toml": two.replace('"cam2"', '"cam0"')})
    assert not invalid.ok and invalid.code == "bad_args" and "same stream" in invalid.reason

    # a change to cam2 and a new pipeline whose model does not load: both rolled back
    broken = two.replace("synthetic://160x120@4", "synthetic://160x120@3") + f"""
[[pipelines]]
stream = "cam3"
source = "{SRC}"
model = "{d.state / 'no-such-model'}"
"""
    failed = d.send("set-config", {"toml": broken})
    assert not failed.ok and failed.code == "failed", failed
    assert "cam3" in failed.reason and "previous pipelines run again" in failed.reason
    after = d.pipelines()
    assert set(after) == {"cam0", "cam2"}, after
    assert after["cam2"]["source"] == "synthetic://160x120@4" and after["cam2"]["state"] == \
        "running"
    assert d.send("ping").result["config_version"] == 1  # type: ignore[index]
    assert d.starts("cam0") == 1  # untouched throughout

    # assign, replace, unassign, restart-pipeline
    assigned = d.send("assign", {"stream": "cam4", "source": "synthetic://96x64@4"})
    assert assigned.ok and assigned.result["started"] == ["cam4"]  # type: ignore[index]
    replaced = d.send("assign", {"stream": "cam4", "source": "synthetic://96x64@2"})
    assert replaced.ok and replaced.result["restarted"] == ["cam4"]  # type: ignore[index]
    assert d.pipelines()["cam4"]["source"] == "synthetic://96x64@2"
    gone = d.send("unassign", {"stream": "cam2"})
    assert gone.ok and gone.result["stopped"] == ["cam2"], gone  # type: ignore[index]
    assert "cam2" not in d.pipelines()
    assert d.send("unassign", {"stream": "cam2"}).code == "not_found"
    bad_assign = d.send("assign", {"stream": "cam5", "source": "nope://x"})
    assert not bad_assign.ok and bad_assign.code == "bad_args"

    before = d.starts("cam0")
    again = d.send("restart-pipeline", {"stream": "cam0"})
    assert again.ok and again.result == {"stream": "cam0", "state": "running"}
    assert d.starts("cam0") == before + 1
    assert d.send("restart-pipeline", {"stream": "nope"}).code == "not_found"

    # snapshot: a JPEG of cam0, sent as a shard whose bytes hash to the reply's sha256
    chunks: dict[str, dict[int, bytes]] = {}
    counts: dict[str, int] = {}
    got_all = threading.Event()

    def on_shard(client: Any, userdata: Any, message: Any) -> None:
        props = dict(message.properties.UserProperty)
        if props.get("lepton-part") != "chunk":
            return
        blob = props["blob-sha256"]
        chunks.setdefault(blob, {})[int(props["chunk-index"])] = bytes(message.payload)
        counts[blob] = int(props["chunk-count"])
        if len(chunks[blob]) == counts[blob]:
            got_all.set()

    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    watcher.on_message = on_shard
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(f"{BASE}/shards/+", qos=1)
    watcher.loop_start()
    try:
        time.sleep(0.5)  # the SUBACK; a missed chunk fails the wait below, not silently
        shot = d.send("snapshot", {"stream": "cam0", "quality": 90})
        assert shot.ok, shot
        blob = shot.result["sha256"]  # type: ignore[index]
        assert got_all.wait(30), "the snapshot's chunks did not arrive"
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    data = b"".join(chunks[blob][i] for i in range(counts[blob]))
    assert hashlib.sha256(data).hexdigest() == blob and len(data) == shot.result["bytes"]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (120, 160)

    diag = d.send("diag", {"checks": ["model", "pipelines"]}, timeout=150)
    assert diag.ok, diag
    names = {c["name"] for c in diag.result["checks"]}  # type: ignore[index]
    assert names == {"model", "pipelines"}, diag.result
    assert d.send("diag", {"checks": ["nope"]}).code == "bad_args"


def test_a_duplicate_id_is_acted_on_once_and_replayed_after_a_restart(device: Device) -> None:
    d = device
    first = d.send("assign", {"stream": "cam1", "source": "synthetic://96x64@4"}, "assign-1")
    assert first.ok and not first.replay
    second = d.send("assign", {"stream": "cam1", "source": "synthetic://96x64@4"}, "assign-1")
    assert second.replay and second.to_json() | {"replay": False} == first.to_json()
    assert d.starts("cam1") == 1
    conflict = d.send("ping", command_id="assign-1")
    assert not conflict.ok and conflict.code == "id_conflict"
    restarted = d.send("restart-pipeline", {"stream": "cam0"}, "restart-1")
    assert restarted.ok and d.starts("cam0") == 2
    repeated = d.send("restart-pipeline", {"stream": "cam0"}, "restart-1")
    assert repeated.replay and repeated.ok and d.starts("cam0") == 2  # not restarted again

    d.proc.restart(signal.SIGTERM)
    d.wait_up()
    # the applied config came back with the agent: cam1 runs (one start, from the config)
    wait_for(lambda: d.pipelines().get("cam1", {}).get("state") == "running", "cam1 to run")
    assert d.send("ping").result["config_version"] == 1  # type: ignore[index]
    third = d.send("assign", {"stream": "cam1", "source": "synthetic://96x64@4"}, "assign-1")
    assert third.replay and third.to_json() == second.to_json()
    assert d.starts("cam1") == 1  # this run: the start from config.applied.toml only


def test_a_retained_command_is_ignored(broker, tmp_path: Path) -> None:
    """One retained before the agent subscribes (delivered at subscribe, flagged retained) and
    one published retained while it runs (retain-as-published keeps the flag): no reply to
    either, one log line each."""
    replies: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: replies.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"{BASE}/reply/#", qos=1)
    client.loop_start()

    def retained(command_id: str) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{BASE}/reply/retained"
        props.CorrelationData = command_id.encode()
        client.publish(f"{BASE}/cmd/ping", encode_command(command_id), qos=1, retain=True,
                       properties=props).wait_for_publish(10)

    try:
        retained("retained-before")
        d = Device(tmp_path, broker.url)
        try:
            wait_for(lambda: "retained-before" not in d.proc.log and
                     d.proc.log.count("ignoring a retained command") >= 1,
                     "the agent to log the retained command")
            retained("retained-live")
            wait_for(lambda: d.proc.log.count("ignoring a retained command") >= 2,
                     "the agent to log the live retained command")
            assert d.send("ping").ok  # it still answers, and answered neither of those
            assert not [r for r in replies if b"retained-" in r], replies
        finally:
            d.close()
    finally:
        client.publish(f"{BASE}/cmd/ping", b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()


def test_ctl_exit_codes(device: Device, broker) -> None:
    base = ("ctl", "--broker", broker.url, "--site", SITE)
    ok = run_cli(*base, DEVICE, "ping", "--timeout", "20")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["pong"] is True
    listed = run_cli(*base, DEVICE, "pipelines", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["ok"] is True
    failed = run_cli(*base, DEVICE, "unassign", "stream=nope")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "lepton-agent: unassign failed: not_found: no pipeline 'nope'")
    replay = run_cli(*base, DEVICE, "ping", "--id", "same-id")
    again = run_cli(*base, DEVICE, "ping", "--id", "same-id", "--json")
    assert replay.returncode == 0 and again.returncode == 0
    assert json.loads(again.stdout)["replay"] is True
    for bad in (("ping", "novalue"), ("Bad-Name",), ("ping", "--id", "a b")):
        refused = run_cli(*base, DEVICE, *bad)
        assert refused.returncode == 2, refused
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    silent = run_cli(*base, "no-such-device", "ping", "--timeout", "1")
    assert silent.returncode == 3 and "no reply" in silent.stderr


def test_outcomes_are_a_bounded_ring_that_survives_reopening(tmp_path: Path) -> None:
    from agent.service.commands import Outcome, OutcomeStore
    from agent.storage.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox.db")
    store = OutcomeStore(outbox, slots=4)
    for i in range(6):
        store.put(Outcome(f"id-{i}", "ping", {"n": i}))
    store.put(Outcome("id-5", "ping", {"n": 55}))  # the same id keeps its slot
    outbox.close()
    outbox = Outbox(tmp_path / "outbox.db")
    reopened = OutcomeStore(outbox, slots=4)
    assert reopened.get("id-0") is None and reopened.get("id-1") is None  # the oldest went
    assert [reopened.get(f"id-{i}").reply for i in range(2, 6)] == [  # type: ignore[union-attr]
        {"n": 2}, {"n": 3}, {"n": 4}, {"n": 55}]
    reopened.put(Outcome("id-6", "ping", None))
    assert reopened.get("id-2") is None and reopened.get("id-6") == Outcome("id-6", "ping", None)
    outbox.close()


def test_a_command_the_agent_died_acting_on_is_answered_interrupted(broker,
                                                                    tmp_path: Path) -> None:
    """The agent marks a state-changing command started before it acts: a SIGKILL after that
    leaves the mark, and the id's repeat says ``interrupted`` instead of acting again."""
    from agent.service.commands import Outcome, OutcomeStore
    from agent.storage.outbox import Outbox

    (tmp_path / "state").mkdir()
    outbox = Outbox(tmp_path / "state" / "outbox.db")
    OutcomeStore(outbox).put(Outcome("killed-1", "assign", None))  # what the dead agent left
    outbox.close()
    d = Device(tmp_path, broker.url)
    try:
        reply = d.send("assign", {"stream": "cam1", "source": SRC}, "killed-1")
        assert not reply.ok and reply.code == "interrupted" and "new id" in (reply.fix or "")
        assert d.starts("cam1") == 0 and "cam1" not in d.pipelines()
        again = d.send("assign", {"stream": "cam1", "source": SRC}, "killed-1")
        assert again.replay and again.code == "interrupted"
    finally:
        d.close()


def test_the_diag_check_names_are_diags_own() -> None:
    """The runtime cannot import diag, so it keeps the names; they must not drift apart."""
    from agent.config import Secrets, load_config
    from agent.diag.checks import all_checks
    from agent.service.commands import DIAG_CHECKS

    assert set(DIAG_CHECKS) == {"config", *all_checks(load_config(None), Secrets(), None)}
