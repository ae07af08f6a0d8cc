"""The command contract without a device: topics, the command decoder's refusals, the reply's
encoder and decoder, checked against the JSON Schemas (command.v1, command-reply.v1) as the
independent reference and against known answers. The runtime's handlers are tested in
tests/test_commands.py on real agents; these pin the sans-I/O part for the mutation run."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.contract.command import (
    COMMAND_SCHEMA,
    ERROR_CODES,
    MAX_PAYLOAD,
    Command,
    CommandError,
    CommandReply,
    accepts_response_topic,
    check_name,
    command_filter,
    command_name,
    command_topic,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    peek_id,
    reply_topic,
)
from agent.core.contract.topics import DeviceTopics
from agent.schemas import load_schema

TOPICS = DeviceTopics("site-a", "cam1")
COMMAND_V1 = load_schema("command.v1")
REPLY_V1 = load_schema("command-reply.v1")
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
args = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


def test_topics_are_below_the_device() -> None:
    assert command_topic(TOPICS, "set-config") == "lepton/v1/site-a/cam1/cmd/set-config"
    assert command_filter(TOPICS) == "lepton/v1/site-a/cam1/cmd/+"
    assert reply_topic(TOPICS) == "lepton/v1/site-a/cam1/reply"
    assert reply_topic(TOPICS, "ctl-7") == "lepton/v1/site-a/cam1/reply/ctl-7"
    assert command_name(TOPICS, "lepton/v1/site-a/cam1/cmd/ping") == "ping"


@pytest.mark.parametrize("topic, code", [
    ("lepton/v1/site-a/cam2/cmd/ping", "malformed"),  # another device
    ("lepton/v1/site-a/cam1/cmdping", "malformed"),
    ("lepton/v1/site-a/cam1/cmd/Ping", "unknown_command"),
    ("lepton/v1/site-a/cam1/cmd/", "unknown_command"),
    ("lepton/v1/site-a/cam1/cmd/ping/x", "unknown_command"),
])
def test_a_topic_that_is_not_a_command_is_refused_by_kind(topic: str, code: str) -> None:
    with pytest.raises(CommandError) as refused:
        command_name(TOPICS, topic)
    assert refused.value.code == code
    if code == "malformed":
        assert refused.value.reason == f"{topic!r} is not below lepton/v1/site-a/cam1/cmd/"
    else:
        assert refused.value.fix == "send one of the commands docs/commands.md lists"


@pytest.mark.parametrize("name, ok", [
    ("a", True), ("ping", True), ("set-config", True), ("a" * 32, True), ("x1-2", True),
    ("", False), ("a" * 33, False), ("1ping", False), ("-a", False), ("Ping", False),
    ("set_config", False), ("ping ", False), ("pi/ng", False),
])
def test_command_names(name: str, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(ValueError, match="is not 1-32 of a-z, 0-9 and '-'"):
            check_name(name)


@pytest.mark.parametrize("topic, ok", [
    ("lepton/v1/site-a/cam1/reply", True),
    ("lepton/v1/site-a/cam1/reply/ctl-1", True),
    ("lepton/v1/site-a/cam1/reply/a/b", True),
    ("lepton/v1/site-a/cam1/reply/", False),
    ("lepton/v1/site-a/cam1/reply/a//b", False),
    ("lepton/v1/site-a/cam1/reply/+", False),
    ("lepton/v1/site-a/cam1/reply/#", False),
    ("lepton/v1/site-a/cam1/reply/a+b", False),
    ("lepton/v1/site-a/cam1/reply/x\x00", False),
    ("lepton/v1/site-a/cam1/replyx", False),
    ("lepton/v1/site-a/cam1/ack", False),
    ("lepton/v1/site-a/cam2/reply", False),
    ("lepton/v1/site-a/cam1/reply/" + "a" * 65600, False),
])
def test_a_device_answers_only_below_its_own_reply_topic(topic: str, ok: bool) -> None:
    assert accepts_response_topic(TOPICS, topic) is ok


@given(ids, args)
def test_an_encoded_command_is_valid_and_decodes_to_itself(command_id: str,
                                                          arguments: dict[str, Any]) -> None:
    payload = encode_command(command_id, arguments)
    jsonschema.validate(json.loads(payload), COMMAND_V1)
    assert decode_command("ping", payload) == Command("ping", command_id, arguments)
    assert peek_id(payload) == command_id


def test_a_command_without_args_has_empty_args() -> None:
    payload = encode_command("c-1")
    assert json.loads(payload) == {"schema": COMMAND_SCHEMA, "id": "c-1", "args": {}}
    body = {"schema": COMMAND_SCHEMA, "id": "c-1"}
    assert decode_command("ping", json.dumps(body).encode()) == Command("ping", "c-1", {})


@pytest.mark.parametrize("bad", ["", "a b", "a" * 129, "x/y", "é"])
def test_encode_refuses_a_bad_id(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape("is not 1-128 of A-Z a-z 0-9 _ . : -")):
        encode_command(bad)


def _body(**changes: Any) -> bytes:
    body: dict[str, Any] = {"schema": COMMAND_SCHEMA, "id": "c-1", "args": {}}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize("payload, reason", [
    (b"\xff", "payload is not UTF-8 JSON"),
    (b"{", "payload is not UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "payload nests too deeply"),
    (b"[1]", "payload is a JSON list, not an object"),
    (b'"x"', "payload is a JSON str, not an object"),
    (_body(schema=...), "payload lacks schema lepton.command v1"),
    (_body(schema={"id": "lepton.command", "version": 2}), "payload lacks schema lepton.command v1"),
    (_body(name="ping", zz=1), "unknown key(s) 'name', 'zz'"),
    (_body(id=...), "id None is not 1-128 characters"),
    (_body(id=7), "id 7 is not 1-128 characters"),
    (_body(id="a b"), "id 'a b' is not 1-128 characters"),
    (_body(args=[1]), "args is a JSON list, not an object"),
    (_body(args="x"), "args is a JSON str, not an object"),
])
def test_a_malformed_command_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError) as refused:
        decode_command("ping", payload)
    assert refused.value.code == "malformed"
    assert refused.value.reason.startswith(reason), refused.value.reason
    assert str(refused.value) == refused.value.reason


def test_the_decoder_says_how_to_fix_what_it_can() -> None:
    fixes = {}
    for payload in (b"{", _body(schema=...), _body(zz=1), _body(id="a b")):
        with pytest.raises(CommandError) as refused:
            decode_command("ping", payload)
        fixes[payload] = refused.value.fix
    assert list(fixes.values()) == [
        '''send {"schema": {"id": "lepton.command", "version": 1}, "id": "...", "args": {...}}''',
        'add "schema": {"id": "lepton.command", "version": 1}',
        "a command has only schema, id and args",
        "give every command a unique id (a UUID)",
    ]


def test_a_payload_over_the_limit_is_refused_before_it_is_parsed() -> None:
    at_limit = _body(args={"pad": "x" * (MAX_PAYLOAD - len(_body(args={"pad": ""})))})
    assert len(at_limit) == MAX_PAYLOAD
    assert decode_command("ping", at_limit).args["pad"]
    over = at_limit[:-1] + b" }"
    with pytest.raises(CommandError) as refused:
        decode_command("ping", over)
    assert refused.value.reason == (f"payload of {MAX_PAYLOAD + 1} bytes is over the "
                                    f"{MAX_PAYLOAD} byte limit")
    assert refused.value.fix == "send a smaller command"


@pytest.mark.parametrize("payload", [b"\xff", b"{", b"[1]", _body(id=7), _body(id="a b"),
                                     _body(id="")])
def test_peek_id_finds_no_id_in_a_malformed_payload(payload: bytes) -> None:
    assert peek_id(payload) is None


def test_peek_id_finds_the_id_of_an_otherwise_malformed_command() -> None:
    assert peek_id(_body(schema=..., args=[1], id="c-9")) == "c-9"
    assert peek_id(b"[" * 100_000) is None


replies = st.builds(
    CommandReply, id=st.none() | ids, command=st.none() | names, device=st.just("cam1"),
    site=st.just("site-a"), ok=st.booleans(), ts=st.just("2026-12-01T12:00:00.000Z"),
    result=st.none() | args, code=st.sampled_from(ERROR_CODES), reason=st.text(min_size=1, max_size=30),
    fix=st.none() | st.text(min_size=1, max_size=20), replay=st.booleans())


@given(replies)
def test_an_encoded_reply_is_valid_and_decodes_to_what_it_says(reply: CommandReply) -> None:
    payload = encode_reply(reply)
    body = json.loads(payload)
    jsonschema.validate(body, REPLY_V1)
    back = decode_reply(payload)
    assert (back.id, back.command, back.device, back.site, back.ok, back.ts, back.replay) == (
        reply.id, reply.command, reply.device, reply.site, reply.ok, reply.ts, reply.replay)
    if reply.ok:
        assert back.result == (reply.result if reply.result is not None else {})
        assert "error" not in body and (back.code, back.reason, back.fix) == (None, None, None)
    else:
        assert "result" not in body and back.result is None
        assert (back.code, back.reason, back.fix) == (reply.code, reply.reason, reply.fix)
        assert ("fix" in body["error"]) is bool(reply.fix)


def test_a_reply_in_known_words() -> None:
    reply = CommandReply("c-1", "assign", "cam1", "site-a", False, "2026-12-01T12:00:00.000Z",
                         code="bad_args", reason="no stream", fix="name one")
    assert json.loads(encode_reply(reply)) == {
        "schema": {"id": "lepton.command-reply", "version": 1}, "id": "c-1",
        "command": "assign", "device": "cam1", "site": "site-a",
        "ts": "2026-12-01T12:00:00.000Z", "ok": False, "replay": False,
        "error": {"code": "bad_args", "reason": "no stream", "fix": "name one"}}


def _reply(**changes: Any) -> bytes:
    body: dict[str, Any] = {"schema": {"id": "lepton.command-reply", "version": 1}, "id": "c",
                            "command": "ping", "device": "d", "site": "s", "ts": "t", "ok": True,
                            "result": {}}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize("payload, reason", [
    (b"{", "reply is not JSON"),
    (b"\xff", "reply is not JSON"),
    (b"[]", "payload lacks schema lepton.command-reply v1"),
    (_reply(schema={"id": "lepton.command", "version": 1}),
     "payload lacks schema lepton.command-reply v1"),
    (_reply(ok=...), "reply lacks a boolean 'ok'"),
    (_reply(ok=1), "reply lacks a boolean 'ok'"),
    (_reply(device=...), "reply lacks a string 'device'"),
    (_reply(site=3), "reply lacks a string 'site'"),
    (_reply(ts=None), "reply lacks a string 'ts'"),
    (_reply(result=...), "an ok reply lacks a 'result' object"),
    (_reply(result=[]), "an ok reply lacks a 'result' object"),
    (_reply(ok=False, result=...), "an error reply lacks 'error' with a known code and a reason"),
    (_reply(ok=False, error={"code": "nope", "reason": "x"}),
     "an error reply lacks 'error' with a known code and a reason"),
    (_reply(ok=False, error={"code": "failed"}),
     "an error reply lacks 'error' with a known code and a reason"),
    (_reply(ok=False, error={"code": "failed", "reason": 3}),
     "an error reply lacks 'error' with a known code and a reason"),
    (_reply(ok=False, error="failed"),
     "an error reply lacks 'error' with a known code and a reason"),
])
def test_a_malformed_reply_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        decode_reply(payload)
    assert str(refused.value).startswith(reason), str(refused.value)


def test_a_replayed_error_reply_keeps_its_fields() -> None:
    back = decode_reply(_reply(ok=False, result=..., replay=True,
                               error={"code": "interrupted", "reason": "stopped", "fix": "again"}))
    assert (back.ok, back.code, back.reason, back.fix, back.replay) == (
        False, "interrupted", "stopped", "again", True)
    assert decode_reply(_reply()).replay is False
