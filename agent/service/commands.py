"""Commands from the datacenter: the router, its handlers and the store of their outcomes.

A command arrives on ``lepton/v1/{site}/{device}/cmd/{name}`` (``lepton.command`` v1, contract
in ``agent.core.contract.command``, reference docs/commands.md). The router answers every one
on the MQTT 5 response topic with its correlation data: ``ok`` with a result, or an error with
a code, a reason and (where there is one) a fix. Nothing a sender writes reaches a traceback:
an unexpected exception in a handler is one ``internal`` error line (its traceback goes to a
debug-log file).

Every command has an id; its outcome is committed to the outbox's key/value state
(``Outbox.append([], state=...)``, the only storage API used here) in a ring of
:data:`OUTCOME_SLOTS` keys, so a repeated id is answered with the stored outcome, marked
``replay``, without acting again, also after a restart. A command that changes something is
marked as started before it acts: if the agent dies half-way, the id's replay says
``interrupted`` instead of acting twice.

The pipeline commands (``set-config``, ``assign``, ``unassign``) all make a new config and apply
it through :meth:`CommandService.apply`: only pipelines whose spec changed stop and start
(through ``AgentApp.stop_pipeline``/``start_pipeline``, i.e. PipelineSet), a start that fails
restores the previous pipelines, and the applied config is written to
``{state_dir}/config.applied.toml`` with its version, which :func:`load_applied` reads at the
next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import paho.mqtt.client as paho
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.config import AgentConfig, PipelineSection, PipelineSpec, load_config
from agent.core.contract.command import (
    Command,
    CommandError,
    CommandReply,
    ErrorCode,
    accepts_response_topic,
    command_filter,
    command_name,
    decode_command,
    peek_id,
)
from agent.core.contract.result import iso_utc
from agent.core.contract.topics import DeviceTopics
from agent.errors import AgentError, ConfigError, StorageError
from agent.service.ota import OtaService

if TYPE_CHECKING:
    from agent.service.components import Components
    from agent.service.pipelines import Pipeline
    from agent.storage.outbox import Outbox

log = logging.getLogger("agent.commands")

OUTCOME_SLOTS = 1024
"""Outcomes kept: the last this many command ids are answered as replays. A slot is a row of
a few hundred bytes in outbox.db (a ``diag`` outcome a few KB)."""
MAX_IN_PROGRESS = 32  # commands being served at once; more are answered ``busy``
APPLIED_FILE = "config.applied.toml"
DIAG_CACHE_S = 10.0  # a diag within this of the last one gets that one's checks (a flood is one run)
DIAG_TIMEOUT_S = 120.0
# The checks of `lepton-agent diag` (agent.diag.checks.all_checks, which the runtime may not
# import; tests/test_commands.py keeps the two equal): a name outside them is refused here,
# before a process is started for it.
DIAG_CHECKS = ("config", "camera", "sensors", "model", "pipelines", "kernels", "broker", "cache",
               "storage", "clock", "temperature", "memory")
# Sections that configure the pipelines only: set-config applies changes to them live.
LIVE_SECTIONS = ("source", "model", "motion", "analytics", "pipelines", "lines", "zones")
# What the runtime built once (the outbox, the link, the sensor hub, the thermal governor...).
RESTART_SECTIONS = ("agent", "mqtt", "outbox", "shards", "sensors", "kernels", "thermal",
                    "metrics", "web", "ota")
MUTATING = frozenset({"set-config", "assign", "unassign", "restart-pipeline"})
# Not kept in the outcome ring: a bundle's chunks are idempotent (a resent one is answered
# ``duplicate`` from the deployment's own state) and a 100 MB model is ~1070 of them, which
# would push every other command's outcome out of the ring's 1024 slots.
UNRECORDED = frozenset({"deploy-chunk"})


# -- TOML out --------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def config_toml(config: AgentConfig, header: str = "") -> str:
    """``config`` as a TOML document that ``load_config`` reads back to an equal config: every
    section with every value (what runs, board overlay and flags included)."""
    data = config.model_dump(mode="json")
    if "pipelines" in data:  # each pipeline names its own; the loader refuses them beside
        for key in ("uri", "stream"):
            data["source"].pop(key, None)
    out = [header] if header else []
    for name, value in data.items():
        if isinstance(value, dict):
            out.append(f"[{name}]")
            for key, item in value.items():
                if item is None and name == "mqtt" and key == "broker":
                    item = ""  # "" is offline; left out would be the default broker
                if item is not None:
                    out.append(f"{_toml_key(key)} = {_toml_value(item)}")
            out.append("")
        elif isinstance(value, list):
            for entry in value:
                out.append(f"[[{name}]]")
                out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items()
                        if v is not None]
                out.append("")
    return "\n".join(out)


# -- the applied config ------------------------------------------------------------------------

_VERSION_LINE = re.compile(r"^# lepton-agent applied config, version (\d+)\b")


def applied_path(config: AgentConfig) -> Path:
    return config.agent.state_dir / APPLIED_FILE


def _sections_of(config: AgentConfig, names: tuple[str, ...]) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    return {k: data[k] for k in names if k in data}


def load_applied(base: AgentConfig) -> tuple[AgentConfig, int]:
    """The config to run: ``base`` (file, board and flags) with the live sections of
    ``config.applied.toml`` when the state directory has one, and its version (0 without).
    One that does not load is logged in one line and ``base`` runs."""
    path = applied_path(base)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return base, 0
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read %s (%s); running the configured pipelines", path, exc)
        return base, 0
    found = _VERSION_LINE.match(text)
    version = int(found.group(1)) if found else 0
    try:
        config = load_config(path, board=base.agent.board,
                             overrides=_sections_of(base, RESTART_SECTIONS))
    except ConfigError as exc:
        log.error("%s (version %d) does not load: %s; running the configured pipelines "
                  "instead (remove the file, or push a config that loads)", path, version, exc)
        return base, 0
    log.info("pipelines from %s (config version %d; it replaces [source], [model], [motion], "
             "[analytics] and the pipelines of the config file; remove it to go back)", path,
             version)
    return config, version


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# -- outcomes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What the store holds of one id: the command's name and, once done, its reply."""

    id: str
    command: str
    reply: dict[str, Any] | None  # None: started, never finished


