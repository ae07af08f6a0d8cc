"""Pipelines as units: one stream's source, model and two threads, started and stopped while the
agent runs, over the outbox writer, uplink and health every pipeline shares.

A frame's way through one pipeline: the ``capture-{stream}`` thread reads it, paces it, lets
the motion gate and the thermal governor skip it, prepares the tensor and puts it on the
pipeline's bounded frame queue; the ``inference-{stream}`` thread takes it, waits for its share
of the thread budget, invokes the pipeline's own interpreter and hands the FrameResult to the
shared :class:`ResultSink` (the outbox writer), which commits it and tells the uplink.

Each pipeline has its own interpreter even when several run the same model file: a model may
keep state between frames (the LSTM-SSD traffic model does), LiteRT maps the weights, so the
file's pages are shared anyway, and an interpreter costs its arena (measured: docs/benchmarks.md,
``bench pipeline --streams``). :class:`PipelineSet` is the internal API fleet control drives:
start a pipeline from a spec, stop one by stream name, list them with their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from agent.config import PipelineSpec
from agent.config.pipelines import capture_device
from agent.core.backoff import Backoff
from agent.core.contract.result import FrameResult, ModelRef
from agent.core.contract.topics import DeviceTopics
from agent.core.thermal import ThermalGovernor
from agent.core.uri import SourceUri, parse_source
from agent.errors import AgentError, ConfigError, ModelError
from agent.inference.model import LoadedModel, load_model
from agent.inference.runner import ModelRunner
from agent.inference.worker import InferenceWorker, MaskPolicy, SnapshotPolicy
from agent.pipeline.budget import ThreadBudget
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue, DropPolicy
from agent.service.analytics import AnalyticsStage, FrameAnalysis, check_against_model
from agent.service.snapshot import CaptureStage, FrameQueue, InferenceStage, PipelineStatus
from agent.service.web.live import LatestFrame
from agent.sources.capture import CaptureWorker, MotionGate
from agent.sources.readers import open_reader

log = logging.getLogger("agent.pipelines")

PipelineState = Literal["starting", "running", "stopping", "stopped", "finished", "failed"]
# An open of an unreachable camera blocks until the backend gives up (FFmpeg: 30 s), and a
# restart would not bring the camera back: an open counts as hung only past this.
SOURCE_OPEN_STALL_S = 60.0
# A restarted file source processes this many frames before where its committed counts end
# again, without counting, so the tracker knows on which side of each line its tracks are.
REPLAY_FRAMES = 60


@dataclass(frozen=True)
class ResultContext:
    """What the outbox writer needs to publish one pipeline's results."""

    stream: str
    topic: str
    model: ModelRef
    attach_sensors: tuple[str, ...]
    attach_window_s: float
    events_topic: str = ""
    counts_topic: str = ""


class ResultSink(Protocol):
    """Where inference threads hand their results (the outbox writer)."""

    def deliver(self, result: FrameResult, context: ResultContext) -> None:
        """Called from an inference thread; may block while the storage holds results back."""

    def add_analysis(self, analysis: FrameAnalysis, context: ResultContext) -> None:
        """Called on the event loop: what a pipeline's analytics produced at its end."""

    async def settled(self, stream: str, timeout_s: float) -> bool:
        """Wait until nothing of ``stream`` waits for its commit (False after ``timeout_s``)."""


def analytics_key(stream: str) -> str:
    """The outbox state key of a stream's open count bucket."""
    return f"analytics/{stream}"


def position_key(stream: str) -> str:
    """The outbox state key of the last frame of a stream whose records were committed."""
    return f"position/{stream}"


@dataclass(frozen=True)
class PipelineParts:
    """What every pipeline shares: built once per run (agent.service.components)."""

    sink: ResultSink
    governor: ThermalGovernor
    budget: ThreadBudget
    preprocess: str
    snapshots: Callable[[], SnapshotPolicy | None]
    masks: Callable[[], MaskPolicy | None]
    topics: DeviceTopics
    loop: asyncio.AbstractEventLoop
    changed: Callable[[], None]  # a pipeline's state changed (event-loop thread)
    read_state: Callable[[str], str | None]  # what the outbox committed under a key
    live: bool = False  # the web console is on: keep each frame's image for its live view


