"""Typed analytics events (line crossing, zone enter/exit, loitering, overcrowding).

Each event carries the track's id, its voted class with the vote's confidence, a bounded
downsampled trajectory and the track's best observation (the runtime takes its snapshot from
that frame). Events are frozen: they are copies, not views of the live track.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.core.analytics.geometry import Point
from agent.core.analytics.tracker import BestObservation, Track, TrajectoryPoint


class Direction(str, enum.Enum):
    """A line crossing's direction (``in``: towards the positive cross-product side); a zone's entry is in."""

    IN = "in"
    OUT = "out"


class ExitReason(str, enum.Enum):
    """Why a track left a zone: its anchor left the polygon, or the track ended inside it."""

    LEFT = "left"
    LOST = "lost"


@dataclass(frozen=True)
class TrackSummary:
    """What an event says about its track, copied at the time of the event."""

    track_id: int
    label: str
    class_id: int
    vote_confidence: float
    trajectory: tuple[TrajectoryPoint, ...]
    best: BestObservation | None

    @classmethod
    def of(cls, track: Track) -> TrackSummary:
        return cls(track.track_id, track.label, track.class_id, track.vote_confidence,
                   track.trajectory.points(), track.best)


@dataclass(frozen=True)
class LineCrossed:
    """A confirmed track's anchor went from beyond the band on one side to beyond it on the other."""

    rule: str
    t: float  # monotonic seconds of the frame that completed the crossing
    direction: Direction
    anchor: Point
    track: TrackSummary


@dataclass(frozen=True)
class ZoneEntered:
    """A confirmed track's anchor came inside the zone."""

    rule: str
    t: float
    track: TrackSummary


@dataclass(frozen=True)
class ZoneExited:
    """A track in the zone left it (anchor beyond the band outside) or ended inside it."""

    rule: str
    t: float
    dwell_s: float
    reason: ExitReason
    counted_label: str  # the class the stay was counted under at entry, so entries and exits balance
    track: TrackSummary


@dataclass(frozen=True)
class Loitering:
    """A track has stayed in the zone longer than the zone's loitering threshold (once per stay)."""

    rule: str
    t: float
    dwell_s: float
    threshold_s: float
    track: TrackSummary


@dataclass(frozen=True)
class Overcrowded:
    """The zone's occupancy went above its threshold; ``track`` is the one whose entry tipped it."""

    rule: str
    t: float
    occupancy: int
    threshold: int
    track: TrackSummary


Event = LineCrossed | ZoneEntered | ZoneExited | Loitering | Overcrowded
