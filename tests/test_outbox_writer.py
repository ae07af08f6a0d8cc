"""The outbox writer's commit policy: results are committed in batches at most every
``[outbox] commit_interval_ms``, but what must not wait ends the wait at once: a pipeline
waiting for its results at its stop, track events and closed counts, the writer's close."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from agent.core.analytics.counting import ClosedBucket, CountKey, CountRow
from agent.core.contract.result import FrameResult, ModelRef
from agent.core.outbox import PublishWindow
from agent.service.analytics import FrameAnalysis
from agent.service.pipelines import ResultContext
from agent.service.tasks import RESULT_SLOTS, OutboxWriter
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox
from agent.sync.uplink import Uplink

MODEL = ModelRef("m", "1", "0" * 64)
CONTEXT = ResultContext(stream="cam0", topic="t/cam0", model=MODEL, attach_sensors=(),
                        attach_window_s=0.0, events_topic="t/events", counts_topic="t/counts")
HOUR = 3600.0  # the interval: a commit that waited for it would not come within the test


def _result(index: int, analytics: FrameAnalysis | None = None) -> FrameResult:
    return FrameResult("cam0", index, time.time(), 0, 64, 48, "detection", analytics=analytics)


async def _writer(tmp_path: Path) -> tuple[OutboxWriter, Outbox, asyncio.Task[None]]:
    outbox = Outbox(tmp_path / "outbox.db")
    writer = OutboxWriter(outbox=outbox, blobs=BlobStore(outbox), uplink=Uplink(
        outbox, PublishWindow(100)), device="dev", site="site", interval_s=HOUR,
        loop=asyncio.get_running_loop())
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    return writer, outbox, task


def test_a_stopping_pipeline_does_not_wait_for_the_commit_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer, outbox, task = await _writer(tmp_path)
        writer.deliver(_result(1), CONTEXT)  # the first wakes the writer: committed at once
        await asyncio.wait_for(writer.progress.wait(), 30)
        assert outbox.last_seq("cam0") == 1
        writer.deliver(_result(2), CONTEXT)  # now inside the hour's wait
        await asyncio.sleep(0)  # deliver hands over through the loop (it is for other threads)
        assert await writer.settled("cam0", 30)
        assert outbox.last_seq("cam0") == 2
        writer.close()
        await asyncio.wait_for(task, 30)
        outbox.close()

    asyncio.run(scenario())


def test_a_closed_count_and_the_close_end_the_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer, outbox, task = await _writer(tmp_path)
        writer.deliver(_result(1), CONTEXT)
        await asyncio.wait_for(writer.progress.wait(), 30)
        writer.deliver(_result(2), CONTEXT)  # inside the hour's wait
        # A frame whose analytics closed a count bucket: committed at once, with the result
        # held before it.
        bucket = ClosedBucket(start=float(int(time.time()) // 60 * 60), seconds=60.0, partial=False, counts=(
            CountRow(CountKey("gate", "line", "car", "in"), 3),))
        writer.progress.clear()
        writer.deliver(_result(3, FrameAnalysis(frame_index=3, events=(), closed=(bucket,),
                                                state="{}")), CONTEXT)
        await asyncio.wait_for(writer.progress.wait(), 30)
        assert outbox.last_seq("cam0") == 3 and outbox.last_seq("cam0/counts") >= 0
        writer.deliver(_result(4), CONTEXT)  # inside the wait again
        await asyncio.sleep(0)
        writer.close()  # the close ends it: everything held is committed
        await asyncio.wait_for(task, 30)
        assert outbox.last_seq("cam0") == 4
        outbox.close()

    asyncio.run(scenario())


def test_a_fast_source_is_not_held_to_one_batch_of_slots_per_interval(tmp_path: Path) -> None:
    """An inference thread delivering more results than there are slots, inside the hour's
    wait: the writer commits once half the slots are held, so every delivery returns."""
    async def scenario() -> None:
        writer, outbox, task = await _writer(tmp_path)
        writer.deliver(_result(0), CONTEXT)
        await asyncio.wait_for(writer.progress.wait(), 30)  # the hour's wait starts now
        total = 3 * RESULT_SLOTS
        # A daemon thread: on the old writer it blocks for the hour, and must not hold the
        # test run when the assertion below fails.
        producer = threading.Thread(daemon=True, target=lambda: [
            writer.deliver(_result(i), CONTEXT) for i in range(1, total + 1)])
        producer.start()
        deadline = time.monotonic() + 60
        while producer.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not producer.is_alive(), f"deliveries blocked at {len(writer.pending)} held"
        writer.close()
        await asyncio.wait_for(task, 30)
        assert outbox.last_seq("cam0") == total + 1
        outbox.close()

    asyncio.run(scenario())


def test_a_snapshot_larger_than_the_budget_is_dropped_and_its_result_committed(
        tmp_path: Path) -> None:
    """A snapshot that no eviction could ever make room for is not a reason to hold the
    results back (retrying would block the pipeline for good): the result is committed without
    it, nothing stored is evicted for it, and the writer says why."""
    async def scenario() -> None:
        outbox = Outbox(tmp_path / "outbox.db", budget_bytes=300_000)
        blobs = BlobStore(outbox)
        writer = OutboxWriter(outbox=outbox, blobs=blobs, uplink=Uplink(
            outbox, PublishWindow(100)), device="dev", site="site", interval_s=HOUR,
            loop=asyncio.get_running_loop())
        task = asyncio.create_task(writer.run(), name="outbox-writer")
        small = _result(1)
        small.snapshot = b"\xff\xd8small"
        writer.deliver(small, CONTEXT)
        await asyncio.wait_for(writer.progress.wait(), 30)
        huge = _result(2)
        huge.snapshot = bytes(range(256)) * 2000  # 512 kB: more than the whole budget
        writer.deliver(huge, CONTEXT)
        writer.deliver(_result(3), CONTEXT)
        await asyncio.sleep(0)
        assert await writer.settled("cam0", 30)
        writer.close()
        await asyncio.wait_for(task, 30)
        assert outbox.last_seq("cam0") == 3 and writer.storage.errors == 0
        stored = [r for r in outbox.fetch_unsent(0, 10) if r.stream == "cam0"]
        bodies = {r.seq: json.loads(r.payload) for r in stored}
        assert "snapshot" in bodies[1] and "snapshot" not in bodies[2]
        assert blobs.backlog()[0] == 1  # the small one, not evicted for the huge one
        assert writer.storage.blobs_dropped == 1
        assert writer.storage.last_error is not None and "512000 bytes" in writer.storage.last_error
        outbox.close()

    asyncio.run(scenario())
