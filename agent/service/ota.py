"""Model OTA on the device: the deployment state machine behind ``deploy-model`` (issue 18
item 4, over items 3 and 5's signed bundles and trusted clock).

One deployment at a time, persisted in the outbox's key/value state (``ota/deployment``) so a
SIGKILL at any point resumes or ends it cleanly:

    receiving -> verifying -> installing -> warming -> self_test -> switching -> watching
              -> committing -> succeeded
    any state -> failed | rolled_back | superseded | timed_out | rejected   (terminal)

- **receiving**: ``deploy-model`` carries the signature file and a chunk plan per file; the
  document is checked before a byte is fetched (trusted key, signature, anti-rollback, expiry
  against the trusted clock); each plan must be the signed file's and fit the disk budget. The
  chunks come as ``deploy-chunk`` commands, each verified on its own and written into
  ``{state_dir}/ota/staging/{deployment}``; the receive state is committed after each chunk.
- **verifying**: the staged folder against the signed list (``check_files``).
- **installing**: the staging folder is renamed into the model's inactive slot
  (``{state_dir}/ota/slots/{model}/a|b``: the one no pipeline runs); a slot is loaded only
  after this check, so a half-installed model never runs.
- **warming**: a second interpreter per target pipeline loads the slot and runs once, while the
  old one serves.
- **self_test**: ``lepton-agent diag model`` on the slot, in its own process (the runtime may
  not import diag; the golden self-test is diag's).
- **switching**: each pipeline's inference thread takes the new runner between two frames.
- **watching**: for ``health_s``: fps >= ``min_fps_ratio`` of the previous model's, no
  inference errors, detections not collapsed to zero where the old model had some. A failure
  switches the previous runner back (between two frames) and ends ``rolled_back``.
- **committing**: config.applied.toml names the slot, then the counters and the outcome are
  committed in one transaction.

Every state has a deadline (:data:`PHASE_DEADLINE_S`, receiving ``transfer_timeout_s``,
watching ``health_s`` + 30 s); past it the deployment ends ``timed_out`` (rolled back when it
had switched). A newer deployment (another id, an accepted document) supersedes the one in
progress: it is rolled back when it had switched and ends ``superseded``. The outcome and its
reason are in the command's reply, in the retained ``{device}/ota`` status and in the log.
See docs/ota.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.contract.command import Command, CommandError
from agent.core.contract.result import iso_utc
from agent.core.ota.chunks import ChunkError, ChunkOutcome, ChunkPlan, ReceiveState, WholeOutcome
from agent.core.ota.clock import TrustedClock
from agent.core.ota.document import SIGNATURE_FILE, BundleDocument, FileEntry, decode_envelope, parse_document
from agent.core.ota.verify import ObservedBundle, RollbackCounters, TrustedKeys, check_document, check_files
from agent.errors import AgentError, StorageError
from agent.inference.runner import ModelRunner
from agent.ota.bundles import sha256_file
from agent.ota.keys import ed25519_verify
from agent.service.snapshot import OtaStatus

if TYPE_CHECKING:
    from agent.service.commands import AgentFace
    from agent.service.components import Components
    from agent.service.pipelines import Pipeline

log = logging.getLogger("agent.ota")

DEPLOYMENT_KEY = "ota/deployment"
COUNTERS_KEY = "ota/counters"
CLOCK_KEY = "ota/clock"
TRUST_DIR = "ota/trusted"  # under the state dir: the release keys' signing.pub files (*.pub)
TERMINAL = ("succeeded", "failed", "rolled_back", "superseded", "timed_out", "rejected")
# Deadlines of the states that do not take theirs from the command. The self-test is a process
# of its own that imports the runtime and runs the golden input: ~3 s measured on 2 shared cores.
PHASE_DEADLINE_S = {"verifying": 120.0, "installing": 60.0, "warming": 120.0,
                    "self_test": 180.0, "switching": 15.0, "committing": 30.0}
# Invokes of the second interpreter before the switch, on a real frame of the stream (its
# decode runs on real detections): its first invoke after load runs on cold caches. One more
# invoke right before the switch was tried and dropped: bench ota, interleaved A/B, the
# first new invoke of the shared LSTM-SSD was not faster with it (51.7 vs 35.3 ms medians
# of 3, the old one's 44.0 and 36.9), nor the swap gap (swap_added_ms -0.1 vs -2.5).
WARM_INVOKES = 3
WARM_FRAME_S = 5.0  # the wait for a real frame to warm on; a blank one after that
DISK_RESERVE_BYTES = 64 << 20  # a transfer may not take the state dir's last 64 MiB
_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FilePlan(_Args):
    """One file's chunk plan, as :class:`~agent.core.ota.chunks.ChunkPlan` serialises it."""

    path: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    chunk_size: int = Field(ge=1024, le=192 * 1024)  # a chunk's base64 fits one command
    chunk_sha256: list[str] = Field(max_length=1 << 20)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeployArgs(_Args):
    deployment: str = Field(pattern=_ID)
    signature: str = Field(min_length=2, max_length=64 * 1024)
    files: list[FilePlan] = Field(min_length=1, max_length=64)
    streams: list[str] = Field(default_factory=list, max_length=32)  # default: every pipeline
    # None: [ota] health_s, min_fps_ratio, transfer_timeout_s of the device's config
    health_s: float | None = Field(None, ge=0, le=3600)
    min_fps_ratio: float | None = Field(None, ge=0, le=1)
    transfer_timeout_s: float | None = Field(None, gt=0, le=86_400)


