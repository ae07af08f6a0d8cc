"""`lepton-agent bench web`: what the web console's live view costs the pipeline.

One agent (``lepton-agent run`` in a process of its own, the console on a free loopback port,
no login) plays a synthetic road clip in a loop, as fast as it can by default (``pace = fast``:
any CPU the console takes shows as fewer frames; at ``realtime`` a 15 fps clip hides it while
the CPU has room). Phases alternate in the same run: no viewer, then ``viewers`` processes
that each read the MJPEG live view like a browser, ``rounds`` times; the pipeline's fps of each
phase comes from ``frames_processed`` in ``/api/v1/status`` read at its start and end (two
requests a phase). Reported: the medians ``fps_without``, ``fps_with_viewers`` and their
``ratio`` (goal >= 0.97), and the JPEGs per second each viewer got (at most ``[web] live_fps``).
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
from pathlib import Path
from typing import Any

from agent.errors import AgentError

# A viewer: reads the live view for N seconds like a browser, prints the JPEGs it got.
VIEWER = """
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
n, first, end = 0, None, time.monotonic() + seconds
with urllib.request.urlopen(url, timeout=30) as r:
    while time.monotonic() < end:
        line = r.readline()
        if not line:
            break
        if line.startswith(b'--frame'):
            n += 1
            first = first or time.monotonic()
print((n - 1) / (time.monotonic() - first) if first and n > 1 else 0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _frames(base: str) -> tuple[float, int]:
    status = _get(base + "/api/v1/status")
    return time.monotonic(), sum(p["frames_processed"] for p in status["pipelines"])


def bench_web(*, seconds: float = 8.0, rounds: int = 2, viewers: int = 2,
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
            without: list[float] = []
            with_viewers: list[float] = []
            viewer_fps: list[float] = []
            stream = _get(base + "/api/v1/status")["pipelines"][0]["stream"]
            url = f"{base}/api/v1/pipelines/{stream}/live.mjpeg"
            for _ in range(rounds):
                t0, f0 = _frames(base)
                time.sleep(seconds)
                t1, f1 = _frames(base)
                without.append((f1 - f0) / (t1 - t0))
                procs = [subprocess.Popen([sys.executable, "-c", VIEWER, url, str(seconds + 2)],
                                          stdout=subprocess.PIPE, text=True)
                         for _ in range(viewers)]
                time.sleep(1.5)  # the viewers connected and the slot is filled
                t0, f0 = _frames(base)
                time.sleep(seconds)
                t1, f1 = _frames(base)
                with_viewers.append((f1 - f0) / (t1 - t0))
                for proc in procs:
                    out, _ = proc.communicate(timeout=60)
                    with contextlib.suppress(ValueError):
                        viewer_fps.append(float(out.strip() or 0))
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
    fps_without = statistics.median(without)
    fps_with = statistics.median(with_viewers)
    return {"fps_without": round(fps_without, 2), "fps_with_viewers": round(fps_with, 2),
            "ratio": round(fps_with / fps_without, 4) if fps_without else None,
            "goal": 0.97, "viewers": viewers, "pace": pace, "seconds": seconds,
            "rounds": rounds, "runs_without": [round(x, 2) for x in without],
            "runs_with_viewers": [round(x, 2) for x in with_viewers],
            "viewer_jpegs_per_s": [round(x, 2) for x in viewer_fps],
            "cpu_count": os.cpu_count()}
