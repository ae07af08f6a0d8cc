"""The model swap hook (issue 18 item 4): ``InferenceWorker.swap`` switches the interpreter
between two frames with the real inference thread, queue and ModelRunner: every frame gives a
result, in order, the old runner up to the switch and the new one from it, once."""

from __future__ import annotations

import threading
import time

import numpy as np

from agent.core.contract.result import FrameResult
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from agent.inference.worker import InferenceWorker
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.sources.synthetic import SyntheticScene
from tests.conftest import DEFAULT_MODEL
from tests.e2e import wait_for


def _frames(runner: ModelRunner, count: int) -> list[CapturedFrame]:
    scene = SyntheticScene(320, 240, 15.0, seed=3)
    out = []
    for i in range(count):
        image, _ = scene.step()
        out.append(CapturedFrame(index=i, wall=time.time(), mono_ns=time.monotonic_ns(),
                                 width=320, height=240, tensor=runner.prepare(image),
                                 discontinuity=False, capture_ms=0.0, preprocess_ms=0.0))
    return out


def test_a_swap_takes_effect_between_two_frames_and_loses_none() -> None:
    old = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1))
    new = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1))  # a second interpreter
    frames = _frames(old, 120)
    queue: BoundedQueue[CapturedFrame] = BoundedQueue("frames-swap", 4, "block")
    delivered: list[tuple[int, bool]] = []
    swaps: list[ModelRunner] = []
    ended = threading.Event()

    def deliver(result: FrameResult) -> None:
        delivered.append((result.frame_index, worker.runner is new))

    worker = InferenceWorker(queue, old, "swap", deliver, ended.set)
    worker.start()

    def feed(items: list[CapturedFrame]) -> None:
        for f in items:
            queue.put(f)

    feed(frames[:60])
    wait_for(lambda: len(delivered) >= 30, "the first results")
    worker.swap(new, swaps.append)
    feed(frames[60:])
    queue.close()
    assert ended.wait(60)
    assert [i for i, _ in delivered] == list(range(120))  # every frame, in order, none lost
    flags = [n for _, n in delivered]
    switch = flags.index(True)
    assert 30 <= switch <= 61 and all(flags[switch:]) and not any(flags[:switch])
    assert swaps == [old]  # called once, with the runner it replaced
    assert worker.runner is new


def test_a_swap_asked_while_the_queue_is_empty_applies_to_the_next_frame() -> None:
    old = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1))
    new = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1))
    newer = ModelRunner(load_model(DEFAULT_MODEL, num_threads=1))
    frames = _frames(old, 6)
    queue: BoundedQueue[CapturedFrame] = BoundedQueue("frames-swap", 4, "block")
    used: list[ModelRunner] = []
    worker = InferenceWorker(queue, old, "swap", lambda r: used.append(worker.runner),
                             lambda: None)
    worker.start()
    queue.put(frames[0])
    wait_for(lambda: used, "the first result")
    worker.swap(new, lambda _o: None)
    worker.swap(newer, lambda _o: None)  # a pending swap is replaced: the latest wins
    for f in frames[1:]:
        queue.put(f)
    queue.close()
    worker.join(30)
    assert used == [old] + [newer] * 5
    assert np.all([r is not new for r in used])
