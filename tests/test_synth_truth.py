"""The junction scene's ground truth is exact: checked against the pixels it draws."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from agent.bench.eval_tracking import read_mot
from agent.sources.synthetic import JunctionScene, TruthBox, write_truth
from tests.conftest import run_cli


def _frames(seed: int, n: int, width: int = 320, height: int = 240, fps: float = 15.0,
            density: float = 1.0) -> list[tuple[np.ndarray, np.ndarray, list[TruthBox]]]:
    scene = JunctionScene(width, height, fps, seed=seed, density=density)
    out = []
    for _ in range(n):
        frame, truth = scene.step()
        out.append((frame, scene.background, truth))
    return out


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_every_drawn_pixel_is_in_a_truth_box_and_every_box_is_tight(seed: int) -> None:
    for frame, background, truth in _frames(seed, 90):
        changed = np.any(frame != background, axis=2)
        covered = np.zeros_like(changed)
        for b in truth:
            assert b.w > 0 and b.h > 0
            assert b.x >= 0 and b.x + b.w <= frame.shape[1] and b.y >= 0 and b.y + b.h <= frame.shape[0]
            covered[b.y:b.y + b.h, b.x:b.x + b.w] = True
        # Nothing is drawn outside the truth: a box one pixel short leaves its last column out.
        assert not np.any(changed & ~covered), f"seed {seed}: drawn pixels outside every box"
        for b in truth:
            if b.visibility < 1.0:
                continue
            inside = changed[b.y:b.y + b.h, b.x:b.x + b.w]
            # A box one pixel too big has a side of background pixels.
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.mean() > 0.5, f"seed {seed}: box {b} is not tight"
            assert inside.mean() > 0.9


def test_visibility_is_the_objects_own_pixels_over_its_whole_area() -> None:
    hidden = clipped = 0
    for frame, _bg, truth in _frames(5, 120):
        for b in truth:
            others = [o for o in truth if o.object_id != b.object_id]
            at_edge = b.x == 0 or b.y == 0 or b.x + b.w == frame.shape[1] or b.y + b.h == frame.shape[0]
            overlapped = any(o.x < b.x + b.w and b.x < o.x + o.w and o.y < b.y + b.h and b.y < o.y + o.h
                             for o in others)
            assert 0.0 <= b.visibility <= 1.0
            if not at_edge and not overlapped:
                assert b.visibility == 1.0
            if b.visibility < 1.0:
                assert at_edge or overlapped
                hidden += overlapped and not at_edge
                clipped += at_edge
    assert hidden > 0 and clipped > 0, "the scene has no occlusion or no clipped object"


def test_the_scene_has_what_makes_counting_hard() -> None:
    width, height = 320, 240
    paths: dict[int, list[TruthBox]] = defaultdict(list)
    for _frame, _bg, truth in _frames(11, 300, width, height, fps=15.0, density=0.5):
        for b in truth:
            paths[b.object_id].append(b)
    entered, left, kinds, speeds = set(), set(), set(), set()

    def edges(b: TruthBox) -> set[str]:
        return {e for e, hit in (("left", b.x == 0), ("top", b.y == 0), ("right", b.x + b.w == width),
                                 ("bottom", b.y + b.h == height)) if hit}

    for boxes in paths.values():
        first, last = boxes[0], boxes[-1]
        if first.frame > 1:
            entered |= edges(first)
        if last.frame < 300:
            left |= edges(last)
        dx = (last.x + last.w / 2) - (first.x + first.w / 2)
        dy = (last.y + last.h / 2) - (first.y + first.h / 2)
        frames = last.frame - first.frame
        if frames >= 10 and max(abs(dx), abs(dy)) > 20:
            axis = "h" if abs(dx) > abs(dy) else "v"
            kinds.add((first.class_id, axis, np.sign(dx if axis == "h" else dy)))
            speeds.add(round(max(abs(dx), abs(dy)) / frames))
    assert entered == left == {"left", "top", "right", "bottom"}
    assert {(c, a, s) for c in (0, 1) for a in ("h", "v") for s in (-1, 1)} <= kinds
    assert max(speeds) >= 2 * max(1, min(speeds)), f"no speed variety: {sorted(speeds)}"


def test_mot_rows_round_trip(tmp_path: Path) -> None:
    rows = [b for _f, _bg, truth in _frames(3, 30) for b in truth]
    path = tmp_path / "gt.txt"
    assert write_truth(str(path), rows) == len(rows)
    back = read_mot(path)
    assert [(r.frame, r.object_id, r.x, r.y, r.w, r.h, r.conf, r.class_id) for r in back] == [
        (b.frame, b.object_id, b.x, b.y, b.w, b.h, 1.0, b.class_id) for b in rows]
    assert all(abs(r.visibility - b.visibility) < 5e-5 for r, b in zip(back, rows, strict=True))
    assert path.read_text().splitlines()[0].count(",") == 8


def test_synth_clip_writes_the_truth_of_the_clip_it_writes(tmp_path: Path) -> None:
    clip, gt = tmp_path / "c.avi", tmp_path / "gt.txt"
    out = run_cli("synth-clip", str(clip), "--truth", str(gt), "--frames", "20", "--size", "320x240",
                  "--fps", "5", "--density", "1", "--seed", "4")
    assert out.returncode == 0, out.stderr
    assert clip.stat().st_size > 0
    rows = read_mot(gt)
    expect = [b for _f, _bg, truth in _frames(4, 20, fps=5.0, density=1.0) for b in truth]
    assert [(r.frame, r.object_id, r.x, r.y, r.w, r.h, r.class_id) for r in rows] == [
        (b.frame, b.object_id, b.x, b.y, b.w, b.h, b.class_id) for b in expect]
    assert {r.frame for r in rows} == set(range(1, 21))
    assert {r.class_id for r in rows} == {0, 1}  # the default model's car and truck


@pytest.mark.parametrize(("args", "expect"), [
    (["--truth", "{tmp}/nodir/gt.txt"], "does not exist"),
    (["--truth", "{tmp}"], "it is a directory"),
    (["--scene", "road", "--truth", "{tmp}/gt.txt"], "no exact ground truth"),
    (["--density", "50"], "--density"),
])
def test_synth_clip_truth_bad_input(tmp_path: Path, args: list[str], expect: str) -> None:
    out = run_cli("synth-clip", str(tmp_path / "c.avi"), "--frames", "2",
                  *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.returncode == 2, out.stderr
    assert expect in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
