"""The pipelines check: each configured pipeline (stream + source + model) and what is wrong with
it. With the agent running, its status socket says each pipeline's state and why one failed;
without it, each pipeline's model is loaded as the agent would at start.

The running agent is asked through the status socket's own client (agent.service.status: the one
module of the service diag may import, see docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from agent.diag import CheckResult
from agent.errors import AgentError


def split_fix(reason: str) -> tuple[str, str | None]:
    """A pipeline's ``reason`` (an AgentError as text: ``message (fix: what to do)``) as the
    message and the fix, or the whole reason and None when it carries no fix."""
    message, sep, rest = reason.partition(" (fix: ")
    if not sep or not rest.endswith(")"):
        return reason, None
    return message, rest[:-1]


def live_snapshot(cfg: AgentConfig, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running agent's status snapshot, or None when no agent answers (where
    ``lepton-agent status`` looks: the status socket's own client)."""
    from agent.service.status import query, socket_candidates

    for path in socket_candidates(cfg.agent.state_dir, cfg.agent.status_socket):
        answer = query(path, timeout)
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
