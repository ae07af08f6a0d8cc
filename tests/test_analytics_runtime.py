"""The pipeline's analytics stage (agent.service.analytics) on hand-made frames: a restart that
replays frames before where the committed counts end counts a crossing in progress exactly once;
counting refuses a model that is not a detector and class filters the model lacks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config.pipelines import AnalyticsSpec
from agent.core.analytics.lines import LineRule
from agent.core.analytics.tracker import TrackerConfig
from agent.core.contract.result import Detection
from agent.errors import ConfigError
from agent.pipeline.frames import CapturedFrame
from agent.service.analytics import AnalyticsStage, FrameAnalysis, check_against_model

FPS = 10.0
SPEC = AnalyticsSpec(lines=(LineRule.of("mid", [(0.5, 0.0), (0.5, 1.0)], band=0.02),),
                     zones=(), tracker=TrackerConfig(), bucket_s=3600.0, label_settle_s=0.0)


def _frame(i: int, *, replay: bool = False) -> CapturedFrame:
    return CapturedFrame(index=i, wall=1_800_000_000.0 + i / FPS, mono_ns=0, width=640,
                         height=480, tensor=None, discontinuity=False, capture_ms=0.0,
                         preprocess_ms=0.0, media_s=i / FPS, replay=replay)


def _car(i: int) -> list[Detection]:
    """One car driving left to right at 0.01 of the frame per frame: its anchor (bottom
    centre) is at x = 0.30 + 0.01 i, on the line at frame 20."""
    x = 0.30 + 0.01 * i
    return [Detection(0, "car", 0.9, (0.40, x - 0.05, 0.60, x + 0.05))]


def _counted(analyses: list[FrameAnalysis]) -> int:
    return sum(row.count for a in analyses for bucket in a.closed for row in bucket.counts)


def _run(stage: AnalyticsStage, frames: range, *, replay_until: int = -1) -> list[FrameAnalysis]:
    return [stage(_frame(i, replay=i <= replay_until), _car(i)) for i in frames]


@pytest.mark.parametrize("restart_at", [18, 20, 22, 23, 24, 26])
def test_a_restart_mid_crossing_counts_it_once(restart_at: int) -> None:
    whole = AnalyticsStage(SPEC, stream="cam0", state=None)
    done = _run(whole, range(40))
    closing = whole.close()
    assert closing is not None and _counted([*done, closing]) == 1

    first = AnalyticsStage(SPEC, stream="cam0", state=None)
    before = _run(first, range(restart_at + 1))  # committed up to restart_at, then a SIGKILL
    state = before[-1].state
    second = AnalyticsStage(SPEC, stream="cam0", state=state)
    replay_from = restart_at - 10 + 1
    after = _run(second, range(replay_from, 40), replay_until=restart_at)
    closing = second.close()
    assert closing is not None
    assert _counted([*before, *after, closing]) == 1
    # Replayed frames emit nothing the earlier run already sent.
    assert all(not a.events for a in after[: restart_at - replay_from + 1])


def test_without_the_replay_the_crossing_in_progress_would_be_lost() -> None:
    """Why the replay exists: a tracker started mid-crossing does not know the side it came
    from (this is the failure the replay prevents, not a behaviour to keep)."""
    first = AnalyticsStage(SPEC, stream="cam0", state=None)
    before = _run(first, range(20))
    second = AnalyticsStage(SPEC, stream="cam0", state=before[-1].state)
    after = _run(second, range(20, 40))
    closing = second.close()
    assert closing is not None and _counted([*before, *after, closing]) == 0


def test_counting_needs_a_detector_with_the_filtered_classes() -> None:
    spec = AnalyticsSpec(lines=(LineRule.of("bar", [(0.1, 0.5), (0.9, 0.5)],
                                            classes=["car", "bus"]),),
                         zones=(), tracker=TrackerConfig(), bucket_s=60.0, label_settle_s=2.0)
    with pytest.raises(ConfigError, match="classification model") as err:
        check_against_model(spec, stream="north", task="classification", labels=["car"])
    assert "north" in str(err.value) and err.value.fix
    with pytest.raises(ConfigError, match="bus") as err:
        check_against_model(spec, stream="north", task="detection", labels=["car", "truck"])
    assert "line 'bar'" in str(err.value) and "car, truck" in str(err.value)
    check_against_model(spec, stream="north", task="detection", labels=["bus", "car"])


def test_a_tracks_snapshot_is_its_best_view() -> None:
    stage = AnalyticsStage(SPEC, stream="cam0", state=None)
    image = np.zeros((480, 640, 3), np.uint8)
    events = []
    for i in range(40):
        frame = _frame(i)
        frame.image = image
        events += stage(frame, _car(i)).events
    assert len(events) == 1 and events[0].event.type == "crossing"
    assert events[0].snapshot is not None and events[0].snapshot[:2] == b"\xff\xd8"  # a JPEG
    assert events[0].event.direction == "out"  # left to right across a top-to-bottom line


def test_the_stage_totals_what_its_buckets_emitted() -> None:
    """The run summary's counts: the sum over every bucket the stage emitted, close included."""
    stage = AnalyticsStage(SPEC, stream="cam0", state=None)
    emitted = _run(stage, range(40))
    closing = stage.close()
    assert closing is not None
    assert stage.totals == {("mid", "line", "car", "out"): _counted([*emitted, closing])} \
        == {("mid", "line", "car", "out"): 1}