class StageWatch:
    """One pipeline's stuck check for the watchdog: inference that stopped making progress
    while frames wait, a source call that never returns, a capture thread that died."""

    def __init__(self, source: str, capture: CaptureWorker, inference: InferenceWorker,
                 frames: BoundedQueue[CapturedFrame]) -> None:
        self.source = source
        self.capture = capture
        self.inference = inference
        self.frames = frames
        self._progress: tuple[int, float] = (-1, 0.0)

    def problems(self, stall_s: float, now: float, held_back: bool = False) -> list[str]:
        """Why this pipeline counts as stuck (empty when it is not).

        Stuck: inference made no progress for ``stall_s`` while frames wait, unless it waits
        for result slots the outbox writer keeps retrying to commit (``held_back``: a full disk
        is degraded health, a restart would lose the held results and not free the disk); one
        read of the source that has not returned for ``stall_s`` (a hung RTSP/FIFO read leaves
        the frame queue empty), or one open for ``SOURCE_OPEN_STALL_S``; or the capture thread
        dead without ending."""
        found: list[str] = []
        done = self.inference.stats.frames
        if done != self._progress[0]:
            self._progress = (done, now)
        idle = now - self._progress[1]
        if len(self.frames) > 0 and idle > stall_s and not held_back:
            found.append(f"inference: frames wait but none was processed for {idle:.0f}s")
        blocked = self.capture.blocked_for(now)
        if blocked > (stall_s if self.capture.busy_with != "open"
                      else max(stall_s, SOURCE_OPEN_STALL_S)):
            found.append(f"capture: {self.capture.busy_with} of {self.source} has not returned "
                         f"for {blocked:.0f}s")
        if not self.capture.alive and not self.capture.stats.ended:
            found.append("capture: the thread died")
        return found


def choose_flow(spec: PipelineSpec, is_live: bool) -> tuple[bool, DropPolicy]:
    """Realtime pacing and the frame queue's drop policy: a live source drops the oldest
    frame (latency matters), a file blocks (every frame is wanted) unless told otherwise."""
    realtime = spec.pace == "realtime" or (spec.pace == "auto" and is_live)
    if spec.drop_policy != "auto":
        policy: DropPolicy = spec.drop_policy  # type: ignore[assignment]
        return realtime, policy
    return realtime, "drop_oldest" if realtime else "block"


