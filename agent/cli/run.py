"""`lepton-agent run`: the device runtime, from the config and flags to a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from agent.cli.common import load_config_from_args


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and its flags to the subcommands."""
    run = sub.add_parser("run", help="run the agent (capture -> model -> outbox -> MQTT)")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument("--board", help="board overlay from board_configs/ (rpi4, rpi5, ...)")
    run.add_argument("--source", help="video file, v4l2:///dev/video0, rtsp://..., gst:PIPELINE, "
                                      "synthetic://WxH@FPS")
    run.add_argument("--stream", help="stream name used in topics and records (default cam0)")
    run.add_argument("--model", type=Path, help="model bundle directory or .tflite file")
    run.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    run.add_argument("--offline", action="store_true", help="no broker: keep results in the outbox")
    run.add_argument("--device-id")
    run.add_argument("--site")
    run.add_argument("--state-dir", type=Path, help="where the outbox lives")
    run.add_argument("--max-frames", type=int, help="stop after N frames (0: no limit)")
    run.add_argument("--sensor", action="append", metavar="URI",
                     help="a serial sensor, repeatable: serial:///dev/ttyUSB0?baud=9600&"
                          "protocol=nmea0183|csv|jsonl|binary&name=gps (replaces [[sensors]])")
    run.add_argument("--pace", choices=["auto", "realtime", "fast"],
                     help="play files in real time or as fast as possible (default: auto)")
    run.add_argument("--loop", action="store_true", help="loop a video file")
    run.add_argument("--threads", type=int, help="interpreter threads")
    run.add_argument("--delegate", choices=["xnnpack", "none", "reference"])
    run.add_argument("--labels", type=Path, metavar="FILE",
                     help="label file for a bare model (.txt one per line, or a .pbtxt map)")
    run.add_argument("--delivery", choices=["ingested", "broker"],
                     help="keep results until ingest acknowledges them (default) or the broker does")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--web-listen", metavar="HOST:PORT",
                     help="the web console's address ([web] listen; '' turns it off)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import Secrets
    from agent.service.app import AgentApp
    from agent.service.logs import setup_logging
    from agent.service.memory import return_large_buffers_to_os

    return_large_buffers_to_os()  # before any thread starts allocating frames
    config = load_config_from_args(args)
    if args.web_listen is not None:
        config = _with_web_listen(config, args.web_listen)
    secrets = Secrets.from_environment()
    setup_logging(config.agent.log_level, [secrets.mqtt_password] if secrets.mqtt_password else [])
    summary = asyncio.run(AgentApp(config, secrets).run())
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        print(f"frames: {summary.frames_captured} captured, {summary.frames_processed} processed, "
              f"{summary.frames_dropped} dropped ({summary.processing_fps} fps)\n"
              f"{_outcome_line(summary)}\n"
              f"results: {summary.results_committed} committed, {summary.results_published} "
              f"published, {summary.results_ingested} acknowledged by ingest, {summary.backlog} "
              "waiting in the outbox for the next start")
        for stream in summary.streams:
            if stream.counts:
                print(f"counts {stream.stream}: " + ", ".join(
                    f"{c['rule']} {c['label']} {c['direction']} {c['count']}"
                    for c in stream.counts))
        if summary.broker_error and summary.backlog:
            print(f"broker: {summary.broker_error}")
    return 0


def _with_web_listen(config: Any, listen: str) -> Any:
    """``config`` with ``[web] listen`` from ``--web-listen`` (checked like the file's key)."""
    from pydantic import ValidationError

    from agent.config.schema import WebSection
    from agent.errors import ConfigError

    try:
        web = WebSection.model_validate({**config.web.model_dump(), "listen": listen})
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"].removeprefix("Value error, "),
                          key="--web-listen", fix="give HOST:PORT, e.g. 127.0.0.1:8080, or '' "
                          "to turn the console off") from None
    return config.model_copy(update={"web": web})


def _outcome_line(summary: Any) -> str:
    """What the model found: detections, or for a classifier its most frequent top class."""
    if getattr(summary, "task", "") != "classification":
        return f"detections: {summary.detections}"
    tops = summary.top_classes
    if not tops:
        return (f"top class: none above the score threshold in {summary.frames_processed} "
                "frames")
    best = tops[0]
    line = (f"top class: {best['label']} (score up to {best['score']:.2f}, top-1 in "
            f"{best['frames']} of {summary.frames_processed} frames)")
    if len(tops) > 1:
        line += "; then " + ", ".join(f"{t['label']} ({t['frames']})" for t in tops[1:])
    return line
