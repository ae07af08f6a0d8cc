"""The pipelines check: each configured pipeline (stream + source + model) and what is wrong with
it. With the agent running, its status socket says each pipeline's state and why one failed;
without it, each pipeline's model is loaded as the agent would at start.

diag does not import the service (docs/architecture.md), so the socket is read here: one
connection, one JSON snapshot back (the protocol of agent.service.status.query)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.diag import CheckResult
from agent.errors import AgentError

# Where the service's socket is when the config names none (systemd RuntimeDirectory=); kept
# equal to agent.service.status.SYSTEMD_RUNTIME_DIR.
SERVICE_SOCKET = Path("/run/lepton-agent/status.sock")


def split_fix(reason: str) -> tuple[str, str | None]:
    """A pipeline's ``reason`` (an AgentError as text: ``message (fix: what to do)``) as the
    message and the fix, or the whole reason and None when it carries no fix."""
    message, sep, rest = reason.partition(" (fix: ")
    if not sep or not rest.endswith(")"):
        return reason, None
    return message, rest[:-1]


def live_snapshot(cfg: AgentConfig, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running agent's status snapshot, or None when no agent answers (the places
    ``lepton-agent status`` looks: the configured socket, else this environment's, the state
    directory's, then the service's)."""
    if cfg.agent.status_socket:
        candidates = [cfg.agent.status_socket]
    else:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        candidates = ([Path(runtime) / "status.sock"] if runtime else []) + [
            cfg.agent.state_dir / "agent.sock", SERVICE_SOCKET]
    for path in candidates:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(path))
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            answer = json.loads(b"".join(chunks))
        except (OSError, ValueError):
            continue
        if isinstance(answer, dict):
            return answer
    return None


def check_pipelines(cfg: AgentConfig, live: dict[str, Any] | None = None) -> CheckResult:
    """Fail naming each failed pipeline, its reason and its fix; pass when every one runs
    (``live``: the running agent's snapshot) or loads (no agent running)."""
    if live is None:
        live = live_snapshot(cfg)
    if live is not None and isinstance(live.get("pipelines"), list):
        entries = [{"stream": str(p.get("stream")), "state": str(p.get("state")),
                    "reason": p.get("reason")} for p in live["pipelines"]]
        return _result(entries, live=True)
    return _result(_load_each(cfg), live=False)


def _load_each(cfg: AgentConfig) -> list[dict[str, Any]]:
    """Each pipeline's model loaded (one interpreter thread) as the agent loads it."""
    from agent.inference.model import load_model

    entries: list[dict[str, Any]] = []
    for spec in cfg.pipeline_specs():
        try:
            load_model(spec.model, num_threads=1, delegate=spec.delegate, labels=spec.labels,
                       score_threshold=spec.score_threshold)
        except AgentError as exc:
            entries.append({"stream": spec.stream, "state": "failed", "reason": str(exc)})
            continue
        entries.append({"stream": spec.stream, "state": "loads", "reason": None})
    return entries


def _result(entries: list[dict[str, Any]], *, live: bool) -> CheckResult:
    details: dict[str, Any] = {"live": live, "pipelines": entries}
    failed = [e for e in entries if e["state"] == "failed"]
    if not failed:
        states = ", ".join(f"{e['stream']} {e['state']}" for e in entries) or "none configured"
        where = "the running agent: " if live else "not running; each model loads: "
        return CheckResult("pipelines", "pass", where + states, details=details)
    reasons, fixes = [], []
    for e in failed:
        message, fix = split_fix(str(e["reason"] or "no reason given"))
        reasons.append(f"{e['stream']} failed: {message}")
        if fix:
            fixes.append(f"{e['stream']}: {fix}" if len(failed) > 1 else fix)
    others = len(entries) - len(failed)
    verb = ("runs on" if live else "loads") if others == 1 else ("run on" if live else "load")
    tail = f" ({others} other pipeline{'' if others == 1 else 's'} {verb})" if others else ""
    return CheckResult("pipelines", "fail", "; ".join(reasons) + tail,
                       "; ".join(fixes) or "see the agent's log: journalctl -u lepton-agent",
                       details)
