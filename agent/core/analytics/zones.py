"""Polygon zones: occupancy per class, entries and exits, dwell time, loitering and overcrowding.

A confirmed track enters when its anchor is inside the polygon at an observed frame; it exits
when its anchor is outside by more than the band (so jitter on the border is one stay), or when
the track ends while inside (exit reason ``lost``). Loitering fires once per stay when the dwell
passes the threshold; overcrowding fires when the occupancy goes above the threshold and re-arms
when it falls back to the threshold or below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.analytics.events import (
    Event,
    ExitReason,
    Loitering,
    Overcrowded,
    TrackSummary,
    ZoneEntered,
    ZoneExited,
)
from agent.core.analytics.geometry import Anchor, GeometryError, Polygon, anchor_points
from agent.core.analytics.tracker import Track

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ZoneRule:
    """A named polygon zone; ``classes`` None watches every class; thresholds None are off."""

    name: str
    polygon: Polygon
    classes: frozenset[str] | None = None
    anchor: Anchor = Anchor.BOTTOM_CENTER
    band: float = 0.01
    loiter_s: float | None = None
    max_occupancy: int | None = None

    @classmethod
    def of(
        cls, name: str, points: Sequence[Sequence[float]], *, classes: Collection[str] | None = None,
        anchor: Anchor = Anchor.BOTTOM_CENTER, band: float = 0.01, loiter_s: float | None = None,
        max_occupancy: int | None = None,
    ) -> ZoneRule:
        """A validated rule; GeometryError (a ValueError) names the zone and what is wrong."""
        what = f"zone {name!r}"
        if not 0.0 <= band < 0.5:
            raise GeometryError(f"{what}: band = {band} must be in [0, 0.5) (normalized distance)")
        if loiter_s is not None and not loiter_s > 0:
            raise GeometryError(f"{what}: loiter_s = {loiter_s} must be positive (seconds)")
        if max_occupancy is not None and max_occupancy < 0:
            raise GeometryError(f"{what}: max_occupancy = {max_occupancy} must be 0 or more")
        return cls(name, Polygon.of(what, points), frozenset(classes) if classes is not None else None,
                   anchor, band, loiter_s, max_occupancy)


@dataclass
class _Stay:
    track: Track
    entered: float
    label: str  # the voted class at entry: the stay is counted under it
    loitered: bool = False


class ZoneMonitor:
    """One zone's members and thresholds."""

    def __init__(self, rule: ZoneRule) -> None:
        self.rule = rule
        self._stays: dict[int, _Stay] = {}
        self._crowded = False

    def occupancy(self) -> dict[str, int]:
        """Tracks in the zone now, per class (the class each was counted under at entry)."""
        return dict(Counter(stay.label for stay in self._stays.values()))

    def process(self, tracks: Sequence[Track], boxes: FloatArray, now: float) -> list[Event]:
        """Entries and exits of the observed ``tracks`` at ``now``, then loitering and overcrowding."""
        events: list[Event] = []
        rule = self.rule
        if tracks:
            anchors = anchor_points(boxes, rule.anchor)
            inside = rule.polygon.contains(anchors).tolist()
            far = (rule.polygon.boundary_distances(anchors) > rule.band).tolist()
            for track, is_in, is_far in zip(tracks, inside, far, strict=True):
                stay = self._stays.get(track.track_id)
                if stay is None:
                    if is_in and track.confirmed and (rule.classes is None or track.label in rule.classes):
                        self._stays[track.track_id] = _Stay(track, now, track.label)
                        events.append(ZoneEntered(rule.name, now, TrackSummary.of(track)))
                        events += self._check_crowding(track, now)
                elif not is_in and is_far:
                    events.append(self._exit(stay, now, ExitReason.LEFT))
        if rule.loiter_s is not None:
            for stay in self._stays.values():
                if not stay.loitered and now - stay.entered > rule.loiter_s:
                    stay.loitered = True
                    events.append(Loitering(rule.name, now, now - stay.entered, rule.loiter_s,
                                            TrackSummary.of(stay.track)))
        return events

    def _exit(self, stay: _Stay, now: float, reason: ExitReason) -> ZoneExited:
        del self._stays[stay.track.track_id]
        if self.rule.max_occupancy is not None and len(self._stays) <= self.rule.max_occupancy:
            self._crowded = False
        return ZoneExited(self.rule.name, now, now - stay.entered, reason, stay.label,
                          TrackSummary.of(stay.track))

    def _check_crowding(self, track: Track, now: float) -> list[Event]:
        limit = self.rule.max_occupancy
        if limit is None or self._crowded or len(self._stays) <= limit:
            return []
        self._crowded = True
        return [Overcrowded(self.rule.name, now, len(self._stays), limit, TrackSummary.of(track))]

    def forget(self, track_ids: Sequence[int], now: float) -> list[Event]:
        """Tracks that ended: those inside exit with reason ``lost``."""
        events: list[Event] = []
        for track_id in track_ids:
            stay = self._stays.get(track_id)
            if stay is not None:
                events.append(self._exit(stay, now, ExitReason.LOST))
        return events

    def entry_label(self, track_id: int) -> str | None:
        """The class a track in the zone was counted under, None when it is not in the zone."""
        stay = self._stays.get(track_id)
        return stay.label if stay is not None else None
