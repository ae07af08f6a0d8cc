"""The per-frame analytics step: tracker, then line and zone rules, then count buckets.

The runtime calls :meth:`Analytics.step` once per frame with the frame's detections (or None
on frames the detector skipped) and the frame's monotonic time, takes the events and closed
buckets it returns, and persists :meth:`Analytics.buckets_state` with them so a restart resumes
the open bucket. No I/O, no clock reads: time comes in as arguments.

A line crossing is counted in the bucket of its own time, under the class the track's vote gives
when the count is settled: ``label_settle_s`` after the crossing or when the track ends,
whichever comes first. A bucket closes ``label_settle_s`` after its end (at most one bucket
interval), so the crossings of its last seconds settle as the others do: where the wall-clock
minute falls in a run does not change a count's class. At 5 fps a track has 2 to 4 detections when it
crosses; with 20 % car/truck flicker, on 5 generated scenes (407 crossings) the vote at the
crossing gave a summed count error of 14 over class and direction, the vote settled 2 s later 6
(longer waits gained nothing: the rest are tracking errors). The crossing
event itself carries the vote at the crossing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.core.analytics.counting import ClosedBucket, CountBuckets, CountKey
from agent.core.analytics.events import Direction, Event, LineCrossed, ZoneEntered, ZoneExited
from agent.core.analytics.lines import LineCounter, LineRule
from agent.core.analytics.tracker import Observation, Track, Tracker, TrackerConfig
from agent.core.analytics.zones import ZoneMonitor, ZoneRule


def detector_interval(interval: int, source_fps: float, min_detector_hz: float) -> int:
    """How often the detector runs: every ``interval``-th frame, lowered so that it still sees at
    least ``min_detector_hz`` frames a second of a source of ``source_fps`` (either 0: unknown,
    or no minimum, so ``interval`` as given)."""
    if source_fps <= 0 or min_detector_hz <= 0:
        return interval
    ratio = source_fps / min_detector_hz
    return interval if ratio >= interval else max(1, int(ratio + 1e-9))


@dataclass(frozen=True)
class FrameAnalytics:
    """What one frame produced: live tracks (read-only), events, and buckets that closed."""

    tracks: tuple[Track, ...]
    events: tuple[Event, ...]
    closed: tuple[ClosedBucket, ...]


@dataclass
class _Pending:
    """A line crossing counted, its class not settled yet."""

    rule: str
    direction: Direction
    t: float
    track: Track = field(repr=False)


class Analytics:
    """One stream's tracker, rules and count buckets."""

    def __init__(
        self, *, lines: Sequence[LineRule] = (), zones: Sequence[ZoneRule] = (),
        tracker: TrackerConfig | None = None, bucket_seconds: float = 60.0,
        wall_now: float, mono_now: float, buckets_state: str | None = None, label_settle_s: float = 2.0,
    ) -> None:
        names = [r.name for r in lines] + [z.name for z in zones]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"analytics: rule names must be unique; repeated: {', '.join(duplicates)}")
        self.tracker = Tracker(tracker)
        self.lines = [LineCounter(r) for r in lines]
        self.zones = [ZoneMonitor(z) for z in zones]
        self.buckets = (
            CountBuckets(bucket_seconds, wall_now=wall_now, mono_now=mono_now) if buckets_state is None
            else CountBuckets.from_json(buckets_state, wall_now=wall_now, mono_now=mono_now)
        )
        self._live: dict[int, Track] = {}
        self._pending: list[_Pending] = []
        self._zone_pending: list[tuple[CountKey, float]] = []  # zone counts and their time
        self.label_settle_s = label_settle_s
        self._first: float | None = None  # the first frame's time: no bucket closes before it
        self._open_bucket = -math.inf  # the bucket of the latest step's cutoff

    def step(
        self, observations: Sequence[Observation] | None, now: float, frame_index: int | None = None,
        *, count: bool = True,
    ) -> FrameAnalytics:
        """One frame at monotonic ``now`` (seconds); ``observations`` None when the detector skipped it.

        ``count`` False: the frame updates the tracker and the rules' state (which side of each
        line a track is on, who is in a zone) and closes buckets whose time is over, but what
        happened on it is neither counted nor returned: a restarted source replaying frames
        whose counts an earlier run committed."""
        if self._first is None:
            self._first = now
        # The buckets run this far behind the frames: the open one is the bucket of ``cutoff``.
        cutoff = max(now - min(self.label_settle_s, self.buckets.seconds), self._first)
        bucket = self.buckets.bucket_of(cutoff)
        self._settle(lambda p: now - p.t >= self.label_settle_s or self.buckets.bucket_of(p.t) < bucket)
        self._open_bucket = bucket
        self._settle_zones(lambda t: self.buckets.bucket_of(t) <= bucket)
        closed = self.buckets.advance(cutoff)
        if observations is None:
            tracks = self.tracker.predict_only(now, frame_index)
        else:
            tracks = self.tracker.update(observations, now, frame_index)
        events: list[Event] = []
        observed = [t for t in tracks if t.observed]
        boxes = np.array([t.box for t in observed], dtype=np.float64).reshape(len(observed), 4)
        for line in self.lines:
            events += line.process(observed, boxes, now)
        for zone in self.zones:
            events += zone.process(observed, boxes, now)
        live = {t.track_id: t for t in tracks}
        ended = [i for i in self._live if i not in live]
        if ended:
            for line in self.lines:
                line.forget(ended)
            for zone in self.zones:
                events += zone.forget(ended, now)
        self._live = live
        if not count:
            events = []
        self._count(events, now)
        if ended:
            gone = set(ended)
            self._settle(lambda p: p.track.track_id in gone)
        return FrameAnalytics(tuple(tracks), tuple(events), tuple(closed))

    def _settle(self, ready: Callable[[_Pending], bool]) -> None:
        if not self._pending:
            return
        keep: list[_Pending] = []
        for p in self._pending:
            if ready(p):
                self.buckets.add(CountKey(p.rule, "line", p.track.label, p.direction), p.t)
            else:
                keep.append(p)
        self._pending = keep

    def _settle_zones(self, ready: Callable[[float], bool]) -> None:
        while self._zone_pending and ready(self._zone_pending[0][1]):
            key, t = self._zone_pending.pop(0)
            self.buckets.add(key, t)

    def _count(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, LineCrossed):
                track = self._live[event.track.track_id]
                self._pending.append(_Pending(event.rule, event.direction, now, track))
            elif isinstance(event, (ZoneEntered, ZoneExited)):
                key = (CountKey(event.rule, "zone", event.track.label, Direction.IN)
                       if isinstance(event, ZoneEntered) else
                       CountKey(event.rule, "zone", event.counted_label, Direction.OUT))
                if self.buckets.bucket_of(now) <= self._open_bucket:
                    self.buckets.add(key, now)
                else:  # in a bucket after the open one, which stays open a little longer
                    self._zone_pending.append((key, now))

    def close(self, *, partial: bool = True) -> list[ClosedBucket]:
        """Graceful stop: the open bucket (flagged partial) and any closed one not yet taken."""
        self._settle(lambda p: True)
        self._settle_zones(lambda t: True)
        return self.buckets.close(partial=partial)

    def buckets_state(self) -> str:
        """The open bucket's state as JSON text, to persist with the outbox after every step.

        Crossings whose class is not settled yet are in it under their current vote: after a
        restart their tracks are gone, so that vote is the last one there is.
        """
        extra: dict[CountKey, int] = {}
        for p in self._pending:
            key = CountKey(p.rule, "line", p.track.label, p.direction)
            extra[key] = extra.get(key, 0) + 1
        for key, _ in self._zone_pending:
            extra[key] = extra.get(key, 0) + 1
        return self.buckets.to_json(extra)
