"""Known answers for agent/core/analytics that the mutation run (``make mutants``) found untested:
segment intersection, polygon validation and its messages, point-in-polygon, distance to the
boundary, zone rules and monitors, the closed bucket's JSON and the persisted pending counts.

Every expected value is worked out by hand here (coordinates are multiples of 1/8 or 1/20 so
the arithmetic is exact or obvious), never read back from the code under test.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from agent.core.analytics import kalman
from agent.core.analytics.counting import ClosedBucket, CountBuckets, CountKey, CountRow
from agent.core.analytics.engine import Analytics
from agent.core.analytics.events import (
    Direction,
    ExitReason,
    LineCrossed,
    Loitering,
    Overcrowded,
    ZoneEntered,
    ZoneExited,
)
from agent.core.analytics.geometry import GeometryError, Polygon, _cross, _segments_intersect
from agent.core.analytics.lines import LineCounter, LineRule
from agent.core.analytics.tracker import (
    BestObservation,
    Observation,
    Track,
    TrackerConfig,
    Trajectory,
    TrajectoryPoint,
    iou_matrix,
)
from agent.core.analytics.zones import ZoneMonitor, ZoneRule

Pt = tuple[float, float]


def raises(message: str):  # type: ignore[no-untyped-def]
    """pytest.raises(GeometryError) matching the whole message."""
    return pytest.raises(GeometryError, match=r"^" + re.escape(message) + "$")


# --- _cross and _segments_intersect ---------------------------------------------------------


def test_cross_is_the_z_of_oa_times_ob() -> None:
    # o = (1/8, 1/4), a - o = (3/8, 1/8), b - o = (1/8, 1/2): 3/8 * 1/2 - 1/8 * 1/8 = 11/64.
    assert _cross((0.125, 0.25), (0.5, 0.375), (0.25, 0.75)) == 11 / 64
    # Swapping a and b flips the sign; from the origin it is the 2-D cross product of a and b.
    assert _cross((0.125, 0.25), (0.25, 0.75), (0.5, 0.375)) == -11 / 64
    assert _cross((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)) == 1.0


def variants(p1: Pt, p2: Pt, q1: Pt, q2: Pt) -> list[tuple[Pt, Pt, Pt, Pt]]:
    """The same two segments in all 8 orders: either first, each either way round."""
    out = []
    for a, b in (((p1, p2), (q1, q2)), ((q1, q2), (p1, p2))):
        for s in (a, a[::-1]):
            for t in (b, b[::-1]):
                out.append((s[0], s[1], t[0], t[1]))
    return out


# (p1, p2, q1, q2, do the closed segments share a point), worked out by hand.
SEGMENT_CASES: list[tuple[str, Pt, Pt, Pt, Pt, bool]] = [
    # The diagonals of the unit square cross at (1/2, 1/2); every cross product is +-1 there.
    ("unit X", (0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0), True),
    ("small X", (0.25, 0.25), (0.75, 0.5), (0.5, 0.125), (0.5, 0.875), True),
    ("parallel", (0.0, 0.0), (1.0, 0.0), (0.0, 0.5), (1.0, 0.5), False),
    ("parallel slanted", (0.0, 0.0), (0.5, 0.5), (0.25, 0.0), (0.75, 0.5), False),
    ("collinear apart, x", (0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (1.0, 0.0), False),
    ("collinear apart, y", (0.5, 0.0), (0.5, 0.25), (0.5, 0.5), (0.5, 1.0), False),
    ("collinear apart, slanted", (0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (0.75, 0.75), False),
    ("collinear overlap", (0.0, 0.0), (0.5, 0.0), (0.25, 0.0), (1.0, 0.0), True),
    ("collinear overlap, y", (0.5, 0.0), (0.5, 0.5), (0.5, 0.25), (0.5, 1.0), True),
    ("collinear, one inside the other", (0.0, 0.25), (1.0, 0.25), (0.25, 0.25), (0.5, 0.25), True),
    ("collinear, touching ends", (0.0, 0.0), (0.5, 0.0), (0.5, 0.0), (1.0, 0.0), True),
    ("collinear, touching ends, y", (0.25, 0.0), (0.25, 0.5), (0.25, 0.5), (0.25, 1.0), True),
    ("L: ends touch", (0.0, 0.0), (0.5, 0.5), (0.5, 0.5), (1.0, 0.0), True),
    ("V: ends touch, other way", (0.25, 1.0), (0.75, 0.25), (0.75, 0.25), (1.0, 1.0), True),
    # T-junctions: an end of one segment lies inside the other (and nothing else is shared).
    ("T on a horizontal, left", (0.25, 0.5), (0.25, 1.0), (0.0, 0.5), (1.0, 0.5), True),
    ("T on a horizontal, right", (0.75, 0.5), (0.75, 0.0), (0.0, 0.5), (1.0, 0.5), True),
    ("T on a vertical, low", (0.5, 0.25), (1.0, 0.25), (0.5, 0.0), (0.5, 1.0), True),
    ("T on a vertical, high", (0.5, 0.75), (0.0, 0.75), (0.5, 0.0), (0.5, 1.0), True),
    ("T on a slant", (0.5, 0.5), (0.5, 1.0), (0.0, 0.0), (1.0, 1.0), True),
    ("T on a slant, lying", (0.25, 0.25), (1.0, 0.25), (0.0, 0.0), (0.75, 0.75), True),
    # Near misses: the stem stops short, or its end is on the other's line beyond its end.
    ("T short", (0.25, 0.625), (0.25, 1.0), (0.0, 0.5), (1.0, 0.5), False),
    ("beyond the end, x", (0.75, 0.5), (0.75, 1.0), (0.0, 0.5), (0.5, 0.5), False),
    ("beyond the start, x", (0.25, 0.5), (0.25, 1.0), (0.5, 0.5), (1.0, 0.5), False),
    ("beyond the end, y", (0.5, 0.75), (1.0, 0.75), (0.5, 0.0), (0.5, 0.5), False),
    ("beyond the start, y", (0.5, 0.25), (1.0, 0.25), (0.5, 0.5), (0.5, 1.0), False),
    ("beyond the end, slanted", (0.75, 0.75), (1.0, 0.5), (0.0, 0.0), (0.5, 0.5), False),
    ("crossing lines, not segments", (0.0, 0.0), (0.25, 0.25), (0.0, 1.0), (1.0, 0.0), False),
]


@pytest.mark.parametrize(("p1", "p2", "q1", "q2", "expected"), [c[1:] for c in SEGMENT_CASES],
                         ids=[c[0] for c in SEGMENT_CASES])
def test_segments_intersect_in_every_order(p1: Pt, p2: Pt, q1: Pt, q2: Pt, expected: bool) -> None:
    for args in variants(p1, p2, q1, q2):
        assert _segments_intersect(*args) is expected, args


# --- Polygon.of: what is accepted and the exact messages --------------------------------------

SQUARE = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]
NO_AREA = "zone 'dock': the polygon has no area (all points on one line)"


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([[0.1, 0.1], [0.5, 0.5]], "zone 'dock': a zone polygon needs at least 3 points, got 2"),
        ([[0.1, 0.1], [1.2, 0.1], [0.5, 0.8]],
         "zone 'dock': point 1 x = 1.2 is outside [0, 1] (coordinates are normalized)"),
        ([[0.1, 0.1], [0.9, 0.1], [0.5, 0.8], [0.2, -0.5]],
         "zone 'dock': point 3 y = -0.5 is outside [0, 1] (coordinates are normalized)"),
        ([[0.1, 0.1], [0.9, 0.1, 0.0], [0.5, 0.8]],
         "zone 'dock': point 1 has 3 coordinates, expected 2 (x, y)"),
        # repeated neighbours: first pair, a middle pair, last and first (the wrap)
        ([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9], [0.2, 0.8]],
         "zone 'dock': points 0 and 1 are the same; drop one"),
        ([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.9, 0.9], [0.1, 0.9]],
         "zone 'dock': points 2 and 3 are the same; drop one"),
        ([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9], [0.1, 0.1]],
         "zone 'dock': points 3 and 0 are the same; drop one"),
        # bow tie: edge 0-1 crosses edge 2-3
        ([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]],
         "zone 'dock': the polygon is self-intersecting (edge 0-1 crosses edge 2-3); "
         "list the points in order around the zone"),
        # the unit square's diagonals as a bow tie (cross products of exactly +-1)
        ([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
         "zone 'dock': the polygon is self-intersecting (edge 0-1 crosses edge 2-3); "
         "list the points in order around the zone"),
        # the other bow tie: edge 1-2 crosses the closing edge 3-0
        ([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]],
         "zone 'dock': the polygon is self-intersecting (edge 1-2 crosses edge 3-0); "
         "list the points in order around the zone"),
        # a figure eight through one repeated (not neighbouring) vertex: edges 0-1 and 3-4 touch
        ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.1], [0.9, 0.9], [0.5, 0.5], [0.1, 0.9]],
         "zone 'dock': the polygon is self-intersecting (edge 0-1 crosses edge 3-4); "
         "list the points in order around the zone"),
        # vertex 3 lies on edge 0-1 (a T where the outline comes back to touch itself)
        ([[0.1, 0.5], [0.9, 0.5], [0.9, 0.9], [0.5, 0.5], [0.3, 0.9]],
         "zone 'dock': the polygon is self-intersecting (edge 0-1 crosses edge 2-3); "
         "list the points in order around the zone"),
        ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], NO_AREA),
        ([[0.2, 0.7], [0.5, 0.4], [0.8, 0.1]], NO_AREA),
        ([[0.3, 0.1], [0.3, 0.5], [0.3, 0.9]], NO_AREA),
    ],
)
def test_bad_polygons_raise_the_exact_message(points: list[list[float]], message: str) -> None:
    with raises(message):
        Polygon.of("zone 'dock'", points)


def test_polygons_are_accepted_either_way_round_and_keep_their_vertices() -> None:
    ccw = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]  # counter-clockwise (y down)
    for points in (ccw, ccw[::-1], ccw[2:] + ccw[:2]):
        assert Polygon.of("z", points).vertices == tuple((x, y) for x, y in points)
    # concave (an ell) and a thin but non-degenerate sliver
    Polygon.of("ell", [[0.1, 0.1], [0.6, 0.1], [0.6, 0.4], [0.3, 0.4], [0.3, 0.9], [0.1, 0.9]])
    Polygon.of("sliver", [[0.1, 0.5], [0.9, 0.5], [0.5, 0.50001]])


def test_the_tolerances_are_strict_bounds() -> None:
    """Points exactly 1e-9 apart are distinct, and twice the area exactly 1e-9 is an area."""
    # (0, 0), (1e-9, 0), (1, 1), (0, 1): the first two are 1e-9 apart (math.dist is exact here).
    assert math.dist((0.0, 0.0), (1e-9, 0.0)) == 1e-9
    Polygon.of("z", [[0.0, 0.0], [1e-9, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # The triangle (0, 0), (1e-9, 0), (1/2, 1) has twice its area = 1e-9 * 1 exactly.
    Polygon.of("z", [[0.0, 0.0], [1e-9, 0.0], [0.5, 1.0]])
    with raises("z: the polygon has no area (all points on one line)"):  # twice the area: 5e-10
        Polygon.of("z", [[0.0, 0.0], [1e-8, 0.0], [0.5, 0.05]])


# --- Polygon.contains and boundary_distances -------------------------------------------------

DIAMOND = [[0.5, 0.1], [0.9, 0.5], [0.5, 0.9], [0.1, 0.5]]  # |x - 0.5| + |y - 0.5| <= 0.4


def grid(step: float = 0.05) -> np.ndarray:
    n = round(1 / step)
    return np.array([(i * step, j * step) for i in range(n + 1) for j in range(n + 1)])


@pytest.mark.parametrize("order", ["ccw", "cw", "rotated"])
def test_contains_a_diamond_with_vertices_on_the_grid_rows(order: str) -> None:
    """The rows y = 0.5 and x = 0.5 pass through vertices: a ray through a vertex counts once."""
    points = {"ccw": DIAMOND, "cw": DIAMOND[::-1], "rotated": DIAMOND[1:] + DIAMOND[:1]}[order]
    poly = Polygon.of("d", points)
    pts = grid()
    margin = np.abs(pts[:, 0] - 0.5) + np.abs(pts[:, 1] - 0.5) - 0.4
    off_edge = np.abs(margin) > 1e-6  # points on an edge may go either way
    expected = margin < 0
    assert poly.contains(pts)[off_edge].tolist() == expected[off_edge].tolist()
    # the row through two vertices, by hand
    row = np.array([[0.05, 0.5], [0.3, 0.5], [0.5, 0.5], [0.6, 0.5], [0.85, 0.5], [0.95, 0.5]])
    assert poly.contains(row).tolist() == [False, True, True, True, True, False]


@pytest.mark.parametrize("reverse", [False, True])
def test_contains_a_concave_ell(reverse: bool) -> None:
    ell = [[0.1, 0.1], [0.6, 0.1], [0.6, 0.4], [0.3, 0.4], [0.3, 0.9], [0.1, 0.9]]
    poly = Polygon.of("ell", ell[::-1] if reverse else ell)
    pts = np.array([[0.2, 0.2], [0.5, 0.3], [0.2, 0.8], [0.5, 0.6], [0.7, 0.3], [0.2, 0.95],
                    [0.45, 0.4 + 1e-3], [0.45, 0.4 - 1e-3], [0.05, 0.4], [0.65, 0.1 + 1e-3], [0.2, 0.4]])
    assert poly.contains(pts).tolist() == [True, True, True, False, False, False,
                                           False, True, False, False, True]


def test_contains_a_triangle_with_slanted_edges() -> None:
    # right triangle (0.2, 0.2), (0.8, 0.2), (0.2, 0.8): inside when x, y > 0.2 and x + y < 1
    poly = Polygon.of("t", [[0.2, 0.2], [0.8, 0.2], [0.2, 0.8]])
    pts = grid()
    margin = np.minimum(np.minimum(pts[:, 0] - 0.2, pts[:, 1] - 0.2), 1 - pts[:, 0] - pts[:, 1])
    off_edge = np.abs(margin) > 1e-6
    assert poly.contains(pts)[off_edge].tolist() == (margin > 0)[off_edge].tolist()


RECT = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.6], [0.2, 0.6]]


@pytest.mark.parametrize("reverse", [False, True])
def test_boundary_distances_of_a_rectangle(reverse: bool) -> None:
    poly = Polygon.of("r", RECT[::-1] if reverse else RECT)
    pts = np.array([
        [0.3, 0.5],  # inside: 0.1 to the left edge and to the bottom (y = 0.6)
        [0.5, 0.3],  # inside: 0.1 to the top (y = 0.2)
        [0.7, 0.4],  # inside: 0.1 to the right edge
        [0.1, 0.1],  # beyond the corner (0.2, 0.2)
        [0.9, 0.7],  # beyond the corner (0.8, 0.6)
        [0.95, 0.1],  # beyond the corner (0.8, 0.2)
        [0.05, 0.9],  # beyond the corner (0.2, 0.6)
        [0.5, 0.9],  # below the middle of the bottom edge
        [0.95, 0.4],  # right of the right edge
        [0.5, 0.4],  # the centre
        [0.2, 0.4],  # on the left edge
        [0.8, 0.2],  # on a vertex
    ])
    expected = [0.1, 0.1, 0.1, math.hypot(0.1, 0.1), math.hypot(0.1, 0.1), math.hypot(0.15, 0.1),
                math.hypot(0.15, 0.3), 0.3, 0.15, 0.2, 0.0, 0.0]
    assert poly.boundary_distances(pts).tolist() == pytest.approx(expected, abs=1e-12)


def test_boundary_distances_to_a_slanted_edge() -> None:
    # hypotenuse x + y = 1 from (0.8, 0.2) to (0.2, 0.8): distance |x + y - 1| / sqrt 2 on its span
    poly = Polygon.of("t", [[0.2, 0.2], [0.8, 0.2], [0.2, 0.8]])
    pts = np.array([[0.6, 0.6], [0.45, 0.45], [0.3, 0.9], [0.9, 0.3], [0.9, 0.1], [1.0, 0.3]])
    expected = [0.2 / math.sqrt(2), 0.1 / math.sqrt(2), 0.2 / math.sqrt(2), 0.2 / math.sqrt(2),
                math.hypot(0.1, 0.1), math.hypot(0.2, 0.1)]
    assert poly.boundary_distances(pts).tolist() == pytest.approx(expected, abs=1e-12)


# --- ZoneRule.of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"band": 0.5}, "zone 'dock': band = 0.5 must be in [0, 0.5) (normalized distance)"),
        ({"band": 0.7}, "zone 'dock': band = 0.7 must be in [0, 0.5) (normalized distance)"),
        ({"band": -0.01}, "zone 'dock': band = -0.01 must be in [0, 0.5) (normalized distance)"),
        ({"loiter_s": 0.0}, "zone 'dock': loiter_s = 0.0 must be positive (seconds)"),
        ({"loiter_s": -3.0}, "zone 'dock': loiter_s = -3.0 must be positive (seconds)"),
        ({"max_occupancy": -1}, "zone 'dock': max_occupancy = -1 must be 0 or more"),
    ],
)
def test_bad_zone_settings_raise_the_exact_message(kwargs: dict[str, float], message: str) -> None:
    with raises(message):
        ZoneRule.of("dock", SQUARE, **kwargs)  # type: ignore[arg-type]


def test_a_zone_rule_keeps_what_it_was_given_at_the_edges_of_the_ranges() -> None:
    rule = ZoneRule.of("dock", SQUARE, classes=["car", "truck", "car"], band=0.0, loiter_s=0.5,
                       max_occupancy=0)
    assert (rule.name, rule.classes, rule.band, rule.loiter_s, rule.max_occupancy) == (
        "dock", frozenset({"car", "truck"}), 0.0, 0.5, 0)
    assert rule.polygon.vertices == ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75))
    assert ZoneRule.of("dock", SQUARE, band=0.49).band == 0.49
    assert ZoneRule.of("dock", SQUARE).classes is None
    assert ZoneRule.of("dock", SQUARE, classes=[]).classes == frozenset()


def test_a_bad_polygon_in_a_zone_rule_names_the_zone() -> None:
    with raises("zone 'gate 2': points 1 and 2 are the same; drop one"):
        ZoneRule.of("gate 2", [[0.1, 0.1], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])


# --- ZoneMonitor ---------------------------------------------------------------------------


def track(track_id: int, label: str = "car", *, confirmed: bool = True) -> Track:
    t = Track(track_id, 0.0, 16)
    t.confirmed = confirmed
    t.vote(Observation((0.0, 0.0, 0.1, 0.1), 0.9, 0, label))
    return t


def box_at(x: float, y: float) -> tuple[float, float, float, float]:
    """A box 1/16 wide whose bottom-centre anchor is exactly (x, y) (dyadic coordinates)."""
    return (x - 0.03125, y - 0.0625, x + 0.03125, y)


def step(monitor: ZoneMonitor, now: float, items: list[tuple[Track, Pt]]) -> list[object]:
    tracks = [t for t, _ in items]
    boxes = np.array([box_at(*xy) for _, xy in items], dtype=np.float64).reshape(len(items), 4)
    return list(monitor.process(tracks, boxes, now))


IN, OUT = (0.5, 0.5), (0.9375, 0.5)


def test_entry_exit_events_carry_their_time_rule_and_track() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE))
    car = track(7)
    (entered,) = step(monitor, 3.0, [(car, IN)])
    assert isinstance(entered, ZoneEntered)
    assert (entered.rule, entered.t, entered.track.track_id, entered.track.label) == ("dock", 3.0, 7, "car")
    (exited,) = step(monitor, 5.5, [(car, OUT)])
    assert isinstance(exited, ZoneExited)
    assert (exited.rule, exited.t, exited.dwell_s, exited.reason, exited.counted_label) == (
        "dock", 5.5, 2.5, ExitReason.LEFT, "car")
    assert (exited.track.track_id, exited.track.label) == (7, "car")


def test_an_anchor_exactly_band_outside_is_not_out_yet() -> None:
    """Exit needs the anchor outside by more than the band: 1/8 outside with band 1/8 stays."""
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE, band=0.125))
    car = track(1)
    assert [type(e) for e in step(monitor, 0.0, [(car, IN)])] == [ZoneEntered]
    assert step(monitor, 1.0, [(car, (0.875, 0.5))]) == []  # 0.875 - 0.75 = 0.125 = band
    assert monitor.occupancy() == {"car": 1}
    assert [type(e) for e in step(monitor, 2.0, [(car, (0.90625, 0.5))])] == [ZoneExited]


def test_a_zone_class_filter_admits_only_its_classes() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE, classes=["truck"]))
    car, lorry = track(1, "car"), track(2, "truck")
    events = step(monitor, 0.0, [(car, IN), (lorry, IN)])
    assert [(type(e), e.track.track_id) for e in events] == [(ZoneEntered, 2)]  # type: ignore[attr-defined]
    assert monitor.occupancy() == {"truck": 1}


def test_tracks_and_boxes_of_different_lengths_are_an_error() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE))
    with pytest.raises(ValueError, match="zip"):
        monitor.process([track(1), track(2)], np.array([box_at(*IN)]), 0.0)


def test_overcrowding_fires_once_while_crowded_with_its_fields() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE, max_occupancy=1))
    a, b, c = track(1), track(2, "truck"), track(3)
    assert [type(e) for e in step(monitor, 0.0, [(a, IN)])] == [ZoneEntered]
    events = step(monitor, 2.0, [(a, IN), (b, IN)])
    assert [type(e) for e in events] == [ZoneEntered, Overcrowded]
    crowded = events[1]
    assert isinstance(crowded, Overcrowded)
    assert (crowded.rule, crowded.t, crowded.occupancy, crowded.threshold, crowded.track.track_id) == (
        "dock", 2.0, 2, 1, 2)
    # a third one while still crowded: no second alarm
    assert [type(e) for e in step(monitor, 3.0, [(a, IN), (b, IN), (c, IN)])] == [ZoneEntered]
    # two leave (occupancy 1 = threshold: re-armed), one comes back: a new alarm
    step(monitor, 4.0, [(b, OUT), (c, OUT)])
    events = step(monitor, 5.0, [(c, IN)])
    assert [type(e) for e in events] == [ZoneEntered, Overcrowded]


def test_max_occupancy_zero_alarms_on_the_first_entry() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE, max_occupancy=0))
    events = step(monitor, 1.0, [(track(1), IN)])
    assert [type(e) for e in events] == [ZoneEntered, Overcrowded]
    assert (events[1].occupancy, events[1].threshold) == (1, 0)  # type: ignore[attr-defined]


def test_loitering_counts_dwell_from_the_entry_not_from_zero() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE, loiter_s=10.0))
    p = track(4, "person")
    events: list[object] = []
    for now in (100.0, 105.0, 110.0, 110.5, 112.0, 130.0):
        events += [e for e in step(monitor, now, [(p, IN)]) if isinstance(e, Loitering)]
    (loiter,) = events
    assert isinstance(loiter, Loitering)
    assert (loiter.rule, loiter.t, loiter.dwell_s, loiter.threshold_s, loiter.track.track_id) == (
        "dock", 110.5, 10.5, 10.0, 4)


def test_entry_label_is_the_class_at_entry_and_none_outside() -> None:
    monitor = ZoneMonitor(ZoneRule.of("dock", SQUARE))
    car, other = track(1, "car"), track(2, "bus")
    step(monitor, 0.0, [(car, IN), (other, OUT)])
    car.vote(Observation((0.0, 0.0, 0.1, 0.1), 5.0, 1, "truck"))  # the vote changes after entry
    assert car.label == "truck"
    assert monitor.entry_label(1) == "car"
    assert monitor.entry_label(2) is None
    assert monitor.entry_label(99) is None
    (lost,) = monitor.forget([1], 4.0)
    assert isinstance(lost, ZoneExited)
    assert (lost.t, lost.dwell_s, lost.reason, lost.counted_label, lost.track.track_id) == (
        4.0, 4.0, ExitReason.LOST, "car", 1)
    assert monitor.entry_label(1) is None


# --- counting: a closed bucket's JSON; engine: pending crossings in the persisted state ------


def test_a_closed_bucket_to_json() -> None:
    bucket = ClosedBucket(1_700_000_040.0, 60.0, True, (
        CountRow(CountKey("dock", "zone", "truck", Direction.OUT), 1),
        CountRow(CountKey("mid", "line", "car", Direction.IN), 3),
    ))
    assert bucket.to_json() == {
        "bucket": {"start": 1_700_000_040.0, "seconds": 60.0, "partial": True},
        "counts": [
            {"rule": "dock", "kind": "zone", "label": "truck", "direction": "out", "count": 1},
            {"rule": "mid", "kind": "line", "label": "car", "direction": "in", "count": 3},
        ],
    }


def test_two_pending_crossings_of_one_key_persist_as_two() -> None:
    """Two cars cross the line down in separate lanes; neither class is settled when the state is
    written, so the state holds both."""
    analytics = Analytics(lines=[LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])], wall_now=1_700_000_000.0,
                          mono_now=0.0, label_settle_s=30.0)
    crossed = 0
    for i in range(30):
        t = i / 10
        y = 0.1 + 0.8 * t / 3
        obs = [Observation((x - 0.01, y - 0.05, x + 0.01, y + 0.05), 0.9, 0, "car") for x in (0.25, 0.75)]
        crossed += len(analytics.step(obs, t).events)
        if crossed == 2:
            break
    assert crossed == 2
    restored = CountBuckets.from_json(analytics.buckets_state(), wall_now=1_700_000_000.0, mono_now=0.0)
    assert restored.open_counts() == {CountKey("mid", "line", "car", Direction.IN): 2}


# --- counting: the persisted state with closed buckets not yet taken --------------------------

WALL = 1_700_000_000.0  # 20 s past a minute: the open minute started at WALL - 20
K_CAR = CountKey("mid", "line", "car", Direction.IN)
K_TRUCK = CountKey("dock", "zone", "truck", Direction.OUT)


def test_the_state_holds_closed_buckets_and_extra_counts_as_compact_json() -> None:
    buckets = CountBuckets(60.0, wall_now=WALL, mono_now=0.0)
    buckets.add(K_CAR, 1.0)
    buckets.add(K_CAR, 2.0)
    buckets.add(K_TRUCK, 3.0)
    buckets.add(K_CAR, 45.0)  # wall WALL + 45 is in the next minute: the first one closes, not taken
    text = buckets.to_json(extra={K_CAR: 2, K_TRUCK: 1})
    assert text == (
        '{"version":1,"seconds":60.0,'
        '"open":{"start":1700000040.0,"partial":false,'
        '"counts":[["dock","zone","truck","out",1],["mid","line","car","in",3]]},'
        '"closed":[{"start":1699999980.0,"seconds":60.0,"partial":false,'
        '"counts":[["dock","zone","truck","out",1],["mid","line","car","in",2]]}]}'
    )


def test_a_state_with_closed_buckets_restores_them() -> None:
    text = (
        '{"version":1,"seconds":60.0,'
        '"open":{"start":1700000040.0,"partial":false,"counts":[["mid","line","car","in",3]]},'
        '"closed":[{"start":1699999920.0,"seconds":60.0,"partial":true,'
        '"counts":[["mid","line","car","in",4],["dock","zone","truck","out",1]]},'
        '{"start":1699999980.0,"seconds":30.0,"partial":false,"counts":[]}]}'
    )
    restored = CountBuckets.from_json(text, wall_now=WALL + 100.0, mono_now=0.0)
    assert restored.close(partial=False) == [
        ClosedBucket(1699999920.0, 60.0, True, (CountRow(K_TRUCK, 1), CountRow(K_CAR, 4))),
        ClosedBucket(1699999980.0, 30.0, False, ()),
        ClosedBucket(1700000040.0, 60.0, True, (CountRow(K_CAR, 3),)),  # restored open: partial
    ]


def test_a_state_of_another_version_says_which() -> None:
    message = "count buckets state: cannot restore (version 2, expected 1); it was not written by to_json"
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        CountBuckets.from_json('{"version":2,"seconds":60.0,"open":null,"closed":[]}', wall_now=WALL,
                               mono_now=0.0)


# --- lines: bands, the segment's ends, several tracks in one frame, forget -------------------


def line_steps(counter: LineCounter, frames: list[list[tuple[Track, Pt]]]) -> list[tuple[float, int, str]]:
    """Feed one frame a second; (time, track id, direction) of each crossing."""
    out: list[tuple[float, int, str]] = []
    for i, items in enumerate(frames):
        tracks = [t for t, _ in items]
        boxes = np.array([box_at(*xy) for _, xy in items], dtype=np.float64).reshape(len(items), 4)
        for e in counter.process(tracks, boxes, float(i)):
            assert isinstance(e, LineCrossed)
            out.append((e.t, e.track.track_id, e.direction.value))
    return out


@pytest.mark.parametrize("band", [0.5, 0.7, -0.01])
def test_a_line_band_out_of_range_is_refused(band: float) -> None:
    with raises(f"line 'mid': band = {band} must be in [0, 0.5) (normalized distance)"):
        LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=band)


def test_line_bands_at_the_ends_of_the_range_are_kept() -> None:
    assert LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.0).band == 0.0
    assert LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.49).band == 0.49


def test_an_anchor_exactly_band_from_the_line_has_not_passed_it() -> None:
    """y = 1/2 from left to right, band 1/8: the signed distance is y - 1/2 (in: below)."""
    counter = LineCounter(LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.125))
    car = track(1)
    ys = [0.25, 0.625, 0.75, 0.375, 0.25]  # out, exactly band in, in, exactly band out, out
    assert line_steps(counter, [[(car, (0.5, y))] for y in ys]) == [(2.0, 1, "in"), (4.0, 1, "out")]


def test_inside_the_band_on_the_in_side_is_no_side() -> None:
    counter = LineCounter(LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.125))
    car = track(1)
    ys = [0.75, 0.5625, 0.4375, 0.3125]  # in, 1/16 in (band), 1/16 out (band), out
    assert line_steps(counter, [[(car, (0.5, y))] for y in ys]) == [(3.0, 1, "out")]


def test_the_band_near_the_frame_edge_is_half_of_that_sides_reach() -> None:
    # y = 0.02: the out side (above) reaches 0.02 into the frame, so its band is 0.01, not 0.05
    counter = LineCounter(LineRule.of("top", [[0.0, 0.02], [1.0, 0.02]], band=0.05))
    car = track(1)
    ys = [0.2, 0.0125, 0.0075]  # in; 0.0075 out (inside 0.01); 0.0125 out (beyond it)
    assert line_steps(counter, [[(car, (0.5, y))] for y in ys]) == [(2.0, 1, "out")]
    # y = 0.98: the in side (below) reaches 0.02
    counter = LineCounter(LineRule.of("bottom", [[0.0, 0.98], [1.0, 0.98]], band=0.05))
    ys = [0.5, 0.9875, 0.9925]
    assert line_steps(counter, [[(car, (0.5, y))] for y in ys]) == [(2.0, 1, "in")]


def test_every_track_of_a_frame_is_looked_at() -> None:
    """Tracks that are in the band, on their old side or tentative come first in the frame; the
    crossing of the last one still counts."""
    counter = LineCounter(LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.125))
    banded, same, tentative, crosser = track(1), track(2), track(3, confirmed=False), track(4)
    start = [(t, (0.2 * t.track_id, 0.25)) for t in (banded, same, tentative, crosser)]
    moved = [(banded, (0.2, 0.5)), (same, (0.4, 0.3)), (tentative, (0.6, 0.75)), (crosser, (0.8, 0.75))]
    assert line_steps(counter, [start, moved]) == [(1.0, 4, "in")]


def test_a_path_through_an_end_point_of_the_segment_counts_and_past_it_not() -> None:
    rule = LineRule.of("stub", [[0.25, 0.5], [0.75, 0.5]], band=0.01)
    for x, counts in ((0.25, True), (0.75, True), (0.5, True), (0.125, False), (0.875, False),
                      (0.9375, False)):
        counter = LineCounter(rule)
        car = track(1)
        got = line_steps(counter, [[(car, (x, 0.25))], [(car, (x, 0.75))]])
        assert got == ([(1.0, 1, "in")] if counts else []), x


def test_line_tracks_and_boxes_of_different_lengths_are_an_error() -> None:
    counter = LineCounter(LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]]))
    with pytest.raises(ValueError, match="zip"):
        counter.process([track(1), track(2)], np.array([box_at(0.5, 0.25)]), 0.0)


def test_forget_drops_a_tracks_side_and_ignores_unknown_ids() -> None:
    counter = LineCounter(LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]], band=0.125))
    car = track(1)
    assert line_steps(counter, [[(car, (0.5, 0.25))]]) == []
    counter.forget([1, 42])  # 42 was never seen
    # the same id again starts afresh: its first side is not a crossing, the next change is
    assert line_steps(counter, [[(car, (0.5, 0.75))], [(car, (0.5, 0.25))]]) == [(1.0, 1, "out")]


# --- engine: rule names, defaults, the tracker's settings, frame indices, restore, settling ----

WHOLE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
MID = [[0.0, 0.5], [1.0, 0.5]]


def test_rule_names_must_be_unique_across_lines_and_zones() -> None:
    message = "analytics: rule names must be unique; repeated: a, b"
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        Analytics(lines=[LineRule.of("a", MID), LineRule.of("b", MID), LineRule.of("c", MID)],
                  zones=[ZoneRule.of("b", WHOLE), ZoneRule.of("a", WHOLE)], wall_now=WALL, mono_now=0.0)
    message = "analytics: rule names must be unique; repeated: x"
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        Analytics(lines=[LineRule.of("x", MID), LineRule.of("x", MID)], wall_now=WALL, mono_now=0.0)
    Analytics(lines=[LineRule.of("x", MID)], zones=[ZoneRule.of("y", WHOLE)], wall_now=WALL, mono_now=0.0)


def car_at(x: float, y: float, score: float = 0.9) -> Observation:
    return Observation((x - 0.05, y - 0.05, x + 0.05, y + 0.05), score, 0, "car")


ZONE_IN = CountKey("all", "zone", "car", Direction.IN)


def test_the_trackers_settings_are_used_and_the_default_bucket_is_a_minute() -> None:
    """min_hits 1: a detection is a confirmed track at once, so it enters the zone on its first
    frame (the default, 3 hits, would not); its count lands in the minute WALL - 20 .. WALL + 40."""
    analytics = Analytics(zones=[ZoneRule.of("all", WHOLE)], tracker=TrackerConfig(min_hits=1),
                          wall_now=WALL, mono_now=0.0)
    frame = analytics.step([car_at(0.5, 0.5)], 1.0)
    assert [type(e) for e in frame.events] == [ZoneEntered]
    assert analytics.close() == [ClosedBucket(WALL - 20.0, 60.0, True, (CountRow(ZONE_IN, 1),))]


def test_a_restored_state_is_used() -> None:
    first = Analytics(zones=[ZoneRule.of("all", WHOLE)], tracker=TrackerConfig(min_hits=1),
                      wall_now=WALL, mono_now=0.0)
    first.step([car_at(0.5, 0.5)], 1.0)
    state = first.buckets_state()
    # restarted 5 s later on a new monotonic clock: mono 100 is wall WALL + 5
    second = Analytics(zones=[ZoneRule.of("all", WHOLE)], wall_now=WALL + 5.0, mono_now=100.0,
                       buckets_state=state)
    assert second.buckets.bucket_of(100.0) == WALL - 20.0
    assert second.close(partial=False) == [ClosedBucket(WALL - 20.0, 60.0, True, (CountRow(ZONE_IN, 1),))]


def test_frame_indices_given_are_the_trackers_and_the_best_observations() -> None:
    analytics = Analytics(wall_now=WALL, mono_now=0.0)
    (t,) = analytics.step([car_at(0.5, 0.5, 0.7)], 0.0, 10).tracks
    assert analytics.tracker.frame_index == 10 and t.best is not None and t.best.frame_index == 10
    analytics.step(None, 0.1, 20)  # the detector skipped frame 20
    assert analytics.tracker.frame_index == 20
    (t,) = analytics.step([car_at(0.5, 0.5, 0.95)], 0.2).tracks  # no index: the next one, 21
    assert analytics.tracker.frame_index == 21 and t.best is not None and t.best.frame_index == 21


def test_two_lines_crossed_in_one_frame_give_two_events() -> None:
    analytics = Analytics(lines=[LineRule.of("a", MID), LineRule.of("b", MID)], wall_now=WALL, mono_now=0.0)
    crossings = []
    for i in range(30):
        t = i / 10
        crossings += [(e.rule, e.t, t) for e in analytics.step([car_at(0.5, 0.1 + 0.8 * t / 3)], t).events]
    assert sorted(r for r, _, _ in crossings) == ["a", "b"]
    assert crossings[0][2] == crossings[1][2] and all(et == t for _, et, t in crossings)


def test_a_line_and_two_zones_in_one_frame_give_all_their_events() -> None:
    analytics = Analytics(lines=[LineRule.of("l", [[0.0, 0.25], [1.0, 0.25]], band=0.0)],
                          zones=[ZoneRule.of("z1", WHOLE), ZoneRule.of("z2", WHOLE)],
                          tracker=TrackerConfig(min_hits=1), wall_now=WALL, mono_now=0.0)
    got = [(type(e), e.rule) for e in analytics.step([car_at(0.25, 0.1)], 0.0).events]
    assert got == [(ZoneEntered, "z1"), (ZoneEntered, "z2")]
    for i in range(1, 4):  # the bottom edge 0.18, 0.21, 0.24: still above the line
        assert analytics.step([car_at(0.25, 0.1 + 0.03 * i)], i / 10).events == ()
    # the bottom edge at 0.27 crosses; a second car appears in the same frame and enters both zones
    events = analytics.step([car_at(0.25, 0.22), car_at(0.75, 0.8)], 0.4).events
    assert [(type(e), e.rule, e.t) for e in events] == [
        (LineCrossed, "l", 0.4), (ZoneEntered, "z1", 0.4), (ZoneEntered, "z2", 0.4)]


def test_a_crossing_is_counted_two_seconds_after_it_by_default() -> None:
    """Frames every 1/8 s (exact): the crossing is in the open bucket from the frame 2.0 s after
    it, not the one 1.875 s after it."""
    analytics = Analytics(lines=[LineRule.of("mid", MID)], wall_now=WALL, mono_now=0.0)
    crossed_at = None
    key = CountKey("mid", "line", "car", Direction.IN)
    for i in range(40):
        now = i * 0.125
        y = 0.25 + 0.15 * now  # bottom edge y + 0.05 passes 0.51 at about t = 1.4 s
        if analytics.step([car_at(0.5, y)], now).events:
            crossed_at = now
        if crossed_at is not None and now - crossed_at == 1.875:
            assert analytics.buckets.open_counts() == {}
        if crossed_at is not None and now - crossed_at == 2.0:
            assert analytics.buckets.open_counts() == {key: 1}
            return
    raise AssertionError(f"no crossing, or no frame 2 s after it (crossed at {crossed_at})")


def test_a_track_that_ends_exits_its_zones_as_lost_and_settles_its_crossing() -> None:
    analytics = Analytics(lines=[LineRule.of("mid", MID)],
                          zones=[ZoneRule.of("all", WHOLE), ZoneRule.of("also", WHOLE)],
                          tracker=TrackerConfig(min_hits=1), wall_now=WALL, mono_now=0.0, label_settle_s=30.0)
    events: list[object] = []
    for i in range(10):  # bottom edge 0.35 .. 0.62 in steps of 0.03: crosses y = 0.51 at i = 6
        events += analytics.step([car_at(0.5, 0.3 + 0.03 * i)], i / 10).events
    assert [type(e) for e in events] == [ZoneEntered, ZoneEntered, LineCrossed]
    also_in = CountKey("also", "zone", "car", Direction.IN)
    assert analytics.buckets.open_counts() == {ZONE_IN: 1, also_in: 1}  # the crossing is pending
    ended_at = None
    for i in range(10, 40):  # no detections: the track coasts, then ends
        frame = analytics.step([], i / 10)
        if frame.events:
            assert frame.tracks == ()
            assert [(type(e), e.rule, e.reason, e.t) for e in frame.events] == [  # type: ignore[union-attr]
                (ZoneExited, "all", ExitReason.LOST, i / 10), (ZoneExited, "also", ExitReason.LOST, i / 10)]
            ended_at = i / 10
            break
    assert ended_at is not None
    assert analytics.buckets.open_counts() == {
        ZONE_IN: 1, CountKey("all", "zone", "car", Direction.OUT): 1,
        also_in: 1, CountKey("also", "zone", "car", Direction.OUT): 1,
        CountKey("mid", "line", "car", Direction.IN): 1}


# --- kalman: the state's box back to corners -------------------------------------------------


def test_xywh_to_xyxy_by_hand() -> None:
    xywh = np.array([[0.5, 0.5, 0.25, 0.5], [0.25, 0.75, 0.125, 0.0625]])
    assert kalman.xywh_to_xyxy(xywh).tolist() == [[0.375, 0.25, 0.625, 0.75],
                                                  [0.1875, 0.71875, 0.3125, 0.78125]]
    state = np.array([[0.5, 0.5, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0]])  # velocities after the box are ignored
    assert kalman.xywh_to_xyxy(state).tolist() == [[0.375, 0.25, 0.625, 0.75]]


def test_a_still_detection_gives_a_track_with_its_box() -> None:
    analytics = Analytics(wall_now=WALL, mono_now=0.0)
    box = (0.375, 0.25, 0.625, 0.75)
    for i in range(4):
        (t,) = analytics.step([Observation(box, 0.9, 0, "car")], i / 10).tracks
    assert t.confirmed and t.box == pytest.approx(box, abs=1e-9)
    (t,) = analytics.step(None, 0.5).tracks  # a skipped frame: predicted, still, not observed
    assert t.box == pytest.approx(box, abs=1e-9) and t.observed is False


def test_frames_without_an_index_count_from_zero_and_time_may_repeat_but_not_go_back() -> None:
    analytics = Analytics(wall_now=WALL, mono_now=0.0)
    (t,) = analytics.step([car_at(0.5, 0.5)], 1.0).tracks
    assert analytics.tracker.frame_index == 0 and t.best is not None and t.best.frame_index == 0
    analytics.step([car_at(0.5, 0.5)], 1.0)  # the same time again is not going back
    assert analytics.tracker.frame_index == 1
    message = "tracker: time went backwards (0.9 < 1.0); pass the monotonic clock"
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        analytics.step([car_at(0.5, 0.5)], 0.9)


def test_an_events_track_summary_copies_the_tracks_class_vote_trajectory_and_best() -> None:
    analytics = Analytics(zones=[ZoneRule.of("all", WHOLE)], tracker=TrackerConfig(min_hits=1),
                          wall_now=WALL, mono_now=0.0)
    box = (0.25, 0.25, 0.5, 0.75)
    (entered,) = analytics.step([Observation(box, 0.75, 2, "bus")], 1.5, 4).events
    assert isinstance(entered, ZoneEntered)
    summary = entered.track
    assert (summary.track_id, summary.label, summary.class_id, summary.vote_confidence) == (1, "bus", 2, 1.0)
    assert summary.trajectory == (TrajectoryPoint(1.5, 0.375, 0.5),)
    assert summary.best == BestObservation(4, 1.5, 0.75, box, 0)


def test_the_initial_state_of_a_track() -> None:
    """ByteTrack's prior: position std 2 x 1/20 of the box size; velocity std 10 x 1/160 of the
    size per 1/30 s frame (1.875 sizes a second, which is also the centre's INITIAL_SPEED_STD)."""
    mean, cov = kalman.initiate(np.array([[0.5, 0.25, 0.25, 0.5]]))
    assert mean.tolist() == [[0.5, 0.25, 0.25, 0.5, 0.0, 0.0, 0.0, 0.0]]
    size = np.array([0.25, 0.5, 0.25, 0.5])
    assert cov[0, kalman.PP].tolist() == pytest.approx((0.1 * size) ** 2, rel=1e-12)
    assert cov[0, kalman.PP].tolist() == pytest.approx([0.000625, 0.0025, 0.000625, 0.0025], rel=1e-12)
    assert cov[0, kalman.PV].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert cov[0, kalman.VV].tolist() == pytest.approx([0.2197265625, 0.87890625, 0.2197265625, 0.87890625],
                                                      rel=1e-12)


def test_count_key_and_bucket_interval_checks_and_close_flags_partial_by_default() -> None:
    message = "count key: kind 'area' is not one of ('line', 'zone')"
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        CountKey("r", "area", "car", Direction.IN)
    for bad in (0.0, -60.0, math.inf, math.nan):
        message = f"count buckets: interval {bad} s must be a positive number of seconds"
        with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
            CountBuckets(bad, wall_now=WALL, mono_now=0.0)
    half = CountBuckets(0.5, wall_now=WALL, mono_now=0.0)
    half.add(K_CAR, 0.25)
    assert half.close() == [ClosedBucket(WALL, 0.5, True, (CountRow(K_CAR, 1),))]


# --- tracker: settings' messages, trajectory downsampling, class vote, best observation --------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low_score": -0.1}, "tracker: need 0 <= low_score (-0.1) <= high_score (0.5) <= 1"),
        ({"low_score": 0.6}, "tracker: need 0 <= low_score (0.6) <= high_score (0.5) <= 1"),
        ({"high_score": 1.5}, "tracker: need 0 <= low_score (0.1) <= high_score (1.5) <= 1"),
        ({"match_similarity": 0.0}, "tracker: match_similarity = 0.0 must be in (0, 1]"),
        ({"low_match_iou": 1.5}, "tracker: low_match_iou = 1.5 must be in (0, 1]"),
        ({"tentative_similarity": -1.0}, "tracker: tentative_similarity = -1.0 must be in (0, 1]"),
        ({"min_hits": 0}, "tracker: min_hits = 0 must be at least 1"),
        ({"tentative_misses": -1}, "tracker: tentative_misses = -1 must be 0 or more"),
        ({"max_age_s": 0.0}, "tracker: max_age_s = 0.0 must be positive"),
        ({"max_age_s": math.nan}, "tracker: max_age_s = nan must be positive"),
        ({"trajectory_points": 1}, "tracker: trajectory_points = 1 must be at least 2"),
    ],
)
def test_bad_tracker_settings_raise_the_exact_message(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=r"^" + re.escape(message) + "$"):
        TrackerConfig(**kwargs)  # type: ignore[arg-type]


