"""Each association stage of the tracker on its own, with still boxes whose IoU is worked out by
hand: a still track's Kalman state does not move, so a detection's overlap with it is exact.

The behavioural tests in test_tracker.py see whole scenes, where the stages cover for each other
(a detection the first stage misses is often taken by the third); a mutation run left the stages'
thresholds, buffers and bookkeeping alive there. Here each stage is the only one that can match.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.analytics import Observation, Tracker, TrackerConfig
from agent.core.analytics.tracker import assign, iou_matrix

Box = tuple[float, float, float, float]
HOME: Box = (0.1, 0.1, 0.3, 0.3)  # 0.2 x 0.2


def shifted(dx: float, box: Box = HOME) -> Box:
    return (box[0] + dx, box[1], box[2] + dx, box[3])


def iou_of_shift(dx: float) -> float:
    """IoU of HOME with HOME moved right by dx (0 <= dx <= 0.2), by hand."""
    inter = (0.2 - dx) * 0.2
    return inter / (0.08 - inter)


def det(box: Box, score: float = 0.9, label: str = "car") -> Observation:
    return Observation(box, score, 0 if label == "car" else 1, label)


def confirmed_still_track(cfg: TrackerConfig, frames: int = 3) -> Tracker:
    """A tracker holding one confirmed track at HOME, seen at t = 0.0, 0.1, ..."""
    tracker = Tracker(cfg)
    for i in range(frames):
        tracker.update([det(HOME)], i / 10)
    (track,) = tracker.tracks
    assert track.confirmed and track.box == pytest.approx(HOME)
    return tracker


def test_the_shift_arithmetic() -> None:
    assert iou_of_shift(0.0) == pytest.approx(1.0)
    assert iou_of_shift(0.1) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("score", "matched"), [(0.62, True), (0.55, False)])
def test_stage_one_weighs_iou_by_the_detections_score(score: float, matched: bool) -> None:
    # IoU 1/3: x 0.62 = 0.207 reaches 0.2, x 0.55 = 0.183 does not (IoU alone would).
    cfg = TrackerConfig(match_similarity=0.2, new_track_score=0.5, low_match_iou=1.0)
    tracker = confirmed_still_track(cfg)
    (home,) = tracker.tracks
    tracks = tracker.update([det(shifted(0.1), score)], 0.3)
    if matched:
        assert [t.track_id for t in tracks] == [home.track_id]
        assert home.observed and not home.lost and home.hits == 4 and home.score == score
    else:
        assert [t.track_id for t in tracks] == [home.track_id, home.track_id + 1]
        assert not home.observed and home.lost and home.hits == 3 and home.misses == 1
        assert tracks[1].box == shifted(0.1) and tracks[1].hits == 1 and not tracks[1].confirmed


def test_a_detection_exactly_at_high_score_goes_to_stage_one() -> None:
    # Stage 2 cannot take it (low_match_iou 1.0): matched only if 0.5 counts as high.
    cfg = TrackerConfig(high_score=0.5, low_match_iou=1.0)
    tracker = confirmed_still_track(cfg)
    (home,) = tracker.tracks
    tracker.update([det(shifted(0.05), 0.5)], 0.3)
    assert home.observed and home.score == 0.5


@pytest.mark.parametrize(("dx", "matched"), [(0.05, True), (0.1, False)])
def test_stage_two_takes_a_low_score_detection_by_plain_iou(dx: float, matched: bool) -> None:
    # IoU 0.6 (dx 0.05) reaches low_match_iou 0.5 although 0.6 x 0.3 would not; IoU 1/3 does not.
    tracker = confirmed_still_track(TrackerConfig(low_match_iou=0.5))
    (home,) = tracker.tracks
    tracks = tracker.update([det(shifted(dx), 0.3)], 0.3)
    assert tracks == [home]  # a low-score detection never starts a track
    assert home.observed is matched and home.lost is not matched
    assert home.hits == (4 if matched else 3) and home.misses == (0 if matched else 1)
    if matched:
        assert home.score == 0.3 and home.last_seen == 0.3


@pytest.mark.parametrize(("score", "matched"), [(0.1, True), (0.099, False)])
def test_low_score_is_a_closed_lower_bound(score: float, matched: bool) -> None:
    tracker = confirmed_still_track(TrackerConfig(low_score=0.1))
    (home,) = tracker.tracks
    tracker.update([det(HOME, score)], 0.3)
    assert home.observed is matched


def test_stage_two_skips_a_track_unmatched_at_the_previous_detector_frame() -> None:
    tracker = confirmed_still_track(TrackerConfig())
    (home,) = tracker.tracks
    tracker.update([], 0.3)
    assert home.lost and home.misses == 1
    tracker.update([det(HOME, 0.3)], 0.4)  # low score: only for tracks seen last time
    assert not home.observed and home.misses == 2 and home.last_seen == 0.2
    tracker.update([det(HOME, 0.9)], 0.5)  # high score: stage 1 takes coasting tracks too
    assert home.observed and not home.lost and home.misses == 0 and home.last_seen == 0.5


@pytest.mark.parametrize(("buffer", "same_track"), [(1.0, True), (0.0, False)])
def test_stage_three_matches_a_tentative_track_by_buffered_iou(buffer: float, same_track: bool) -> None:
    # Moved by its own width: plain IoU 0; grown by a width on each side, 0.6 x 0.6 boxes
    # overlapping by 0.4: IoU 0.24 / 0.48 = 0.5.
    cfg = TrackerConfig(tentative_buffer=buffer, tentative_similarity=0.4, min_hits=3)
    tracker = Tracker(cfg)
    (first,) = tracker.update([det(HOME)], 0.0)
    tracks = tracker.update([det(shifted(0.2))], 0.1)
    if same_track:
        assert tracks == [first] and first.hits == 2 and not first.confirmed
        assert first.observed and first.misses == 0
    else:
        assert [t.track_id for t in tracks] == [1, 2]
        assert first.hits == 1 and first.misses == 1 and first.lost


@pytest.mark.parametrize(("score", "same_track"), [(0.9, True), (0.7, False)])
def test_stage_three_weighs_buffered_iou_by_score(score: float, same_track: bool) -> None:
    # Buffered IoU 0.5 (as above): x 0.9 = 0.45 reaches 0.4, x 0.7 = 0.35 does not.
    tracker = Tracker(TrackerConfig(tentative_similarity=0.4, tentative_buffer=1.0))
    (first,) = tracker.update([det(HOME)], 0.0)
    tracks = tracker.update([det(shifted(0.2), score)], 0.1)
    assert (tracks == [first]) is same_track


@pytest.mark.parametrize("allowed", [0, 1, 2])
def test_a_tentative_track_survives_exactly_tentative_misses_missed_frames(allowed: int) -> None:
    tracker = Tracker(TrackerConfig(tentative_misses=allowed, min_hits=3))
    (first,) = tracker.update([det(HOME)], 0.0)
    for miss in range(1, allowed + 1):
        assert tracker.update([], miss / 10) == [first] and first.misses == miss
    assert tracker.update([], (allowed + 1) / 10) == []


def test_a_confirmed_track_is_kept_exactly_max_age_after_it_was_last_seen() -> None:
    tracker = Tracker(TrackerConfig(max_age_s=0.5))
    for t in (0.0, 0.125, 0.25):  # binary fractions: 0.75 - 0.25 is exactly 0.5
        tracker.update([det(HOME)], t)
    (home,) = tracker.tracks
    assert tracker.update([], 0.75) == [home] and home.misses == 1
    assert tracker.update([], 0.7500001) == []


def test_a_confirmed_track_has_priority_over_a_tentative_one() -> None:
    cfg = TrackerConfig(min_hits=3, tentative_buffer=1.0)
    tracker = confirmed_still_track(cfg)
    (home,) = tracker.tracks
    (_, newcomer) = tracker.update([det(HOME), det(shifted(0.4))], 0.3)
    assert not newcomer.confirmed
    # One detection between them, overlapping both (the newcomer only by buffered IoU).
    tracker.update([det(shifted(0.02))], 0.4)
    assert home.observed and not newcomer.observed and newcomer.misses == 1


def test_min_hits_confirms_on_the_hit_that_reaches_it() -> None:
    tracker = Tracker(TrackerConfig(min_hits=2))
    (track,) = tracker.update([det(HOME)], 0.0)
    assert track.hits == 1 and not track.confirmed
    tracker.update([det(HOME)], 0.1)
    assert track.hits == 2 and track.confirmed
    (single,) = Tracker(TrackerConfig(min_hits=1)).update([det(HOME)], 0.0)
    assert single.confirmed


def test_new_tracks_take_consecutive_ids_in_detection_order_and_start_from_their_detection() -> None:
    tracker = Tracker(TrackerConfig(new_track_score=0.6))
    boxes = [HOME, shifted(0.4), shifted(0.2, (0.1, 0.5, 0.3, 0.7))]
    tracks = tracker.update([det(boxes[0], 0.9), det(boxes[1], 0.59, "truck"),
                             det(boxes[2], 0.6, "truck")], 1.5, frame_index=7)
    assert [t.track_id for t in tracks] == [1, 2]  # 0.59 is under new_track_score
    second = tracks[1]
    assert second.box == boxes[2] and second.score == 0.6 and second.hits == 1
    assert second.first_seen == second.last_seen == 1.5 and second.observed
    assert second.label == "truck" and second.class_id == 1
    assert second.best is not None and second.best.frame_index == 7 and second.best.box == boxes[2]
    (point,) = second.trajectory.points()
    assert (point.t, point.x, point.y) == pytest.approx((1.5, 0.4, 0.6))
    far = (0.8, 0.8, 0.9, 0.9)  # overlapping neither, even buffered
    (third,) = [t for t in tracker.update([det(far, 0.9)], 1.6) if t.track_id == 3]
    assert third.box == far


def test_removing_a_track_keeps_the_others_motion_state() -> None:
    """The Kalman rows are dropped with their track: the tracks left keep their own boxes."""
    tracker = Tracker(TrackerConfig(min_hits=1, max_age_s=0.25))
    left, right = (0.0, 0.1, 0.1, 0.2), (0.8, 0.1, 0.9, 0.2)
    for i in range(3):
        tracker.update([det(left), det(HOME), det(right)], i / 10)
    a, _b, c = tracker.tracks
    for i in range(3, 6):  # the middle one is no longer seen and ages out at 0.5 s
        tracker.update([det(left), det(right)], i / 10)
    assert tracker.tracks == [a, c]
    tracker.predict_only(0.6)
    assert a.box == pytest.approx(left) and c.box == pytest.approx(right)
    tracker.update([det(left), det(right)], 0.7)
    assert a.observed and c.observed and a.hits == 7 and c.hits == 7


def test_a_match_moves_the_box_towards_the_detection_and_records_it() -> None:
    tracker = confirmed_still_track(TrackerConfig())
    (home,) = tracker.tracks
    tracker.update([det(shifted(0.02), 0.8, "truck")], 0.3, frame_index=9)
    assert HOME[0] < home.box[0] < HOME[0] + 0.02  # filtered: between the prediction and the detection
    points = home.trajectory.points()
    assert len(points) == 4 and points[-1].t == 0.3
    assert (points[-1].x, points[-1].y) == pytest.approx(
        ((home.box[0] + home.box[2]) / 2, (home.box[1] + home.box[3]) / 2))
    assert home.label == "car"  # three car votes at 0.9 outweigh one truck at 0.8
    assert home.best is not None and home.best.frame_index == 0  # the first 0.9 stays the best
    tracker.update([det(shifted(0.02), 0.95)], 0.4, frame_index=10)
    assert home.best.frame_index == 10 and home.best.t == 0.4 and home.best.score == 0.95


def test_a_detection_at_exactly_high_score_is_not_also_a_low_one() -> None:
    """Two confirmed tracks side by side and one detection of score 0.5 overlapping both: the
    first stage gives it to the better one, and the second stage must not give it again."""
    tracker = Tracker(TrackerConfig(min_hits=1))
    tracker.update([det(HOME), det(shifted(0.05))], 0.0)
    a, b = tracker.tracks
    tracker.update([det(HOME, 0.5)], 0.1)
    assert a.observed and not b.observed and b.misses == 1


def test_a_track_matched_in_stage_one_is_not_matched_again_in_stage_two() -> None:
    tracker = confirmed_still_track(TrackerConfig())
    (home,) = tracker.tracks
    # The high-score detection comes second (index 1): the track's own index, 0, is not the
    # index of its detection, so only the track index keeps it out of the second stage.
    tracker.update([det(shifted(0.02), 0.3), det(HOME, 0.9)], 0.3)
    assert home.hits == 4 and home.score == 0.9
    assert home.trajectory.points()[-1].t == 0.3 and len(home.trajectory.points()) == 4


def test_assign_maximizes_the_total_above_the_minimum_not_greedily() -> None:
    # Greedy would take (0, 0) and leave (1, 1) = 0.1; the pairs across give 0.75 + 0.75 above
    # 0.05 against 0.85 + 0.05.
    sim = np.array([[0.9, 0.8], [0.8, 0.1]])
    assert sorted(assign(sim, 0.05)) == [(0, 1), (1, 0)]
    # ByteTrack's rule: each pair is worth what it has above the minimum, so one strong pair
    # (0.9: 0.4 above 0.5) beats two weak ones (0.6 + 0.6: 0.1 + 0.1 above).
    assert sorted(assign(np.array([[0.9, 0.6], [0.6, 0.01]]), 0.5)) == [(0, 0)]


def test_assign_keeps_a_pair_exactly_at_the_minimum_when_it_has_choices() -> None:
    # The solver's path (rows with a choice): (1, 1) is exactly at the minimum, worth 0 above
    # it, and is still a pair.
    assert sorted(assign(np.array([[0.9, 0.3], [0.3, 0.05]]), 0.05)) == [(0, 0), (1, 1)]


def test_iou_of_empty_sets_and_of_boxes_without_area() -> None:
    three = np.array([[0.0, 0.0, 0.1, 0.1]] * 3)
    assert iou_matrix(np.zeros((0, 4)), three).shape == (0, 3)
    assert iou_matrix(three, np.zeros((0, 4))).shape == (3, 0)
    point = np.array([[0.5, 0.5, 0.5, 0.5]])
    assert iou_matrix(point, point).tolist() == [[0.0]]


def test_assign_drops_pairs_under_the_minimum() -> None:
    assert assign(np.array([[0.3, 0.04]]), 0.05) == [(0, 0)]
    assert assign(np.array([[0.04], [0.3]]), 0.05) == [(1, 0)]
    assert assign(np.array([[0.05, 0.049]]), 0.05) == [(0, 0)]
    # With a choice to make (the solver's path), a pair under the minimum is not taken either.
    assert sorted(assign(np.array([[0.9, 0.06], [0.5, 0.04]]), 0.05)) == [(0, 0)]
    assert assign(np.zeros((0, 3)), 0.1) == []


def test_a_vehicle_entering_at_the_frame_edge_keeps_one_tentative_track() -> None:
    """A car entering from the top at 5 fps (goal scene 1, frames 144-147, missed at the line):
    its first boxes are cut by the edge, and the second is a narrow misfit; a Kalman prediction
    from those two shrinks the box to a sliver that overlaps nothing, even buffered, so the car
    started a new tentative track at each frame and crossed the line before any was confirmed.
    Matched from its last detection's box, the tentative track takes the next one."""
    tracker = Tracker(TrackerConfig(min_hits=3))
    pixels = [(198, 0, 233, 30), (206, 8, 223, 46), (198, 19, 231, 70), (198, 30, 233, 97)]
    ids = []
    for i, (x1, y1, x2, y2) in enumerate(pixels):
        (track,) = tracker.update([det((x1 / 640, y1 / 480, x2 / 640, y2 / 480), 0.99)], i / 5)
        ids.append(track.track_id)
    assert ids == [1, 1, 1, 1] and track.hits == 4 and track.confirmed
