"""Commands to a device and their replies: ``lepton.command`` v1 on
``lepton/v1/{site}/{device}/cmd/{name}`` and ``lepton.command-reply`` v1 on the MQTT 5 response
topic the command gave (else ``lepton/v1/{site}/{device}/reply``), with its correlation data.

Sans I/O: the topic names, the decoder that says why a command is refused (a :class:`CommandError`
with a code), and the reply's encoder and decoder. What each command does is the runtime's
(``agent.service.commands``); docs/commands.md is the reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.core.contract.topics import DeviceTopics
from agent.core.contract.wire import compact

COMMAND_SCHEMA = {"id": "lepton.command", "version": 1}
REPLY_SCHEMA = {"id": "lepton.command-reply", "version": 1}
# Ids are echoed in replies and logs: one token, no spaces or control characters. 128 holds a
# UUID with a prefix.
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_PAYLOAD = 256 * 1024  # a whole config document fits many times over

ErrorCode = Literal[
    "malformed",          # not a lepton.command v1 message: nothing could be acted on
    "bad_response_topic",  # the response topic is not this device's reply topic
    "unknown_command",    # no handler of that name
    "bad_args",           # the command's arguments are refused (which and why in reason)
    "id_conflict",        # the id was used before for another command
    "busy",               # too many commands in progress
    "not_found",          # the stream (or other thing) named does not exist
    "failed",             # the action was tried and failed (rolled back where it changes state)
    "restart_required",   # the change cannot be applied while the agent runs
    "version_conflict",   # set-config against a config version that is no longer current
    "interrupted",        # the agent stopped while acting on this id: the outcome is unknown
    "storage",            # the outcome cannot be recorded, so the command was not acted on
    "timeout",            # the action did not finish in time
    "internal",           # a bug: the reason names it, the log has the rest
]
ERROR_CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]


class CommandError(ValueError):
    """A command refused before (or instead of) acting: ``code`` says which kind, the message
    why, ``fix`` what to do (when there is something)."""

    def __init__(self, code: ErrorCode, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.code: ErrorCode = code
        self.reason = reason
        self.fix = fix


def command_topic(topics: DeviceTopics, name: str) -> str:
    """Where command ``name`` for this device is published."""
    return f"{topics.base}/cmd/{check_name(name)}"


def command_filter(topics: DeviceTopics) -> str:
    """The subscription a device takes for its commands."""
    return f"{topics.base}/cmd/+"


def reply_topic(topics: DeviceTopics, session: str | None = None) -> str:
    """This device's reply topic: ``.../reply`` (the default) or ``.../reply/{session}``, which
    a client picks as its MQTT 5 response topic."""
    return topics.reply + (f"/{session}" if session else "")


def accepts_response_topic(topics: DeviceTopics, topic: str) -> bool:
    """A device replies only below its own ``reply`` topic: a command cannot make it publish
    on another topic (its ``ack``, another device's), whatever the broker's ACLs allow."""
    if topic == topics.reply:
        return True
    rest = topic.removeprefix(topics.reply + "/")
    return rest != topic and bool(rest) and all(
        seg and "+" not in seg and "#" not in seg for seg in rest.split("/")) \
        and len(topic.encode()) <= 65535 and "\x00" not in topic


def check_name(name: str) -> str:
    """``name`` if it can be a command name (lower-case letters, digits, ``-``), else
    ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"command name {name!r} is not 1-32 of a-z, 0-9 and '-' (starting "
                         "with a letter)")
    return name


def command_name(topics: DeviceTopics, topic: str) -> str:
    """The command name of a topic below this device's ``cmd/``; CommandError otherwise."""
    prefix = f"{topics.base}/cmd/"
    if not topic.startswith(prefix):
        raise CommandError("malformed", f"{topic!r} is not below {prefix}")
    name = topic[len(prefix):]
    try:
        return check_name(name)
    except ValueError as exc:
        raise CommandError("unknown_command", str(exc),
                           "send one of the commands docs/commands.md lists") from None


@dataclass(frozen=True)
class Command:
    """A decoded ``lepton.command`` v1."""

    name: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)


