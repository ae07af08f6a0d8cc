"""`lepton-agent status`: the running agent's live state, or what its outbox holds."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.service.snapshot import HealthSnapshot


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` and its flags to the subcommands."""
    status = sub.add_parser("status", help="the running agent's live state (exit 3: not running)")
    status.add_argument("--config", type=Path)
    status.add_argument("--state-dir", type=Path)
    status.add_argument("--socket", type=Path,
                        help="status socket (default: the config's, else STATE_DIR/agent.sock, "
                             "then the service's /run/lepton-agent/status.sock)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """The running agent's live state; when it is not running, what its outbox holds."""
    from agent.config import load_config
    from agent.service.status import SYSTEMD_STATE_DIR, query, socket_candidates
    from agent.storage.report import outbox_path

    overrides = {"agent": {"state_dir": str(args.state_dir)}} if args.state_dir else {}
    config = load_config(args.config, overrides=overrides)
    candidates = socket_candidates(config.agent.state_dir, args.socket or config.agent.status_socket)
    snap, denied, answered = None, [], candidates[0]
    for path in candidates:
        snap = query(path)
        if snap is not None:
            answered = path
            break
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            denied.append(path)
    if snap is None and denied:
        raise AgentError(f"permission denied on the status socket {denied[0]}",
                         fix="run as a member of the agent's group (usermod -aG lepton $USER, "
                             "then log in again) or with sudo")
    if snap is None:
        state_dir = config.agent.state_dir
        if not (args.state_dir or args.config) and not outbox_path(state_dir).exists() \
                and outbox_path(SYSTEMD_STATE_DIR).exists():
            state_dir = SYSTEMD_STATE_DIR  # the service's StateDirectory=
        offline = _offline_status(state_dir, config.outbox.delivery)
        where = ", ".join(str(p) for p in candidates)
        if args.json:
            print(json.dumps({"state": "not running", "socket": str(candidates[0]),
                              "sockets_tried": [str(p) for p in candidates], **offline}))
        else:
            print(f"agent: not running (nothing answers at {where})")
            if "backlog" in offline:
                count = offline["backlog"]
                print(f"  outbox:    {offline['outbox']}: backlog {count} "
                      f"record{'' if count == 1 else 's'}"
                      + (f", oldest unsent {_ago(offline['oldest_unsent_s'])} old"
                         if offline["backlog"] else "") + f" (until {offline['delivery']})")
                seqs = ", ".join(f"{k} {v}" for k, v in offline["last_seq"].items()) or "none yet"
                print(f"  last seq:  {seqs}")
            else:
                print(f"  outbox:    {offline['outbox']}")
            print("  start it: systemctl start lepton-agent   why it stopped: "
                  "journalctl -u lepton-agent -n 50   checks: lepton-agent diag")
        return 3
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print("\n".join(_status_lines(_typed(snap, answered))))
    return 0


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _typed(snap: dict[str, Any], where: Path) -> HealthSnapshot:
    """The socket's answer as a typed snapshot; an answer this CLI cannot read is an error."""
    from agent.service.snapshot import HealthSnapshot

    try:
        return HealthSnapshot.from_json(snap)
    except (KeyError, TypeError, AttributeError) as exc:
        raise AgentError(f"the agent at {where} answered a status this command cannot read "
                         f"(missing or malformed {exc})",
                         fix="run the lepton-agent of the same version as the running agent, "
                             "or read the raw answer with `lepton-agent status --json`") from exc


def _status_lines(snap: HealthSnapshot) -> list[str]:
    """The live snapshot as text for a person: words for absent values, never Python reprs."""
    cap, inf = snap.stages.capture, snap.stages.inference
    q, ob, br, th = snap.queues.frames, snap.outbox, snap.broker, snap.thermal
    lines = [f"agent: {snap.state} (pid {snap.pid}, up {_ago(snap.uptime_s)}) "
             f"{snap.site}/{snap.device}",
             f"  capture:   {'up' if cap.alive else 'DOWN'} {cap.source}, {cap.frames} "
             f"frames, {cap.reconnects} reconnects, {cap.skipped_static} static skipped"
             + (f"; last error: {cap.last_error}" if cap.last_error else ""),
             f"  inference: {'up' if inf.alive else 'DOWN'} {inf.model}, {snap.fps} fps, "
             f"{inf.frames} frames, {inf.detections} detections, {inf.failures} failures",
             f"  queue:     frames {q.depth}/{q.capacity} ({q.policy}), "
             f"{q.dropped} dropped",
             f"  outbox:    backlog {ob.backlog}"
             + (f", oldest unsent {_ago(ob.oldest_unsent_s)} old" if ob.backlog else "")
             + f", {ob.published} published, {ob.ingested} ingested"]
    if ob.volatile:
        lines.append(f"  storage:   DEGRADED: {ob.volatile} (fix: make the state directory "
                     "writable or free space on it, then restart the agent)")
    lines += _pipeline_lines(snap)
    if not br.url:
        lines.append("  broker:    none (offline)")
    else:
        error = f": {br.last_error}" if br.last_error and not br.connected else ""
        lines.append(f"  broker:    {br.url} "
                     f"{'connected' if br.connected else 'DISCONNECTED'}{error}")
    temp = "no sensor" if th.temp_c is None else f"{th.temp_c:.1f} C"
    lines.append(f"  thermal:   {temp}{', THROTTLED' if th.throttled else ''}, "
                 f"slow-down level {th.level}")
    for name, s in snap.sensors.items():
        values = (s.latest or {}).get("values") or {}
        latest = ", ".join(f"{k}={_value(v)}" for k, v in list(values.items())[:4])
        state = "up" if s.connected else f"DOWN ({s.last_error or 'not connected'})"
        anomaly = ""
        if s.anomaly is not None:
            anomaly = (", no window yet" if s.score is None else
                       f", score {s.score:.2f}{' ANOMALY' if s.anomaly else ''}")
        lines.append(f"  sensor {name}: {state} {s.port} {s.protocol}, {s.readings} "
                     f"readings, {s.parse_errors} parse errors{anomaly}"
                     f"{'; ' + latest if latest else ''}")
    lines += _ota_lines(snap)
    if snap.last_error:
        lines.append(f"  last error: {snap.last_error}")
    return lines


def _ota_lines(snap: HealthSnapshot) -> list[str]:
    """Model OTA: the slot running, a deployment in progress, the last outcome, clock skew."""
    o = snap.ota
    parts = [f"slot {o.slot} ({o.model} v{o.version})" if o.slot else "configured model"]
    if o.deployment:
        parts.append(f"deployment {o.deployment} in the {o.state} state")
    if o.last_outcome:
        parts.append(f"last {o.last_deployment}: {o.last_outcome}"
                     + (f" ({o.last_reason})" if o.last_reason else ""))
    lines = [f"  ota:       {'; '.join(parts)}"]
    if o.clock_skew_exceeds:
        behind = "unreadable" if o.clock_skew_s is None else f"{_ago(o.clock_skew_s)} behind"
        lines.append(f"  clock:     SKEWED: the device clock is {behind} trusted time "
                     f"(threshold {_ago(o.clock_skew_threshold_s)}; fix: set the clock, e.g. "
                     "enable NTP: timedatectl set-ntp true)")
    return lines


def _pipeline_lines(snap: HealthSnapshot) -> list[str]:
    """One line per pipeline (stream, state, fps, frames, model, source); a failed one says
    why, and what to do on the next line when its reason carries a fix."""
    from agent.diag.pipelines import split_fix

    lines: list[str] = []
    if snap.pipelines:
        counts: dict[str, int] = {}
        for p in snap.pipelines:
            counts[p.state] = counts.get(p.state, 0) + 1
        lines.append(f"  pipelines: {len(snap.pipelines)} ("
                     + ", ".join(f"{n} {state}" for state, n in counts.items()) + ")")
    for p in snap.pipelines:
        figures = (f"{p.fps} fps, {p.inference.frames} processed, {p.frames.dropped} dropped; "
                   f"model {p.model}; source {p.source}")
        if p.state != "failed":
            lines.append(f"    pipeline {p.stream}: {p.state}, {figures}")
            continue
        message, fix = split_fix(p.reason or "no reason given")
        lines.append(f"    pipeline {p.stream}: FAILED: {message}; {figures}")
        if fix:
            lines.append(f"      fix: {fix}")
    return lines


def _offline_status(state_dir: Path, delivery: Literal["ingested", "broker"] = "ingested") -> dict[str, Any]:
    """What the outbox in ``state_dir`` holds, read-only: records not yet delivered (acknowledged
    by ingest, or sent to the broker when ``delivery`` is "broker"), the oldest one's age, and
    the last seq of each stream."""
    from agent.storage.report import OutboxUnreadable, outbox_path, read_report

    db = outbox_path(state_dir)
    try:
        report = read_report(state_dir, delivery)
    except OutboxUnreadable as exc:
        return {"outbox": f"{db} unreadable: {exc.__cause__ or exc}"}
    if report is None:
        return {"outbox": f"{db} does not exist (never ran with this state dir?)"}
    age = round(report.oldest_unsent_s) if report.oldest_unsent_s is not None else None
    return {"outbox": str(db), "delivery": delivery, "backlog": report.backlog,
            "oldest_unsent_s": age, "last_seq": dict(report.last_seq)}
