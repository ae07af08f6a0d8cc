"""The tracker of agent.core.analytics against truth it does not see.

Unit behaviour (confirmation after min_hits, coasting for max_age_s, the low-score second pass,
predict_only between detector frames, class vote, bounded trajectory, best observation), then
generated scenes with exact ground truth (agent.bench.analytics.synth_scene: lanes in both
directions on both axes, noise, misses, low scores, class flicker, false positives, occlusion
where lanes cross): ID switches counted from the truth, and line counts equal to the counts
computed from the true bottom-centre trajectories.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bench.analytics import Scene, run_lepton, score_tracking, synth_scene, true_line_counts
from agent.core.analytics import (
    LineRule,
    Observation,
    Tracker,
    TrackerConfig,
    kalman,
    observations_from_detections,
)
from agent.core.analytics.tracker import iou_matrix
from agent.core.contract.result import Detection


def obs(
    x: float, y: float, *, score: float = 0.9, label: str = "car", w: float = 0.06, h: float = 0.08
) -> Observation:
    return Observation((x - w / 2, y - h / 2, x + w / 2, y + h / 2), score, 0 if label == "car" else 1, label)


def centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def textbook_kalman_step(
    mean: np.ndarray, cov: np.ndarray, dt: float, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One predict + update of the full 8x8 filter, written out with F, Q, H, R matrices."""
    f = np.eye(8)
    f[:4, 4:] = dt * np.eye(4)
    w, h = mean[2], mean[3]
    size = np.array([w, h, w, h])
    steps = dt / kalman.REFERENCE_DT
    q = np.diag(
        np.concatenate(
            [
                (kalman.STD_POSITION * size) ** 2 * steps,
                (kalman.STD_VELOCITY * size / kalman.REFERENCE_DT) ** 2 * steps,
            ]
        )
    )
    mean = f @ mean
    cov = f @ cov @ f.T + q
    hm = np.hstack([np.eye(4), np.zeros((4, 4))])
    size = np.array([mean[2], mean[3], mean[2], mean[3]])
    r = np.diag((kalman.STD_POSITION * size) ** 2)
    s = hm @ cov @ hm.T + r
    gain = cov @ hm.T @ np.linalg.inv(s)
    mean = mean + gain @ (z - hm @ mean)
    cov = (np.eye(8) - gain @ hm) @ cov
    return mean, cov


def test_the_blockwise_kalman_equals_the_textbook_8x8_filter() -> None:
    rng = np.random.default_rng(5)
    z0 = np.column_stack([rng.uniform(0.1, 0.9, (6, 2)), rng.uniform(0.03, 0.2, (6, 2))])
    mean, cov = kalman.initiate(z0)
    ref = []
    for i in range(6):
        full = np.zeros((8, 8))
        for k in range(4):  # the initial covariance is diagonal: read it off the blocks
            full[k, k], full[k + 4, k + 4] = cov[i, kalman.PP, k], cov[i, kalman.VV, k]
        ref.append((mean[i].copy(), full))
    for step in range(20):
        dt = 1 / 15 if step % 4 else 0.2  # a skipped-frame gap now and then
        z = z0 + 0.01 * step + rng.normal(0, 0.003, z0.shape)
        mean, cov = kalman.predict(mean, cov, np.full(6, dt))
        mean, cov = kalman.update(mean, cov, z)
        ref = [textbook_kalman_step(m, c, dt, z[i]) for i, (m, c) in enumerate(ref)]
    for i, (m, c) in enumerate(ref):
        assert np.allclose(mean[i], m, rtol=1e-9, atol=1e-12)
        assert np.allclose(cov[i, kalman.PP], np.diag(c)[:4], rtol=1e-9, atol=1e-15)
        assert np.allclose(cov[i, kalman.PV], np.diag(c[:4, 4:]), rtol=1e-9, atol=1e-15)
        assert np.allclose(cov[i, kalman.VV], np.diag(c)[4:], rtol=1e-9, atol=1e-15)
        off = c.copy()
        for k in range(4):
            off[k, k] = off[k + 4, k + 4] = off[k, k + 4] = off[k + 4, k] = 0.0
        assert np.abs(off).max() < 1e-15  # no coupling between coordinates: the blocks are exact


def scalar_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


box_strategy = st.tuples(
    st.floats(0, 0.8), st.floats(0, 0.8), st.floats(0.01, 0.2), st.floats(0.01, 0.2)
).map(lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@settings(max_examples=100, deadline=None)
@given(a=st.lists(box_strategy, min_size=1, max_size=6), b=st.lists(box_strategy, min_size=1, max_size=6))
def test_iou_matrix_equals_the_pairwise_definition(
    a: list[tuple[float, ...]], b: list[tuple[float, ...]]
) -> None:
    got = iou_matrix(np.array(a), np.array(b))
    want = np.array([[scalar_iou(x, y) for y in b] for x in a])
    assert np.allclose(got, want, atol=1e-12)
    assert iou_matrix(np.array([[0.0, 0.0, 0.2, 0.2]]), np.array([[0.1, 0.1, 0.3, 0.3]]))[
        0, 0
    ] == pytest.approx(1 / 7)


def test_detections_are_adapted_from_ymin_xmin_ymax_xmax() -> None:
    (o,) = observations_from_detections([Detection(1, "truck", 0.7, (0.1, 0.2, 0.3, 0.4))])
    assert o == Observation((0.2, 0.1, 0.4, 0.3), 0.7, 1, "truck")


def test_bad_tracker_settings_are_value_errors_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="min_hits"):
        TrackerConfig(min_hits=0)
    with pytest.raises(ValueError, match="low_score"):
        TrackerConfig(low_score=0.6, high_score=0.5)
    with pytest.raises(ValueError, match="max_age_s"):
        TrackerConfig(max_age_s=0.0)


