"""Sans-I/O video analytics: a ByteTrack-class tracker, counting lines, zones and count buckets.

Everything here is pure state machines fed with detections and monotonic times; the runtime
owns clocks, persistence and publishing. Entry point: :class:`Analytics` (see docs/analytics.md).
"""

from __future__ import annotations

from agent.core.analytics.counting import ClosedBucket, CountBuckets, CountKey, CountRow
from agent.core.analytics.engine import Analytics, FrameAnalytics, detector_interval
from agent.core.analytics.events import (
    Direction,
    Event,
    ExitReason,
    LineCrossed,
    Loitering,
    Overcrowded,
    TrackSummary,
    ZoneEntered,
    ZoneExited,
)
from agent.core.analytics.geometry import Anchor, GeometryError, Line, Polygon
from agent.core.analytics.lines import LineCounter, LineRule
from agent.core.analytics.tracker import (
    BestObservation,
    Observation,
    Track,
    Tracker,
    TrackerConfig,
    TrajectoryPoint,
    observations_from_detections,
)
from agent.core.analytics.zones import ZoneMonitor, ZoneRule

__all__ = [
    "Analytics", "Anchor", "BestObservation", "ClosedBucket", "CountBuckets", "CountKey", "CountRow",
    "Direction", "Event", "ExitReason", "FrameAnalytics", "GeometryError", "Line", "LineCounter",
    "LineCrossed", "LineRule", "Loitering", "Observation", "Overcrowded", "Polygon", "Track",
    "TrackSummary", "Tracker", "TrackerConfig", "TrajectoryPoint", "ZoneEntered", "ZoneExited",
    "ZoneMonitor", "ZoneRule", "detector_interval", "observations_from_detections",
]