class Pipeline:
    """One stream: source -> capture thread -> frame queue -> inference thread -> sink."""

    def __init__(self, spec: PipelineSpec, parts: PipelineParts) -> None:
        self.spec = spec
        self.parts = parts
        self.uri: SourceUri = parse_source(spec.source)
        self.state: PipelineState = "starting"
        self.reason: str | None = None
        self.fatal: AgentError | None = None
        self.stop_requested = False
        self.done = asyncio.Event()
        self.model: LoadedModel | None = None
        self.capture: CaptureWorker | None = None
        self.inference: InferenceWorker | None = None
        self.frames: BoundedQueue[CapturedFrame] | None = None
        self.gate: MotionGate | None = None
        self.watch: StageWatch | None = None
        self.analytics: AnalyticsStage | None = None
        self.publish_threshold: float | None = None  # results' score threshold, when lowered
        self.context: ResultContext | None = None
        self.started_at = time.monotonic()
        self.latest = LatestFrame()  # the web console's live view (filled only while watched)

    @property
    def stream(self) -> str:
        return self.spec.stream

    @property
    def model_ref(self) -> ModelRef | None:
        return self.model.ref if self.model else None

    def load(self) -> None:
        """Load the model and check a file source (blocking: run it off the event loop).
        Raises the AgentError that says what is wrong and how to fix it."""
        if not self.uri.is_live:
            open_reader(self.uri).close()  # fail fast, with the reason, on a bad file
        self.model, self.publish_threshold = self.load_model(self.spec.model)

    def load_model(self, path: Path) -> tuple[LoadedModel, float | None]:
        """A model for this pipeline as its spec loads one (threads, delegate, threshold,
        labels, the analytics' lower decode threshold), and the results' score threshold
        when lowered. Blocking; :meth:`load` and a model OTA's second interpreter use it."""
        spec = self.spec
        model = load_model(path, num_threads=spec.threads, delegate=spec.delegate,
                           score_threshold=spec.score_threshold, labels=spec.labels)
        publish_threshold = None
        if spec.analytics is not None:
            manifest = model.manifest
            # The tracker's second pass matches low-score detections to lost tracks: the model
            # decodes down to its low_score; results still carry only the configured threshold's.
            publish_threshold = manifest.score_threshold
            manifest.score_threshold = min(manifest.score_threshold,
                                           spec.analytics.tracker.low_score)
            check_against_model(spec.analytics, stream=spec.stream, task=manifest.task,
                                labels=[manifest.label(i) for i in range(model.classes or 0)]
                                or list(manifest.labels.values()))
        return model, publish_threshold

    def swap_runner(self, runner: ModelRunner, publish_threshold: float | None,
                    swapped: Callable[[ModelRunner], None]) -> None:
        """Switch inference to ``runner`` (a second interpreter, loaded and warmed while this
        one serves) between two frames: no frame is dropped, the next result is the new
        model's and names it. ``swapped(old_runner)`` runs in the inference thread at the
        switch. The new model must take the same input (frames already prepared for the old
        one are its input too); ModelError otherwise."""
        inference, capture, context = self.inference, self.capture, self.context
        if inference is None or capture is None or context is None or self.model is None \
                or self.done.is_set():
            raise ConfigError(f"pipeline {self.stream!r} is {self.state}, not running",
                              fix="start it (assign, restart-pipeline) first")
        old_in, new_in = self.model.input_spec(), runner.model.input_spec()
        if (old_in.shape, old_in.dtype, self.model.manifest.color) != \
                (new_in.shape, new_in.dtype, runner.manifest.color):
            raise ModelError(f"input {new_in.shape} {new_in.dtype} {runner.manifest.color} "
                             f"differs from the running model's {old_in.shape} {old_in.dtype} "
                             f"{self.model.manifest.color}", path=str(runner.model.path),
                             fix="a model with another input needs a pipeline restart: "
                                 "assign the pipeline with the new model instead")
        new_context = dataclasses.replace(context, model=runner.model.ref)

        def take(old: ModelRunner) -> None:  # inference thread, between two frames
            self.model, self.context = runner.model, new_context
            self.publish_threshold = inference.publish_threshold = publish_threshold
            capture.prepare = runner.prepare
            swapped(old)

        inference.swap(runner, take)

    def start(self) -> None:
        """Build the threads around the loaded model and start them."""
        spec, parts = self.spec, self.parts
        if self.model is None:
            raise RuntimeError("Pipeline.start before load")
        runner = ModelRunner(self.model, preprocess=parts.preprocess)
        realtime, policy = choose_flow(spec, self.uri.is_live)
        self.frames = BoundedQueue(f"frames-{spec.stream}", spec.queue_size, policy)
        m = spec.motion
        self.gate = MotionGate(m.min_score, m.every_n, m.grid_width, m.pixel_threshold,
                               m.learning_rate) if m.enabled else None
        snapshots = parts.snapshots()
        topics = parts.topics
        self.context = context = ResultContext(
            spec.stream, topics.results(spec.stream), self.model.ref, spec.attach_sensors,
            spec.attach_window_s, topics.events(spec.stream), topics.counts(spec.stream))
        resume_after = -1
        if spec.analytics is not None:
            self.analytics = AnalyticsStage(spec.analytics, stream=spec.stream,
                                            state=parts.read_state(analytics_key(spec.stream)))
            # Counting resumes where the committed counts end: a file continues after the last
            # frame whose results were committed (a live camera just goes on).
            position = parts.read_state(position_key(spec.stream))
            resume_after = int(position) if position and not self.uri.is_live else -1
            if resume_after >= 0:
                log.info("pipeline %s: resuming %s after frame %d, where the counts an earlier "
                         "run committed end (a new state directory starts it over)",
                         spec.stream, self.uri.raw, resume_after)
        self.capture = CaptureWorker(
            self.uri, self.frames, runner.prepare, realtime=realtime, loop_file=spec.loop,
            max_frames=spec.max_frames,
            backoff=Backoff(spec.reconnect_initial_s, spec.reconnect_max_s), motion=self.gate,
            governor=parts.governor,
            keep_image=snapshots is not None or self.analytics is not None or parts.live,
            name=f"capture-{spec.stream}", interval=spec.interval,
            min_detector_hz=spec.min_detector_hz, resume_after=resume_after,
            replay_frames=REPLAY_FRAMES)
        sink = parts.sink
        self.inference = InferenceWorker(
            # self.context, read per result: a model swap changes the model it names
            self.frames, runner, spec.stream, lambda result: sink.deliver(result, self.context or context),
            self._threads_ended, snapshots=snapshots, budget=parts.budget, threads=spec.threads,
            analyze=self.analytics, publish_threshold=self.publish_threshold,
            masks=parts.masks(), observe=self.latest.observe if parts.live else None)
        self.latest.analytics = self.analytics
        self.watch = StageWatch(self.uri.raw, self.capture, self.inference, self.frames)
        log.info("pipeline %s: model %s (%s, %s, sha256 %s...) on %s; source %s (%s, %s), "
                 "%d thread(s)", spec.stream, self.model.ref.name, self.model.manifest.task,
                 self.model.runtime, self.model.ref.sha256[:12], spec.delegate, self.uri.raw,
                 "realtime" if realtime else "as fast as possible", policy, spec.threads)
        self.inference.start()
        self.capture.start()
        self._set_state("running")

    def failed_to_start(self, exc: AgentError) -> None:
        self.fatal = exc
        self.reason = str(exc)
        self._set_state("failed")
        self.done.set()

    def stop(self) -> None:
        """Ask the source to stop; queued frames are still processed (see :meth:`abort`)."""
        self.stop_requested = True
        if self.state in ("starting", "running"):
            self._set_state("stopping")
        if self.capture is not None:
            self.capture.stop()

    def abort(self) -> None:
        """Drop the queued frames: inference ends after the invoke in progress."""
        if self.frames is not None:
            self.frames.close()
            self.frames.clear()

    def join(self, timeout: float) -> None:
        if self.capture is not None:
            self.capture.stop()
        if self.frames is not None:
            self.frames.close()
        if self.capture is not None:
            self.capture.join(timeout)
        if self.inference is not None:
            self.inference.join(timeout)

    def _threads_ended(self) -> None:
        """The inference thread's last act (it ends after capture closed the queue)."""
        self.parts.loop.call_soon_threadsafe(self._ended)

    def _ended(self) -> None:
        if self.analytics is not None and self.context is not None:
            closing = self.analytics.close()  # the open count bucket, flagged partial
            if closing is not None:
                self.parts.sink.add_analysis(closing, self.context)
        fatal: AgentError | None = None
        if self.capture is not None and self.capture.stats.fatal is not None:
            fatal = self.capture.stats.fatal
        if self.inference is not None and self.inference.stats.fatal is not None:
            fatal = fatal or self.inference.stats.fatal
        if fatal is not None:
            self.fatal = fatal
            self.reason = str(fatal)
            log.error("pipeline %s failed: %s", self.stream, fatal)
            self._set_state("failed")
        else:
            self._set_state("stopped" if self.stop_requested else "finished")
        self.done.set()

    def _set_state(self, state: PipelineState) -> None:
        self.state = state
        self.parts.changed()

    def status(self, now: float) -> PipelineStatus:
        """This pipeline now, typed (a part of the health snapshot)."""
        cap, inf, q = self.capture, self.inference, self.frames  # None until started
        model = self.model_ref
        return PipelineStatus(
            stream=self.stream, state=self.state, reason=self.reason, source=self.uri.raw,
            model=model.name if model else str(self.spec.model),
            model_sha256=model.sha256 if model else None, threads=self.spec.threads,
            fps=round(inf.fps(), 2) if inf else 0.0,
            capture=CaptureStage(
                alive=cap.alive if cap else False, source=self.uri.raw,
                frames=cap.stats.frames if cap else 0,
                reconnects=cap.stats.reconnects if cap else 0,
                last_error=cap.stats.last_error if cap else None,
                blocked_s=round(cap.blocked_for(now), 1) if cap else 0.0,
                skipped_static=self.gate.skipped if self.gate else 0),
            inference=InferenceStage(
                alive=inf.alive if inf else False,
                model=model.name if model else str(self.spec.model),
                frames=inf.stats.frames if inf else 0, failures=inf.stats.failures if inf else 0,
                detections=inf.stats.detections if inf else 0,
                last_error=str(inf.stats.fatal) if inf and inf.stats.fatal else None),
            frames=FrameQueue(depth=len(q), capacity=q.maxsize, policy=q.policy,
                              dropped=q.stats.dropped) if q is not None else
            FrameQueue(depth=0, capacity=0, policy="", dropped=0))


