"""The live view's latest-frame slot and renderer (agent/service/web/live.py), in-process: the
inference thread's hook takes a frame only while watched and at most every min_interval_s; one
drawn JPEG serves every viewer; the overlay is drawn where the tracks are."""

from __future__ import annotations

import types

import cv2
import numpy as np

from agent.core.contract.result import Detection
from agent.pipeline.frames import CapturedFrame
from agent.service.web.live import LatestFrame, Overlay, Renderer


def _frame(index: int, image: np.ndarray | None = None) -> CapturedFrame:
    return CapturedFrame(index=index, wall=0.0, mono_ns=0, width=640, height=480, tensor=None,
                         discontinuity=False, capture_ms=0.0, preprocess_ms=0.0,
                         image=np.full((480, 640, 3), 60, np.uint8) if image is None else image)


def _tracks() -> types.SimpleNamespace:
    track = types.SimpleNamespace(track_id=7, box=(0.25, 0.25, 0.5, 0.5), label="car",
                                  confirmed=True)
    return types.SimpleNamespace(tracks=(track,))


def test_the_slot_takes_frames_only_while_watched_and_at_most_every_interval() -> None:
    dets = [Detection(0, "car", 0.9, (0.1, 0.1, 0.2, 0.2))]
    slot = LatestFrame(_tracks(), min_interval_s=3600.0)
    for i in range(5):
        slot.observe(_frame(i), dets)
    assert slot.get() is None  # nobody watches
    slot.want()
    for i in range(5, 105):  # far less than an hour: only the first one is taken
        slot.observe(_frame(i), dets)
    got = slot.get()
    assert got is not None and (got.seq, got.index) == (1, 5)
    slot.min_interval_s = 0.0  # every frame
    for i in range(105, 110):
        slot.observe(_frame(i), dets)
    got = slot.get()
    assert got is not None and (got.seq, got.index) == (6, 109)
    assert got.tracks[0].track_id == 7 and got.boxes[0].label == "car"


def test_one_drawn_jpeg_serves_every_viewer_and_a_new_frame_waits_for_the_interval() -> None:
    slot = LatestFrame(_tracks(), min_interval_s=0.0)
    slot.want()
    slot.observe(_frame(1), [])
    overlay = Overlay(lines=(("mid", ((0.5, 0.0), (0.5, 1.0))),))
    renderer = Renderer(slot, min_interval_s=3600.0)
    first, second = renderer.jpeg(overlay), renderer.jpeg(overlay)
    assert first is not None and second is not None
    assert first[1] is second[1]  # the same bytes: drawn and encoded once for both
    slot.observe(_frame(2), [])
    assert renderer.jpeg(overlay) == first  # within the interval: the JPEG already made
    raw = renderer.jpeg(None)  # the editor's undrawn frame is its own JPEG
    assert raw is not None and raw[0] == 2 and raw[1] != first[1]
    fresh = Renderer(slot, min_interval_s=0.0).jpeg(overlay)
    assert fresh is not None and fresh[0] == 2


def test_the_overlay_is_drawn_where_the_track_is() -> None:
    slot = LatestFrame(_tracks(), min_interval_s=0.0)
    slot.want()
    slot.observe(_frame(1), [])
    got = Renderer(slot).jpeg(Overlay())
    assert got is not None
    image = cv2.imdecode(np.frombuffer(got[1], np.uint8), cv2.IMREAD_COLOR)
    # the track's box (0.25..0.5 of 640x480): its left edge at x=160 is green, inside is not
    edge = image[200:300, 159:162].reshape(-1, 3).mean(axis=0)
    inside = image[200:300, 230:250].reshape(-1, 3).mean(axis=0)
    # green (BGR 80,200,80) over the grey 60, softened by JPEG's chroma subsampling
    assert edge[1] - max(edge[0], edge[2]) > 25 and edge[1] > 90, edge
    assert abs(inside - 60).max() < 10, inside
