"""``lepton-agent faults SCENARIO``: fault injection with real processes on loopback.

A private mosquitto, the ingest consumer (SQLite) and the agent run as real processes; the
scenario breaks one of them over and over, then lets the agent deliver what it kept, and
counts: records generated (the agent's own seqs), ingested, lost (generated, neither
ingested nor evicted by the disk budget), duplicated after dedupe, order violations per
stream (a higher seq captured earlier), and SQLite's integrity check of the outbox after
every kill.

Scenarios: ``broker-kill`` (SIGKILL and restart the broker mid-stream), ``agent-kill``
(SIGKILL the agent and restart it on the same state directory), ``budget`` (a tiny disk
budget filled while the broker is away) and ``outage`` (the broker unreachable for a long
stretch, then back).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.devtools.demo import wait_for_file
from agent.devtools.mosquitto import LocalBroker
from agent.errors import AgentError
from agent.paths import resolve_model

SCENARIOS = ("broker-kill", "agent-kill", "budget", "outage")
DEVICE = "dev-faults"


@dataclass
class FaultReport:
    scenario: str
    cycles: int
    generated: int = 0
    ingested: int = 0
    evicted: int = 0
    pending: int = 0
    lost: int = 0
    duplicated: int = 0
    order_violations: dict[str, int] = field(default_factory=dict)
    integrity_checks: int = 0
    integrity_failures: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.pending == 0 and self.duplicated == 0
                and self.integrity_failures == 0
                and not any(self.order_violations.values()) and self.generated > 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


class _Rig:
    def __init__(self, workdir: Path, budget: str | None = None) -> None:
        self.workdir = workdir
        self.broker = LocalBroker(workdir / "broker")
        self.state = workdir / "state"
        self.ingest_db = workdir / "ingest.db"
        self.config = workdir / "agent.toml"
        self.config.write_text(f"""
[agent]
device_id = "{DEVICE}"
site = "faults"
state_dir = "{self.state}"
shutdown_grace_s = 15

[model]
path = "{resolve_model(Path('models/lepton-vehicles-tiny'))}"
num_threads = 1

[mqtt]
broker = "{self.broker.url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
telemetry_interval_s = 1

[outbox]
ack_timeout_s = 3
{f'budget_bytes = "{budget}"' if budget else ''}
""")
        self.ingest: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[str] | None = None

    def start_ingest(self) -> None:
        ready = self.workdir / "ingest.ready"
        ready.unlink(missing_ok=True)
        self.ingest = subprocess.Popen(
            _agent_cmd("ingest", "--broker", self.broker.url, "--db", f"sqlite:///{self.ingest_db}",
                       "--client-id", "faults-ingest", "--log-level", "error",
                       "--ready-file", str(ready)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_file(ready, self.ingest, timeout=30)

    def start_agent(self, frames: int = 0, fps: int = 40) -> subprocess.Popen[str]:
        args = ["run", "--config", str(self.config), "--source",
                f"synthetic://160x120@{fps}", "--log-level", "error", "--json"]
        if frames:
            args += ["--max-frames", str(frames)]
        self.agent = subprocess.Popen(_agent_cmd(*args), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        return self.agent

    def wait_agent_running(self, timeout: float = 30) -> None:
        """Until the agent has committed its first record (its outbox has a seq)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise AgentError(f"agent exited early: {self.agent.stderr.read()[-800:]}"
                                 if self.agent.stderr else "agent exited early")
            if self.last_seq() > 0:
                return
            time.sleep(0.05)
        raise AgentError("agent committed nothing within 30s")

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.agent is None:
            return
        if self.agent.poll() is None:
            self.agent.send_signal(sig)
        _, err = self.agent.communicate(timeout=timeout)
        if sig == signal.SIGTERM and self.agent.returncode != 0:
            raise AgentError(f"agent exited with {self.agent.returncode}: {err[-800:]}")
        self.agent = None

    def interrupt_broker(self, cycles: int, up_s: Callable[[], float],
                         down_s: Callable[[], float], *, kill: bool) -> None:
        """With the agent running, take the broker away ``cycles`` times (SIGKILL, or a clean
        stop) for ``down_s()`` seconds after ``up_s()`` seconds up; then stop the agent."""
        self.start_agent()
        self.wait_agent_running()
        for _ in range(cycles):
            time.sleep(up_s())
            if kill:
                self.broker.kill()
            else:
                self.broker.stop()
            time.sleep(down_s())
            self.broker.start()
        self.stop_agent()

    def last_seq(self) -> int:
        db = self.state / "outbox.db"
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute("SELECT MAX(last_seq) FROM streams").fetchone()
                return int(row[0] or 0)
        except sqlite3.Error:
            return 0

    def integrity_ok(self) -> bool:
        with sqlite3.connect(self.state / "outbox.db") as conn:
            return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def pending(self) -> set[tuple[str, int]]:
        """Keys of records the outbox still holds undelivered."""
        with sqlite3.connect(self.state / "outbox.db") as conn:
            return set(conn.execute("SELECT stream, seq FROM records WHERE acked_ns IS NULL"))

    def evicted(self) -> int:
        with sqlite3.connect(self.state / "outbox.db") as conn:
            row = conn.execute("SELECT COALESCE(SUM(records), 0) FROM evictions").fetchone()
            return int(row[0])

    def ingested(self) -> tuple[int, int, dict[str, int]]:
        """Distinct records, duplicates beyond the first, order violations per stream."""
        if not self.ingest_db.exists():
            return 0, 0, {}
        with sqlite3.connect(self.ingest_db) as conn:
            try:
                rows = conn.execute("SELECT stream, seq, ts FROM records WHERE device = ? "
                                    "ORDER BY stream, seq", (DEVICE,)).fetchall()
            except sqlite3.OperationalError:
                return 0, 0, {}
        keys = {(s, q) for s, q, _ in rows}
        violations: dict[str, int] = {}
        previous: dict[str, str] = {}
        for stream, _, ts in rows:
            if stream in previous and ts < previous[stream]:
                violations[stream] = violations.get(stream, 0) + 1
            else:
                violations.setdefault(stream, 0)
            previous[stream] = ts
        return len(keys), len(rows) - len(keys), violations

    def flush(self, timeout: float = 90) -> None:
        """A short agent run that delivers whatever the outbox still holds."""
        self.start_agent(frames=1)
        self.wait_agent(timeout)

    def wait_agent(self, timeout: float) -> None:
        """Until the agent exits by itself; its exit status must be 0."""
        assert self.agent is not None
        _, err = self.agent.communicate(timeout=timeout)
        if self.agent.returncode != 0:
            raise AgentError(f"agent exited with {self.agent.returncode}: {err[-800:]}")
        self.agent = None

    def close(self) -> None:
        for proc in (self.agent, self.ingest):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.broker.close()


