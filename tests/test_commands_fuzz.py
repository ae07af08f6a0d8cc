"""Fuzzed commands (issue 18): 10k hypothesis payloads through the router of a real, running
agent (in this process, its pipeline on a synthetic camera), then a few hundred over a real
mosquitto to an agent process. Every one is answered (ok, or an error with a code and a reason)
and the agent stays alive, with no traceback in its log."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent.config import load_config
from agent.core.contract.command import COMMAND_SCHEMA, ERROR_CODES, decode_reply
from agent.schemas import load_schema
from agent.service.app import AgentApp
from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess, wait_for

FUZZ_EXAMPLES = int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "10000"))
SITE, DEVICE = "fz", "fuzz-1"
BASE = f"lepton/v1/{SITE}/{DEVICE}"
NAMES = ["ping", "get-config", "set-config", "pipelines", "assign", "unassign", "snapshot",
         "restart-pipeline", "diag", "deploy-model", "Ping", "", "x" * 40, "../ack", "cmd"]
REPLY = Draft202012Validator(load_schema("command-reply.v1"))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
ARG_KEYS = st.sampled_from(["stream", "source", "model", "toml", "version", "checks", "quality",
                            "timeout_s", "threads", "lines", "zones", "x"])
ARG_VALUES = JSON | st.sampled_from(["cam0", "nope", "synthetic://64x48@2", "[model]\n",
                                     "[mqtt]\nbroker = ''\n", "x = ", 0, -1, 101, 0.001])
ARGS = st.dictionaries(ARG_KEYS, ARG_VALUES, max_size=3) | JSON
IDS = st.sampled_from(["a", "dup-1", "dup-2", "x" * 128, "x" * 129, "sp ace", "", "ü"]) \
    | st.text("abcdef0123456789-", min_size=1, max_size=40) | JSON
ENVELOPE = st.fixed_dictionaries(
    {"schema": st.sampled_from([COMMAND_SCHEMA, {"id": "lepton.command", "version": 2}, None]),
     "id": IDS},
    optional={"args": ARGS, "extra": JSON})


# Well-formed envelopes (a valid id, args of the right keys) so that most payloads reach a
# handler and fuzz its arguments, not only the decoder.
WELL_FORMED = st.fixed_dictionaries(
    {"schema": st.just(COMMAND_SCHEMA),
     "id": st.text("abcdef0123456789-", min_size=1, max_size=12)},
    optional={"args": st.dictionaries(ARG_KEYS, ARG_VALUES, max_size=3)})


def _payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        JSON.map(lambda v: json.dumps(v).encode()),
        ENVELOPE.map(lambda v: json.dumps(v).encode()),
        ENVELOPE.map(lambda v: json.dumps(v).encode()[:-3]),  # cut short
        WELL_FORMED.map(lambda v: json.dumps(v).encode()),
        WELL_FORMED.map(lambda v: json.dumps(v).encode()),
        WELL_FORMED.map(lambda v: json.dumps(v).encode()),
    )


def _topics() -> st.SearchStrategy[str]:
    known = st.sampled_from(NAMES[:9]).map(lambda n: f"{BASE}/cmd/{n}")
    return known | known | known | st.sampled_from(NAMES).map(lambda n: f"{BASE}/cmd/{n}") \
        | st.sampled_from([f"{BASE}/cmd", f"{BASE}/cmd/ping/more", "lepton/v1/fz/other/cmd/ping"])


def _check_answered(body: dict[str, Any]) -> None:
    REPLY.validate(body)
    if not body["ok"]:
        assert body["error"]["code"] in ERROR_CODES
        assert body["error"]["reason"].strip()


class InProcessAgent:
    """A real AgentApp on its own event loop in a thread (offline: the router is driven
    directly)."""

    def __init__(self, tmp: Path) -> None:
        config = tmp / "agent.toml"
        config.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "{SITE}"
state_dir = "{tmp / 'state'}"
shutdown_grace_s = 1
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "synthetic://160x120@10"
[mqtt]
broker = ""
""")
        self.app = AgentApp(load_config(config))
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.app.commands is not None or self.error, "the agent to start")
        assert self.error is None, self.error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.app.run(self.stop))
        except BaseException as exc:
            self.error = exc

    def handle(self, topic: str, payload: bytes) -> Any:
        commands = self.app.commands
        assert commands is not None
        future = asyncio.run_coroutine_threadsafe(
            commands.handle(topic, payload, response_topic=f"{BASE}/reply/t"), self.loop)
        return future.result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = InProcessAgent(tmp_path_factory.mktemp("fuzz"))
    yield a
    a.close()