def test_tracker_settings_at_the_ends_of_their_ranges_are_accepted() -> None:
    TrackerConfig(low_score=0.0, high_score=1.0, match_similarity=1.0, low_match_iou=1.0,
                  tentative_similarity=1.0, min_hits=1, tentative_misses=0, max_age_s=0.001,
                  trajectory_points=2)
    TrackerConfig(low_score=0.5, high_score=0.5)


def test_a_full_trajectory_drops_every_other_point() -> None:
    """max 4 points, 10 added (t = 0..9): the 5th point would make 5, so the list halves to t 0,
    2, 4 and every 2nd is kept; t = 8 would make 5 again: 0, 4, 8, every 4th kept."""
    trajectory = Trajectory(4)
    for i in range(10):
        trajectory.add(float(i), i / 10, 1 - i / 10)
    assert trajectory.points() == (TrajectoryPoint(0.0, 0.0, 1.0), TrajectoryPoint(4.0, 0.4, 0.6),
                                   TrajectoryPoint(8.0, 0.8, 1 - 0.8))
    # every 4th: t = 12 is kept (4 points, the bound), t = 10, 11, 13, 14, 15 are not
    for i in range(10, 16):
        trajectory.add(float(i), 0.5, 0.5)
    assert [p.t for p in trajectory.points()] == [0.0, 4.0, 8.0, 12.0]
    # the smallest bound still follows the track: its first point and a recent one
    two = Trajectory(2)
    for i in range(7):
        two.add(float(i), 0.5, 0.5)
    assert [p.t for p in two.points()] == [0.0, 4.0]
    short = Trajectory(4)
    for i in range(3):
        short.add(float(i), 0.5, 0.5)
    assert [p.t for p in short.points()] == [0.0, 1.0, 2.0]