def run_fault_scenario(scenario: str, cycles: int, workdir: Path | None = None,
                       seed: int = 0, outage_s: float = 20.0) -> FaultReport:
    if scenario not in SCENARIOS:
        raise AgentError(f"unknown fault scenario {scenario!r}",
                         fix=f"choose one of {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    report = FaultReport(scenario, cycles)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"lepton-faults-{scenario}-") as tmp:
        rig = _Rig(Path(workdir or tmp), budget="256KiB" if scenario == "budget" else None)
        try:
            if scenario != "budget":
                rig.broker.start()
                rig.start_ingest()
            if scenario == "broker-kill":
                rig.interrupt_broker(cycles, lambda: rng.uniform(0.4, 1.2),
                                     lambda: rng.uniform(0.1, 0.6), kill=True)
            elif scenario == "agent-kill":
                for _ in range(cycles):
                    rig.start_agent()
                    rig.wait_agent_running()
                    time.sleep(rng.uniform(0.3, 1.5))
                    rig.stop_agent(signal.SIGKILL)
                    report.integrity_checks += 1
                    report.integrity_failures += not rig.integrity_ok()
            elif scenario == "budget":
                # No broker for the whole run: the budget fills and evicts.
                rig.start_agent(frames=max(400, 300 * cycles), fps=240)
                rig.wait_agent(timeout=600)
                rig.broker.start()
                rig.start_ingest()
            elif scenario == "outage":
                rig.interrupt_broker(cycles, lambda: rng.uniform(0.5, 1.0), lambda: outage_s,
                                     kill=False)
            # Deliver what the outbox kept: short runs until nothing is pending (bounded).
            deadline = time.monotonic() + 180
            while True:
                rig.flush()
                report.generated = rig.last_seq()
                report.evicted = rig.evicted()
                report.ingested, report.duplicated, report.order_violations = rig.ingested()
                if (report.ingested + report.evicted >= report.generated
                        or time.monotonic() > deadline):
                    break
            report.integrity_checks += 1
            report.integrity_failures += not rig.integrity_ok()
            report.pending = len(rig.pending())
            report.lost = max(0, report.generated - report.ingested - report.evicted
                              - report.pending)
        finally:
            rig.close()
    report.seconds = round(time.monotonic() - started, 1)
    return report


def format_report(r: FaultReport) -> str:
    order = sum(r.order_violations.values())
    return (f"[faults] {r.scenario} x{r.cycles}: generated {r.generated}, ingested {r.ingested}, "
            f"evicted {r.evicted}, pending {r.pending}, lost {r.lost}, duplicated {r.duplicated}, "
            "order violations "
            f"{order}, integrity {r.integrity_checks - r.integrity_failures}/{r.integrity_checks} "
            f"ok, {r.seconds}s -> {'OK' if r.ok else 'FAIL'}")