def encode_command(command_id: str, args: Mapping[str, Any] | None = None) -> bytes:
    """The ``lepton.command`` v1 payload (the name travels in the topic)."""
    if not _ID.match(command_id):
        raise ValueError(f"command id {command_id!r} is not 1-128 of A-Z a-z 0-9 _ . : -")
    return compact({"schema": COMMAND_SCHEMA, "id": command_id, "args": dict(args or {})})


def peek_id(payload: bytes) -> str | None:
    """The command id of a payload, if it has a well-formed one (to answer a command whose
    other parts are malformed under its own id)."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and _ID.match(value) else None


def decode_command(name: str, payload: bytes) -> Command:
    """The command of ``payload`` (its name from the topic); CommandError ``malformed`` saying
    what is wrong."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError("malformed", f"payload of {len(payload)} bytes is over the "
                           f"{MAX_PAYLOAD} byte limit", "send a smaller command")
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError("malformed", f"payload is not UTF-8 JSON: {exc}",
                           'send {"schema": {"id": "lepton.command", "version": 1}, '
                           '"id": "...", "args": {...}}') from None
    except RecursionError:
        raise CommandError("malformed", "payload nests too deeply") from None
    if not isinstance(body, dict):
        raise CommandError("malformed", f"payload is a JSON {type(body).__name__}, not an object")
    if body.get("schema") != COMMAND_SCHEMA:
        raise CommandError("malformed", "payload lacks schema lepton.command v1",
                           'add "schema": {"id": "lepton.command", "version": 1}')
    extra = sorted(set(body) - {"schema", "id", "args"})
    if extra:
        raise CommandError("malformed", f"unknown key(s) {', '.join(map(repr, extra))}",
                           "a command has only schema, id and args")
    command_id = body.get("id")
    if not isinstance(command_id, str) or not _ID.match(command_id):
        raise CommandError("malformed", f"id {command_id!r} is not 1-128 characters of "
                           "A-Z a-z 0-9 _ . : -", "give every command a unique id (a UUID)")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise CommandError("malformed", f"args is a JSON {type(args).__name__}, not an object")
    return Command(name, command_id, args)


@dataclass(frozen=True)
class CommandReply:
    """A ``lepton.command-reply`` v1: ``ok`` with ``result``, or an error (``code``, ``reason``,
    ``fix``). ``replay``: the stored outcome of an id already acted on."""

    id: str | None
    command: str | None
    device: str
    site: str
    ok: bool
    ts: str
    result: dict[str, Any] | None = None
    code: str | None = None
    reason: str | None = None
    fix: str | None = None
    replay: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"schema": REPLY_SCHEMA, "id": self.id, "command": self.command,
                                "device": self.device, "site": self.site, "ts": self.ts,
                                "ok": self.ok, "replay": self.replay}
        if self.ok:
            body["result"] = self.result if self.result is not None else {}
        else:
            error: dict[str, Any] = {"code": self.code, "reason": self.reason}
            if self.fix:
                error["fix"] = self.fix
            body["error"] = error
        return body


def encode_reply(reply: CommandReply) -> bytes:
    """The ``lepton.command-reply`` v1 payload."""
    return compact(reply.to_json())


def decode_reply(payload: bytes) -> CommandReply:
    """A ``lepton.command-reply`` v1 payload; ValueError says what is malformed."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"reply is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("schema") != REPLY_SCHEMA:
        raise ValueError("payload lacks schema lepton.command-reply v1")
    ok = body.get("ok")
    if not isinstance(ok, bool):
        raise ValueError("reply lacks a boolean 'ok'")
    for key in ("device", "site", "ts"):
        if not isinstance(body.get(key), str):
            raise ValueError(f"reply lacks a string {key!r}")
    if ok:
        result = body.get("result")
        if not isinstance(result, dict):
            raise ValueError("an ok reply lacks a 'result' object")
        return CommandReply(body.get("id"), body.get("command"), body["device"], body["site"],
                            True, body["ts"], result=result, replay=bool(body.get("replay")))
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("reason"), str) \
            or error.get("code") not in ERROR_CODES:
        raise ValueError("an error reply lacks 'error' with a known code and a reason")
    return CommandReply(body.get("id"), body.get("command"), body["device"], body["site"], False,
                        body["ts"], code=error["code"], reason=error["reason"],
                        fix=error.get("fix"), replay=bool(body.get("replay")))