SEEN: Counter[str] = Counter()


def _fuzz(agent: InProcessAgent, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(topic=_topics(), payload=_payloads())
    def one(topic: str, payload: bytes) -> None:
        reply = agent.handle(topic, payload)
        assert reply is not None  # never retained here: every message gets a reply
        _check_answered(reply.to_json())
        SEEN["ok" if reply.ok else str(reply.code)] += 1
        assert agent.thread.is_alive() and agent.error is None

    one()


def test_a_thousand_fuzzed_commands_are_each_answered(agent: InProcessAgent) -> None:
    _fuzz(agent, 1000)


@pytest.mark.slow
def test_ten_thousand_fuzzed_commands_are_each_answered(agent: InProcessAgent) -> None:
    """The issue's 10k (about 2 minutes on 2 shared cores: some reach set-config, assign or
    diag, which start pipelines and processes)."""
    _fuzz(agent, FUZZ_EXAMPLES)


def test_after_the_fuzz_the_agent_still_runs_its_pipeline(agent: InProcessAgent) -> None:
    # the fuzz reached the handlers, not only the decoder
    assert {"ok", "malformed", "unknown_command", "bad_args"} <= set(SEEN), SEEN
    print(f"fuzzed replies by outcome: {dict(SEEN.most_common())}")
    reply = agent.handle(f"{BASE}/cmd/pipelines", json.dumps(
        {"schema": COMMAND_SCHEMA, "id": f"after-{time.time_ns()}"}).encode())
    assert reply.ok, reply
    states = {p["stream"]: p["state"] for p in reply.result["pipelines"]}
    assert "running" in states.values(), states


def test_a_few_hundred_fuzzed_commands_over_mqtt(broker, tmp_path: Path) -> None:
    """Through mosquitto to an agent process: each published payload is answered on its
    response topic with its correlation data, and the agent logs no traceback."""
    from agent.cli.ctl import CommandClient

    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "{SITE}"
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "synthetic://160x120@5"
[mqtt]
broker = "{broker.url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
""")
    proc = AgentProcess(config)
    client = CommandClient(broker.url)
    try:
        wait_for(lambda: client.send_raw(SITE, DEVICE, "ping", json.dumps(
            {"schema": COMMAND_SCHEMA, "id": f"up-{time.time_ns()}"}).encode(), 1.0),
            "the agent to answer a ping", timeout=60)
        samples: list[tuple[str, bytes]] = []

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(name=st.sampled_from([n for n in NAMES if n and "/" not in n]),
               payload=_payloads())
        def collect(name: str, payload: bytes) -> None:
            samples.append((name, payload))

        collect()
        assert len(samples) >= 250
        for name, payload in samples:
            raw = client.send_raw(SITE, DEVICE, name, payload, 30.0)
            assert raw is not None, f"no reply to {name} {payload[:80]!r}"
            body = json.loads(raw)
            _check_answered(body)
            decode_reply(raw)
        assert proc.running
        assert client.send(SITE, DEVICE, "ping", {}, 10.0).ok
    finally:
        client.close()
        proc.stop(60)
    assert "Traceback" not in proc.log, proc.log[-3000:]
