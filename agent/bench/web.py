"""`lepton-agent bench web`: what the web console's live view costs the pipeline.

One agent (``lepton-agent run`` in a process of its own, the console on a free loopback port,
no login) plays a synthetic road clip in a loop, as fast as it can by default (``pace = fast``:
any CPU the console takes shows as fewer frames; at ``realtime`` a 15 fps clip hides it while
the CPU has room). Phases alternate in the same run, ``rounds`` times in ABBA order (so a load
that drifts during the run weighs on both kinds alike): no viewer, and ``viewers`` processes
that each read the MJPEG live view like a browser (at the lowest CPU priority and with large
reads: they stand in for browsers on other machines). Each phase's fps comes from
``frames_processed`` in ``/api/v1/status`` read at its start and end, and the agent's CPU time
per processed frame from ``/proc``. Reported: the medians ``fps_without``,
``fps_with_viewers`` and their ``ratio`` (goal >= 0.97), the CPU per frame of both and their
``cpu_ratio``, and the JPEGs per second each viewer got (at most ``[web] live_fps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

# A viewer: reads the live view for N seconds like a browser, prints the JPEGs it got. It
# stands in for a browser on another machine, so it costs the device as little as it can: the
# lowest CPU priority, large reads (boundaries counted across read edges), no parsing.
VIEWER = """
import os, sys, time, urllib.request
os.nice(19)
url, seconds = sys.argv[1], float(sys.argv[2])
n, first, end, tail = 0, None, time.monotonic() + seconds, b''
with urllib.request.urlopen(url, timeout=30) as r:
    while time.monotonic() < end:
        chunk = r.read1(1 << 16)
        if not chunk:
            break
        data = tail + chunk
        found = data.count(b'--frame\\r\\n')
        if found:
            n += found
            first = first or time.monotonic()
        tail = data[-8:]
print((n - 1) / (time.monotonic() - first) if first and n > 1 else 0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _cpu_s(pid: int) -> float:
    """The CPU seconds (user + system) process ``pid`` has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """What one phase measured: the pipeline's fps and the agent's CPU per frame."""

    fps: float
    cpu_ms_per_frame: float


class Meter:
    """Frames processed (the console's status) and the agent's CPU time, between two reads."""

    def __init__(self, base: str, pid: int) -> None:
        self.base, self.pid = base, pid

    def read(self) -> tuple[float, int, float]:
        status = _get(self.base + "/api/v1/status")
        frames = sum(p["frames_processed"] for p in status["pipelines"])
        return time.monotonic(), frames, _cpu_s(self.pid)

    def phase(self, seconds: float) -> Phase:
        t0, f0, c0 = self.read()
        time.sleep(seconds)
        t1, f1, c1 = self.read()
        frames = max(f1 - f0, 1)
        return Phase((f1 - f0) / (t1 - t0), (c1 - c0) * 1000 / frames)


def _frames(base: str) -> tuple[float, int]:
    status = _get(base + "/api/v1/status")
    return time.monotonic(), sum(p["frames_processed"] for p in status["pipelines"])


def bench_web(*, seconds: float = 6.0, rounds: int = 4, viewers: int = 2,
              pace: str = "fast", frames: int = 300) -> dict[str, Any]:
    """Run the comparison; returns the figures (see the module's docstring)."""
    from agent.sources.synthetic import write_clip

    with tempfile.TemporaryDirectory(prefix="lepton-bench-web-") as tmp:
        clip = Path(tmp) / "road.mp4"
        write_clip(str(clip), 640, 480, 15.0, frames, seed=0, scene="road", density=0.5,
                   truth=None)
        port = _free_port()
        config = Path(tmp) / "agent.toml"
        config.write_text(f"""
[agent]
state_dir = "{Path(tmp) / 'state'}"
[mqtt]
broker = ""
[source]
uri = "{clip}"
loop = true
pace = "{pace}"
[outbox]
keep_delivered = 0
[web]
listen = "127.0.0.1:{port}"
""")
        env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        log = Path(tmp) / "agent.log"
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                 stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise AgentError("bench web: the agent did not start: "
                                     + log.read_text(errors="replace")[-500:])
                with contextlib.suppress(OSError, ValueError):
                    if _frames(base)[1] > 0:
                        break
                time.sleep(0.3)
            time.sleep(2.0)  # warm: the interpreter's first invokes are slower
            without: list[Phase] = []
            with_viewers: list[Phase] = []
            viewer_fps: list[float] = []
            stream = _get(base + "/api/v1/status")["pipelines"][0]["stream"]
            url = f"{base}/api/v1/pipelines/{stream}/live.mjpeg"
            meter = Meter(base, agent.pid)

            def without_viewers() -> None:
                without.append(meter.phase(seconds))

            def with_two_viewers() -> None:
                procs = [subprocess.Popen([sys.executable, "-c", VIEWER, url, str(seconds + 2)],
                                          stdout=subprocess.PIPE, text=True)
                         for _ in range(viewers)]
                time.sleep(1.5)  # the viewers connected and the slot is filled
                with_viewers.append(meter.phase(seconds))
                for proc in procs:
                    out, _ = proc.communicate(timeout=60)
                    with contextlib.suppress(ValueError):
                        viewer_fps.append(float(out.strip() or 0))
                time.sleep(1.0)  # the viewers are gone; the next phase starts clean

            # ABBA: the order flips every round, so a load that drifts during the run (other
            # jobs on the host) weighs on both kinds of phase alike.
            for i in range(rounds):
                phases = (without_viewers, with_two_viewers)
                for phase in phases if i % 2 == 0 else phases[::-1]:
                    phase()
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
    fps_without = statistics.median(p.fps for p in without)
    fps_with = statistics.median(p.fps for p in with_viewers)
    cpu_without = statistics.median(p.cpu_ms_per_frame for p in without)
    cpu_with = statistics.median(p.cpu_ms_per_frame for p in with_viewers)
    return {"fps_without": round(fps_without, 2), "fps_with_viewers": round(fps_with, 2),
            "ratio": round(fps_with / fps_without, 4) if fps_without else None,
            "goal": 0.97, "viewers": viewers, "pace": pace, "seconds": seconds,
            "rounds": rounds, "runs_without": [round(p.fps, 2) for p in without],
            "runs_with_viewers": [round(p.fps, 2) for p in with_viewers],
            # the agent's CPU per processed frame: what the console costs the pipeline where
            # the CPU is the limit, less sensitive than fps to other jobs on a shared host
            "cpu_ms_per_frame_without": round(cpu_without, 3),
            "cpu_ms_per_frame_with_viewers": round(cpu_with, 3),
            "cpu_ratio": round(cpu_without / cpu_with, 4) if cpu_with else None,
            "viewer_jpegs_per_s": [round(x, 2) for x in viewer_fps],
            "cpu_count": os.cpu_count()}
