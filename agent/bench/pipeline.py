"""``lepton-agent bench pipeline``: raw invoke vs a hand-written loop vs the full agent.

Each contender runs in its own process (so RSS is comparable) with the same model and
interpreter threads:

- ``raw``: set input, invoke, read outputs, nothing else;
- ``peer``: what people write by hand: OpenCV decode, resize, cvtColor, invoke, read outputs;
- ``agent``: ``lepton-agent run`` on the same clip, durable outbox, QoS 1 to a real local
  mosquitto. Time to first result is measured from process launch to the first result a
  subscriber receives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.paths import resolve_model

DEFAULT_MODEL = resolve_model(Path("models/lepton-vehicles-tiny"))


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _interpreter(model: str, threads: int) -> tuple[Any, Any, Any]:
    from agent.inference.model import load_model

    loaded = load_model(Path(model), num_threads=threads)
    interp = loaded.interpreter
    return interp, interp.get_input_details()[0], interp.get_output_details()


def raw_loop(model: str, threads: int, seconds: float) -> dict[str, float]:
    import numpy as np

    interp, inp, outs = _interpreter(model, threads)
    tensor = np.zeros(inp["shape"], inp["dtype"])
    interp.set_tensor(inp["index"], tensor)
    interp.invoke()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        interp.set_tensor(inp["index"], tensor)
        interp.invoke()
        for o in outs:
            interp.get_tensor(o["index"])
        n += 1
    return {"fps": n / (time.perf_counter() - started), "peak_rss_mb": _peak_rss_mb()}


def peer_loop(model: str, source: str, threads: int, seconds: float) -> dict[str, float]:
    import cv2

    interp, inp, outs = _interpreter(model, threads)
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    cap = cv2.VideoCapture(source)
    n, started = 0, None
    while started is None or time.perf_counter() - started < seconds:
        ok, frame = cap.read()
        if not ok:
            cap.release()
            cap = cv2.VideoCapture(source)
            continue
        rgb = cv2.cvtColor(cv2.resize(frame, (w, h)), cv2.COLOR_BGR2RGB)
        interp.set_tensor(inp["index"], rgb[None])
        interp.invoke()
        results = [interp.get_tensor(o["index"]) for o in outs]
        del results
        if started is None:
            started = time.perf_counter()
        else:
            n += 1
    return {"fps": n / (time.perf_counter() - started), "peak_rss_mb": _peak_rss_mb()}


def _child(kind: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "agent.bench.pipeline", kind, *args],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench {kind} failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _agent_run(model: Path, source: Path, threads: int, frames: int, workdir: Path) -> dict[str, Any]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.devtools.mosquitto import LocalBroker

    with LocalBroker(workdir / "broker") as broker:
        first: dict[str, float] = {}
        got = threading.Event()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            if not got.is_set():
                first["at"] = time.monotonic()
                got.set()

        sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sub.on_message = on_message
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("lepton/v1/bench/bench-agent/results/+", qos=1)
        sub.loop_start()
        time.sleep(0.2)
        launched = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--source", str(source), "--loop", "--pace",
             "fast", "--max-frames", str(frames), "--model", str(model), "--threads",
             str(threads), "--broker", broker.url, "--state-dir", str(workdir / "state"),
             "--device-id", "bench-agent", "--site", "bench", "--json", "--log-level", "warning",
             "--delivery", "broker"],
            capture_output=True, text=True, check=False)
        sub.loop_stop()
        sub.disconnect()
        if out.returncode != 0:
            raise RuntimeError(f"agent run failed: {out.stderr[-2000:]}")
        summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        summary["first_result_s"] = round(first["at"] - launched, 3) if "at" in first else None
        return summary


def bench_pipeline(model: Path | None = None, source: Path | None = None, seconds: float = 10.0,
                   threads: int = 1, rounds: int = 2) -> dict[str, Any]:
    """Each contender ``rounds`` times, interleaved (raw, peer, agent, raw, ...); medians."""
    import statistics

    from agent.sources.synthetic import write_clip

    model_path = model or DEFAULT_MODEL
    raws: list[dict[str, float]] = []
    peers: list[dict[str, float]] = []
    agents: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        work = Path(tmp)
        if source is None:
            source = work / "clip_720p.avi"
            write_clip(str(source), 1280, 720, 30.0, 150, seed=5)
        for r in range(rounds):
            raws.append(_child("raw", str(model_path), str(threads), str(seconds)))
            peers.append(_child("peer", str(model_path), str(source), str(threads), str(seconds)))
            frames = max(50, int(peers[-1]["fps"] * seconds))
            agents.append(_agent_run(model_path, source, threads, frames, work / f"round{r}"))

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(float(run[key]) for run in runs))

    raw = {"fps": median(raws, "fps"), "peak_rss_mb": median(raws, "peak_rss_mb")}
    peer = {"fps": median(peers, "fps"), "peak_rss_mb": median(peers, "peak_rss_mb")}
    agent = {"processing_fps": median(agents, "processing_fps"),
             "peak_rss_mb": median(agents, "peak_rss_mb"),
             "first_result_s": median([a for a in agents if a["first_result_s"] is not None],
                                      "first_result_s"),
             "frames_processed": sum(a["frames_processed"] for a in agents),
             "results_published": sum(a["results_published"] for a in agents)}
    agent_fps = float(agent["processing_fps"])
    return {
        "model": str(model_path),
        "source": str(source) if model else "generated 1280x720 MJPG clip",
        "threads": threads,
        "seconds": seconds,
        "rounds": rounds,
        "runs_fps": {"raw": [round(r["fps"], 2) for r in raws],
                     "peer": [round(r["fps"], 2) for r in peers],
                     "agent": [a["processing_fps"] for a in agents]},
        "raw_invoke_fps": round(raw["fps"], 2),
        "peer_fps": round(peer["fps"], 2),
        "agent_fps": agent_fps,
        "agent_vs_peer": round(agent_fps / peer["fps"], 3),
        "agent_vs_raw": round(agent_fps / raw["fps"], 3),
        "agent_frames": agent["frames_processed"],
        "agent_published": agent["results_published"],
        "agent_rss_mb": agent["peak_rss_mb"],
        "peer_rss_mb": peer["peak_rss_mb"],
        "rss_ratio": round(agent["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        "first_result_s": round(agent["first_result_s"], 3),
    }


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "raw":
        print(json.dumps(raw_loop(rest[0], int(rest[1]), float(rest[2]))))
    elif kind == "peer":
        print(json.dumps(peer_loop(rest[0], rest[1], int(rest[2]), float(rest[3]))))
    else:
        raise SystemExit(f"unknown bench child {kind!r}")