class ChunkArgs(_Args):
    deployment: str = Field(pattern=_ID)
    path: str = Field(min_length=1, max_length=255)
    index: int = Field(ge=0)
    data: str = Field(max_length=256 * 1024)


def _parse(model: type[DeployArgs] | type[ChunkArgs], args: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise CommandError("bad_args", f"args.{where}: {first['msg']}"[:400],
                           "see docs/ota.md for deploy-model's arguments") from None


@dataclass
class Deployment:
    """The persisted record of the current (or last) deployment."""

    id: str
    model: str
    version: int
    phase: str
    signature: str
    plans: list[dict[str, Any]]
    streams: list[str]
    health_s: float
    min_fps_ratio: float
    deadline: float  # wall time by which the current phase must be over
    received: dict[str, str] = field(default_factory=dict)  # path -> ReceiveState json
    slot: str = ""
    previous: dict[str, str] = field(default_factory=dict)  # stream -> model path before
    outcome: str | None = None
    reason: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        return cls(**json.loads(text))

    @property
    def terminal(self) -> bool:
        return self.outcome is not None

    def status(self) -> dict[str, Any]:
        """What the reply, the retained status and the log say of it."""
        out: dict[str, Any] = {"deployment": self.id, "model": self.model,
                               "version": self.version, "phase": self.phase,
                               "outcome": self.outcome, "streams": self.streams}
        if self.reason:
            out["reason"] = self.reason
        if self.slot:
            out["slot"] = self.slot
        if self.report:
            out["health"] = self.report
        if self.received and not self.terminal:
            out["chunks_missing"] = sum(len(ReceiveState.from_json(s).missing())
                                        for s in self.received.values())
        return out


class Ended(Exception):
    """A deployment reaches a terminal outcome other than success."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def load_trust_dir(folder: Path) -> TrustedKeys:
    """The release keys a device trusts: every ``*.pub`` (PEM, Ed25519) in ``folder``; a
    rotation is two files there. A file that is not such a key is logged and skipped."""
    return load_trusted_keys([folder], missing_ok=True)


def load_trusted_keys(paths: list[Path], *, missing_ok: bool = False) -> TrustedKeys:
    """The release keys of ``[ota] trusted_keys``: each path a ``.pub`` file (PEM, Ed25519) or
    a folder whose ``*.pub`` files are read. A path that is not there, or a file that is not
    such a key, is logged and skipped (the agent runs on; every deployment signed with that
    key is then refused ``unknown_key``)."""
    raw: list[bytes] = []
    files: list[Path] = []
    for entry in paths:
        if entry.is_dir():
            files += sorted(entry.glob("*.pub"))
        elif entry.is_file():
            files.append(entry)
        elif not missing_ok:
            log.error("[ota] trusted_keys: %s is not there; no key is trusted from it", entry)
    for path in files:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            log.error("%s is not a PEM public key (%s); not trusted", path, exc)
            continue
        if isinstance(key, Ed25519PublicKey):
            raw.append(key.public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw))
        else:
            log.error("%s is not an Ed25519 key; not trusted", path)
    return TrustedKeys.of(raw)


def scan_folder(folder: Path) -> ObservedBundle:
    """The files under ``folder`` (size, sha256), non-regular ones apart; nothing followed."""
    files: list[FileEntry] = []
    irregular: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for name in sorted(names) + [d for d in dirs if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel == SIGNATURE_FILE:
                continue
            if not stat.S_ISREG(path.lstat().st_mode):
                irregular.append(rel)
                continue
            size, digest = sha256_file(path)
            files.append(FileEntry(rel, size, digest))
    return ObservedBundle(tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(irregular)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OtaService:
    """The device's deployments: the ``deploy-model`` and ``deploy-chunk`` handlers, the
    driver task of the current deployment, and its recovery after a restart."""

    def __init__(self, app: AgentFace, parts: Components,
                 lock: asyncio.Lock | None = None) -> None:
        self.app = app
        # The command service's lock of state-changing commands: held from the switch to the
        # outcome, so no set-config/assign restarts a pipeline or writes the applied config
        # between the switch, the commit and a rollback.
        self.lock = lock or asyncio.Lock()
        self.parts = parts
        self.outbox = parts.outbox
        self.root = app.config.agent.state_dir / "ota"
        ota = app.config.ota
        self.settings = ota
        self.trust = (load_trusted_keys(list(ota.trusted_keys)) if ota.trusted_keys else
                      load_trust_dir(app.config.agent.state_dir / TRUST_DIR))
        if not self.trust.keys:
            log.warning("OTA: no trusted release key (%s); every deployment is refused "
                        "[unknown_key]", ", ".join(map(str, ota.trusted_keys))
                        or app.config.agent.state_dir / TRUST_DIR)
        # What the outbox state holds is read defensively: the agent starts whatever it finds.
        # Unreadable counters refuse every deployment (accepting would disarm anti-rollback).
        self.broken: str | None = None
        self.counters = RollbackCounters()
        try:
            self.counters = RollbackCounters.from_json(self.outbox.read_state(COUNTERS_KEY)
                                                       or "{}")
        except ValueError as exc:
            self.broken = f"the anti-rollback counters ({COUNTERS_KEY}) are unreadable: {exc}"
            log.error("%s; every deployment is refused until they are restored", self.broken)
        self.clock = TrustedClock()
        clock = self.outbox.read_state(CLOCK_KEY)
        try:
            self.clock = TrustedClock.from_json(clock) if clock else TrustedClock()
        except ValueError as exc:
            log.error("the trusted clock (%s) is unreadable (%s); it starts again from the "
                      "device clock and the next signed document", CLOCK_KEY, exc)
        text = self.outbox.read_state(DEPLOYMENT_KEY)
        self.current: Deployment | None = None
        self.last: Deployment | None = None  # the one that ended before the current one
        try:
            self.current = Deployment.from_json(text) if text else None
        except (ValueError, TypeError) as exc:
            log.error("the last deployment's record (%s) is unreadable (%s); it is ignored",
                      DEPLOYMENT_KEY, exc)
        self.task: asyncio.Task[Deployment] | None = None
        self.received = asyncio.Event()
        self.chunk_lock = asyncio.Lock()
        self.swapped_back: dict[str, ModelRunner] = {}  # stream -> the runner to roll back to
        # The command service's frame tap: the next frame a pipeline prepares (to warm on).
        self.grab_frame: Callable[[Pipeline, float], Awaitable[np.ndarray]] | None = None
        self._thresholds: dict[str, float | None] = {}
        self._superseded_by: str | None = None

    # -- persistence ---------------------------------------------------------------------------

    def _save(self, dep: Deployment, **extra: str) -> None:
        self.outbox.append([], state={DEPLOYMENT_KEY: dep.to_json(), **extra})

    def _limit(self, phase: str) -> float:
        """The deadline of a state that does not take its own from the command."""
        return PHASE_DEADLINE_S[phase] * self.settings.deadline_scale

    def _enter(self, dep: Deployment, phase: str, deadline_s: float | None = None) -> None:
        dep.phase = phase
        dep.deadline = time.time() + (deadline_s if deadline_s is not None
                                      else self._limit(phase))
        self._save(dep)
        self._announce(dep)

    def _announce(self, dep: Deployment) -> None:
        """The retained status on ``{device}/ota`` (a late subscriber sees the last one)."""
        link = self.parts.link
        if link is not None:
            body = {"ts": iso_utc(time.time()), **dep.status()}
            link.publish(f"{self.parts.topics.base}/ota", json.dumps(body).encode(), qos=1,
                         retain=True)
        log.info("deployment %s (%s v%d): %s%s", dep.id, dep.model, dep.version,
                 dep.outcome or dep.phase, f": {dep.reason}" if dep.reason else "")
        # the device's retained status carries the OTA state too (snapshot.ota)
        with contextlib.suppress(sqlite3.Error, StorageError):
            self.parts.telemetry.refresh_birth(self.parts.health.snapshot())

    def health(self) -> OtaStatus:
        """The snapshot's ``ota``: the slot and version the first pipeline that runs a deployed
        model runs, the deployment in progress, the last outcome, the clock's skew."""
        slot = model = None
        version: int | None = None
        slots = self.root / "slots"
        for pipeline in self.parts.pipelines:
            path = Path(pipeline.spec.model)
            if path.parent.parent == slots and path.name in ("a", "b"):
                slot, model = path.name, path.parent.name
                version = self.counters.version(model) or None
                break
        dep = self.current
        running = dep is not None and not dep.terminal
        last = self.last if running else dep
        skew = self.clock.skew(time.time(), self.settings.clock_skew_threshold_s)
        return OtaStatus(
            slot=slot, model=model, version=version,
            deployment=dep.id if running and dep else None,
            state=dep.phase if running and dep else None,
            last_deployment=last.id if last else None,
            last_outcome=last.outcome if last else None,
            last_reason=last.reason if last else None,
            clock_skew_s=round(skew.seconds, 1) if math.isfinite(skew.seconds) else None,
            clock_skew_threshold_s=skew.threshold_s, clock_skew_exceeds=skew.exceeds)

    # -- start-up ------------------------------------------------------------------------------

    def resume(self) -> None:
        """After a restart: end or continue the deployment the last run left in progress."""
        dep = self.current
        if dep is None or dep.terminal:
            return
        if dep.phase in ("switching", "watching", "committing"):
            # The config that started this run is what the last commit wrote: it names the
            # slot only when the commit got that far.
            if dep.phase == "committing" and self._applied_names(dep.slot):
                self._finish(dep, None, None, commit=True)
            else:
                self._finish(dep, "rolled_back", "the agent restarted during the "
                             f"{dep.phase} state; the previous model runs (the config was not "
                             "committed)")
            return
        if time.time() > dep.deadline:
            self._finish(dep, "timed_out", f"the {dep.phase} state's deadline passed while the "
                         "agent was stopped")
            return
        log.info("deployment %s resumes in the %s state", dep.id, dep.phase)
        self._start_driver(dep)

    def _applied_names(self, slot: str) -> bool:
        return any(str(s.model) == slot for s in self.app.config.pipeline_specs())

    # -- handlers ------------------------------------------------------------------------------

    async def deploy(self, command: Command) -> dict[str, Any]:
        """``deploy-model``: start (or rejoin) a deployment; the reply is its outcome."""
        args: DeployArgs = _parse(DeployArgs, command.args)
        if self.broken:
            raise CommandError("failed", f"rejected [state]: {self.broken}",
                               "restore the state directory from a backup, or reset it")
        dep = self.current
        if dep is not None and dep.id == args.deployment:
            if not dep.terminal and (self.task is None or self.task.done()):
                self._start_driver(dep)
            return await self._outcome(dep)
        envelope = args.signature.encode("utf-8")
        doc = self._check_document(envelope)
        plans = self._check_plans(doc, args.files)
        streams = args.streams or [p.stream for p in self.parts.pipelines]
        for stream in streams:
            if self.parts.pipelines.get(stream) is None:
                raise CommandError("not_found", f"no pipeline {stream!r}", "the pipelines are: "
                                   + ", ".join(p.stream for p in self.parts.pipelines))
        if dep is not None and not dep.terminal:
            await self._supersede(dep, args.deployment)
        budget = self._budget()
        if doc.total_size > budget:
            raise CommandError("failed", f"rejected [disk]: the bundle is {doc.total_size} "
                               f"bytes; {budget} are free for it", "free space in the state dir")
        settings = self.settings
        transfer_s = (args.transfer_timeout_s if args.transfer_timeout_s is not None
                      else settings.transfer_timeout_s)
        new = Deployment(
            id=args.deployment, model=doc.model, version=doc.version, phase="receiving",
            signature=args.signature, plans=[p.to_json() for p in plans], streams=streams,
            health_s=settings.health_s if args.health_s is None else args.health_s,
            min_fps_ratio=(settings.min_fps_ratio if args.min_fps_ratio is None
                           else args.min_fps_ratio),
            deadline=time.time() + transfer_s, started_at=time.time(),
            received={p.path: ReceiveState.start(p, budget_bytes=budget,
                                                 entry=doc.entry(p.path)).to_json()
                      for p in plans})
        staging = self._staging(new)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if dep is not None and dep.terminal:
            self.last = dep
        self.current = new
        self.received.clear()
        self._enter(new, "receiving", transfer_s)
        self._start_driver(new)
        return await self._outcome(new)

    async def chunk(self, command: Command) -> dict[str, Any]:
        """``deploy-chunk``: one verified chunk of a file of the deployment in progress."""
        args: ChunkArgs = _parse(ChunkArgs, command.args)
        dep = self.current
        if dep is None or dep.id != args.deployment:
            raise CommandError("not_found", f"no deployment {args.deployment!r} on this device"
                               + (f" (the current one is {dep.id})" if dep else ""),
                               "send deploy-model first")
        if dep.terminal or dep.phase != "receiving":  # a late or resent chunk: nothing to do
            return {"deployment": dep.id, "outcome": "closed",
                    "state": dep.outcome or dep.phase, "missing": 0}
        if args.path not in dep.received:
            raise CommandError("bad_args", f"args.path: {args.path!r} is not a file of "
                               f"deployment {dep.id}", "send the files of its plan")
        try:
            data = base64.b64decode(args.data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("bad_args", "args.data is not base64", None) from None
        async with self.chunk_lock:  # one chunk at a time: each builds on the last's state
            if dep.terminal or dep.phase != "receiving":
                return {"deployment": dep.id, "outcome": "closed",
                        "state": dep.outcome or dep.phase, "missing": 0}
            state = ReceiveState.from_json(dep.received[args.path])
            outcome, state = state.accept(args.index, data)
            if outcome is ChunkOutcome.ACCEPTED:
                offset, _length = state.plan.span(args.index)
                target = self._staging(dep) / args.path
                # off the event loop: an fsync on an SD card takes tens of ms
                await asyncio.to_thread(_write_at, target, data, offset)
                if dep.terminal:  # ended (superseded, timed out) during the write
                    shutil.rmtree(self._staging(dep), ignore_errors=True)
                    return {"deployment": dep.id, "outcome": "closed",
                            "state": dep.outcome, "missing": 0}
                dep.received[args.path] = state.to_json()
                self._save(dep)
        missing = sum(len(ReceiveState.from_json(s).missing()) for s in dep.received.values())
        if missing == 0:
            self.received.set()
        return {"deployment": dep.id, "outcome": outcome.value, "missing": missing}

    # -- the stages ----------------------------------------------------------------------------

    def _check_document(self, envelope: bytes) -> BundleDocument:
        verdict = check_document(envelope, trust=self.trust, check_signature=ed25519_verify,
                                 counters=self.counters, clock=self.clock,
                                 device_now=time.time())
        self.clock = verdict.clock
        with contextlib.suppress(StorageError):
            self.outbox.append([], state={CLOCK_KEY: self.clock.to_json()})
        if verdict.refusal is not None or verdict.document is None:
            r = verdict.refusal
            assert r is not None
            log.warning("deployment refused: %s", r)
            raise CommandError("failed", f"rejected [{r.reason.value}]: {r.message}", r.fix)
        return verdict.document

    def _check_plans(self, doc: BundleDocument, files: list[FilePlan]) -> list[ChunkPlan]:
        plans: list[ChunkPlan] = []
        for f in files:
            try:
                plan = ChunkPlan.from_json(f.model_dump())
            except (ChunkError, ValueError) as exc:
                raise CommandError("bad_args", f"rejected [malformed]: plan of {f.path}: {exc}",
                                   "plan the files with agent.ota.bundles.plan_file") from None
            if not any(e.path == plan.path for e in doc.files):
                raise CommandError("failed", f"rejected [extra_file]: {plan.path} is not in the "
                                   "signed document", "send only the signed files")
            entry = doc.entry(plan.path)
            if entry is None or not plan.matches(entry):
                raise CommandError("failed", f"rejected [file_changed]: the plan of {plan.path} "
                                   "is not the signed file's size and sha256",
                                   "plan the signed file")
            plans.append(plan)
        missing = sorted({e.path for e in doc.files} - {p.path for p in plans})
        if missing:
            raise CommandError("failed", f"rejected [missing_file]: no plan for {', '.join(missing)}",
                               "send a plan for every signed file")
        return plans

    def _budget(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return max(0, shutil.disk_usage(self.root).free - DISK_RESERVE_BYTES)

    def _staging(self, dep: Deployment) -> Path:
        return self.root / "staging" / dep.id

    def _start_driver(self, dep: Deployment) -> None:
        self.task = asyncio.get_running_loop().create_task(self._drive(dep),
                                                           name=f"deployment-{dep.id}")

    async def _outcome(self, dep: Deployment) -> dict[str, Any]:
        task = self.task
        if task is not None and not dep.terminal:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if dep.outcome == "succeeded":
            return dep.status()
        raise CommandError("timeout" if dep.outcome == "timed_out" else "failed",
                           f"{dep.outcome}: {dep.reason}",
                           "see `ctl DEVICE pipelines` and the device's retained ota status")

    async def _supersede(self, dep: Deployment, by: str) -> None:
        log.warning("deployment %s supersedes %s (in the %s state)", by, dep.id, dep.phase)
        task = self.task
        self._superseded_by = by
        if task is not None and not task.done():
            task.cancel(f"superseded by {by}")
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not dep.terminal:
            await self._roll_back_runners(dep)
            self._finish(dep, "superseded", f"deployment {by} superseded it in the {dep.phase} "
                         "state")

    async def _drive(self, dep: Deployment) -> Deployment:
        """Run ``dep`` from its state to a terminal outcome."""
        runners: dict[str, tuple[ModelRunner, float | None]] = {}
        locked = False
        try:
            if dep.phase == "receiving":
                await self._phase(dep, self._receive(dep), max(0.0, dep.deadline - time.time()))
            doc = parse_document(decode_envelope(dep.signature.encode()).document)
            if dep.phase in ("receiving", "verifying"):
                self._enter(dep, "verifying")
                await self._phase(dep, asyncio.to_thread(self._verify, dep, doc))
            if dep.phase in ("verifying", "installing"):
                self._enter(dep, "installing")
                await self._phase(dep, asyncio.to_thread(self._install, dep, doc))
            # The old model's figures for the health gate: from here to the switch (the
            # warm-up and the self-test, a few seconds), while it serves alone.
            baseline = self._sample(dep)
            self._enter(dep, "warming")
            runners = await self._phase(dep, self._warm(dep))
            self._enter(dep, "self_test")
            await self._phase(dep, self._self_test(dep))
            await self._phase(dep, self.lock.acquire())
            locked = True
            self._enter(dep, "switching")
            await self._phase(dep, self._switch(dep, runners))
            self._enter(dep, "watching", dep.health_s + 30.0)
            await self._phase(dep, self._watch(dep, baseline), dep.health_s + 30.0)
            self._enter(dep, "committing")
            await self._phase(dep, self._commit(dep))
        except asyncio.CancelledError:
            if not dep.terminal:
                await self._roll_back_runners(dep)
                self._finish(dep, "superseded", f"deployment {self._superseded_by or '?'} "
                             f"superseded it in the {dep.phase} state")
            raise
        except Ended as end:
            if dep.phase in ("switching", "watching", "committing"):
                await self._roll_back_runners(dep)
            self._finish(dep, end.outcome, end.reason)
        except AgentError as exc:
            switched = dep.phase in ("switching", "watching", "committing")
            if switched:
                await self._roll_back_runners(dep)
            self._finish(dep, "rolled_back" if switched else "failed", f"{dep.phase}: {exc}")
        except Exception as exc:  # a bug: the old model keeps serving, the outcome says so
            log.exception("deployment %s failed in the %s state", dep.id, dep.phase)
            if dep.phase in ("switching", "watching", "committing"):
                await self._roll_back_runners(dep)
            self._finish(dep, "failed", f"{dep.phase}: internal error {type(exc).__name__}: "
                         f"{exc}")
        finally:
            runners.clear()
            if locked:
                self.lock.release()
        return dep

    async def _phase(self, dep: Deployment, work: Any, deadline_s: float | None = None) -> Any:
        limit = deadline_s if deadline_s is not None else self._limit(dep.phase)
        try:
            return await asyncio.wait_for(work, limit)
        except asyncio.TimeoutError:
            raise Ended("timed_out", f"the {dep.phase} state did not end within its "
                        f"deadline ({limit:.0f}s)") from None

    async def _receive(self, dep: Deployment) -> None:
        while any(ReceiveState.from_json(s).missing() for s in dep.received.values()):
            self.received.clear()
            await self.received.wait()

    def _verify(self, dep: Deployment, doc: BundleDocument) -> None:
        staging = self._staging(dep)
        for path, text in dep.received.items():
            state = ReceiveState.from_json(text)
            size, digest = sha256_file(staging / path)
            if state.finish(digest) is not WholeOutcome.VERIFIED or size != state.plan.size:
                raise Ended("rejected", f"[file_changed] {path}: the assembled file does not "
                            "match its signed sha256")
        refusal = check_files(doc, scan_folder(staging))
        if refusal is not None:
            raise Ended("rejected", str(refusal))

    def _install(self, dep: Deployment, doc: BundleDocument) -> None:
        """The staged bundle becomes the model's inactive slot (a rename: all or nothing)."""
        slots = self.root / "slots" / doc.model
        running = {str(self.parts.pipelines.get(s).spec.model)  # type: ignore[union-attr]
                   for s in dep.streams if self.parts.pipelines.get(s) is not None}
        slot = slots / ("b" if str(slots / "a") in running else "a")
        staging = self._staging(dep)
        if staging.is_dir():
            slots.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(slot, ignore_errors=True)
            os.replace(staging, slot)
            _fsync_dir(slots)
        elif not slot.is_dir():
            raise Ended("failed", f"neither the staged bundle nor slot {slot} is there")
        refusal = check_files(doc, scan_folder(slot))  # also after a restart in this state
        if refusal is not None:
            shutil.rmtree(slot, ignore_errors=True)
            raise Ended("rejected", f"slot {slot.name}: {refusal}")
        dep.slot = str(slot)
        dep.previous = {s: str(self._pipeline(s).spec.model) for s in dep.streams}
        self._save(dep)

    def _pipeline(self, stream: str) -> Pipeline:
        pipeline = self.parts.pipelines.get(stream)
        if pipeline is None or pipeline.state != "running":
            raise Ended("failed", f"pipeline {stream} is "
                        f"{pipeline.state if pipeline else 'gone'}; nothing was switched")
        return pipeline

    async def _frame(self, pipeline: Pipeline) -> np.ndarray | None:
        """The stream's next frame (BGR), None when none comes within WARM_FRAME_S."""
        if self.grab_frame is None:
            return None
        try:
            return await self.grab_frame(pipeline, WARM_FRAME_S)
        except (asyncio.TimeoutError, CommandError):
            return None

    async def _warm(self, dep: Deployment) -> dict[str, tuple[ModelRunner, float | None]]:
        """A second interpreter per pipeline, loaded from the slot and invoked on a real frame
        of its stream (a blank one when none comes), while the old one serves."""
        out: dict[str, tuple[ModelRunner, float | None]] = {}
        for stream in dep.streams:
            pipeline = self._pipeline(stream)
            image = await self._frame(pipeline)

            def load(p: Pipeline = pipeline, frame: np.ndarray | None = image
                     ) -> tuple[ModelRunner, float | None]:
                model, threshold = p.load_model(Path(dep.slot))
                runner = ModelRunner(model, preprocess=p.parts.preprocess)
                if frame is None:
                    frame = np.zeros((runner.height, runner.width, 3), np.uint8)
                tensor = runner.prepare(frame)
                for _ in range(WARM_INVOKES):
                    runner.infer(tensor)
                runner.reset_state()
                return runner, threshold

            out[stream] = await asyncio.to_thread(load)
        return out

    async def _self_test(self, dep: Deployment) -> None:
        """The golden self-test on the slot: ``lepton-agent diag model`` in its own process."""
        from agent.service.commands import config_toml

        config = self.app.config
        config = config.model_copy(update={"model": config.model.model_copy(
            update={"path": Path(dep.slot), "num_threads": 1})})
        with tempfile.TemporaryDirectory(prefix="lepton-ota-") as tmp:
            path = Path(tmp) / "slot.toml"
            path.write_text(config_toml(config), encoding="utf-8")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "diag", "model", "--json", "--config", str(path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL)
            try:
                out, err = await proc.communicate()
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
        try:
            check = json.loads(out)["checks"][0]
            status, message = str(check["status"]), str(check["reason"])
        except (ValueError, KeyError, IndexError, TypeError):
            tail = err.decode(errors="replace").strip().splitlines()
            raise Ended("rolled_back", "self-test gave no report: "
                        + (tail[-1] if tail else f"exit {proc.returncode}")) from None
        dep.report["self_test"] = status
        if status == "fail":
            raise Ended("rolled_back", f"golden self-test failed: {message}")

    def _sample(self, dep: Deployment) -> dict[str, tuple[float, int, int, int]]:
        """Per stream: (time, frames, detections, failures) of the inference stage now."""
        out = {}
        for stream in dep.streams:
            inf = self._pipeline(stream).inference
            assert inf is not None
            out[stream] = (time.perf_counter(), inf.stats.frames, inf.stats.detections,
                           inf.stats.failures)
        return out

    async def _switch(self, dep: Deployment,
                      runners: dict[str, tuple[ModelRunner, float | None]]) -> None:
        loop = asyncio.get_running_loop()
        waits = []
        for stream, (runner, threshold) in runners.items():
            pipeline = self._pipeline(stream)
            done: asyncio.Future[None] = loop.create_future()
            old_threshold = pipeline.publish_threshold

            def swapped(old: ModelRunner, s: str = stream, f: asyncio.Future[None] = done,
                        t: float | None = old_threshold) -> None:
                self.swapped_back[s] = old
                self._thresholds[s] = t
                loop.call_soon_threadsafe(_resolve, f)

            pipeline.swap_runner(runner, threshold, swapped)
            waits.append(done)
        await asyncio.gather(*waits)

    async def _watch(self, dep: Deployment, baseline: dict[str, tuple[float, int, int, int]]
                     ) -> None:
        """The health gate: ``health_s`` on the new model against the old one's figures."""
        start = self._sample(dep)
        old_fps = {s: self._pipeline(s).inference.fps() for s in dep.streams}  # type: ignore[union-attr]
        deadline = time.monotonic() + dep.health_s
        while time.monotonic() < deadline:
            for stream in dep.streams:
                pipeline = self._pipeline(stream)
                inf = pipeline.inference
                assert inf is not None
                if inf.stats.failures > start[stream][3]:
                    raise Ended("rolled_back", f"health gate: {stream}: "
                                f"{inf.stats.failures - start[stream][3]} inference error(s) "
                                f"({inf.stats.fatal or 'see the log'})")
            await asyncio.sleep(0.25)
        end = self._sample(dep)
        report = {}
        for stream in dep.streams:
            t0, f0, d0, _ = baseline[stream]
            t1, f1, d1, _ = start[stream]
            t2, f2, d2, _ = end[stream]
            before_fps = old_fps[stream] or (f1 - f0) / max(t1 - t0, 1e-6)
            after_fps = (f2 - f1) / max(t2 - t1, 1e-6)
            before_rate = (d1 - d0) / max(f1 - f0, 1)
            report[stream] = {"fps_before": round(before_fps, 2), "fps_after": round(after_fps, 2),
                              "detections_per_frame_before": round(before_rate, 3),
                              "detections_after": d2 - d1, "frames_after": f2 - f1}
            dep.report["watch"] = report
            if after_fps < dep.min_fps_ratio * before_fps:
                raise Ended("rolled_back", f"health gate: {stream}: {after_fps:.1f} fps is below "
                            f"{dep.min_fps_ratio:.0%} of the previous model's {before_fps:.1f}")
            if before_rate > 0 and f2 > f1 and d2 == d1:
                raise Ended("rolled_back", f"health gate: {stream}: no detection in {f2 - f1} "
                            f"frames; the previous model found {before_rate:.2f} per frame")

    async def _commit(self, dep: Deployment) -> None:
        from agent.service.commands import applied_path, config_toml

        app = self.app
        config = app.config
        slot = Path(dep.slot)
        if config.pipelines is None:
            new = config.model_copy(update={"model": config.model.model_copy(
                update={"path": slot})})
        else:
            new = config.with_pipelines(
                [s.model_copy(update={"model": slot}) if s.stream in dep.streams else s
                 for s in config.pipelines], check=False)
        version = app.config_version + 1
        path = applied_path(new)
        staged = path.with_name(path.name + ".new")
        staged.write_text(config_toml(new, header=(
            f"# lepton-agent applied config, version {version}, {iso_utc(time.time())}\n"
            f"# Written by deploy-model {dep.id} ({dep.model} v{dep.version}).")),
            encoding="utf-8")
        os.replace(staged, path)
        _fsync_dir(path.parent)
        app.config, app.config_version = new, version
        specs = {s.stream: s for s in new.pipeline_specs()}
        for stream in dep.streams:
            pipeline = self.parts.pipelines.get(stream)
            if pipeline is not None and stream in specs:
                pipeline.spec = specs[stream]
        self._finish(dep, None, None, commit=True)

    async def _roll_back_runners(self, dep: Deployment) -> None:
        """Switch every pipeline that took the new model back to its previous runner."""
        loop = asyncio.get_running_loop()
        waits = []
        for stream, old in list(self.swapped_back.items()):
            pipeline = self.parts.pipelines.get(stream)
            if pipeline is None or pipeline.done.is_set():
                continue
            done: asyncio.Future[None] = loop.create_future()
            def back(_new: ModelRunner, f: asyncio.Future[None] = done) -> None:
                loop.call_soon_threadsafe(_resolve, f)

            pipeline.swap_runner(old, self._thresholds.get(stream), back)
            waits.append(done)
        self.swapped_back.clear()
        if waits:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), self._limit("switching"))

    def _finish(self, dep: Deployment, outcome: str | None, reason: str | None, *,
                commit: bool = False) -> None:
        dep.outcome = "succeeded" if commit else outcome
        dep.reason = reason
        dep.finished_at = time.time()
        dep.received = {}
        extra = {}
        if commit:
            self.counters = self.counters.installed(dep.model, dep.version)
            extra[COUNTERS_KEY] = self.counters.to_json()
        self.swapped_back.clear()
        try:
            self._save(dep, **extra)  # the outcome and the counter in one transaction
        except StorageError as exc:
            log.error("deployment %s: its outcome is not stored: %s", dep.id, exc)
        shutil.rmtree(self._staging(dep), ignore_errors=True)
        if outcome is not None and dep.slot and Path(dep.slot).is_dir() \
                and not self._applied_names(dep.slot):
            shutil.rmtree(dep.slot, ignore_errors=True)  # never left where it could be run
        self._announce(dep)


def _write_at(target: Path, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of ``target`` and fsync it (before its mark is committed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
