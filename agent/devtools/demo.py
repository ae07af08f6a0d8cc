"""``make run``: the whole loop on this machine, ending with a printed summary.

A clip of the synthetic scene -> the agent with the default model and a counting line -> a
private mosquitto -> the ingest consumer (SQLite): results, crossing events and counts.
Without mosquitto the agent still runs, offline, and says how many records wait in its outbox.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from agent.devtools.mosquitto import find_mosquitto
from agent.devtools.rig import DEFAULT_MODEL, AgentProcess, Rig, wait_for_file
from agent.errors import ConfigError
from agent.sources.synthetic import write_clip

__all__ = ["DEFAULT_MODEL", "run_demo", "wait_for_file"]


# The demo counts vehicles too: one line down the middle of the road scene.
DEMO_CONFIG = """
[[lines]]
name = "mid"
points = [[0.5, 0.0], [0.5, 1.0]]

[analytics]
bucket_s = 60

[web]
listen = ""
"""


def _ingested(ingest_db: Path) -> int:
    """Records in ingest's database (the backend's, not the agent's outbox): results and
    events, and count records."""
    if not ingest_db.exists():
        return 0
    with sqlite3.connect(ingest_db) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                       + conn.execute("SELECT COUNT(*) FROM count_buckets").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _counts_at_ingest(ingest_db: Path) -> str:
    """The line counts ingest stored, as words."""
    with sqlite3.connect(ingest_db) as conn:
        try:
            rows = conn.execute("SELECT rule, label, direction, SUM(count) FROM counts "
                                "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").fetchall()
        except sqlite3.OperationalError:
            return "none"
    return ", ".join(f"{r} {label} {d} {n}" for r, label, d, n in rows) or "none"


def _counts(summary: dict[str, object]) -> str:
    """The line counts the agent emitted, as words."""
    words = [f"{c['rule']} {c['label']} {c['direction']} {c['count']}"
             for stream in summary.get("streams", []) or []  # type: ignore[attr-defined]
             for c in stream.get("counts", [])]
    return ", ".join(sorted(words)) or "none"


def run_demo(frames: int, workdir: Path, model: Path | None = None) -> int:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the demo's working directory {workdir}: "
                          f"{exc.strerror or exc}", key="--workdir",
                          fix="give a --workdir you can write to") from exc
    clip = workdir / "traffic.avi"
    write_clip(str(clip), 640, 480, 15.0, frames, seed=11)
    print(f"[demo] generated {frames} frames of synthetic traffic: {clip}")
    state = workdir / "state"
    ingest_db = workdir / "ingest.db"
    model_path = model or DEFAULT_MODEL
    config = workdir / "demo.toml"
    config.write_text(DEMO_CONFIG)
    run_args = ["--config", str(config), "--source", str(clip), "--model", str(model_path),
                "--state-dir", str(state), "--device-id", "demo-device", "--site", "demo-site",
                "--log-level", "warning"]

    if find_mosquitto() is None:
        print("[demo] mosquitto is not installed (sudo apt-get install mosquitto); running offline")
        agent = AgentProcess(None, *run_args, "--offline").start()
        if agent.wait() != 0:
            print(agent.log.strip(), file=sys.stderr)
            return agent.returncode or 1
        summary = agent.summary()
        print(f"[demo] frames {summary['frames_processed']}, detections {summary['detections']}, "
              f"counts {_counts(summary)}; published 0 (offline); {summary['backlog']} records "
              f"wait in {state}/outbox.db to sync when a broker is configured")
        return 0

    with Rig(workdir) as rig:
        print(f"[demo] mosquitto listening on {rig.broker.url}")
        ingest = rig.ingest(ingest_db, client_id="demo-ingest", capture_stderr=False,
                            ready_timeout=30)
        before = _ingested(ingest_db)
        started = time.monotonic()
        agent = rig.agent(None, *run_args, "--broker", rig.broker.url)
        if agent.wait() != 0:
            print(agent.log.strip(), file=sys.stderr)
            return agent.returncode or 1
        summary = agent.summary()
        expected = before + summary["results_published"]
        deadline = time.monotonic() + 10
        while _ingested(ingest_db) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        ingested = _ingested(ingest_db) - before
        ingest.send(signal.SIGTERM)
        ingest.wait(10)
        stats = ingest.last_json() if ingest.stdout.strip() else {}
        elapsed = time.monotonic() - started
    print(f"[demo] agent: {summary['frames_processed']} frames at {summary['processing_fps']} fps, "
          f"{summary['detections']} detections, {summary['results_committed']} results committed, "
          f"{summary['results_published']} published (first after {summary['first_publish_s']}s), "
          f"{summary['backlog']} left in the outbox")
    print(f"[demo] ingest: {ingested} new records stored in {ingest_db} "
          f"({stats.get('duplicates', 0)} duplicates dropped, {stats.get('rejected', 0)} rejected)")
    print(f"[demo] counts: the agent {_counts(summary)}; at ingest {_counts_at_ingest(ingest_db)}")
    ok = ingested == summary["results_published"] and summary["backlog"] == 0
    print(f"[demo] {'OK' if ok else 'INCOMPLETE'}: frames {summary['frames_processed']}, "
          f"detections {summary['detections']}, published {summary['results_published']}, "
          f"ingested {ingested} in {elapsed:.1f}s")
    if os.environ.get("LEPTON_DEMO_SHOW"):
        with sqlite3.connect(ingest_db) as conn:
            print(conn.execute("SELECT payload FROM records ORDER BY seq DESC LIMIT 1").fetchone()[0])
    return 0 if ok else 1