class PipelineSet:
    """The running pipelines by stream name: the internal API to start and stop them.

    Every call runs on the event loop. A pipeline that fails (its model does not load, its
    file source is unreadable, its stage gives up) stays listed as ``failed`` with its reason
    until it is started again or removed; the others keep running."""

    def __init__(self, parts: PipelineParts) -> None:
        self.parts = parts
        self._pipelines: dict[str, Pipeline] = {}
        self._changing = 0

    @property
    def changing(self) -> bool:
        """True while a caller replaces pipelines (a stop, then a start): every pipeline may be
        done for a moment, which is not the end of the run."""
        return self._changing > 0

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        """Around a stop-then-start (a command applying a config): the run does not end in
        between; when it is over, the supervisor looks again."""
        self._changing += 1
        try:
            yield
        finally:
            self._changing -= 1
            self.parts.changed()

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(list(self._pipelines.values()))

    def __len__(self) -> int:
        return len(self._pipelines)

    def get(self, stream: str) -> Pipeline | None:
        return self._pipelines.get(stream)

    def statuses(self, now: float) -> tuple[PipelineStatus, ...]:
        return tuple(p.status(now) for p in self._pipelines.values())

    @property
    def active(self) -> list[Pipeline]:
        return [p for p in self._pipelines.values() if not p.done.is_set()]

    def _check_new(self, spec: PipelineSpec) -> None:
        old = self._pipelines.get(spec.stream)
        if old is not None and not old.done.is_set():
            raise ConfigError(f"pipeline {spec.stream!r} is already {old.state}",
                              fix="stop it first, or give the new pipeline another stream name")
        device = capture_device(spec.source)
        for other in self.active:
            if other.stream != spec.stream and device is not None \
                    and capture_device(other.spec.source) == device:
                raise ConfigError(f"pipeline {spec.stream!r}: capture device {device} is "
                                  f"already used by pipeline {other.stream!r}",
                                  fix="one pipeline per capture device: stop that one first")

    async def start(self, spec: PipelineSpec) -> Pipeline:
        """Load and start a pipeline. A model or source that fails leaves it ``failed`` (with
        the reason) and raises the error; a clash with a running pipeline raises ConfigError."""
        async with self.change():
            return await self._start(spec)

    async def _start(self, spec: PipelineSpec) -> Pipeline:
        self._check_new(spec)
        pipeline = Pipeline(spec, self.parts)
        self._pipelines[spec.stream] = pipeline
        self.parts.changed()
        try:
            await asyncio.to_thread(pipeline.load)
            if pipeline.stop_requested:  # stopped while its model loaded
                pipeline.failed_to_start(ConfigError(f"pipeline {spec.stream!r} stopped before "
                                                     "it started"))
                pipeline.state = "stopped"
                return pipeline
            pipeline.start()
        except AgentError as exc:  # the caller says what it means (one line at start-up)
            pipeline.failed_to_start(exc)
            raise
        return pipeline

    async def stop(self, stream: str, grace_s: float) -> Pipeline:
        """Stop one pipeline: its source stops, queued frames are processed for up to
        ``grace_s``, then dropped; returns once its results (and its last, partial count
        bucket) are committed to the outbox, or the grace is over while the storage fails."""
        pipeline = self._pipelines.get(stream)
        if pipeline is None:
            raise ConfigError(f"no pipeline {stream!r}",
                              fix=f"the pipelines are: {', '.join(self._pipelines) or 'none'}")
        pipeline.stop()
        if not await wait_event(pipeline.done, grace_s):
            log.warning("pipeline %s: inference did not finish within %.1fs; dropping its "
                        "queued frames", stream, grace_s)
            pipeline.abort()
            await pipeline.done.wait()
        if not await self.parts.sink.settled(stream, grace_s):
            log.warning("pipeline %s stopped; its last results are not committed yet (%s)",
                        stream, "the storage is failing")
        return pipeline

    def remove(self, stream: str) -> None:
        """Forget a pipeline that has ended (it no longer shows in status)."""
        pipeline = self._pipelines.get(stream)
        if pipeline is not None and pipeline.done.is_set():
            del self._pipelines[stream]
            self.parts.changed()

    def stop_all(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.stop()

    def abort_all(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.abort()


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True once it is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), max(seconds, 0.0))
    return event.is_set()