class OutcomeStore:
    """Command outcomes in the outbox's key/value state: ``cmd/slot/{i}`` for ``i`` in a ring
    of ``slots``, ``cmd/next`` the next slot to write. Bounded: the oldest id's slot is reused.
    Ids are found through an in-memory index built from the slots at start."""

    def __init__(self, outbox: Outbox, slots: int = OUTCOME_SLOTS) -> None:
        self.outbox = outbox
        self.slots = slots
        self._index: dict[str, int] = {}
        self._ids: dict[int, str] = {}
        self._cache: dict[str, Outcome] = {}
        self.next = int(outbox.read_state("cmd/next") or 0) % slots
        for slot in range(slots):
            outcome = self._read(slot)
            if outcome is not None:
                self._index[outcome.id] = slot
                self._ids[slot] = outcome.id

    def _read(self, slot: int) -> Outcome | None:
        text = self.outbox.read_state(f"cmd/slot/{slot}")
        if not text:
            return None
        try:
            data = json.loads(text)
            return Outcome(str(data["id"]), str(data["command"]), data.get("reply"))
        except (ValueError, KeyError, TypeError):
            log.warning("command outcome slot %d is unreadable; ignored", slot)
            return None

    def get(self, command_id: str) -> Outcome | None:
        slot = self._index.get(command_id)
        if slot is None:
            return None
        cached = self._cache.get(command_id)
        if cached is not None:
            return cached
        outcome = self._read(slot)
        return outcome if outcome is not None and outcome.id == command_id else None

    def put(self, outcome: Outcome) -> None:
        """Commit ``outcome`` (StorageError when the outbox cannot)."""
        slot = self._index.get(outcome.id)
        state = {}
        if slot is None:
            slot = self.next
            state["cmd/next"] = str((slot + 1) % self.slots)
        state[f"cmd/slot/{slot}"] = json.dumps(
            {"id": outcome.id, "command": outcome.command, "reply": outcome.reply},
            separators=(",", ":"))
        self.outbox.append([], state=state)
        if slot == self.next:
            self.next = (slot + 1) % self.slots
        old = self._ids.get(slot)
        if old is not None and old != outcome.id:
            self._index.pop(old, None)
            self._cache.pop(old, None)
        self._index[outcome.id] = slot
        self._ids[slot] = outcome.id
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[outcome.id] = outcome


# -- arguments ---------------------------------------------------------------------------------

class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


_ArgsT = TypeVar("_ArgsT", bound=_Args)


class NoArgs(_Args):
    pass


