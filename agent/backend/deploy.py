"""The datacenter's side of model OTA: a signed bundle cut into ``deploy-chunk`` commands, one
device's deployment driven to its outcome, and a rollout over many devices with its state in
the ingest database (SQLite or PostgreSQL). The device's side is ``agent.service.ota``; the
command line is ``lepton-agent deploy`` (agent/cli/deploy.py). See docs/ota.md.

Sending is injected (:data:`Send`: a command name, its args, a timeout -> the decoded reply,
or None when none came), so this module speaks no MQTT of its own and the rollout logic is
tested with a real agent through the CLI's command client.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.contract.command import CommandReply
from agent.core.ota.chunks import ChunkPlan, plan_chunks
from agent.core.ota.document import SIGNATURE_FILE, DocumentError, decode_envelope, parse_document
from agent.errors import AgentError

TRANSFER_CHUNK = 96 * 1024
"""Bytes per chunk: base64 makes it 128 KiB, which with the JSON around it stays well under
a command's 256 KiB limit."""

DEPLOY_RETRY_S = 60.0  # deploy-model without a reply this long is sent again
CHUNK_TRIES = 3  # a chunk the device refuses (bad_hash, bad_size) is sent this many times

Send = Callable[[str, dict[str, Any], float], CommandReply | None]


class DeployError(AgentError):
    """A bundle that cannot be sent, or a rollout that cannot be started or read."""


