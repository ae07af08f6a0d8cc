"""One pipeline's analytics, run in its inference thread: the tracker, the line and zone rules
and the count buckets of agent.core.analytics, fed one frame at a time, with the best snapshot
of each track kept for its events.

What a frame produced (:class:`FrameAnalysis`: track events with their snapshots, closed count
buckets, the open bucket's state) rides on the frame's FrameResult to the outbox writer, which
commits the events and counts with the result, and the state in the same transaction
(``Outbox.append(..., state=...)``): a restart resumes the open bucket exactly where the
committed records end, so a SIGKILL neither loses nor doubles a count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import AnalyticsSpec
from agent.core.analytics import Analytics
from agent.core.analytics.counting import ClosedBucket
from agent.core.analytics.events import (
    Event,
    LineCrossed,
    Loitering,
    Overcrowded,
    TrackSummary,
    ZoneEntered,
    ZoneExited,
)
from agent.core.analytics.tracker import Observation, Track, observations_from_detections
from agent.core.contract.event import TrackEvent, downsample
from agent.core.contract.result import Detection
from agent.errors import ConfigError
from agent.pipeline.frames import CapturedFrame

SNAPSHOT_QUALITY = 85
SNAPSHOT_PAD = 0.1  # a track's snapshot is its box grown by this share on each side


@dataclass(frozen=True)
class EventOut:
    """A track event ready to encode: its wall-clock time and its best snapshot (JPEG)."""

    event: TrackEvent
    wall: float
    snapshot: bytes | None


@dataclass(frozen=True)
class FrameAnalysis:
    """What one frame's analytics produced, for the outbox writer."""

    frame_index: int
    events: tuple[EventOut, ...]
    closed: tuple[ClosedBucket, ...]
    state: str  # the open bucket after this frame (Analytics.buckets_state)


def check_against_model(spec: AnalyticsSpec, *, stream: str, task: str,
                        labels: Sequence[str]) -> None:
    """Raise ConfigError when counting is configured on a model that is not a detector, or a
    rule's class filter names a class the model does not have."""
    if task != "detection":
        raise ConfigError(f"pipeline {stream!r} counts with lines or zones, but its model is a "
                          f"{task} model", fix="give the pipeline a detection model, or drop "
                                               "its lines and zones")
    known = set(labels)
    for kind, rules in (("lines", spec.lines), ("zones", spec.zones)):
        for rule in rules:
            unknown = sorted(set(rule.classes or ()) - known)
            if unknown:
                raise ConfigError(
                    f"pipeline {stream!r}: {kind[:-1]} {rule.name!r} counts class(es) "
                    f"{', '.join(unknown)}, which the model does not have",
                    fix=f"use the model's classes: {', '.join(sorted(known)) or 'none'}")


