"""N pipelines in one agent, end to end: a real mosquitto, the real ingest consumer, the agent as a
real process (or AgentApp in-process where the internal start/stop API is driven).

Every check compares what ingest stored, per (stream, seq), with an independent reference: the
frame counts the agent's summary reports per stream, and the payloads the agent's outbox holds
for each seq (a seq given twice to two frames would show as two different payloads).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.config.schema import PipelineSection
from agent.devtools.mosquitto import LocalBroker
from agent.devtools.rig import RigPipeline, write_agent_config
from agent.service.app import AgentApp, RunSummary
from agent.storage.report import read_report, record_payloads
from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess, Ingest, wait_for

pytestmark = pytest.mark.broker

SOURCE = "synthetic://160x120@20"  # live-like: paced at 20 fps unless pace = "fast"


def _config(tmp_path: Path, broker: LocalBroker, device: str, pipelines: list[RigPipeline],
            name: str = "agent.toml", grace: float = 8.0) -> Path:
    return write_agent_config(tmp_path / name, device_id=device, site="test-site",
                              state_dir=tmp_path / "state", broker_url=broker.url,
                              model=DEFAULT_MODEL, grace=grace, ack_timeout_s=2,
                              delivery="ingested", thread_budget=2, pipelines=pipelines)


def _rows(db: Path, device: str) -> list[tuple[str, int, str]]:
    """Every (stream, seq, payload) ingest stored for ``device``, duplicates included."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return list(conn.execute("SELECT stream, seq, payload FROM records WHERE device = ? "
                                     "ORDER BY stream, seq", (device,)))
        except sqlite3.OperationalError:  # ingest has not made its tables yet
            return []


def _seqs(db: Path, device: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for stream, seq, _ in _rows(db, device):
        out.setdefault(stream, []).append(seq)
    return out


def _frame_ts(payload: str) -> float:
    """The capture time a result record carries (its ``ts``, RFC 3339)."""
    from datetime import datetime

    ts = json.loads(payload)["ts"]
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _assert_exactly_once(db: Path, device: str, state: Path, expected: dict[str, int]) -> None:
    """Ingest holds seqs 1..n of each stream once, and each payload is the one the outbox
    committed for that seq (the outbox keeps delivered records: keep_delivered 10000)."""
    rows = _rows(db, device)
    assert len({(s, q) for s, q, _ in rows}) == len(rows)
    got = _seqs(db, device)
    assert {s: got.get(s, []) for s in expected} == {
        s: list(range(1, n + 1)) for s, n in expected.items()}, {s: len(v) for s, v in got.items()}
    for stream in expected:
        sent = {q: p.decode() for q, p in record_payloads(state, stream).items()}
        stored = {q: p for s, q, p in rows if s == stream}
        assert stored == sent, f"stream {stream}: ingest and outbox differ"


def _wait_ingested(db: Path, device: str, expected: dict[str, int], timeout: float = 60) -> None:
    def done() -> bool:
        got = _seqs(db, device)
        return all(len(got.get(s, [])) >= n for s, n in expected.items())

    try:
        wait_for(done, f"ingest to store {expected}", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"ingest stored {({s: len(v) for s, v in _seqs(db, device).items()})}"
                             f", expected {expected}") from None


def test_three_pipelines_each_stream_exactly_once(tmp_path: Path, broker: LocalBroker) -> None:
    """Three finite pipelines of different lengths: every frame of each stream is ingested once,
    seqs 1..n per stream, n = that stream's frames in the agent's summary."""
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "pipes-ingest")
    lengths = {"north": 12, "south": 20, "east": 28}
    config = _config(tmp_path, broker, "dev-pipes", [
        RigPipeline(s, SOURCE, max_frames=n, pace="fast") for s, n in lengths.items()])
    summary = AgentProcess(config).finish(timeout=120)

    per_stream = {s["stream"]: s for s in summary["streams"]}
    assert sorted(per_stream) == sorted(lengths)
    for stream, n in lengths.items():
        assert per_stream[stream]["state"] == "finished", per_stream[stream]
        assert per_stream[stream]["frames_processed"] == n, per_stream[stream]
    assert summary["frames_processed"] == sum(lengths.values())
    assert summary["backlog"] == 0 and summary["error"] is None
    _wait_ingested(ingest.db, "dev-pipes", lengths)
    stats = ingest.stop()
    _assert_exactly_once(ingest.db, "dev-pipes", tmp_path / "state", lengths)
    assert stats["rejected"] == 0


