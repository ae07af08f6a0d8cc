"""Counting end to end: a generated clip -> the agent with a line -> a real mosquitto -> the real
ingest's ``counts`` table; and the same through a SIGKILL mid-bucket and a restart.

The references are independent of the code under test: each crossing the agent reports is
also an event record (one per crossing, stored by ingest apart from the counts), and a run
killed half-way must end with the same counts as an uninterrupted run of the same clip.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from agent.config.schema import OutboxSection
from agent.devtools.mosquitto import LocalBroker
from agent.devtools.rig import write_agent_config
from agent.service.pipelines import REPLAY_FRAMES
from tests.conftest import DEFAULT_MODEL, run_cli
from tests.e2e import AgentProcess, Ingest, wait_for

pytestmark = pytest.mark.broker

LINE = """
[[lines]]
name = "mid"
points = [[0.5, 0.0], [0.5, 1.0]]
"""

COMMIT_INTERVAL_S = OutboxSection().commit_interval_ms / 1000  # the default the test runs with


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The road scene (the default model's own), 40 s at 15 fps: both directions."""
    path = tmp_path_factory.mktemp("clip") / "road.avi"
    out = run_cli("synth-clip", str(path), "--frames", "600")
    assert out.returncode == 0, out.stderr
    return path


def _config(tmp_path: Path, broker: LocalBroker, name: str, *, bucket_s: int) -> Path:
    path = write_agent_config(tmp_path / f"{name}.toml", device_id=name, site="test-site",
                              state_dir=tmp_path / f"{name}-state", broker_url=broker.url,
                              model=DEFAULT_MODEL, delivery="ingested", threads=2)
    path.write_text(path.read_text() + LINE + f"\n[analytics]\nbucket_s = {bucket_s}\n")
    return path


def _counts(db: Path, device: str) -> Counter[tuple[str, str, str]]:
    """Ingest's tallies per (rule, label, direction) for ``device``."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rule, label, direction, SUM(count) FROM counts "
                            "WHERE device = ? GROUP BY 1, 2, 3", (device,)).fetchall()
    return Counter({(r, lb, d): n for r, lb, d, n in rows})


def _crossing_events(db: Path, device: str) -> Counter[str]:
    """Crossing events ingest stored for ``device``, per direction."""
    import json

    with sqlite3.connect(db) as conn:
        payloads = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM records WHERE device = ? AND stream LIKE '%.events'", (device,))]
    return Counter(p["direction"] for p in payloads if p.get("type") == "crossing")


def _buckets(db: Path, device: str) -> list[tuple[int, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, start_s, partial FROM count_buckets WHERE device = ? "
                            "ORDER BY seq", (device,)).fetchall()


def test_counts_reach_ingest_once_and_agree_with_the_crossing_events(
        tmp_path: Path, broker: LocalBroker, clip: Path) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-counting")
    try:
        agent = AgentProcess(_config(tmp_path, broker, "dev-count", bucket_s=10),
                             "--source", str(clip), "--pace", "fast")
        summary = agent.finish(timeout=180)
        assert summary["frames_processed"] == 600, agent.log
        wait_for(lambda: sum(_crossing_events(ingest.db, "dev-count").values()) > 0
                 and _buckets(ingest.db, "dev-count")
                 and _buckets(ingest.db, "dev-count")[-1][2] == 1,
                 "the counts and the last, partial bucket at ingest", timeout=60)
        counts = _counts(ingest.db, "dev-count")
        crossings = _crossing_events(ingest.db, "dev-count")
        # Each crossing is one event and one count (its class may settle later: per direction).
        per_direction = Counter()
        for (_, _, direction), n in counts.items():
            per_direction[direction] += n
        assert per_direction == crossings and sum(crossings.values()) >= 10, (counts, crossings)
        assert set(crossings) == {"in", "out"}  # traffic both ways
        buckets = _buckets(ingest.db, "dev-count")
        assert [seq for seq, _, _ in buckets] == list(range(1, len(buckets) + 1))
        assert all(start % 10 == 0 for _, start, _ in buckets)
        assert [partial for _, _, partial in buckets[:-1]] == [0] * (len(buckets) - 1)
    finally:
        ingest.stop()


def test_a_sigkill_mid_bucket_neither_loses_nor_doubles_a_count(
        tmp_path: Path, broker: LocalBroker, clip: Path) -> None:
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-counting")
    try:
        reference = AgentProcess(_config(tmp_path, broker, "dev-ref", bucket_s=3600),
                                 "--source", str(clip), "--pace", "fast")
        reference.finish(timeout=180)
        wait_for(lambda: _buckets(ingest.db, "dev-ref"), "the reference's bucket", timeout=60)
        expected = _counts(ingest.db, "dev-ref")
        assert sum(expected.values()) >= 10, expected

        config = _config(tmp_path, broker, "dev-kill", bucket_s=3600)
        victim = AgentProcess(config, "--source", str(clip), "--pace", "realtime")
        victim.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 300,
                           "half the clip processed", timeout=120)
        victim.send(signal.SIGKILL)
        victim.wait(timeout=30)
        assert not _buckets(ingest.db, "dev-kill")  # the one bucket was still open
        resumed = AgentProcess(config, "--source", str(clip), "--pace", "fast")
        summary = resumed.finish(timeout=180)
        assert "resuming" in resumed.log
        # The restart processed only what the killed run had not committed, plus the replay.
        # Uncommitted at the kill: up to one commit interval of frames (1 s at 15 fps) and the
        # frame in flight (a fresh clone saw 361 with 1 s commits).
        uncommitted = int(COMMIT_INTERVAL_S * 15) + 1
        assert summary["frames_processed"] <= 300 + REPLAY_FRAMES + uncommitted, summary
        wait_for(lambda: _buckets(ingest.db, "dev-kill"), "the resumed run's bucket", timeout=60)
        assert _counts(ingest.db, "dev-kill") == expected
    finally:
        ingest.stop()