class SetConfigArgs(_Args):
    toml: str = Field(max_length=200_000)
    version: int | None = Field(None, ge=0)  # refuse unless this is the current version


class StreamArgs(_Args):
    stream: str = Field(min_length=1, max_length=64)


class SnapshotArgs(StreamArgs):
    quality: int = Field(85, ge=10, le=100)
    timeout_s: float = Field(5.0, gt=0, le=60)


class DiagArgs(_Args):
    checks: list[str] = Field(default_factory=list, max_length=32)


def _parse(model: type[_ArgsT], args: Mapping[str, Any]) -> _ArgsT:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise CommandError("bad_args", _first_problem(exc),
                           "see docs/commands.md for this command's arguments") from None


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "args"
    more = len(exc.errors()) - 1
    text = f"args.{where}: {first['msg']}" + (f" (and {more} more)" if more else "")
    return " ".join(text.split())[:400]


# -- the frame tap (snapshot) ------------------------------------------------------------------

class FrameTap:
    """Hands the next frame a pipeline's capture thread prepares to whoever waits for it.

    Installed only while someone waits, by wrapping the capture worker's ``prepare`` (the one
    call that sees every frame that goes to inference, in the capture thread); the wrapper
    copies the image (a 640x480 BGR frame: 0.9 MB) and takes itself out."""

    def __init__(self, capture: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.capture = capture
        self.loop = loop
        self.original: Callable[[np.ndarray], np.ndarray] = capture.prepare
        self.waiters: list[asyncio.Future[np.ndarray]] = []
        self.lock = threading.Lock()

    def wait(self) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = self.loop.create_future()
        with self.lock:
            self.waiters.append(future)
            if self.capture.prepare != self._grab:  # the model's prepare now (an OTA switch
                self.original = self.capture.prepare  # changes it)
            self.capture.prepare = self._grab
        return future

    def _grab(self, image: np.ndarray) -> np.ndarray:
        with self.lock:
            waiters, self.waiters = self.waiters, []
            self.capture.prepare = self.original
        if waiters:
            copy = image.copy()
            for future in waiters:
                self.loop.call_soon_threadsafe(_resolve, future, copy)
        return self.original(image)


def _resolve(future: asyncio.Future[np.ndarray], image: np.ndarray) -> None:
    if not future.done():
        future.set_result(image)


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise AgentError("the frame could not be encoded as JPEG")
    return bytes(jpeg.tobytes())


# -- the service -------------------------------------------------------------------------------

class AgentFace(Protocol):
    """What the command service needs of the running agent (``AgentApp`` has it)."""

    config: AgentConfig
    config_version: int

    async def start_pipeline(self, spec: PipelineSpec) -> Pipeline: ...
    async def stop_pipeline(self, stream: str) -> Pipeline: ...


Handler = Callable[[Command], Awaitable[dict[str, Any]]]
Publish = Callable[[str, bytes, bytes | None], None]


class CommandService:
    """The command router of one run: decodes, dedupes, dispatches and answers commands.

    Every method runs on the event loop. :meth:`handle` is the whole path from a message to
    its reply (the tests drive it directly); :meth:`on_message` serves a message off the link
    and publishes the reply."""

    def __init__(self, app: AgentFace, parts: Components, *,
                 publish: Publish | None = None, started: float | None = None) -> None:
        self.app = app
        self.parts = parts
        self.topics: DeviceTopics = parts.topics
        self.outcomes = OutcomeStore(parts.outbox)
        self.publish = publish
        self.started = time.monotonic() if started is None else started
        self.lock = asyncio.Lock()  # one state-changing command at a time
        self.in_progress: dict[str, asyncio.Future[CommandReply]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.taps: dict[int, FrameTap] = {}
        self.served = 0
        self.replays = 0
        self.retained_ignored = 0
        self._diag: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}
        self._diag_running: dict[tuple[str, ...], asyncio.Future[dict[str, Any]]] = {}
        self.ota = OtaService(app, parts, self.lock)  # model OTA (agent.service.ota, docs/ota.md)
        self.ota.resume()
        parts.health.ota = self.ota.health
        self.ota.grab_frame = self.grab_frame  # a real frame to warm the new model on
        self.handlers: dict[str, Handler] = {
            "ping": self.ping, "get-config": self.get_config, "set-config": self.set_config,
            "pipelines": self.pipelines, "assign": self.assign, "unassign": self.unassign,
            "snapshot": self.snapshot, "restart-pipeline": self.restart_pipeline,
            "diag": self.diag, "deploy-model": self.ota.deploy, "deploy-chunk": self.ota.chunk}

    def attach(self) -> None:
        """Take this device's commands off the link: the uplink subscribes to ``cmd/+`` on
        each connect and hands those messages here."""
        uplink = self.parts.uplink
        uplink.command_filter = command_filter(self.topics)
        uplink.on_command = self.on_mqtt
        link = self.parts.link
        if self.publish is None and link is not None:
            def publish(topic: str, payload: bytes, correlation: bytes | None) -> None:
                if link.publish(topic, payload, qos=1, correlation_data=correlation) is None:
                    log.warning("reply on %s not sent: not connected (the sender may repeat "
                                "the command with the same id)", topic)

            self.publish = publish

    def on_mqtt(self, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        self.on_message(message.topic, bytes(message.payload), bool(message.retain),
                        response if isinstance(response, str) else None,
                        bytes(correlation) if isinstance(correlation, (bytes, bytearray))
                        else None)

    # -- the path of one message --------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, retain: bool,
                   response_topic: str | None, correlation: bytes | None) -> None:
        """A message on this device's ``cmd/+``: served in a task, the reply published."""
        task = asyncio.get_running_loop().create_task(
            self._serve(topic, payload, retain, response_topic, correlation), name="command")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, topic: str, payload: bytes, retain: bool,
                     response_topic: str | None, correlation: bytes | None) -> None:
        try:
            reply = await self.handle(topic, payload, retain=retain,
                                      response_topic=response_topic)
        except Exception as exc:  # handle() answers everything; this is a bug in it
            log.error("command on %s: internal error %s", _shown(topic), _one_line(exc))
            _debug_log("command", exc)
            return
        if reply is None or self.publish is None:
            return
        target = response_topic if response_topic and accepts_response_topic(
            self.topics, response_topic) else self.topics.reply
        self.publish(target, json.dumps(reply.to_json(), separators=(",", ":")).encode(),
                     correlation)

    def _reply(self, cmd_id: str | None, name: str | None, *, result: dict[str, Any] | None = None,
               error: CommandError | None = None) -> CommandReply:
        cfg = self.app.config.agent
        if error is None:
            return CommandReply(cmd_id, name, cfg.device_id, cfg.site, True, iso_utc(time.time()),
                                result=result or {})
        return CommandReply(cmd_id, name, cfg.device_id, cfg.site, False, iso_utc(time.time()),
                            code=error.code, reason=error.reason, fix=error.fix)

    async def handle(self, topic: str, payload: bytes, *, retain: bool = False,
                     response_topic: str | None = None) -> CommandReply | None:
        """The reply to one message on ``topic`` (None: a retained message, ignored)."""
        if retain:
            self.retained_ignored += 1
            log.warning("ignoring a retained command on %s: commands are never retained (clear "
                        "it: publish an empty retained message there)", _shown(topic))
            return None
        self.served += 1
        try:
            name = command_name(self.topics, topic)
        except CommandError as exc:
            return self._refused(peek_id(payload), None, exc)
        if response_topic is not None and not accepts_response_topic(self.topics, response_topic):
            return self._refused(peek_id(payload), name, CommandError(
                "bad_response_topic", f"response topic {_shown(response_topic)} is not below "
                f"{self.topics.reply}", f"use {self.topics.reply}/CLIENT as the response topic"))
        try:
            command = decode_command(name, payload)
        except CommandError as exc:
            return self._refused(peek_id(payload), name, exc)
        handler = self.handlers.get(name)
        if handler is None:
            return self._refused(command.id, name, CommandError(
                "unknown_command", f"no command {name!r} on this agent ({__version__})",
                f"the commands are: {', '.join(sorted(self.handlers))}"))
        return await self._dedupe(command, handler)

    def _refused(self, cmd_id: str | None, name: str | None, error: CommandError) -> CommandReply:
        log.info("command %s %s refused: %s", name or "?", cmd_id or "(no id)", error.reason)
        return self._reply(cmd_id, name, error=error)

    async def _dedupe(self, command: Command, handler: Handler) -> CommandReply:
        stored = self.outcomes.get(command.id)
        if stored is not None:
            if stored.command != command.name:
                return self._refused(command.id, command.name, CommandError(
                    "id_conflict", f"id {command.id} was used for {stored.command!r} before; it "
                    f"is not acted on as {command.name!r}", "give every command a new id"))
            if stored.reply is None:  # started, never finished: the agent stopped meanwhile
                reply = self._reply(command.id, command.name, error=CommandError(
                    "interrupted", f"the agent stopped while acting on {command.id}; what it "
                    "changed is unknown", "check with `pipelines` or `get-config`, then send "
                    "the command again with a new id"))
                with contextlib.suppress(StorageError):
                    self.outcomes.put(Outcome(command.id, command.name, reply.to_json()))
                return reply
            self.replays += 1
            return _replayed(stored.reply)
        running = self.in_progress.get(command.id)
        if running is not None:
            first = await asyncio.shield(running)
            self.replays += 1
            return _replayed(first.to_json())
        if len(self.in_progress) >= MAX_IN_PROGRESS:
            return self._refused(command.id, command.name, CommandError(
                "busy", f"{len(self.in_progress)} commands are in progress",
                "send it again (with the same id) in a moment"))
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self.in_progress[command.id] = future
        try:
            reply = await self._act(command, handler)
            future.set_result(reply)
            return reply
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, none: no warning
            raise
        finally:
            del self.in_progress[command.id]

    async def _act(self, command: Command, handler: Handler) -> CommandReply:
        mutating = command.name in MUTATING
        if mutating:
            try:
                self.outcomes.put(Outcome(command.id, command.name, None))
            except StorageError as exc:
                return self._refused(command.id, command.name, CommandError(
                    "storage", f"cannot record the command, so it was not acted on: "
                    f"{exc.message}", exc.fix))
        try:
            if mutating:
                async with self.lock:
                    result = await handler(command)
            else:
                result = await handler(command)
            reply = self._reply(command.id, command.name, result=result)
            log.info("command %s %s: ok", command.name, command.id)
        except CommandError as exc:
            reply = self._refused(command.id, command.name, exc)
        except AgentError as exc:
            reply = self._refused(command.id, command.name,
                                  CommandError("failed", exc.message, exc.fix))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            where = _debug_log(f"command {command.name} {command.id}", exc)
            reply = self._refused(command.id, command.name, CommandError(
                "internal", f"{_one_line(exc)}" + (f" (traceback in {where})" if where else ""),
                "please report it with that file"))
        if command.name in UNRECORDED:
            return reply
        try:
            self.outcomes.put(Outcome(command.id, command.name, reply.to_json()))
        except StorageError as exc:
            log.error("command %s %s: its outcome is not stored (%s); a repeat of this id %s",
                      command.name, command.id, exc.message,
                      "is answered 'interrupted'" if mutating else "runs it again")
        return reply

    # -- handlers -----------------------------------------------------------------------------

    async def ping(self, command: Command) -> dict[str, Any]:
        _parse(NoArgs, command.args)
        return {"pong": True, "version": __version__, "config_version": self.app.config_version,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "pipelines": len(self.parts.pipelines)}

    async def get_config(self, command: Command) -> dict[str, Any]:
        _parse(NoArgs, command.args)
        return {"version": self.app.config_version, "toml": config_toml(self.app.config),
                "applied_file": applied_path(self.app.config).is_file()}

    async def pipelines(self, command: Command) -> dict[str, Any]:
        _parse(NoArgs, command.args)
        now = time.monotonic()
        out = []
        for status in self.parts.pipelines.statuses(now):
            entry = status.telemetry()
            entry["source"] = status.source
            entry["threads"] = status.threads
            out.append(entry)
        return {"config_version": self.app.config_version, "pipelines": out}

    async def set_config(self, command: Command) -> dict[str, Any]:
        args = _parse(SetConfigArgs, command.args)
        if args.version is not None and args.version != self.app.config_version:
            raise CommandError("version_conflict", f"the config is at version "
                               f"{self.app.config_version}, not {args.version}",
                               "read it again with get-config and apply your change to that")
        new = self._load_document(args.toml)
        return await self.apply(new)

    def _load_document(self, text: str) -> AgentConfig:
        """The config of a set-config document through the real loader: the sections it leaves
        out that cannot change live keep their running values; those it gives must equal them."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib

        old = self.app.config
        try:
            written = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CommandError("bad_args", f"args.toml is not valid TOML: {exc}",
                               "fix the syntax at that line") from None
        keep = {k: v for k, v in _sections_of(old, RESTART_SECTIONS).items() if k not in written}
        with tempfile.TemporaryDirectory(prefix="lepton-set-config-") as tmp:
            path = Path(tmp) / "set-config.toml"
            path.write_text(text, encoding="utf-8")
            try:
                new: AgentConfig = load_config(path, board=old.agent.board, overrides=keep)
            except ConfigError as exc:
                raise CommandError("bad_args", str(exc.message).replace(str(path), "set-config"),
                                   exc.fix) from None
        changed = [name for name in RESTART_SECTIONS
                   if getattr(new, name) != getattr(old, name)]
        if changed:
            raise CommandError(
                "restart_required", "cannot change " + ", ".join(f"[{n}]" for n in changed)
                + " while the agent runs; nothing was applied",
                "leave those sections out of the document (they keep their values), or change "
                "them in the config file and restart the agent")
        return new

    async def assign(self, command: Command) -> dict[str, Any]:
        """Start a pipeline, or replace the one of that stream: the args are a [[pipelines]]
        table (stream, source, model, lines, zones, ...)."""
        try:
            section = PipelineSection.model_validate(command.args)
        except ValidationError as exc:
            raise CommandError("bad_args", _first_problem(exc),
                               "the args of assign are the keys of a [[pipelines]] table "
                               "(docs/config.md)") from None
        sections = [s for s in _sections(self.app.config) if s.stream != section.stream]
        old = {s.stream: s for s in _sections(self.app.config)}.get(section.stream)
        at = [s.stream for s in _sections(self.app.config)].index(section.stream) \
            if old is not None else len(sections)
        sections.insert(at, section)
        return await self.apply(self._with_pipelines(sections))

    async def unassign(self, command: Command) -> dict[str, Any]:
        args = _parse(StreamArgs, command.args)
        current = _sections(self.app.config)
        if args.stream not in [s.stream for s in current]:
            raise CommandError("not_found", f"no pipeline {args.stream!r} in the config",
                               f"the pipelines are: {', '.join(s.stream for s in current)}")
        rest = [s for s in current if s.stream != args.stream]
        if not rest:
            raise CommandError("bad_args", f"{args.stream!r} is the only pipeline; the agent "
                               "runs at least one", "assign another pipeline first")
        return await self.apply(self._with_pipelines(rest))

    def _with_pipelines(self, sections: list[PipelineSection]) -> AgentConfig:
        config = self.app.config
        try:
            # the top-level lines and zones were the single pipeline's: now in its table
            return config.with_rules([], [], check=False).with_pipelines(sections)
        except ConfigError as exc:
            raise CommandError("bad_args", exc.message, exc.fix) from None

    async def restart_pipeline(self, command: Command) -> dict[str, Any]:
        args = _parse(StreamArgs, command.args)
        pipeline = self._pipeline(args.stream)
        spec = pipeline.spec
        async with self.parts.pipelines.change():  # the run does not end between the two
            if not pipeline.done.is_set():
                await self.app.stop_pipeline(args.stream)
            try:
                started = await self.app.start_pipeline(spec)
            except AgentError as exc:
                raise CommandError("failed", f"pipeline {args.stream} did not start again: "
                                   f"{exc.message}", exc.fix) from None
        return {"stream": args.stream, "state": started.state}

    def _pipeline(self, stream: str) -> Pipeline:
        pipeline = self.parts.pipelines.get(stream)
        if pipeline is None:
            raise CommandError("not_found", f"no pipeline {stream!r}", "the pipelines are: "
                               + (", ".join(p.stream for p in self.parts.pipelines) or "none"))
        return pipeline

    async def grab_frame(self, pipeline: Pipeline, timeout_s: float) -> np.ndarray:
        """A copy of the next frame the pipeline's capture prepares (asyncio.TimeoutError when
        none comes in time); one tap per capture, shared by every waiter."""
        capture = pipeline.capture
        if capture is None:
            raise CommandError("failed", f"pipeline {pipeline.stream} is not running", None)
        tap = self.taps.get(id(capture))
        if tap is None or tap.capture is not capture:
            tap = self.taps[id(capture)] = FrameTap(capture, asyncio.get_running_loop())
        return await asyncio.wait_for(tap.wait(), timeout_s)

    async def snapshot(self, command: Command) -> dict[str, Any]:
        """A JPEG of the stream's next frame, stored as a blob the uplink sends as a shard."""
        args = _parse(SnapshotArgs, command.args)
        pipeline = self._pipeline(args.stream)
        capture = pipeline.capture
        if pipeline.state != "running" or capture is None:
            raise CommandError("failed", f"pipeline {args.stream} is {pipeline.state}"
                               + (f" ({pipeline.reason})" if pipeline.reason else ""),
                               "start it (assign, restart-pipeline) first")
        try:
            image = await self.grab_frame(pipeline, args.timeout_s)
        except asyncio.TimeoutError:
            raise CommandError("timeout", f"no frame from {args.stream} within "
                               f"{args.timeout_s:g}s", "check the source with `pipelines` "
                               "(source_error)") from None
        jpeg = await asyncio.to_thread(_encode_jpeg, image, args.quality)
        meta = {"stream": args.stream, "command": command.id, "ts": iso_utc(time.time()),
                "width": int(image.shape[1]), "height": int(image.shape[0])}
        blob = self.parts.blobs.put(jpeg, kind="snapshot", content_type="image/jpeg", meta=meta)
        self.parts.uplink.blobs_added()
        return {"stream": args.stream, "sha256": blob, "bytes": len(jpeg),
                "width": meta["width"], "height": meta["height"],
                "topic": self.topics.shards(blob)}

    async def diag(self, command: Command) -> dict[str, Any]:
        """The diag checks as JSON, from ``lepton-agent diag --json`` in a process of its own:
        the runtime may not import diag (docs/architecture.md), and the checks block (a camera
        open, a model load, the golden self-test) for seconds the event loop cannot give. One
        run per set of checks at a time; a repeat within DIAG_CACHE_S gets its report."""
        args = _parse(DiagArgs, command.args)
        unknown = [c for c in args.checks if c not in DIAG_CHECKS]
        if unknown:
            raise CommandError("bad_args", f"args.checks: unknown check {unknown[0]!r}",
                               f"choose from: {', '.join(DIAG_CHECKS)}")
        key = tuple(sorted(set(args.checks)))
        now = time.monotonic()
        cached = self._diag.get(key)
        if cached is not None and now - cached[0] < DIAG_CACHE_S:
            return {**cached[1], "age_s": round(now - cached[0], 3)}
        running = self._diag_running.get(key)
        if running is None:
            running = self._diag_running[key] = asyncio.ensure_future(self._run_diag(list(key)))
        try:
            report = await asyncio.shield(running)
        finally:
            if running.done() and self._diag_running.get(key) is running:
                del self._diag_running[key]
        self._diag[key] = (time.monotonic(), report)
        return {**report, "age_s": 0.0}

    async def _run_diag(self, checks: list[str]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="lepton-diag-") as tmp:
            path = Path(tmp) / "running.toml"
            _write_private(path, config_toml(self.app.config))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "diag", *checks, "--json", "--config", str(path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), DIAG_TIMEOUT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise CommandError("timeout", f"diag did not finish within "
                                   f"{DIAG_TIMEOUT_S:g}s", "run `lepton-agent diag` on the "
                                   "device to see which check hangs") from None
        try:
            report = json.loads(out)
            if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
                raise ValueError("no checks")
        except ValueError:
            lines = err.decode(errors="replace").strip().splitlines()
            raise CommandError("failed", "diag gave no report (exit status "
                               f"{proc.returncode}): {lines[-1] if lines else 'no output'}"
                               ) from None
        return report

    # -- applying a config ----------------------------------------------------------------------

    async def apply(self, new: AgentConfig) -> dict[str, Any]:
        """Run the pipelines of ``new``: stop those no longer in it and those whose spec
        changed, start the new and the changed ones; the others keep running. A start that
        fails stops what this started and starts the previous pipelines again. On success
        ``new`` is the running config, at the next version, written to config.applied.toml."""
        app = self.app
        if new == app.config:
            streams = [p.stream for p in self.parts.pipelines]
            return {"version": app.config_version, "started": [], "stopped": [],
                    "restarted": [], "kept": streams, "unchanged": True}
        try:
            desired = {s.stream: s for s in new.pipeline_specs()}
            explicit = {s.stream: s.threads is not None for s in _sections(new)}
        except ConfigError as exc:
            raise CommandError("bad_args", exc.message, exc.fix) from None
        current = {p.stream: p for p in self.parts.pipelines}
        kept = [s for s, spec in desired.items()
                if s in current and _same(current[s].spec, spec, explicit.get(s, False))]
        changed = [s for s in desired if s in current and s not in kept]
        added = [s for s in desired if s not in current]
        removed = [s for s in current if s not in desired]
        version = app.config_version + 1
        path = applied_path(new)
        staged = path.with_name(path.name + ".new")
        try:
            _write_private(staged, config_toml(new, header=(
                f"# lepton-agent applied config, version {version}, {iso_utc(time.time())}\n"
                "# Written by set-config/assign/unassign; read at start over the config file's "
                "[source], [model], [motion], [analytics] and pipelines.")))
        except OSError as exc:
            raise CommandError("storage", f"cannot write {staged}: {exc.strerror}; nothing "
                               "was applied", "check the state directory's disk") from None
        previous = {s: current[s].spec for s in (*changed, *removed)
                    if not current[s].done.is_set()}
        try:
            async with self.parts.pipelines.change():  # the run does not end in between
                for stream in (*removed, *changed):
                    if not current[stream].done.is_set():
                        await app.stop_pipeline(stream)
                for stream in removed:
                    self.parts.pipelines.remove(stream)
                started: list[str] = []
                for stream in (*changed, *added):
                    try:
                        await app.start_pipeline(desired[stream])
                    except AgentError as exc:
                        restored = await self._roll_back(started, stream, previous, added)
                        raise CommandError(
                            "failed", f"pipeline {stream} did not start: {exc.message}; "
                            + ("the previous pipelines run again" if restored else
                               "the previous pipelines could not all be started again: see "
                               "`pipelines`") + f" (config version {app.config_version} "
                            "stays)", exc.fix) from None
                    started.append(stream)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        os.replace(staged, path)
        app.config = new
        app.config_version = version
        log.info("config version %d applied: started %s, stopped %s, kept %s", version,
                 ", ".join([*changed, *added]) or "none", ", ".join(removed) or "none",
                 ", ".join(kept) or "none")
        return {"version": version, "started": [*changed, *added], "stopped": removed,
                "restarted": changed, "kept": kept}

    async def _roll_back(self, started: list[str], failed: str,
                         previous: dict[str, PipelineSpec], added: list[str]) -> bool:
        """Stop what an apply started, start the pipelines it stopped; True when all ran."""
        ok = True
        for stream in (*started, failed):
            pipeline = self.parts.pipelines.get(stream)
            if pipeline is not None and not pipeline.done.is_set():
                await self.app.stop_pipeline(stream)
            if stream in added:
                self.parts.pipelines.remove(stream)
        for stream, spec in previous.items():
            try:
                await self.app.start_pipeline(spec)
            except AgentError as exc:
                ok = False
                log.error("rollback: pipeline %s did not start again: %s", stream, exc)
        return ok