class _InProcessAgent:
    """AgentApp.run() on its own event loop in a thread; calls the internal API on that loop."""

    def __init__(self, config: Path) -> None:
        self.config = load_config(config)
        self.app = AgentApp(self.config)
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="agent-under-test", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> RunSummary:
            self.stop_event = asyncio.Event()
            return await self.app.run(self.stop_event)

        try:
            self.summary = self.loop.run_until_complete(main())
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.loop.close()

    def start(self) -> _InProcessAgent:
        self.thread.start()
        wait_for(lambda: self.error is not None or (
            self.app.parts is not None and self.app.latest_snapshot is not None
            and self.app.parts.link is not None and self.app.parts.link.connected),
            "the in-process agent to run and connect", timeout=60)
        if self.error is not None:
            raise self.error
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def state(self, stream: str) -> str | None:
        parts = self.app.parts
        pipeline = parts.pipelines.get(stream) if parts is not None else None
        return pipeline.state if pipeline is not None else None

    def stop(self, timeout: float = 60) -> RunSummary:
        if self.stop_event is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the in-process agent did not stop"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def test_stop_and_start_pipelines_while_the_rest_run(tmp_path: Path, broker: LocalBroker) -> None:
    """Stop "b", start "d", start "b" again, while "a" and "c" run throughout: b's seqs go on
    from where they stopped (no gap, no seq reused for another frame), a and c lose nothing."""
    device = "dev-startstop"
    state = tmp_path / "state"
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "startstop-ingest")
    config = _config(tmp_path, broker, device, [
        RigPipeline(s, SOURCE, pace="realtime") for s in ("a", "b", "c")], grace=5.0)
    agent = _InProcessAgent(config).start()
    try:
        _wait_ingested(ingest.db, device, {"a": 5, "b": 5, "c": 5})

        stopped = agent.call(agent.app.stop_pipeline("b"))
        assert stopped.state == "stopped" and agent.state("a") == agent.state("c") == "running"
        # stop_pipeline returns once every result b handed over is committed (its contract:
        # fleet control reads the outbox right after).
        b_last = stopped.status(time.monotonic()).inference.frames
        assert read_report(state).last_seq.get("b") == b_last
        b_before = {q: p.decode() for q, p in record_payloads(state, "b").items()}
        assert sorted(b_before) == list(range(1, b_last + 1))
        restarted_after = time.time()

        new = agent.call(agent.app.start_pipeline(agent.config.resolve_pipeline(
            PipelineSection(stream="d", source=SOURCE, pace="realtime"))))
        assert new.state == "running"
        _wait_ingested(ingest.db, device, {"d": 5, "b": b_last})
        assert read_report(state).last_seq["b"] == b_last  # nothing committed while stopped

        again = agent.call(agent.app.start_pipeline(agent.config.resolve_pipeline(
            PipelineSection(stream="b", source=SOURCE, pace="realtime"))))
        assert again.state == "running"
        _wait_ingested(ingest.db, device, {"b": b_last + 5})
        assert agent.state("a") == agent.state("c") == agent.state("d") == "running"
    finally:
        summary = agent.stop()

    per_stream = {s.stream: s for s in summary.streams}
    assert sorted(per_stream) == ["a", "b", "c", "d"]
    assert summary.error is None and summary.backlog == 0, summary
    last = read_report(state).last_seq
    _wait_ingested(ingest.db, device, last)
    ingest.stop()
    _assert_exactly_once(ingest.db, device, state, last)
    # The second "b" pipeline's results: seqs after b_last, frames captured after the restart;
    # the first one's seqs still hold the frames they were given.
    rows = {q: p for s, q, p in _rows(ingest.db, device) if s == "b"}
    assert {q: rows[q] for q in b_before} == b_before
    assert all(_frame_ts(p) >= restarted_after - 1.0 for q, p in rows.items() if q > b_last)
    assert all(_frame_ts(p) <= restarted_after for q, p in rows.items() if q <= b_last)
    # a and c ran on through it: their frames processed match what they committed.
    for stream in ("a", "c"):
        assert per_stream[stream].frames_processed == last[stream], per_stream[stream]