def _read_file(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(chunk_size):
            yield piece


@dataclass(frozen=True)
class Bundle:
    """A signed bundle folder, ready to send: its signature file and a plan per signed file."""

    folder: Path
    signature: str
    model: str
    version: int
    plans: tuple[ChunkPlan, ...]

    @classmethod
    def read(cls, folder: Path, chunk_size: int = TRANSFER_CHUNK) -> Bundle:
        """Read and plan ``folder`` (its signature is checked by the device, not here: the
        backend holds no trust of its own; the names are only for the rollout's records)."""
        try:
            raw = (folder / SIGNATURE_FILE).read_bytes()
            doc = parse_document(decode_envelope(raw).document)
            plans = tuple(plan_chunks(f.path, _read_file(folder / f.path, chunk_size), chunk_size)
                          for f in doc.files)
        except FileNotFoundError as exc:
            raise DeployError(f"{folder}: {Path(exc.filename or '').name} is missing",
                              fix="give a bundle folder signed with `lepton-agent models sign`"
                              ) from None
        except (OSError, DocumentError, ValueError) as exc:
            raise DeployError(f"{folder}: not a signed bundle: {exc}",
                              fix="sign it with `lepton-agent models sign`") from None
        return cls(folder, raw.decode("utf-8"), doc.model, doc.version, plans)

    def deploy_args(self, deployment: str, *, streams: list[str] | None = None,
                    health_s: float | None = None, min_fps_ratio: float | None = None,
                    transfer_timeout_s: float | None = None) -> dict[str, Any]:
        """The args of ``deploy-model``; an option left None is the device's ``[ota]``
        default."""
        args: dict[str, Any] = {"deployment": deployment, "signature": self.signature,
                                "files": [p.to_json() for p in self.plans]}
        for key, value in (("health_s", health_s), ("min_fps_ratio", min_fps_ratio),
                           ("transfer_timeout_s", transfer_timeout_s)):
            if value is not None:
                args[key] = value
        if streams:
            args["streams"] = streams
        return args

    def chunks(self, deployment: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(command id, args) of every ``deploy-chunk``, file by file, in order."""
        for n, plan in enumerate(self.plans):
            with (self.folder / plan.path).open("rb") as fh:
                for index in range(plan.count):
                    offset, length = plan.span(index)
                    fh.seek(offset)
                    data = fh.read(length)
                    yield (f"{deployment}:f{n}:c{index}",
                           {"deployment": deployment, "path": plan.path, "index": index,
                            "data": base64.b64encode(data).decode("ascii")})


@dataclass
class DeviceOutcome:
    """How one device's deployment ended: ``succeeded`` or the device's terminal outcome
    (``rolled_back``, ``rejected``...), or ``no_reply``; the reason as the device gave it."""

    device: str
    outcome: str
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"


def _outcome_of(device: str, reply: CommandReply | None) -> DeviceOutcome:
    if reply is None:
        return DeviceOutcome(device, "no_reply", "the device did not answer deploy-model in time")
    if reply.ok:
        return DeviceOutcome(device, "succeeded", None, dict(reply.result or {}))
    reason = reply.reason or ""
    outcome = reason.split(":", 1)[0].split(" ", 1)[0] if reason else "failed"
    known = ("failed", "rolled_back", "superseded", "timed_out", "rejected")
    return DeviceOutcome(device, outcome if outcome in known else "failed", reason)


def deploy_device(bundle: Bundle, deployment: str, device: str, send: Send, *,
                  timeout_s: float = 600.0, chunk_timeout_s: float = 30.0,
                  retry_s: float = DEPLOY_RETRY_S, **options: Any) -> DeviceOutcome:
    """Drive one device: ``deploy-model`` (its reply is the outcome, so it is waited for in a
    thread) while the chunks go one after the other, each confirmed; a chunk without a reply
    is sent again (the device answers ``duplicate`` for one it had)."""
    box: list[CommandReply | None] = []
    args = bundle.deploy_args(deployment, **options)
    deadline = time.monotonic() + timeout_s

    def wait_outcome() -> None:
        # Sent again (same deployment id: the device rejoins it) every retry_s without a
        # reply: a device that restarted meanwhile resumes the deployment on the next one.
        while time.monotonic() < deadline:
            reply = send("deploy-model", args,
                         max(1.0, min(retry_s, deadline - time.monotonic())))
            if reply is not None:
                box.append(reply)
                return

    waiter = threading.Thread(target=wait_outcome, name=f"deploy-{device}", daemon=True)
    waiter.start()
    for _command_id, chunk in bundle.chunks(deployment):
        bad = 0
        while waiter.is_alive() and time.monotonic() < deadline:
            reply = send("deploy-chunk", chunk, chunk_timeout_s)
            if reply is not None and reply.ok:
                if (reply.result or {}).get("outcome") in ("accepted", "duplicate", "closed"):
                    break
                bad += 1  # bad_hash, bad_size: corrupted on the way, or another plan
                if bad >= CHUNK_TRIES:
                    break  # the device's deadline ends the deployment; its reply says so
                continue
            if reply is not None and reply.code != "not_found":
                break  # refused: the deploy-model reply says why
            time.sleep(0.2)  # not there yet (deploy-model not taken yet), or no reply
        if not waiter.is_alive():
            break
    waiter.join(max(0.0, deadline - time.monotonic()))
    return _outcome_of(device, box[0] if box else None)


# -- rollouts ----------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ota_rollouts (
        id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL,
        bundle TEXT NOT NULL, state TEXT NOT NULL, options TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        reason TEXT)""",
    """CREATE TABLE IF NOT EXISTS ota_rollout_devices (
        rollout TEXT NOT NULL, device TEXT NOT NULL, position INTEGER NOT NULL,
        batch INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (rollout, device))""",
)


@dataclass(frozen=True)
class RolloutPlan:
    """Who gets the bundle in which batch: the first ``canary`` devices alone, then batches
    of ``batch``; the rollout stops once more than ``max_failures`` devices failed."""

    devices: tuple[str, ...]
    canary: int = 1
    batch: int = 10
    max_failures: int = 0

    def batches(self) -> list[list[str]]:
        first = list(self.devices[: self.canary]) if self.canary else []
        rest = list(self.devices[len(first):])
        out = [first] if first else []
        out += [rest[i:i + self.batch] for i in range(0, len(rest), max(1, self.batch))]
        return out


class RolloutStore:
    """Rollouts and each device's state in the ingest database: a SQLite file, or PostgreSQL
    (``postgresql://...``, with ``?options=-csearch_path=SCHEMA`` for a schema of its own)."""

    def __init__(self, db: str) -> None:
        from agent.backend.store import _split_schema, sqlite_path
        from agent.errors import StorageError

        self.postgres = db.startswith(("postgres://", "postgresql://"))
        self._conn: Any
        try:
            if self.postgres:
                import psycopg

                url, schema = _split_schema(db)
                try:
                    self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
                    if schema:
                        self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                        self._conn.execute(f'SET search_path TO "{schema}"')
                except psycopg.Error as exc:
                    raise DeployError(f"cannot open the database: {' '.join(str(exc).split())}",
                                      fix="check the --db URL and that PostgreSQL runs") from None
            else:
                path = sqlite_path(db)
                try:
                    self._conn = sqlite3.connect(path, isolation_level=None, timeout=30)
                except sqlite3.Error as exc:
                    raise DeployError(f"{path}: cannot open the database: {exc}",
                                      fix="give a writable --db path") from None
        except StorageError as exc:
            raise DeployError(exc.message, fix=exc.fix) from None
        for statement in _SCHEMA:
            self._exec(statement)

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cur = self._conn.execute(sql, params)
        try:
            return list(cur.fetchall())
        except Exception:  # a statement without rows (psycopg raises, sqlite returns [])
            return []

    def create(self, rollout: str, bundle: Bundle, plan: RolloutPlan,
               options: dict[str, Any]) -> None:
        now = time.time()
        if self._exec("SELECT 1 FROM ota_rollouts WHERE id = ?", (rollout,)):
            raise DeployError(f"rollout {rollout} exists already", fix="give another --id")
        self._exec("INSERT INTO ota_rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (rollout, bundle.model, bundle.version, str(bundle.folder), "running",
                    json.dumps({**options, "canary": plan.canary, "batch": plan.batch,
                                "max_failures": plan.max_failures}), now, now, None))
        position = 0
        for n, group in enumerate(plan.batches()):
            for device in group:
                self._exec("INSERT INTO ota_rollout_devices VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (rollout, device, position, n, "pending", None, now))
                position += 1

    def set_device(self, rollout: str, device: str, state: str, reason: str | None) -> None:
        self._exec("UPDATE ota_rollout_devices SET state = ?, reason = ?, updated_at = ? "
                   "WHERE rollout = ? AND device = ?", (state, reason, time.time(), rollout,
                                                        device))

    def set_rollout(self, rollout: str, state: str, reason: str | None) -> None:
        self._exec("UPDATE ota_rollouts SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                   (state, reason, time.time(), rollout))

    def options(self, rollout: str) -> dict[str, Any]:
        """The options a rollout was created with (plan, health gate, site)."""
        rows = self._exec("SELECT options FROM ota_rollouts WHERE id = ?", (rollout,))
        if not rows:
            raise DeployError(f"no rollout {rollout!r}", fix="see `lepton-agent deploy status`")
        found: dict[str, Any] = json.loads(rows[0][0])
        return found

    def status(self, rollout: str | None = None) -> list[dict[str, Any]]:
        """Every rollout (or one), newest first, with its devices' states."""
        rows = self._exec("SELECT id, model, version, bundle, state, reason, created_at "
                          "FROM ota_rollouts" + (" WHERE id = ?" if rollout else "")
                          + " ORDER BY created_at DESC", (rollout,) if rollout else ())
        if rollout and not rows:
            raise DeployError(f"no rollout {rollout!r}", fix="see `lepton-agent deploy status`")
        out = []
        for rid, model, version, folder, state, reason, created in rows:
            devices = self._exec("SELECT device, batch, state, reason FROM ota_rollout_devices "
                                 "WHERE rollout = ? ORDER BY position", (rid,))
            out.append({"id": rid, "model": model, "version": version, "bundle": folder,
                        "state": state, "reason": reason, "created_at": created,
                        "devices": [{"device": d, "batch": b, "state": s, "reason": r}
                                    for d, b, s, r in devices]})
        return out

    def site_devices(self, site: str) -> list[str]:
        """The devices of ``site`` that ingest has stored records of (none without ingest)."""
        try:
            return [str(r[0]) for r in self._exec(
                "SELECT DISTINCT device FROM records WHERE site = ? ORDER BY device", (site,))]
        except Exception:  # no records table: this database has not been ingest's yet
            if self.postgres:
                self._conn.rollback()
            return []

    def close(self) -> None:
        self._conn.close()


# A device in one of these states has its outcome: a resumed rollout does not deploy to it
# again. ``pending`` and ``deploying`` (the sender died while it waited) are deployed to.
DEVICE_DONE = frozenset({"succeeded", "failed", "rolled_back", "superseded", "timed_out",
                         "rejected", "no_reply", "skipped"})


def run_rollout(store: RolloutStore, rollout: str, bundle: Bundle, plan: RolloutPlan,
                send_to: Callable[[str], Send], *, progress: Callable[[DeviceOutcome], None]
                = lambda _o: None, batches: list[list[str]] | None = None,
                finished: dict[str, str] | None = None, **options: Any) -> str:
    """Deploy batch after batch (the devices of a batch in parallel); stop, leaving the rest
    ``skipped``, once more than ``max_failures`` devices did not succeed. Returns the
    rollout's final state: ``succeeded`` or ``stopped``.

    ``batches`` and ``finished`` (device -> its stored state) resume a rollout: a device that
    has its outcome is not deployed to again, and its failure still counts."""
    failures = 0
    batches = plan.batches() if batches is None else batches
    finished = finished or {}
    for n, group in enumerate(batches):
        results: dict[str, DeviceOutcome] = {}
        threads = []
        failures += sum(1 for d in group if finished.get(d, "succeeded") != "succeeded")
        group = [d for d in group if d not in finished]
        for device in group:
            store.set_device(rollout, device, "deploying", None)

            def one(d: str = device, into: dict[str, DeviceOutcome] = results) -> None:
                into[d] = deploy_device(bundle, rollout, d, send_to(d), **options)

            thread = threading.Thread(target=one, name=f"rollout-{device}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        for device in group:
            outcome = results.get(device) or DeviceOutcome(device, "failed", "no result")
            store.set_device(rollout, device, outcome.outcome, outcome.reason)
            progress(outcome)
            failures += not outcome.ok
        if failures > plan.max_failures:
            for later in batches[n + 1:]:
                for device in later:
                    store.set_device(rollout, device, "skipped", "the rollout stopped")
            reason = (f"{failures} device(s) failed (more than --max-failures "
                      f"{plan.max_failures}) in batch {n}" + (" (the canary)" if n == 0 and
                                                               plan.canary else ""))
            store.set_rollout(rollout, "stopped", reason)
            return "stopped"
    store.set_rollout(rollout, "succeeded", None)
    return "succeeded"


def resume_rollout(store: RolloutStore, rollout: str, send_to: Callable[[str], Send], *,
                   bundle: Bundle | None = None,
                   progress: Callable[[DeviceOutcome], None] = lambda _o: None,
                   **options: Any) -> str:
    """Continue a rollout whose sender stopped (killed, a lost machine) from the database:
    devices that have their outcome are left as they are; the others (``pending``, and
    ``deploying``: the device rejoins its deployment, same id, or answers how it ended) are
    deployed to, batch by batch, with the rollout's own plan and health options. A rollout
    that already ended returns its state without sending anything."""
    (record,) = store.status(rollout)
    if record["state"] != "running":
        return str(record["state"])
    saved = store.options(rollout)
    if bundle is None:
        bundle = Bundle.read(Path(record["bundle"]))
    if (bundle.model, bundle.version) != (record["model"], record["version"]):
        raise DeployError(f"rollout {rollout} deploys {record['model']} v{record['version']}; "
                          f"{bundle.folder} is {bundle.model} v{bundle.version}",
                          fix="resume it with its own bundle, or start a rollout with --id NEW")
    grouped: dict[int, list[str]] = {}
    for d in record["devices"]:
        grouped.setdefault(int(d["batch"]), []).append(str(d["device"]))
    finished = {str(d["device"]): str(d["state"]) for d in record["devices"]
                if d["state"] in DEVICE_DONE}
    plan = RolloutPlan(tuple(str(d["device"]) for d in record["devices"]),
                       canary=int(saved.get("canary", 1)), batch=int(saved.get("batch", 10)),
                       max_failures=int(saved.get("max_failures", 0)))
    for key in ("health_s", "min_fps_ratio"):
        if saved.get(key) is not None:
            options.setdefault(key, saved[key])
    return run_rollout(store, rollout, bundle, plan, send_to, progress=progress,
                       batches=[grouped[b] for b in sorted(grouped)], finished=finished,
                       **options)