def test_the_class_vote_weights_by_score_and_a_tie_keeps_the_current_class() -> None:
    t = Track(1, 0.0, 8)
    assert (t.label, t.class_id, t.vote_confidence) == ("", -1, 0.0)
    t.vote(Observation((0.0, 0.0, 0.1, 0.1), 0.5, 2, "car"))
    assert (t.label, t.class_id, t.vote_confidence) == ("car", 2, 1.0)
    t.vote(Observation((0.0, 0.0, 0.1, 0.1), 0.5, 7, "truck"))  # 0.5 each: a tie keeps car
    assert (t.label, t.class_id, t.vote_confidence) == ("car", 2, 0.5)
    t.vote(Observation((0.0, 0.0, 0.1, 0.1), 0.25, 7, "truck"))  # truck 0.75 > car 0.5
    assert (t.label, t.class_id, t.vote_confidence) == ("truck", 7, 0.6)
    t.vote(Observation((0.0, 0.0, 0.1, 0.1), 0.25, 3, "car"))  # car 0.75 = truck 0.75: stays truck
    assert (t.label, t.class_id) == ("truck", 7)


def test_the_best_observation_prefers_fewer_cut_sides_then_a_higher_score() -> None:
    t = Track(1, 0.0, 8)
    margin = 0.005

    def see(box: tuple[float, float, float, float], score: float, frame: int) -> BestObservation | None:
        t.observe_best(Observation(box, score, 0, "car"), frame, frame / 10, margin)
        return t.best

    edge = (0.005, 0.2, 0.3, 0.4)  # x1 at the margin: one side cut
    assert see(edge, 0.5, 1) == BestObservation(1, 0.1, 0.5, edge, 1)
    corner = (0.0, 0.0, 0.3, 0.3)  # two sides cut, higher score: not better
    assert see(corner, 0.9, 2) == BestObservation(1, 0.1, 0.5, edge, 1)
    inside = (0.1, 0.2, 0.3, 0.4)  # in view, lower score: better (fewer sides cut)
    assert see(inside, 0.4, 3) == BestObservation(3, 0.3, 0.4, inside, 0)
    assert see(inside, 0.4, 4) == BestObservation(3, 0.3, 0.4, inside, 0)  # same score: keeps the first
    assert see(inside, 0.45, 5) == BestObservation(5, 0.5, 0.45, inside, 0)
    # x2 at 1 - margin is cut too: not better, however high its score
    assert see((0.1, 0.2, 1 - margin, 0.4), 0.99, 6) == BestObservation(5, 0.5, 0.45, inside, 0)
    whole = Track(2, 0.0, 8)
    whole.observe_best(Observation((0.005, 0.005, 0.995, 0.995), 0.5, 0, "car"), 0, 0.0, margin)
    assert whole.best is not None and whole.best.sides_cut == 4
    below = Track(3, 0.0, 8)
    below.observe_best(Observation((0.0051, 0.0051, 0.9949, 0.9949), 0.5, 0, "car"), 0, 0.0, margin)
    assert below.best is not None and below.best.sides_cut == 0


