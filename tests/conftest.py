"""Shared fixtures: real data from ../shared, a private mosquitto, helpers to run the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEPTON_SHARED", ROOT.parent / "shared")) / "data"
DEFAULT_MODEL = ROOT / "models" / "lepton-vehicles-tiny"


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(autouse=True)
def _reap_processes():
    """A test that fails half-way leaves no ingest process behind."""
    yield
    from tests.e2e import RUNNING

    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def broker(tmp_path: Path):
    from agent.devtools.mosquitto import LocalBroker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = LocalBroker(tmp_path / "broker")
    b.start()
    yield b
    b.close()


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def ingested_seqs(db: Path, device: str | None = None) -> list[int]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            q = "SELECT seq FROM records" + (" WHERE device = ?" if device else "") + " ORDER BY seq"
            return [r[0] for r in conn.execute(q, (device,) if device else ())]
        except sqlite3.OperationalError:
            return []