class AnalyticsStage:
    """Tracks and counts one stream; called from its inference thread once per frame."""

    def __init__(self, spec: AnalyticsSpec, *, stream: str, state: str | None) -> None:
        self.spec = spec
        self.stream = stream
        self._restored = state
        self._analytics: Analytics | None = None
        self._crops: dict[int, np.ndarray] = {}  # track id -> its best view so far (BGR)
        # What this run counted, over the buckets it emitted: (rule, kind, label, direction).
        self.totals: dict[tuple[str, str, str, str], int] = {}
        # The last frame's tracks and the open bucket's counts, replaced whole after each frame
        # (the web console reads them from the event loop while this thread goes on).
        self.tracks: tuple[Track, ...] = ()
        self.open_counts: dict[tuple[str, str, str, str], int] = {}

    def _add_totals(self, closed: Sequence[ClosedBucket]) -> None:
        if not closed:
            return
        totals = dict(self.totals)  # replaced whole: readers on the event loop copy it
        for bucket in closed:
            for row in bucket.counts:
                k = row.key
                key = (k.rule, k.kind, k.label, k.direction.value)
                totals[key] = totals.get(key, 0) + row.count
        self.totals = totals

    def _engine(self, frame: CapturedFrame) -> Analytics:
        # Made at the first frame: times are the source's own clock (a file's position), and
        # the buckets align that clock to the wall clock of this frame.
        if self._analytics is None:
            s = self.spec
            self._analytics = Analytics(
                lines=s.lines, zones=s.zones, tracker=s.tracker, bucket_seconds=s.bucket_s,
                wall_now=frame.wall, mono_now=frame.media_s, buckets_state=self._restored,
                label_settle_s=s.label_settle_s)
        return self._analytics

    def __call__(self, frame: CapturedFrame, detections: list[Detection] | None
                 ) -> FrameAnalysis:
        engine = self._engine(frame)
        observations: list[Observation] | None = (
            observations_from_detections(detections) if detections is not None else None)
        # A replayed frame (a restarted file, before where the committed counts end) rebuilds
        # the tracker and the rules' state; its crossings were counted by the earlier run.
        out = engine.step(observations, frame.media_s, frame.index, count=not frame.replay)
        if frame.image is not None:
            self._keep_best_views(out.tracks, frame)
        events = tuple(self._event_out(e, frame) for e in out.events)
        live = {t.track_id for t in out.tracks}
        for gone in [i for i in self._crops if i not in live]:
            del self._crops[gone]
        self._add_totals(out.closed)
        self.tracks = out.tracks
        self.open_counts = {(k.rule, k.kind, k.label, k.direction.value): n
                            for k, n in engine.buckets.open_counts().items()}
        return FrameAnalysis(-1 if frame.replay else frame.index, events, out.closed,
                             engine.buckets_state())

    def close(self) -> FrameAnalysis | None:
        """The graceful stop: the open bucket, flagged partial (None if no frame came)."""
        if self._analytics is None:
            return None
        closed = self._analytics.close(partial=True)
        self._add_totals(closed)
        return FrameAnalysis(-1, (), tuple(closed), self._analytics.buckets_state())

    def _keep_best_views(self, tracks: Sequence[Track], frame: CapturedFrame) -> None:
        image = frame.image
        assert image is not None
        h, w = image.shape[:2]
        for track in tracks:
            best = track.best
            if best is None or best.frame_index != frame.index:
                continue
            x1, y1, x2, y2 = best.box
            px, py = (x2 - x1) * SNAPSHOT_PAD, (y2 - y1) * SNAPSHOT_PAD
            left, top = max(0, int((x1 - px) * w)), max(0, int((y1 - py) * h))
            right, bottom = min(w, int((x2 + px) * w) + 1), min(h, int((y2 + py) * h) + 1)
            if right > left and bottom > top:
                self._crops[track.track_id] = image[top:bottom, left:right].copy()

    def _snapshot(self, track: TrackSummary) -> bytes | None:
        crop = self._crops.get(track.track_id)
        if crop is None:
            return None
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        return jpeg.tobytes() if ok else None

    def _event_out(self, event: Event, frame: CapturedFrame) -> EventOut:
        track = event.track
        points = [(p.x, p.y) for p in track.trajectory] or [(0.5, 0.5)]
        direction: str | None = None
        dwell_s: float | None = None
        occupancy: int | None = None
        if isinstance(event, LineCrossed):
            kind, direction = "crossing", event.direction.value
        elif isinstance(event, ZoneEntered):
            kind = "zone_enter"
        elif isinstance(event, ZoneExited):
            kind, dwell_s = "zone_exit", max(0.0, event.dwell_s)
        elif isinstance(event, Loitering):
            kind, dwell_s = "loitering", max(0.0, event.dwell_s)
        elif isinstance(event, Overcrowded):
            kind, occupancy = "overcrowding", event.occupancy
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown analytics event {event!r}")
        contract = TrackEvent(
            type=kind, rule=event.rule, track_id=track.track_id,
            label=track.label or f"class_{track.class_id}",
            confidence=min(1.0, max(0.0, track.vote_confidence)),
            trajectory=downsample(points), direction=direction, dwell_s=dwell_s,
            occupancy=occupancy)
        wall = frame.wall + (event.t - frame.media_s)
        return EventOut(contract, wall, self._snapshot(track))