def _sections(config: AgentConfig) -> list[PipelineSection]:
    """The pipelines of ``config`` as [[pipelines]] tables (the one of [source] when none)."""
    if config.pipelines is not None:
        return list(config.pipelines)
    return [PipelineSection(stream=config.source.stream, source=config.source.uri,
                            lines=list(config.lines), zones=list(config.zones))]


def _same(running: PipelineSpec, wanted: PipelineSpec, explicit_threads: bool) -> bool:
    """Whether a running pipeline already is ``wanted``. A pipeline whose threads are the
    automatic share of the budget is not restarted because the number of pipelines changed
    (the budget bounds the threads in use either way)."""
    if explicit_threads:
        return running == wanted
    return dataclasses.replace(running, threads=0) == dataclasses.replace(wanted, threads=0)


def _replayed(reply: dict[str, Any]) -> CommandReply:
    error = reply.get("error") or {}
    return CommandReply(reply.get("id"), reply.get("command"), reply["device"], reply["site"],
                        bool(reply["ok"]), reply["ts"], result=reply.get("result"),
                        code=error.get("code"), reason=error.get("reason"),
                        fix=error.get("fix"), replay=True)


def _shown(text: str) -> str:
    """A sender's string in one log line: printable, at most 200 characters."""
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _debug_log(what: str, exc: BaseException) -> Path | None:
    """The traceback of an unexpected error, in a debug-log file; the log gets one line."""
    from agent.service.logs import write_debug_log

    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = write_debug_log(f"lepton-agent {__version__}: {what}\n\n{full}", kind="command")
    log.error("%s: internal error %s (traceback in %s)", what, _one_line(exc), path or "nowhere")
    return path


__all__ = ["CommandService", "ErrorCode", "FrameTap", "OutcomeStore", "config_toml",
           "load_applied"]
