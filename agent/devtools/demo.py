"""``make run``: the whole loop on this machine, ending with a printed summary.

A clip of the synthetic scene -> the agent with the default model -> a private mosquitto
-> the ingest consumer (SQLite). Without mosquitto the agent still runs, offline, and
says how many results wait in its outbox.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.devtools.mosquitto import LocalBroker, find_mosquitto
from agent.errors import AgentError, ConfigError
from agent.paths import resolve_model
from agent.sources.synthetic import write_clip

DEFAULT_MODEL = resolve_model(Path("models/lepton-vehicles-tiny"))


def _agent(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def _ingested(ingest_db: Path) -> int:
    """Records in ingest's database (the backend's, not the agent's outbox)."""
    if not ingest_db.exists():
        return 0
    with sqlite3.connect(ingest_db) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float) -> None:
    """Wait until ``process`` writes ``path``; fail if it dies first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AgentError(f"ingest exited early with status {process.returncode}")
        if time.monotonic() > deadline:
            raise AgentError(f"ingest did not subscribe within {timeout:.0f}s")
        time.sleep(0.05)


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
    run_args = ["run", "--source", str(clip), "--model", str(model_path), "--state-dir",
                str(state), "--device-id", "demo-device", "--site", "demo-site", "--json",
                "--log-level", "warning"]

    if find_mosquitto() is None:
        print("[demo] mosquitto is not installed (sudo apt-get install mosquitto); running offline")
        out = subprocess.run(_agent(*run_args, "--offline"), capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr.strip(), file=sys.stderr)
            return out.returncode
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[demo] frames {summary['frames_processed']}, detections {summary['detections']}, "
              f"published 0 (offline); {summary['backlog']} results wait in {state}/outbox.db "
              "to sync when a broker is configured")
        return 0

    with LocalBroker(workdir / "broker") as broker:
        print(f"[demo] mosquitto listening on {broker.url}")
        ready = workdir / "ingest.ready"
        ready.unlink(missing_ok=True)
        ingest = subprocess.Popen(
            _agent("ingest", "--broker", broker.url, "--db", f"sqlite:///{ingest_db}",
                   "--client-id", "demo-ingest", "--log-level", "warning", "--ready-file", str(ready)),
            stdout=subprocess.PIPE, text=True)
        try:
            wait_for_file(ready, ingest, timeout=30)
            before = _ingested(ingest_db)
            started = time.monotonic()
            out = subprocess.run(_agent(*run_args, "--broker", broker.url),
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr.strip(), file=sys.stderr)
                return out.returncode
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            expected = before + summary["results_published"]
            deadline = time.monotonic() + 10
            while _ingested(ingest_db) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            ingested = _ingested(ingest_db) - before
        finally:
            ingest.send_signal(signal.SIGTERM)
            ingest_out, _ = ingest.communicate(timeout=10)
        elapsed = time.monotonic() - started
        stats = json.loads(ingest_out.strip().splitlines()[-1]) if ingest_out.strip() else {}
    print(f"[demo] agent: {summary['frames_processed']} frames at {summary['processing_fps']} fps, "
          f"{summary['detections']} detections, {summary['results_committed']} results committed, "
          f"{summary['results_published']} published (first after {summary['first_publish_s']}s), "
          f"{summary['backlog']} left in the outbox")
    print(f"[demo] ingest: {ingested} new records stored in {ingest_db} "
          f"({stats.get('duplicates', 0)} duplicates dropped, {stats.get('rejected', 0)} rejected)")
    ok = ingested == summary["results_published"] and summary["backlog"] == 0
    print(f"[demo] {'OK' if ok else 'INCOMPLETE'}: frames {summary['frames_processed']}, "
          f"detections {summary['detections']}, published {summary['results_published']}, "
          f"ingested {ingested} in {elapsed:.1f}s")
    if os.environ.get("LEPTON_DEMO_SHOW"):
        with sqlite3.connect(ingest_db) as conn:
            print(conn.execute("SELECT payload FROM records ORDER BY seq DESC LIMIT 1").fetchone()[0])
    return 0 if ok else 1