def test_a_new_track_has_no_hits_no_misses_and_is_tentative() -> None:
    t = Track(5, 2.5, 8)
    assert (t.track_id, t.first_seen, t.last_seen, t.hits, t.misses) == (5, 2.5, 2.5, 0, 0)
    assert (t.confirmed, t.observed, t.lost, t.box, t.score, t.best) == (
        False, False, False, (0.0, 0.0, 0.0, 0.0), 0.0, None)
    assert t.trajectory.points() == () and t.trajectory.max_points == 8


def test_a_buffered_iou_grows_both_boxes_by_the_fraction_on_each_side() -> None:
    """(1/4..1/2)^2 and (1/2..3/4)^2 touch at a corner: IoU 0. Grown by half their size on each
    side to (1/8..5/8)^2 and (3/8..7/8)^2 they share a 1/4 x 1/4 square: 1/16 / (2/4 - 1/16) = 1/7."""
    a = np.array([[0.25, 0.25, 0.5, 0.5]])
    b = np.array([[0.5, 0.5, 0.75, 0.75]])
    assert iou_matrix(a, b).tolist() == [[0.0]]
    assert iou_matrix(a, b, 0.5).tolist() == [[pytest.approx(1 / 7, rel=1e-12)]]
    # a tall box against a wide one: the buffer uses each side's own size
    tall, wide = np.array([[0.4, 0.1, 0.5, 0.5]]), np.array([[0.1, 0.6, 0.5, 0.7]])
    # grown by 1/4: tall (0.375..0.525, 0.0..0.6), wide (0.0..0.6, 0.575..0.725)
    inter = (0.525 - 0.375) * (0.6 - 0.575)
    union = 0.15 * 0.6 + 0.6 * 0.15 - inter
    assert iou_matrix(tall, wide, 0.25).tolist() == [[pytest.approx(inter / union, rel=1e-9)]]


