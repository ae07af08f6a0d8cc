"""The goal harness of issue 16 item 7 (`lepton-agent eval goals`, agent/bench/counting_goals.py).

References independent of the harness: the truth's own boxes (vehicles drive straight, so a
crossing of an axis-aligned segment is read off an object's first and last box), a direct
`lepton-agent eval counting` run on the scene the harness wrote, and the flicker scene run with
a zero band (where the jitter must count, or the scene tests nothing).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.bench.counting_goals import (
    flicker_figures,
    goals,
    make_scene,
    scene_lines,
)
from agent.bench.eval_tracking import MotRow, read_mot
from tests.conftest import run_cli

W, H = 640, 480


def _straight_crossings(rows: list[MotRow], segment: tuple[str, tuple[float, float],
                                                           tuple[float, float]]
                        ) -> Counter[tuple[str, str]]:
    """Crossings of an axis-aligned segment by objects driving straight: the bottom centres of
    an object's first and last box lie on opposite sides, and the coordinate along the segment
    (constant for a straight driver) is within it. Direction by the issue's cross product."""
    _, (x1, y1), (x2, y2) = segment
    first: dict[int, MotRow] = {}
    last: dict[int, MotRow] = {}
    for r in sorted(rows, key=lambda r: r.frame):
        first.setdefault(r.object_id, r)
        last[r.object_id] = r
    out: Counter[tuple[str, str]] = Counter()
    for oid, a in first.items():
        b = last[oid]
        ax, ay = (a.x + a.w / 2) / W, (a.y + a.h) / H
        bx, by = (b.x + b.w / 2) / W, (b.y + b.h) / H
        cross = (x2 - x1) * (by - y1) - (y2 - y1) * (bx - x1)
        before = (x2 - x1) * (ay - y1) - (y2 - y1) * (ax - x1)
        if before * cross >= 0:
            continue
        if x1 == x2:  # vertical segment: crossed at the mover's y
            along, lo, hi = by, min(y1, y2), max(y1, y2)
        else:
            along, lo, hi = bx, min(x1, x2), max(x1, x2)
        if lo <= along <= hi:
            out[(("car", "truck")[a.class_id], "in" if cross > 0 else "out")] += 1
    return out