def test_a_track_is_confirmed_after_min_hits_and_keeps_its_id() -> None:
    tracker = Tracker(TrackerConfig(min_hits=3))
    confirmed = []
    ids = set()
    for i in range(10):
        (t,) = tracker.update([obs(0.2 + 0.02 * i, 0.5)], i / 10)
        confirmed.append(t.confirmed)
        ids.add(t.track_id)
    assert confirmed == [False, False] + [True] * 8
    assert len(ids) == 1


def test_time_going_backwards_is_refused() -> None:
    tracker = Tracker()
    tracker.update([], 1.0)
    with pytest.raises(ValueError, match="backwards"):
        tracker.update([], 0.5)


def test_a_confirmed_track_coasts_through_misses_and_ends_after_max_age() -> None:
    tracker = Tracker(TrackerConfig(max_age_s=0.5))
    for i in range(5):
        tracker.update([obs(0.2 + 0.02 * i, 0.5)], i / 10)
    (first,) = tracker.tracks
    for i in range(5, 9):  # 0.4 s without detections: coasting, predicted along its motion
        (t,) = tracker.update([], i / 10)
        assert t is first and not t.observed and t.lost
    assert centre(first.box)[0] == pytest.approx(0.2 + 0.02 * 8, abs=0.02)
    (t,) = tracker.update([obs(0.2 + 0.02 * 9, 0.5)], 0.9)
    assert t is first and t.observed
    for i in range(10, 16):
        tracker.update([], i / 10)
    assert tracker.tracks == []


def test_low_score_detections_keep_a_track_but_never_start_one() -> None:
    tracker = Tracker()
    for i in range(5):
        tracker.update([obs(0.2 + 0.02 * i, 0.5)], i / 10)
    (track,) = tracker.tracks
    for i in range(5, 20):  # occluded: only low-score detections for 1.5 s (> max_age_s)
        (t,) = tracker.update([obs(0.2 + 0.02 * i, 0.5, score=0.3)], i / 10)
        assert t is track and t.observed
    assert Tracker().update([obs(0.5, 0.5, score=0.3)], 0.0) == []


def test_a_one_frame_false_positive_never_becomes_a_confirmed_track() -> None:
    tracker = Tracker()
    tracker.update([obs(0.5, 0.5)], 0.0)
    for i in range(1, 5):
        tracker.update([], i / 10)
    assert tracker.tracks == []


def test_predict_only_carries_tracks_between_detector_frames() -> None:
    """Detector every 3rd frame: the track keeps its id, and between detections its box moves."""
    tracker = Tracker()
    ids = set()
    xs = []
    for i in range(30):
        x = 0.1 + 0.02 * i
        tracks = tracker.update([obs(x, 0.5)], i / 15) if i % 3 == 0 else tracker.predict_only(i / 15)
        ids.update(t.track_id for t in tracks)
        if i >= 9:
            (t,) = tracks
            xs.append(centre(t.box)[0] - x)
    assert len(ids) == 1
    assert max(abs(e) for e in xs) < 0.01  # predicted positions follow the true motion


def test_class_is_the_score_weighted_vote_with_its_confidence() -> None:
    tracker = Tracker()
    labels = ["car", "truck", "car", "car", "truck", "car"]
    for i, label in enumerate(labels):
        tracker.update([obs(0.3, 0.5, label=label, score=0.8)], i / 10)
    (t,) = tracker.tracks
    assert (t.label, t.class_id) == ("car", 0)
    assert t.vote_confidence == pytest.approx(4 / 6)


def test_the_vote_weighs_each_detection_by_its_score() -> None:
    """Three unsure trucks (0.55) against two sure cars (0.9): 1.65 against 1.8, a car."""
    tracker = Tracker()
    for i, (label, score) in enumerate(
        [("car", 0.9), ("truck", 0.55), ("truck", 0.55), ("car", 0.9), ("truck", 0.55)]
    ):
        tracker.update([obs(0.3, 0.5, label=label, score=score)], i / 10)
    (t,) = tracker.tracks
    assert t.label == "car"
    assert t.vote_confidence == pytest.approx(1.8 / 3.45)