def test_sigkill_with_three_pipelines_loses_nothing(tmp_path: Path, broker: LocalBroker) -> None:
    """kill -9 mid-run with three pipelines, restart on the same state dir, let a finite run
    finish: every result either run committed is ingested exactly once, per stream."""
    device = "dev-pipes-kill"
    state = tmp_path / "state"
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "pipes-kill-ingest")
    streams = ("n", "s", "e")
    live = _config(tmp_path, broker, device, [RigPipeline(s, SOURCE, pace="realtime")
                                              for s in streams], name="live.toml")
    agent = AgentProcess(live)
    agent.wait_status(lambda snap: len(snap["pipelines"]) == 3 and all(
        p["state"] == "running" for p in snap["pipelines"]), "three pipelines running")
    _wait_ingested(ingest.db, device, {s: 5 for s in streams})
    agent.send(signal.SIGKILL)
    assert agent.wait(30) == -signal.SIGKILL
    committed = read_report(state).last_seq
    assert all(committed[s] >= 5 for s in streams), committed

    finite = _config(tmp_path, broker, device, [
        RigPipeline(s, SOURCE, pace="fast", max_frames=8) for s in streams], name="finite.toml")
    summary = AgentProcess(finite).finish(timeout=120)
    assert summary["backlog"] == 0 and summary["error"] is None, summary
    assert all(s["frames_processed"] == 8 for s in summary["streams"]), summary["streams"]
    last = read_report(state).last_seq
    # The second run's seqs go on from the first's: nothing reused, nothing skipped.
    assert last == {s: committed[s] + 8 for s in streams}
    _wait_ingested(ingest.db, device, last)
    ingest.stop()
    _assert_exactly_once(ingest.db, device, state, last)


def test_a_failed_pipeline_beside_healthy_ones(tmp_path: Path, broker: LocalBroker) -> None:
    """One pipeline's model is missing, another's source is not a video: the healthy two deliver
    every frame, the agent exits 0 at the end of their inputs, and status and the summary name
    each failed pipeline with its reason."""
    device = "dev-pipes-fail"
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "pipes-fail-ingest")
    config = _config(tmp_path, broker, device, [
        RigPipeline("good1", SOURCE, pace="realtime", max_frames=60, drop_policy="block"),
        RigPipeline("nomodel", SOURCE, model=tmp_path / "missing-model", max_frames=10),
        RigPipeline("notvideo", str(not_video), max_frames=10),
        RigPipeline("good2", SOURCE, pace="realtime", max_frames=50, drop_policy="block")])
    agent = AgentProcess(config)
    snap = agent.wait_status(lambda s: {p["stream"]: p["state"] for p in s["pipelines"]}.get(
        "notvideo") == "failed" and any(p["state"] == "running" for p in s["pipelines"]),
        "the failed pipelines listed while the healthy ones run")
    listed = {p["stream"]: p for p in snap["pipelines"]}
    assert listed["nomodel"]["state"] == "failed" and "missing-model" in listed["nomodel"]["reason"]
    assert listed["notvideo"]["state"] == "failed" and "notes.mp4" in listed["notvideo"]["reason"]
    summary = agent.finish(timeout=120)  # exit status 0, or finish raises

    per_stream = {s["stream"]: s for s in summary["streams"]}
    assert per_stream["good1"]["state"] == per_stream["good2"]["state"] == "finished"
    assert per_stream["good1"]["frames_processed"] == 60
    assert per_stream["good2"]["frames_processed"] == 50
    for bad, names in (("nomodel", "missing-model"), ("notvideo", "notes.mp4")):
        assert per_stream[bad]["state"] == "failed", per_stream[bad]
        assert names in (per_stream[bad]["reason"] or ""), per_stream[bad]
        assert f"{bad}:" in (summary["error"] or ""), summary["error"]
    expected = {"good1": 60, "good2": 50}
    _wait_ingested(ingest.db, device, expected)
    ingest.stop()
    _assert_exactly_once(ingest.db, device, tmp_path / "state", expected)
    assert set(_seqs(ingest.db, device)) == {"good1", "good2"}


def test_replacing_the_last_live_pipeline_does_not_end_the_run(tmp_path: Path,
                                                                broker: LocalBroker) -> None:
    """A file pipeline has ended by itself; the live one is stopped and started again (what a
    command applying a config does): for a moment every pipeline is done, which must not end
    the run (PipelineSet.change)."""
    config = _config(tmp_path, broker, "dev-replace", [
        RigPipeline("file", SOURCE, pace="fast", max_frames=5, drop_policy="block"),
        RigPipeline("live", SOURCE, pace="realtime")], grace=5.0)
    agent = _InProcessAgent(config).start()
    try:
        wait_for(lambda: agent.state("file") == "finished", "the file pipeline to end")
        spec = agent.app.parts.pipelines.get("live").spec  # type: ignore[union-attr]

        async def replace() -> str:
            parts = agent.app.parts
            assert parts is not None
            async with parts.pipelines.change():
                await agent.app.stop_pipeline("live")
                await asyncio.sleep(0.5)  # the supervisor looks while every pipeline is done
                started = await agent.app.start_pipeline(spec)
            return started.state

        assert agent.call(replace()) == "running"
        parts = agent.app.parts
        assert parts is not None and parts.health.state == "running"  # no stop began
    finally:
        summary = agent.stop()
    assert {s.stream: s.state for s in summary.streams} == {"file": "finished",
                                                           "live": "stopped"}