def test_each_line_is_crossed_by_its_own_road_only(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        scene = make_scene(tmp_path, seed, 5.0, 12.0)
        rows = read_mot(scene.truth)
        h_road, v_road = scene_lines(seed)
        assert scene.lines == (h_road, v_road)
        # Which road each object drives on, from its motion in the truth.
        by_id: dict[int, list[MotRow]] = {}
        for r in rows:
            by_id.setdefault(r.object_id, []).append(r)
        axis = {oid: "h" if abs(rs[-1].x - rs[0].x) >= abs(rs[-1].y - rs[0].y) else "v"
                for oid, rs in by_id.items() if len(rs) > 1}
        for segment, road in ((h_road, "h"), (v_road, "v")):
            only = [r for r in rows if axis.get(r.object_id) == road]
            other = [r for r in rows if axis.get(r.object_id) not in (road, None)]
            assert sum(_straight_crossings(only, segment).values()) > 0, (seed, segment)
            assert not _straight_crossings(other, segment), (seed, segment)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    work = tmp_path_factory.mktemp("goals")
    report = goals(scenes=1, seconds=6.0, fps_list=(15.0,), interval=True, flicker=False,
                   traffic_model=None, workdir=work)
    return report, work


def test_harness_true_counts_are_the_truths(smoke: tuple[dict[str, object], Path]) -> None:
    report, work = smoke
    (counting,) = report["counting"]  # type: ignore[misc]
    rows = read_mot(work / "s1_15fps.txt")
    expect: dict[tuple[str, str, str], int] = {}
    for segment in scene_lines(1):
        for (label, direction), n in _straight_crossings(rows, segment).items():
            expect[(segment[0], label, direction)] = n
    got = {(r["line"], r["class"], r["direction"]): r["true"]
           for r in counting["per_line_class_direction"] if r["true"]}
    assert got == expect and sum(expect.values()) > 0
    # Per class and direction is the sum over the lines.
    for r in counting["per_class_direction"]:
        assert r["true"] == sum(n for (_, c, d), n in expect.items()
                                if (c, d) == (r["class"], r["direction"]))


def test_harness_measured_counts_are_eval_countings(smoke: tuple[dict[str, object], Path]
                                                    ) -> None:
    """What the harness sums for a scene is what `eval counting` measures on it."""
    report, work = smoke
    (counting,) = report["counting"]  # type: ignore[misc]
    out = run_cli("eval", "counting", "--truth", str(work / "s1_15fps.txt"), "--source",
                  str(work / "s1_15fps.avi"), "--config", str(work / "s1_15fps.toml"), "--json")
    assert out.returncode == 0, out.stderr
    direct = {(r["line"], r["class"], r["direction"]): (r["true"], r["measured"])
              for r in json.loads(out.stdout)["counts"]}
    summed = {(r["line"], r["class"], r["direction"]): (r["true"], r["measured"])
              for r in counting["per_line_class_direction"]}
    assert summed == direct
    assert sum(m for _, m in direct.values()) > 0
    for r in counting["per_line_class_direction"]:
        assert r["error"] == r["measured"] - r["true"]
        if r["true"]:
            assert r["error_pct"] == pytest.approx(100 * abs(r["error"]) / r["true"], abs=0.01)
    assert counting["scenes"][0]["frames"] == 90 and counting["scenes"][0]["dropped"] == 0
    assert 0 < counting["analytics_share"] < 1
    # The interval-3 runs ran the detector every third frame, on the same scenes.
    (three,) = report["interval_3"]  # type: ignore[misc]
    assert three["scenes"][0]["interval"] == 3 and counting["scenes"][0]["interval"] == 1
    assert three["true_total"] == counting["true_total"]


def test_truth_as_detections_counts_nearly_the_truth(smoke: tuple[dict[str, object], Path]
                                                     ) -> None:
    """The tracker fed the truth's own boxes: the bound a perfect detector would give. Boxes
    given in the wrong order or frame would count nothing like the truth."""
    report, _ = smoke
    (counting,) = report["counting"]  # type: ignore[misc]
    runs = {r["min_visibility"]: r for r in report["truth_as_detections"]}  # type: ignore[attr-defined]
    assert set(runs) == {0.0, 0.4, 0.7}
    assert all(r["true_total"] == counting["true_total"] for r in runs.values())
    assert runs[0.0]["scene_abs_error_pct"] <= 10.0, runs


def test_a_parked_flickering_vehicle_on_the_line_counts_nothing(tmp_path: Path) -> None:
    (tmp_path / "band").mkdir()
    figures = flicker_figures(tmp_path / "band", seconds=6.0)
    # The detector saw the vehicle in nearly every frame, as a car and as a truck by turns.
    assert figures.detected_frames >= 0.9 * figures.frames, figures
    assert figures.flickered and min(figures.labels.values()) >= 0.2 * figures.frames, figures
    assert figures.measured == 0, figures
    # Without the hysteresis band the same jitter is counted: the scene does exercise it.
    (tmp_path / "noband").mkdir()
    unbanded = flicker_figures(tmp_path / "noband", seconds=6.0, band=0.0)
    assert unbanded.measured > 0, unbanded


@pytest.mark.parametrize(("args", "expect"), [
    (["--set", "analytics.interval"], "is not SECTION.KEY=VALUE"),
    (["--set", "analytics.interval=three"], "is not a TOML value"),
    (["--fps", "5,x"], "is not a list of frame rates"),
    (["--fps", "0"], "is not a list of frame rates"),
    (["--traffic-model", "/nonexistent/model.tflite"], "traffic model /nonexistent"),
    (["--workdir", "{file}"], "cannot use"),
])
def test_eval_goals_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                     expect: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    out = run_cli("eval", "goals", "--scenes", "1", "--seconds", "1", "--no-traffic"
                  if "--traffic-model" not in args else "--no-flicker", *args, "--json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert expect in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and out.stdout == ""


@pytest.mark.slow
def test_ten_scenes_the_goals_that_hold(tmp_path: Path) -> None:
    """`lepton-agent eval goals` as documented (10 scenes of 60 s at 5 and 15 fps, flicker,
    interval 3, the traffic model). Asserted: the goals measured as met (docs/analytics.md,
    *Goals*); the count error goal (<= 2 % per line, class and direction) is not met by the
    default model and is only kept from getting worse than measured."""
    out = run_cli("eval", "goals", "--json", "--workdir", str(tmp_path), timeout=1800)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_fps = {c["fps"]: c for c in report["counting"]}
    assert set(by_fps) == {5.0, 15.0}
    for c in by_fps.values():
        assert len(c["scenes"]) == 10 and all(s["dropped"] == 0 for s in c["scenes"])
        assert c["true_total"] > 900
    # The tracker and lines fed the truth's boxes meet the count goal (the detector is the gap).
    for r in report["truth_as_detections"]:
        if r["min_visibility"] == 0.0:
            assert r["worst_error_pct"] <= 2.0, r
    # Measured with the default model: one slot (sha256 eb89700c) 5.64 % and 4.88 % per-scene
    # |error|, two slots (78a45771) 5.33 % and 4.88 %; with tentative tracks matched from
    # their last detection too, 5.02 % and 4.78 % (replayed).
    assert by_fps[5.0]["scene_abs_error_pct"] <= 7.0, by_fps[5.0]
    assert by_fps[15.0]["scene_abs_error_pct"] <= 6.0, by_fps[15.0]
    # Flicker: the parked vehicle shown as car and truck by turns counts nothing.
    assert report["flicker"]["goal_met"], report["flicker"]
    # Interval 3 at 15 fps: within one point of interval 1 (+0.71, +0.91, now +0.81 replayed).
    (three,) = [c for c in report["interval_3"] if c["fps"] == 15.0]
    assert three["goal_met"], three
    assert {s["detector_interval"] for s in three["scenes"]} == {3}
    # At 5 fps interval 3 would run the detector at 1.7 Hz: analytics.min_detector_hz (5) has
    # the agent run it on every frame instead, so it counts as interval 1 does.
    (slow,) = [c for c in report["interval_3"] if c["fps"] == 5.0]
    assert {s["detector_interval"] for s in slow["scenes"]} == {1}
    assert slow["vs_interval_1_pp"] == 0.0, slow
    # Traffic model: tracker + counting within 5 % of a frame's work; interval 3 skips
    # inference (the 2.5x goal itself depends on the machine's load: 2.31-2.89 measured).
    for t in report["traffic_interval"]:
        assert t["share_goal_met"], t
        assert t["ratio"] >= 1.8, t