def test_the_trajectory_is_bounded_and_spans_the_tracks_life() -> None:
    tracker = Tracker(TrackerConfig(trajectory_points=16))
    for i in range(500):
        tracker.update([obs(0.1 + 0.0015 * i, 0.5)], i / 10)
    (t,) = tracker.tracks
    points = t.trajectory.points()
    assert 8 <= len(points) <= 16
    assert points[0].t == 0.0 and points[-1].t >= 40.0
    assert all(a.t < b.t for a, b in itertools.pairwise(points))


def test_the_best_observation_prefers_a_box_in_full_view_over_a_higher_score() -> None:
    tracker = Tracker()
    tracker.update([Observation((0.0, 0.4, 0.06, 0.48), 0.95, 0, "car")], 0.0)  # cut by the left edge
    tracker.update([Observation((0.01, 0.4, 0.07, 0.48), 0.7, 0, "car")], 0.1)
    tracker.update([Observation((0.02, 0.4, 0.08, 0.48), 0.8, 0, "car")], 0.2, frame_index=42)
    (t,) = tracker.tracks
    assert t.best is not None
    assert (t.best.frame_index, t.best.score, t.best.sides_cut) == (42, 0.8, 0)


@settings(max_examples=30, deadline=None)
@given(angle=st.floats(0.3, math.pi / 2), speed=st.floats(0.1, 0.3))
def test_two_objects_crossing_paths_keep_their_ids(angle: float, speed: float) -> None:
    """Two cars pass through the same point at the same time from different directions (occlusion)."""
    tracker = Tracker()
    fps = 15.0
    owner: dict[int, set[int]] = {0: set(), 1: set()}
    for i in range(int(4 * fps)):
        t = i / fps
        a = (0.1 + speed * t, 0.5)
        b = (
            0.5 + math.cos(angle) * speed * (t - 2.0 + 0.4 / speed),
            0.5 - math.sin(angle) * speed * (t - 2.0 + 0.4 / speed),
        )
        dets = [obs(*a)] if abs(a[0] - b[0]) < 0.03 and abs(a[1] - b[1]) < 0.04 else [obs(*a), obs(*b)]
        tracks = tracker.update(dets, t)
        for k, p in enumerate((a, b)):
            for tr in tracks:
                if tr.confirmed and tr.observed and math.dist(centre(tr.box), p) < 0.02:
                    owner[k].add(tr.track_id)
    assert len(owner[0]) == 1 and len(owner[1]) == 1 and owner[0] != owner[1]


# --- generated scenes with exact truth -----------------------------------------------------

MID = LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])
SIDE = LineRule.of("side", [[0.5, 0.05], [0.5, 0.95]])


def counted(scene: Scene, interval: int = 1) -> tuple[Counter[tuple[str, str, str]], int]:
    run = run_lepton(scene, lines=[MID, SIDE], interval=interval)
    return run.counts(), score_tracking(scene, run.outputs).id_switches


def truth(scene: Scene) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for rule in (MID, SIDE):
        for (label, direction), n in true_line_counts(scene, rule.line).items():
            out[(rule.name, label, direction)] += n
    return out


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_generated_scene_at_15_fps_counts_equal_the_truth_and_ids_hold(seed: int) -> None:
    scene = synth_scene(seed=seed, fps=15.0, seconds=90.0)
    counts, switches = counted(scene)
    expected = truth(scene)
    assert sum(expected.values()) > 80  # the scene is not trivially empty
    assert counts == expected
    assert switches <= 2, f"{switches} ID switches over {len(scene.objects)} objects"


def test_generated_scenes_at_5_fps_count_within_2_percent_per_class_and_direction() -> None:
    counts: Counter[tuple[str, str, str]] = Counter()
    expected: Counter[tuple[str, str, str]] = Counter()
    for seed in (21, 22, 23, 24):
        scene = synth_scene(seed=seed, fps=5.0, seconds=90.0)
        c, _ = counted(scene)
        counts += c
        expected += truth(scene)
    total_error = sum(abs(counts[k] - expected[k]) for k in expected | counts)
    assert total_error <= 0.02 * sum(expected.values()), (dict(expected), dict(counts))


def test_detection_interval_3_counts_like_interval_1() -> None:
    scene = synth_scene(seed=31, fps=15.0, seconds=90.0)
    every, _ = counted(scene, interval=1)
    third, _ = counted(scene, interval=3)
    expected = truth(scene)
    error = sum(abs(third[k] - expected[k]) for k in expected | third)
    assert every == expected
    assert error <= 0.02 * sum(expected.values()), (dict(expected), dict(third))


def test_id_switch_counting_sees_a_swap() -> None:
    """The reference itself: swapping two tracks' ids mid-scene is two switches."""
    scene = synth_scene(seed=11, fps=15.0, seconds=30.0)
    run = run_lepton(scene)
    clean = score_tracking(scene, run.outputs).id_switches
    ids = sorted({i for frame in run.outputs[200:] for i, _ in frame})
    a, b = ids[0], ids[1]
    swap = {a: b, b: a}
    swapped = run.outputs[:200] + [[(swap.get(i, i), box) for i, box in frame] for frame in run.outputs[200:]]
    assert score_tracking(scene, swapped).id_switches >= clean + 2
