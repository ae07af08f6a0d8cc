"""Lines, zones and count buckets of agent.core.analytics: geometry validation, hysteresis,
segment extent, edge lines, class flicker, zone dwell/loitering/overcrowding, bucket alignment,
partial close and restart without loss or double counts.

The expected values are computed here from the geometry (which side a point is on, where a
straight path meets the line) and from the scenes the tests build, never read back from the code
under test.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.analytics import (
    Analytics,
    Anchor,
    CountBuckets,
    CountKey,
    Direction,
    ExitReason,
    GeometryError,
    LineCounter,
    LineCrossed,
    LineRule,
    Loitering,
    Observation,
    Overcrowded,
    ZoneEntered,
    ZoneExited,
    ZoneMonitor,
    ZoneRule,
)
from agent.core.analytics.tracker import Track, TrackerConfig

WALL = 1_700_000_000.0  # a wall-clock epoch that is a multiple of 60 s plus 20 s
HOUR = 3600.0


def track(track_id: int, label: str = "car", *, confirmed: bool = True) -> Track:
    t = Track(track_id, 0.0, 16)
    t.confirmed = confirmed
    t.vote(Observation((0, 0, 0.1, 0.1), 0.9, 0, label))
    return t


def box_with_bottom(x: float, y: float, size: float = 0.04) -> tuple[float, float, float, float]:
    """A box whose bottom-centre anchor is (x, y)."""
    return (x - size / 2, y - size, x + size / 2, y)


def feed_line(counter: LineCounter, t: Track, anchors: list[tuple[float, float]]) -> list[LineCrossed]:
    events: list[LineCrossed] = []
    for i, (x, y) in enumerate(anchors):
        t.box = box_with_bottom(x, y)
        events += counter.process([t], np.array([t.box]), float(i))
    return events


def expected_direction(p1: tuple[float, float], p2: tuple[float, float], a: tuple[float, float]) -> str:
    """Independent restatement of the rule: ``in`` where (P2 - P1) x (A - P1) > 0."""
    cross = (p2[0] - p1[0]) * (a[1] - p1[1]) - (p2[1] - p1[1]) * (a[0] - p1[0])
    return "in" if cross > 0 else "out"


# --- geometry validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "words"),
    [
        ([[0.1, 0.1], [0.5, 0.5]], "at least 3 points"),
        ([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]], "self-intersecting"),
        ([[0.1, 0.1], [1.2, 0.1], [0.5, 0.8]], "x = 1.2 is outside [0, 1]"),
        ([[0.1, -0.1], [0.9, 0.1], [0.5, 0.8]], "y = -0.1 is outside [0, 1]"),
        ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], "no area"),
        ([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9], [0.2, 0.8]], "are the same"),
        # A vertex on an edge that is not its own, at points written with two decimals: the
        # cross products come out about 1e-17, not 0, on one side or the other.
        *[([[0.1, 0.1], [0.7, 0.3], [0.7, 0.9], touching, [0.1, 0.9]], "self-intersecting")
          for touching in ([0.16, 0.12], [0.4, 0.2], [0.52, 0.24], [0.64, 0.28])],
    ],
)
def test_bad_zone_polygons_raise_a_value_error_naming_the_zone_and_the_fault(
    points: list[list[float]], words: str
) -> None:
    with pytest.raises(ValueError, match="zone 'dock'") as err:
        ZoneRule.of("dock", points)
    assert isinstance(err.value, GeometryError)
    assert words in str(err.value)


def test_a_simple_concave_polygon_is_accepted() -> None:
    ZoneRule.of("ell", [[0.1, 0.1], [0.6, 0.1], [0.6, 0.4], [0.3, 0.4], [0.3, 0.9], [0.1, 0.9]])


@pytest.mark.parametrize(
    ("points", "words"),
    [
        ([[0.1, 0.5]], "exactly 2 points"),
        ([[0.2, 0.5], [0.2, 0.5]], "same"),
        ([[0.0, 0.5], [1.5, 0.5]], "x = 1.5"),
    ],
)
def test_bad_lines_raise_naming_the_line(points: list[list[float]], words: str) -> None:
    with pytest.raises(GeometryError, match="line 'stop-bar'") as err:
        LineRule.of("stop-bar", points)
    assert words in str(err.value)


# --- lines ---------------------------------------------------------------------------------


def test_direction_follows_the_cross_product_rule_in_image_coordinates() -> None:
    p1, p2 = (0.05, 0.62), (0.95, 0.58)
    rule = LineRule.of("stop-bar", [list(p1), list(p2)])
    down = feed_line(LineCounter(rule), track(1), [(0.5, 0.4), (0.5, 0.5), (0.5, 0.7), (0.5, 0.8)])
    up = feed_line(LineCounter(rule), track(2), [(0.5, 0.8), (0.5, 0.7), (0.5, 0.5), (0.5, 0.4)])
    assert [e.direction.value for e in down] == [expected_direction(p1, p2, (0.5, 0.8))] == ["in"]
    assert [e.direction.value for e in up] == [expected_direction(p1, p2, (0.5, 0.4))] == ["out"]


@settings(max_examples=200, deadline=None)
@given(
    y=st.floats(0.2, 0.8),
    band=st.floats(0.005, 0.05),
    steps=st.lists(st.floats(-0.999, 0.999), min_size=2, max_size=60),
)
def test_jitter_inside_the_band_never_counts(y: float, band: float, steps: list[float]) -> None:
    rule = LineRule.of("l", [[0.0, y], [1.0, y]], band=band)
    counter = LineCounter(rule)
    t = track(1)
    # Start beyond the band above the line, then jitter across the line but inside the band.
    anchors = [(0.5, y - 2 * band)] + [(0.5, y + s * band) for s in steps]
    assert feed_line(counter, t, anchors) == []


@settings(max_examples=200, deadline=None)
@given(
    angle=st.floats(0.0, math.pi),
    before=st.integers(1, 5),
    after=st.integers(1, 5),
    jump=st.floats(0.02, 0.3),
    wobble=st.lists(st.floats(-0.9, 0.9), min_size=10, max_size=10),
)
def test_a_jump_across_the_line_counts_exactly_once(
    angle: float, before: int, after: int, jump: float, wobble: list[float]
) -> None:
    """Any line through the centre, an object on one side, then one jump to the other (low fps)."""
    band = 0.01
    c, s = math.cos(angle), math.sin(angle)
    p1, p2 = (0.5 - 0.4 * c, 0.5 - 0.4 * s), (0.5 + 0.4 * c, 0.5 + 0.4 * s)
    normal = (-s, c)  # unit normal; (P2 - P1) x normal > 0, so this side is "in"
    rule = LineRule.of("l", [list(p1), list(p2)], band=band)
    counter = LineCounter(rule)
    depth = band + jump
    side_a = [
        (0.5 - normal[0] * depth * (1.5 + w), 0.5 - normal[1] * depth * (1.5 + w)) for w in wobble[:before]
    ]
    side_b = [
        (0.5 + normal[0] * depth * (1.5 + w), 0.5 + normal[1] * depth * (1.5 + w)) for w in wobble[:after]
    ]
    events = feed_line(counter, track(1), side_a + side_b)
    assert [e.direction for e in events] == [Direction.IN]
    assert expected_direction(p1, p2, side_b[-1]) == "in"


def test_a_path_past_the_segments_end_does_not_count_and_one_through_it_does() -> None:
    rule = LineRule.of("short", [[0.2, 0.5], [0.4, 0.5]])
    beside = feed_line(LineCounter(rule), track(1), [(0.7, 0.3), (0.7, 0.7)])
    through = feed_line(LineCounter(rule), track(2), [(0.3, 0.3), (0.3, 0.7)])
    at_end = feed_line(LineCounter(rule), track(3), [(0.4, 0.3), (0.4, 0.7)])
    assert beside == []
    assert len(through) == 1
    assert len(at_end) == 1


@settings(max_examples=100, deadline=None)
@given(gap=st.floats(0.0005, 0.03), speed=st.floats(0.01, 0.1), x=st.floats(0.05, 0.95))
def test_a_line_near_the_frame_edge_counts(gap: float, speed: float, x: float) -> None:
    """An object leaving at the bottom: its box is clipped at 1.0, so its anchor stops at 1.0."""
    y_line = 1.0 - gap
    rule = LineRule.of("edge", [[0.0, y_line], [1.0, y_line]])
    counter = LineCounter(rule)
    t = track(1)
    events: list[LineCrossed] = []
    y = 0.5
    frame = 0
    while y - 0.1 < 1.0:  # until the whole box has left
        bottom = min(1.0, y)
        t.box = (x - 0.02, min(1.0, y - 0.1), x + 0.02, bottom)
        events += counter.process([t], np.array([t.box]), float(frame))
        y += speed
        frame += 1
    assert [e.direction for e in events] == [Direction.IN]


def test_an_unconfirmed_track_does_not_count_until_confirmed_and_then_counts_once() -> None:
    rule = LineRule.of("l", [[0.0, 0.5], [1.0, 0.5]])
    counter = LineCounter(rule)
    t = track(1, confirmed=False)
    assert feed_line(counter, t, [(0.5, 0.4), (0.5, 0.6), (0.5, 0.62)]) == []
    t.confirmed = True
    assert [e.direction for e in feed_line(counter, t, [(0.5, 0.63), (0.5, 0.64)])] == [Direction.IN]


def test_a_class_filter_counts_only_its_classes() -> None:
    rule = LineRule.of("l", [[0.0, 0.5], [1.0, 0.5]], classes=["truck"])
    assert feed_line(LineCounter(rule), track(1, "car"), [(0.5, 0.4), (0.5, 0.6)]) == []
    assert len(feed_line(LineCounter(rule), track(2, "truck"), [(0.5, 0.4), (0.5, 0.6)])) == 1


def test_the_anchor_is_configurable() -> None:
    """A box straddling the line: its top is above, its bottom below."""
    top = LineRule.of("l", [[0.0, 0.5], [1.0, 0.5]], anchor=Anchor.TOP_CENTER)
    counter = LineCounter(top)
    t = track(1)
    events = []
    for i, (y1, y2) in enumerate([(0.3, 0.45), (0.45, 0.6), (0.55, 0.7)]):
        t.box = (0.4, y1, 0.5, y2)
        events += counter.process([t], np.array([t.box]), float(i))
    assert len(events) == 1 and events[0].t == 2.0  # only when the top edge passed


# --- whole pipeline: detections in, counts out ----------------------------------------------


def lane_scene(
    n_down: int,
    n_up: int,
    *,
    fps: float = 10.0,
    flicker: list[str] | None = None,
) -> list[tuple[float, list[Observation]]]:
    """Objects in separate lanes crossing y = 0.5, ``n_down`` downwards and ``n_up`` upwards."""
    frames: list[tuple[float, list[Observation]]] = []
    n = n_down + n_up
    for i in range(int(3 * fps)):
        t = i / fps
        obs = []
        for k in range(n):
            x = (k + 0.5) / n
            y = 0.1 + 0.8 * t / 3 if k < n_down else 0.9 - 0.8 * t / 3
            label = flicker[i % len(flicker)] if flicker else "car"
            obs.append(Observation((x - 0.01, y - 0.05, x + 0.01, y + 0.05), 0.9, 0, label))
        frames.append((t, obs))
    return frames


def run_counts(
    frames: list[tuple[float, list[Observation]]], rules: list[LineRule], **kwargs: object
) -> Counter[tuple[str, str, str]]:
    analytics = Analytics(lines=rules, wall_now=WALL, mono_now=0.0, **kwargs)  # type: ignore[arg-type]
    buckets = []
    for t, obs in frames:
        buckets += analytics.step(obs, t).closed
    buckets += analytics.close()
    counts: Counter[tuple[str, str, str]] = Counter()
    for b in buckets:
        for row in b.counts:
            counts[(row.key.rule, row.key.label, row.key.direction.value)] += row.count
    return counts


@settings(max_examples=25, deadline=None)
@given(n_down=st.integers(0, 8), n_up=st.integers(0, 8))
def test_n_objects_crossing_both_ways_give_exactly_n_counts_with_their_directions(
    n_down: int, n_up: int
) -> None:
    counts = run_counts(lane_scene(n_down, n_up), [LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])])
    # Moving down is towards (P2 - P1) x (A - P1) > 0 for P1 left, P2 right: "in".
    assert counts == Counter(
        {k: v for k, v in {("mid", "car", "in"): n_down, ("mid", "car", "out"): n_up}.items() if v}
    )


@settings(max_examples=50, deadline=None)
@given(pattern=st.lists(st.sampled_from(["car", "truck"]), min_size=1, max_size=12))
def test_class_flicker_along_one_track_counts_one_vehicle_of_the_voted_class(pattern: list[str]) -> None:
    """Detections flicker between car and truck with equal scores: one count, of the majority class."""
    frames = lane_scene(1, 0, flicker=pattern)
    seen = Counter(obs[0].label for _, obs in frames)
    if seen["car"] == seen["truck"]:
        return  # a tie has no majority to check
    majority = seen.most_common(1)[0][0]
    counts = run_counts(frames, [LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])])
    assert counts == Counter({("mid", majority, "in"): 1})


def test_a_two_frame_false_positive_crossing_the_line_is_not_counted() -> None:
    frames: list[tuple[float, list[Observation]]] = [
        (0.0, [Observation((0.4, 0.40, 0.45, 0.48), 0.9, 0, "car")]),
        (0.1, [Observation((0.4, 0.45, 0.45, 0.53), 0.9, 0, "car")]),
    ] + [(0.1 * i, []) for i in range(2, 30)]
    assert run_counts(frames, [LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])]) == Counter()


def test_counting_with_detection_interval_three_keeps_every_count() -> None:
    frames = lane_scene(4, 3, fps=15.0)
    thinned = [(t, obs if i % 3 == 0 else None) for i, (t, obs) in enumerate(frames)]
    analytics = Analytics(lines=[LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])], wall_now=WALL, mono_now=0.0)
    total: Counter[str] = Counter()
    for t, obs in thinned:
        for b in analytics.step(obs, t).closed:
            total.update({r.key.direction.value: r.count for r in b.counts})
    for b in analytics.close():
        total.update({r.key.direction.value: r.count for r in b.counts})
    assert total == Counter({"in": 4, "out": 3})


# --- zones ---------------------------------------------------------------------------------


def feed_zone(
    monitor: ZoneMonitor, steps: list[tuple[float, list[tuple[Track, tuple[float, float]]]]]
) -> list[object]:
    events: list[object] = []
    for now, items in steps:
        for t, (x, y) in items:
            t.box = box_with_bottom(x, y)
        tracks = [t for t, _ in items]
        events += monitor.process(tracks, np.array([t.box for t in tracks]).reshape(len(tracks), 4), now)
    return events


SQUARE = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]


def test_zone_entry_exit_and_dwell() -> None:
    monitor = ZoneMonitor(ZoneRule.of("square", SQUARE))
    car = track(1)
    events = feed_zone(
        monitor,
        [
            (0.0, [(car, (0.1, 0.5))]),
            (1.0, [(car, (0.5, 0.5))]),
            (2.0, [(car, (0.6, 0.5))]),
            (4.5, [(car, (0.9, 0.5))]),
        ],
    )
    assert [type(e) for e in events] == [ZoneEntered, ZoneExited]
    exited = events[1]
    assert isinstance(exited, ZoneExited)
    assert exited.dwell_s == pytest.approx(3.5) and exited.reason is ExitReason.LEFT
    assert monitor.occupancy() == {}


def test_zone_border_jitter_is_one_stay() -> None:
    monitor = ZoneMonitor(ZoneRule.of("square", SQUARE, band=0.02))
    car = track(1)
    steps = [(float(i), [(car, (0.2 + (0.005 if i % 2 else -0.005), 0.5))]) for i in range(20)]
    events = feed_zone(monitor, steps)
    assert [type(e) for e in events] == [ZoneEntered]


def test_zone_occupancy_per_class_and_overcrowding_fires_once_then_rearms() -> None:
    monitor = ZoneMonitor(ZoneRule.of("square", SQUARE, max_occupancy=2))
    a, b, c = track(1, "car"), track(2, "truck"), track(3, "car")
    inside, outside = (0.5, 0.5), (0.95, 0.5)
    events = feed_zone(monitor, [(0.0, [(a, inside), (b, inside)])])
    assert monitor.occupancy() == {"car": 1, "truck": 1} and not any(
        isinstance(e, Overcrowded) for e in events
    )
    events = feed_zone(monitor, [(1.0, [(a, inside), (b, inside), (c, inside)])])
    crowded = [e for e in events if isinstance(e, Overcrowded)]
    assert len(crowded) == 1 and crowded[0].occupancy == 3 and crowded[0].track.track_id == 3
    assert monitor.occupancy() == {"car": 2, "truck": 1}
    assert not any(isinstance(e, Overcrowded) for e in feed_zone(monitor, [(2.0, [(a, inside)])]))
    feed_zone(monitor, [(3.0, [(c, outside)])])  # back to 2: re-armed
    events = feed_zone(monitor, [(4.0, [(c, inside)])])
    assert len([e for e in events if isinstance(e, Overcrowded)]) == 1


def test_loitering_fires_once_per_stay_after_the_threshold() -> None:
    monitor = ZoneMonitor(ZoneRule.of("square", SQUARE, loiter_s=10.0))
    p = track(1, "person")
    events = feed_zone(monitor, [(float(t), [(p, (0.5, 0.5))]) for t in range(0, 30)])
    loiter = [e for e in events if isinstance(e, Loitering)]
    assert len(loiter) == 1 and loiter[0].t == 11.0 and loiter[0].dwell_s == 11.0


def test_a_track_that_ends_inside_exits_as_lost_and_a_tentative_one_never_enters() -> None:
    monitor = ZoneMonitor(ZoneRule.of("square", SQUARE))
    car, ghost = track(1), track(2, confirmed=False)
    assert [type(e) for e in feed_zone(monitor, [(0.0, [(car, (0.5, 0.5)), (ghost, (0.4, 0.4))])])] == [
        ZoneEntered
    ]
    lost = monitor.forget([1, 2], 5.0)
    assert len(lost) == 1 and isinstance(lost[0], ZoneExited) and lost[0].reason is ExitReason.LOST


def test_zone_counts_in_buckets_balance_entries_and_exits() -> None:
    zone = ZoneRule.of("band", [[0.0, 0.3], [1.0, 0.3], [1.0, 0.7], [0.0, 0.7]])
    analytics = Analytics(zones=[zone], wall_now=WALL, mono_now=0.0)
    frames = lane_scene(3, 2)
    for t, obs in frames:
        analytics.step(obs, t)
    rows = {(r.key.kind, r.key.direction.value): r.count for b in analytics.close() for r in b.counts}
    assert rows == {("zone", "in"): 5, ("zone", "out"): 5}


# --- buckets -------------------------------------------------------------------------------

KEY = CountKey("l", "line", "car", Direction.IN)


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=50),
    seconds=st.sampled_from([15.0, 60.0, 300.0]),
    wall=st.floats(1.6e9, 1.8e9),
    mono=st.floats(0.0, 1e6),
)
def test_counts_land_in_the_bucket_of_their_monotonic_time(
    times: list[float], seconds: float, wall: float, mono: float
) -> None:
    buckets = CountBuckets(seconds, wall_now=wall, mono_now=mono)
    closed = []
    for t in sorted(times):
        closed += buckets.advance(mono + t)
        buckets.add(KEY, mono + t)
    closed += buckets.close(partial=True)
    expected = Counter(math.floor((wall + t) / seconds) * seconds for t in times)
    got = Counter({b.start: sum(r.count for r in b.counts) for b in closed})
    assert got == expected
    assert all(b.start % seconds == 0 for b in closed)  # aligned to wall-clock time
    assert [b.partial for b in closed] == [False] * (len(closed) - 1) + [True]


def test_a_bucket_is_emitted_when_it_closes_not_before() -> None:
    buckets = CountBuckets(60.0, wall_now=WALL, mono_now=100.0)  # WALL is 20 s into its minute
    buckets.add(KEY, 100.0)
    assert buckets.advance(139.9) == []
    closed = buckets.advance(140.0)
    assert [(b.start, b.partial, b.counts[0].count) for b in closed] == [(WALL - 20.0, False, 1)]
    (empty,) = buckets.close(partial=True)  # the bucket advance opened: zero counts, measured
    assert (empty.start, empty.partial, empty.counts) == (WALL + 40.0, True, ())


def test_close_partial_flags_the_open_bucket() -> None:
    buckets = CountBuckets(60.0, wall_now=WALL, mono_now=0.0)
    buckets.add(KEY, 5.0)
    (bucket,) = buckets.close(partial=True)
    assert bucket.partial and bucket.to_json()["counts"] == [
        {"rule": "l", "kind": "line", "label": "car", "direction": "in", "count": 1}
    ]


@settings(max_examples=100, deadline=None)
@given(
    before=st.lists(st.floats(0.0, 200.0), max_size=30),
    after=st.lists(st.floats(0.0, 200.0), max_size=30),
    downtime=st.floats(0.0, 100.0),
)
def test_a_restart_neither_loses_nor_doubles_counts(
    before: list[float], after: list[float], downtime: float
) -> None:
    """Persist after every count (as the runtime will), kill, restore with new monotonic clock."""
    first = CountBuckets(60.0, wall_now=WALL, mono_now=0.0)
    emitted = []
    for t in sorted(before):
        emitted += first.advance(t)
        first.add(KEY, t)
    state = first.to_json()  # the runtime persists this with the outbox rows of what was emitted
    last_wall = WALL + max(before, default=0.0)
    # The new process: its monotonic clock starts near 0 again, the wall clock went on.
    second = CountBuckets.from_json(state, wall_now=last_wall + downtime, mono_now=0.0)
    for t in sorted(after):
        emitted += second.advance(t)
        second.add(KEY, t)
    emitted += second.close(partial=True)
    assert sum(r.count for b in emitted for r in b.counts) == len(before) + len(after)
    starts = [b.start for b in emitted]
    assert starts == sorted(starts)


def test_a_restored_state_that_is_not_ours_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="count buckets state"):
        CountBuckets.from_json('{"version": 1}', wall_now=WALL, mono_now=0.0)
    with pytest.raises(ValueError, match="count buckets state"):
        CountBuckets.from_json("not json", wall_now=WALL, mono_now=0.0)


def test_pending_crossings_are_in_the_persisted_state() -> None:
    """A crossing whose class is not settled yet must survive a kill right after it."""
    rule = LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])
    analytics = Analytics(lines=[rule], wall_now=WALL, mono_now=0.0, label_settle_s=30.0)
    crossed_at = None
    for t, obs in lane_scene(1, 0):
        if analytics.step(obs, t).events:
            crossed_at = t
            break
    assert crossed_at is not None
    restored = CountBuckets.from_json(analytics.buckets_state(), wall_now=WALL + crossed_at, mono_now=0.0)
    assert restored.open_counts() == {CountKey("mid", "line", "car", Direction.IN): 1}


def test_a_restored_open_bucket_is_flagged_partial_when_it_closes() -> None:
    """The agent did not watch all of that interval: its counts are a lower bound."""
    first = CountBuckets(60.0, wall_now=WALL, mono_now=0.0)
    first.add(KEY, 1.0)
    second = CountBuckets.from_json(first.to_json(), wall_now=WALL + 5.0, mono_now=0.0)
    second.add(KEY, 1.0)
    (bucket,) = second.advance(60.0)
    assert (bucket.start, bucket.partial, bucket.counts[0].count) == (WALL - 20.0, True, 2)


def test_replayed_frames_with_count_off_set_the_sides_but_count_nothing() -> None:
    """A restarted source replays frames an earlier run committed: the crossing during the replay
    is not counted again, a crossing after it is counted once."""
    rule = LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])
    analytics = Analytics(lines=[rule], wall_now=WALL, mono_now=0.0)
    early = lane_scene(1, 0)  # at x = 0.5, crosses y = 0.5 around t = 1.3 s (frame 13)
    late = [
        Observation((o.box[0] + 0.3, o.box[1], o.box[2] + 0.3, o.box[3]), o.score, o.class_id, o.label)
        for _, obs in early
        for o in obs
    ]
    frames = [
        (i / 10, (early[i][1] if i < 30 else []) + ([late[i - 15]] if 15 <= i < 45 else []))
        for i in range(45)
    ]
    replay_events = []
    for t, obs in frames[:20]:  # the early object crosses in the replay
        replay_events += analytics.step(obs, t, count=False).events
    assert replay_events == []
    live = []
    for t, obs in frames[20:]:  # the late one crosses at about frame 28
        live += [e for e in analytics.step(obs, t).events if isinstance(e, LineCrossed)]
    assert [(round(e.anchor[0], 1), e.direction) for e in live] == [(0.8, Direction.IN)]
    rows = [(r.key.direction, r.count) for b in analytics.close() for r in b.counts]
    assert rows == [(Direction.IN, 1)]


def test_a_crossing_just_before_the_minute_settles_its_class_like_any_other() -> None:
    """A vehicle crossing half a second before a bucket ends, seen as a truck before it and as
    a car (more surely) for the 2 s after: its count is a car, as it would be at any other time
    of the minute, and the bucket closes once that is settled (2 s after its end). Before, the
    bucket's end settled the class on the votes so far, so the class a crossing was counted
    under depended on where the wall-clock minute fell in the run."""
    wall = 1_700_000_000.0  # 20 s past a minute: the bucket ends at monotonic 40.0
    analytics = Analytics(lines=[LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])],
                          tracker=TrackerConfig(min_hits=1), wall_now=wall, mono_now=0.0,
                          label_settle_s=2.0)

    def seen(t: float) -> Observation:
        y = 0.3 + 0.1 * (t - 38.0)  # bottom edge 0.35 at 38 s, crosses 0.5 + band at ~39.6 s
        label, score = ("truck", 0.6) if t < 40.0 else ("car", 0.9)
        return Observation((0.45, y, 0.55, y + 0.05), score, 0 if label == "car" else 1, label)

    closed_at, counted = None, []
    for i in range(50):  # 38.0 .. 42.9 s at 10 fps
        t = 38.0 + i / 10
        frame = analytics.step([seen(t)], t)
        if frame.closed and closed_at is None:
            closed_at, counted = t, [(r.key.label, r.count) for r in frame.closed[0].counts]
    assert counted == [("car", 1)], counted
    assert closed_at is not None and 41.9 < closed_at < 42.05  # 40 s + label_settle_s


def test_a_zone_entry_while_the_last_bucket_is_held_open_counts_in_its_own_bucket() -> None:
    """The bucket ending at 40 s stays open until 42 s; an entry at 40.5 s is the next
    bucket's, persisted with the state meanwhile, and not in the bucket that closes."""
    wall = 1_700_000_000.0  # the bucket ends at monotonic 40.0
    analytics = Analytics(zones=[ZoneRule.of("dock", [[0.0, 0.0], [1.0, 0.0], [1.0, 0.4],
                                                      [0.0, 0.4]])],
                          tracker=TrackerConfig(min_hits=1), wall_now=wall, mono_now=0.0)
    key = CountKey("dock", "zone", "car", Direction.IN)
    car = Observation((0.4, 0.2, 0.5, 0.3), 0.9, 0, "car")  # anchor (0.45, 0.3): inside
    analytics.step([], 39.0)
    analytics.step([], 40.0)
    assert [type(e) for e in analytics.step([car], 40.5).events] == [ZoneEntered]
    assert analytics.buckets.open_counts() == {}  # the open bucket is still the one ending at 40
    state = json.loads(analytics.buckets_state())
    assert state["open"]["counts"] == [["dock", "zone", "car", "in", 1]]  # kept if killed now
    closed = [b for t in (41.0, 42.0, 42.5) for b in analytics.step([car], t).closed]
    assert [(b.start, b.counts) for b in closed] == [(wall - 20.0, ())]
    assert analytics.buckets.open_counts() == {key: 1}
    (last,) = analytics.close()
    assert last.start == wall + 40.0 and [(r.key, r.count) for r in last.counts] == [(key, 1)]
