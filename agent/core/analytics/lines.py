"""Directional counting lines with a hysteresis band, evaluated on confirmed tracks' anchor points.

A track's side of the line changes only when its anchor is beyond the band (distance > band) on
the other side; positions within the band are ignored, so jitter across the line never counts.
The crossing counts when the path from the last anchor beyond the band on the old side to the
first beyond it on the new side passes the segment itself (not its infinite extension). A jump
over the line between two frames (low fps, detection interval) is one such path and counts once.
The band on each side is at most half of how far that side reaches into the frame, so a line
near the frame edge still counts. Only observed positions (frames where the detector matched the
track) move a track's side; a tentative track's crossing is held until it is confirmed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.analytics.events import Direction, LineCrossed, TrackSummary
from agent.core.analytics.geometry import Anchor, GeometryError, Line, Point, anchor_points
from agent.core.analytics.tracker import Track

FloatArray = npt.NDArray[np.float64]
SEGMENT_TOLERANCE = 1e-6  # fraction along the segment: a path through an end point counts


@dataclass(frozen=True)
class LineRule:
    """A named directional line; ``classes`` None counts every class."""

    name: str
    line: Line
    classes: frozenset[str] | None = None
    anchor: Anchor = Anchor.BOTTOM_CENTER
    band: float = 0.01  # normalized distance on each side of the line

    @classmethod
    def of(
        cls, name: str, points: Sequence[Sequence[float]], *, classes: Collection[str] | None = None,
        anchor: Anchor = Anchor.BOTTOM_CENTER, band: float = 0.01,
    ) -> LineRule:
        """A validated rule; GeometryError (a ValueError) names the line and what is wrong."""
        what = f"line {name!r}"
        if not 0.0 <= band < 0.5:
            raise GeometryError(f"{what}: band = {band} must be in [0, 0.5) (normalized distance)")
        return cls(name, Line.of(what, points), frozenset(classes) if classes is not None else None,
                   anchor, band)


@dataclass
class _Side:
    side: int  # +1 in side, -1 out side
    point: Point  # latest anchor beyond the band on that side


class LineCounter:
    """One line's crossing state per track."""

    def __init__(self, rule: LineRule) -> None:
        self.rule = rule
        reach_in, reach_out = rule.line.side_reach()
        self._band_in = min(rule.band, reach_in / 2)
        self._band_out = min(rule.band, reach_out / 2)
        self._sides: dict[int, _Side] = {}

    def process(self, tracks: Sequence[Track], boxes: FloatArray, now: float) -> list[LineCrossed]:
        """Crossings completed by the observed ``tracks`` (their boxes as rows of ``boxes``) at ``now``."""
        if not tracks:
            return []
        anchors = anchor_points(boxes, self.rule.anchor)
        dist = self.rule.line.signed_distances(anchors)
        sides = np.where(dist > self._band_in, 1, np.where(dist < -self._band_out, -1, 0)).tolist()
        points = anchors.tolist()
        events: list[LineCrossed] = []
        for track, side, (x, y) in zip(tracks, sides, points, strict=True):
            if side == 0:
                continue
            state = self._sides.get(track.track_id)
            if state is None:
                self._sides[track.track_id] = _Side(side, (x, y))
                continue
            if state.side == side:
                state.point = (x, y)
                continue
            if not track.confirmed:
                continue  # keep the old side: the crossing counts once the track is confirmed
            fraction = self.rule.line.crossing_parameter(state.point, (x, y))
            on_segment = fraction is not None and -SEGMENT_TOLERANCE <= fraction <= 1 + SEGMENT_TOLERANCE
            state.side, state.point = side, (x, y)
            classes = self.rule.classes
            if on_segment and (classes is None or track.label in classes):
                direction = Direction.IN if side > 0 else Direction.OUT
                events.append(LineCrossed(self.rule.name, now, direction, (x, y), TrackSummary.of(track)))
        return events

    def forget(self, track_ids: Iterable[int]) -> None:
        """Drop the state of tracks that ended."""
        for track_id in track_ids:
            self._sides.pop(track_id, None)