# --- geometry: lines --------------------------------------------------------------------------


def test_line_messages_and_the_distinct_points_bound() -> None:
    with raises("line 'mid': point 1 x = 1.5 is outside [0, 1] (coordinates are normalized)"):
        LineRule.of("mid", [[0.0, 0.5], [1.5, 0.5]])
    with raises("line 'mid': a line has exactly 2 points, got 3"):
        LineRule.of("mid", [[0.0, 0.5], [0.5, 0.5], [1.0, 0.5]])
    assert math.dist((0.0, 0.5), (1e-6, 0.5)) == 1e-6  # exactly 1e-6 apart: distinct
    assert LineRule.of("mid", [[0.0, 0.5], [1e-6, 0.5]]).line.length == 1e-6
    with raises("line 'mid': the two points are the same (0.5, 0.5); a line needs two distinct points"):
        LineRule.of("mid", [[0.5, 0.5], [0.5 + 1e-7, 0.5]])


def test_side_reach_of_the_diagonals_and_an_edge_line() -> None:
    """In image coordinates the in side is where (P2 - P1) x (A - P1) > 0. (0,1)->(1,0): in is
    towards (1,1), out towards (0,0); (0,0)->(1,1): in towards (0,1), out towards (1,0); each
    corner is 1/sqrt 2 from the diagonal."""
    h = 1 / math.sqrt(2)
    assert LineRule.of("a", [[0.0, 1.0], [1.0, 0.0]]).line.side_reach() == pytest.approx((h, h))
    assert LineRule.of("b", [[0.0, 0.0], [1.0, 1.0]]).line.side_reach() == pytest.approx((h, h))
    assert LineRule.of("c", [[0.0, 0.02], [1.0, 0.02]]).line.side_reach() == pytest.approx((0.98, 0.02))
    assert LineRule.of("d", [[1.0, 0.3], [0.0, 0.3]]).line.side_reach() == pytest.approx((0.3, 0.7))
