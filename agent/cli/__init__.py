"""The ``lepton-agent`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import select
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Literal

from agent import __version__
from agent.errors import AgentError, ConfigError

FLAG_FOR_KEY = {
    "source.uri": "--source", "model.path": "--model", "mqtt.broker": "--broker",
    "agent.device_id": "--device-id", "agent.site": "--site", "agent.state_dir": "--state-dir",
    "source.max_frames": "--max-frames", "source.pace": "--pace", "model.num_threads": "--threads",
    "model.delegate": "--delegate", "source.stream": "--stream", "model.labels": "--labels",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        section, key = path.split(".")
        out.setdefault(section, {})[key] = value

    put("source.uri", args.source)
    put("source.stream", args.stream)
    put("model.path", args.model)
    put("mqtt.broker", "" if args.offline else args.broker)
    put("agent.device_id", args.device_id)
    put("agent.site", args.site)
    put("agent.state_dir", args.state_dir)
    put("source.max_frames", args.max_frames)
    put("source.pace", args.pace)
    put("source.loop", True if args.loop else None)
    put("model.num_threads", args.threads)
    put("model.delegate", args.delegate)
    put("model.labels", getattr(args, "labels", None))
    put("agent.log_level", args.log_level)
    put("outbox.delivery", args.delivery)
    if getattr(args, "sensor", None):
        out["sensors"] = [{"uri": uri} for uri in args.sensor]
    return out


def _load(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    if args.offline and args.broker:
        raise ConfigError("--offline and --broker exclude each other", key="--offline",
                          fix="drop one of them")
    try:
        return load_config(args.config, board=args.board, overrides=_overrides(args))
    except ConfigError as exc:
        if exc.file == "command line" and exc.key in FLAG_FOR_KEY:
            raise ConfigError(exc.message.split(": ", 1)[-1], key=FLAG_FOR_KEY[exc.key],
                              fix=exc.fix) from exc
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import Secrets
    from agent.service.app import AgentApp
    from agent.service.logs import setup_logging
    from agent.service.memory import return_large_buffers_to_os

    return_large_buffers_to_os()  # before any thread starts allocating frames
    config = _load(args)
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
        if summary.broker_error and summary.backlog:
            print(f"broker: {summary.broker_error}")
    return 0


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


def cmd_config_check(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.service.metrics import exposure_warning

    config = load_config(args.file, board=args.board)
    print(f"{args.file}: ok")
    if warning := exposure_warning(config.metrics.prometheus_host, config.metrics.prometheus_port):
        print(f"warning: {warning}", file=sys.stderr)
    if args.verbose:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def cmd_models_inspect(args: argparse.Namespace) -> int:
    from agent.inference.model import load_model
    from agent.inference.tflite_file import PROVIDED_CUSTOM_OPS, custom_ops, read_ops

    model = load_model(args.path, num_threads=1, delegate=args.delegate, labels=args.labels)
    custom = custom_ops(read_ops(model.path) or [])
    data = {
        "path": str(model.path), "runtime": model.runtime, "custom_ops": custom,
        "classes": model.classes, "labels_source": model.labels_source or None,
        "inputs": [vars(t) | {"shape": list(t.shape)} for t in model.inputs],
        "outputs": [vars(t) | {"shape": list(t.shape)} for t in model.outputs],
        "manifest": model.manifest.to_json(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    m = model.manifest
    print(f"{model.path} ({model.runtime})\n  sha256 {m.sha256}")
    for kind in ("inputs", "outputs"):
        print(f"  {kind}:")
        for t in getattr(model, kind):
            quant = f" q(scale={t.scale:.6g}, zero={t.zero_point})" if t.quantized else ""
            print(f"    [{t.index}] {t.name} {list(t.shape)} {t.dtype}{quant}")
    print(f"  manifest ({'inferred' if m.inferred else 'declared'}): task={m.task} "
          f"decoder={m.decoder} input={m.input} color={m.color} "
          f"threshold={m.score_threshold} labels={len(m.labels)} offset={m.label_offset}")
    classes = "unknown" if model.classes is None else model.classes
    print(f"    classes: {classes}; labels from {model.labels_source or 'nowhere (class_N)'}")
    for op in custom:
        provided = "provided by LiteRT" if op in PROVIDED_CUSTOM_OPS else "registered by this runtime"
        print(f"    custom op: {op} ({provided})")
    for role, name in m.outputs.items():
        print(f"    {role}: {name}")
    for pair in m.state:
        print(f"    state: {pair.output} -> {pair.input} (fed back each frame)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from agent.backend.ingest import TlsFiles, run_ingest
    from agent.backend.store import open_store
    from agent.config import Secrets
    from agent.core.uri import parse_broker
    from agent.service.logs import setup_logging

    setup_logging(args.log_level)
    try:
        broker = parse_broker(args.broker)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--broker") from exc
    secrets = Secrets.from_environment()
    # The key as the agent takes it: a flag, else systemd's credential "tls-key".
    tls = TlsFiles(args.tls_ca, args.tls_cert,
                   args.tls_key or (secrets.tls_key_file if args.tls_cert else None))
    tls.check(broker)
    if args.stats_interval <= 0:
        raise ConfigError("must be above 0", key="--stats-interval", fix="e.g. 60")
    metrics_listen = None
    if args.metrics_listen:
        from agent.backend.metrics import parse_listen
        from agent.core.uri import is_loopback

        metrics_listen = parse_listen(args.metrics_listen)
        if not is_loopback(metrics_listen[0]):
            print(f"ingest: warning: --metrics-listen {args.metrics_listen}: the endpoint has no "
                  "authentication; keep it on loopback or behind a firewall", file=sys.stderr)
    store = open_store(args.db, args.blob_dir)
    print(f"ingest: storing into {store.describe()}", file=sys.stderr, flush=True)
    try:
        stats = asyncio.run(run_ingest(broker, store, group=args.group or None,
                                       client_id=args.client_id,
                                       password=secrets.mqtt_password,
                                       username=args.username, ready_file=args.ready_file,
                                       reconnect_max_s=args.reconnect_max, tls=tls,
                                       stats_interval_s=args.stats_interval,
                                       metrics_listen=metrics_listen))
    finally:
        store.close()
    print(json.dumps(stats.to_json()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.devtools.demo import run_demo

    return run_demo(frames=args.frames, workdir=args.workdir, model=args.model)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _status_lines(snap: dict[str, Any]) -> list[str]:
    """The live snapshot as text for a person: words for absent values, never Python reprs."""
    st, q, ob, br, th = (snap["stages"], snap["queues"]["frames"], snap["outbox"], snap["broker"],
                         snap["thermal"])
    cap, inf = st["capture"], st["inference"]
    lines = [f"agent: {snap['state']} (pid {snap['pid']}, up {_ago(snap['uptime_s'])}) "
             f"{snap['site']}/{snap['device']}",
             f"  capture:   {'up' if cap['alive'] else 'DOWN'} {cap['source']}, {cap['frames']} "
             f"frames, {cap['reconnects']} reconnects, {cap['skipped_static']} static skipped"
             + (f"; last error: {cap['last_error']}" if cap.get("last_error") else ""),
             f"  inference: {'up' if inf['alive'] else 'DOWN'} {inf['model']}, {snap['fps']} fps, "
             f"{inf['frames']} frames, {inf['detections']} detections, {inf['failures']} failures",
             f"  queue:     frames {q['depth']}/{q['capacity']} ({q['policy']}), "
             f"{q['dropped']} dropped",
             f"  outbox:    backlog {ob['backlog']}"
             + (f", oldest unsent {_ago(ob['oldest_unsent_s'])} old" if ob["backlog"] else "")
             + f", {ob['published']} published, {ob['ingested']} ingested"]
    if not br["url"]:
        lines.append("  broker:    none (offline)")
    else:
        error = f": {br['last_error']}" if br.get("last_error") and not br["connected"] else ""
        lines.append(f"  broker:    {br['url']} "
                     f"{'connected' if br['connected'] else 'DISCONNECTED'}{error}")
    temp = "no sensor" if th["temp_c"] is None else f"{th['temp_c']:.1f} C"
    lines.append(f"  thermal:   {temp}{', THROTTLED' if th['throttled'] else ''}, "
                 f"slow-down level {th['level']}")
    for name, s in (snap.get("sensors") or {}).items():
        values = ((s.get("latest") or {}).get("values") or {})
        latest = ", ".join(f"{k}={_value(v)}" for k, v in list(values.items())[:4])
        state = "up" if s["connected"] else f"DOWN ({s.get('last_error') or 'not connected'})"
        anomaly = ""
        if s.get("anomaly") is not None:
            anomaly = (", no window yet" if s.get("score") is None else
                       f", score {s['score']:.2f}{' ANOMALY' if s['anomaly'] else ''}")
        lines.append(f"  sensor {name}: {state} {s['port']} {s['protocol']}, {s['readings']} "
                     f"readings, {s['parse_errors']} parse errors{anomaly}"
                     f"{'; ' + latest if latest else ''}")
    if snap.get("last_error"):
        lines.append(f"  last error: {snap['last_error']}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """The running agent's live state; when it is not running, what its outbox holds."""
    from agent.config import load_config
    from agent.service.status import SYSTEMD_STATE_DIR, query, socket_candidates
    from agent.storage.report import outbox_path

    overrides = {"agent": {"state_dir": str(args.state_dir)}} if args.state_dir else {}
    config = load_config(args.config, overrides=overrides)
    candidates = socket_candidates(config.agent.state_dir, args.socket or config.agent.status_socket)
    snap, denied = None, []
    for path in candidates:
        snap = query(path)
        if snap is not None:
            break
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            denied.append(path)
    if snap is None and denied:
        raise AgentError(f"permission denied on the status socket {denied[0]}",
                         fix="run as a member of the agent's group (usermod -aG lepton $USER, "
                             "then log in again) or with sudo")
    if snap is None:
        state_dir = config.agent.state_dir
        if not (args.state_dir or args.config) and not outbox_path(state_dir).exists() \
                and outbox_path(SYSTEMD_STATE_DIR).exists():
            state_dir = SYSTEMD_STATE_DIR  # the service's StateDirectory=
        offline = _offline_status(state_dir, config.outbox.delivery)
        where = ", ".join(str(p) for p in candidates)
        if args.json:
            print(json.dumps({"state": "not running", "socket": str(candidates[0]),
                              "sockets_tried": [str(p) for p in candidates], **offline}))
        else:
            print(f"agent: not running (nothing answers at {where})")
            if "backlog" in offline:
                count = offline["backlog"]
                print(f"  outbox:    {offline['outbox']}: backlog {count} "
                      f"record{'' if count == 1 else 's'}"
                      + (f", oldest unsent {_ago(offline['oldest_unsent_s'])} old"
                         if offline["backlog"] else "") + f" (until {offline['delivery']})")
                seqs = ", ".join(f"{k} {v}" for k, v in offline["last_seq"].items()) or "none yet"
                print(f"  last seq:  {seqs}")
            else:
                print(f"  outbox:    {offline['outbox']}")
            print("  start it: systemctl start lepton-agent   why it stopped: "
                  "journalctl -u lepton-agent -n 50   checks: lepton-agent diag")
        return 3
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print("\n".join(_status_lines(snap)))
    return 0


def _offline_status(state_dir: Path, delivery: Literal["ingested", "broker"] = "ingested") -> dict[str, Any]:
    """What the outbox in ``state_dir`` holds, read-only: records not yet delivered (acknowledged
    by ingest, or sent to the broker when ``delivery`` is "broker"), the oldest one's age, and
    the last seq of each stream."""
    from agent.storage.report import OutboxUnreadable, outbox_path, read_report

    db = outbox_path(state_dir)
    try:
        report = read_report(state_dir, delivery)
    except OutboxUnreadable as exc:
        return {"outbox": f"{db} unreadable: {exc.__cause__ or exc}"}
    if report is None:
        return {"outbox": f"{db} does not exist (never ran with this state dir?)"}
    age = round(report.oldest_unsent_s) if report.oldest_unsent_s is not None else None
    return {"outbox": str(db), "delivery": delivery, "backlog": report.backlog,
            "oldest_unsent_s": age, "last_seq": dict(report.last_seq)}


def cmd_diag(args: argparse.Namespace) -> int:
    """Run the checks; ``diag bundle`` writes them with logs and versions into a tarball.

    A config that does not load fails the config check, and every check that reads the config is
    marked as not run (running it on built-in defaults would test another device). The exit code
    is the worst status (0 pass, 1 warn, 2 fail); ``diag bundle`` exits 0 once the bundle is
    written, whatever the checks found: they are inside it and summarised on stdout."""
    from agent.config import Secrets, load_config
    from agent.diag import CheckResult, exit_code, render, run_checks, summary
    from agent.diag.checks import CONFIG_FREE, all_checks

    bundle = args.checks[:1] == ["bundle"]
    wanted = ["sensors" if c == "serial" else c for c in ([] if bundle else args.checks)]
    secrets = Secrets.from_environment()
    defaults = load_config(None, board=None)
    names = list(all_checks(defaults, secrets, None))
    unknown = [c for c in wanted if c not in names and c != "config"]
    if unknown:
        raise ConfigError(f"unknown check(s) {', '.join(unknown)}", key="diag",
                          fix=f"choose from: config, {', '.join(names)}, or 'bundle'")
    config = None
    try:
        config = load_config(args.config, board=args.board)
        config_result = CheckResult("config", "pass", f"{args.config or 'built-in defaults'} valid"
                                    + (f" (board {config.agent.board})" if config.agent.board
                                       else ""))
    except ConfigError as exc:
        config_result = CheckResult("config", "fail", exc.message, exc.fix or "")
    results: list[CheckResult] = []
    if not wanted or "config" in wanted or config is None:
        results.append(config_result)
    selected = [n for n in names if not wanted or n in wanted]
    if config is not None:
        results += run_checks({n: c for n, c in all_checks(config, secrets, args.snapshot).items()
                               if n in selected}, timeout_s=args.timeout)
    else:
        free = run_checks({n: c for n, c in all_checks(defaults, secrets, None).items()
                           if n in selected and n in CONFIG_FREE}, timeout_s=args.timeout)
        ran = {r.name: r for r in free}
        results += [ran.get(n) or CheckResult(n, "skip", "not run: it needs the config, which "
                                              "did not load (see the config check)")
                    for n in selected]
    report = {"checks": [r.to_json() for r in results], "exit_code": exit_code(results)}
    if bundle:
        from agent.diag.bundle import write_bundle
        from agent.service.status import query, socket_candidates

        cfg = config or defaults
        output = args.output or Path(f"lepton-diag-{cfg.agent.device_id}.tar.gz")
        live = None
        for path in socket_candidates(cfg.agent.state_dir, cfg.agent.status_socket):
            live = live or query(path)
        written = write_bundle(cfg, report, output, live, config_file=args.config,
                               config_error=None if config else config_result.reason)
        print(f"wrote {written} (secrets removed); checks: {summary(results)}"
              + ("; see diag.json in the bundle" if report["exit_code"] else ""))
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(results))
    return exit_code(results)


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    import cv2

    from agent.bench.kernels import bench_kernels

    cv2.setNumThreads(args.opencv_threads)
    report = bench_kernels(rounds=args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"variant {report['variant']}, OpenCV threads {report['opencv_threads']}")
    print(f"{'case':28} {'native ms':>10} {'baseline ms':>12} {'speedup':>8} {'max diff':>9}")
    for r in report["cases"]:
        print(f"{r['case']:28} {r['native_ms']:10.3f} {r['baseline_ms']:12.3f} {r['speedup']:8.2f} "
              f"{r['max_abs_diff']:9.1f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench.pipeline import bench_pipeline

    for flag, path in (("--model", args.model), ("--source", args.source)):
        if path is not None and not path.exists():
            raise ConfigError(f"{path} does not exist", key=flag, fix="check the path")
    report = bench_pipeline(model=args.model, source=args.source, seconds=args.seconds,
                            threads=args.threads, rounds=args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from agent.bench.sync import bench_sync

    report = bench_sync(n=args.messages, rounds=args.rounds, backlog=args.backlog,
                        live_hz=args.live_hz)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"raw paho QoS 1: {report['raw_paho_per_s']}/s; durable outbox path: "
          f"{report['durable_per_s']}/s ({report['durable_vs_raw']:.2f}x); "
          f"{report['disk_bytes_per_record']} disk bytes per record")
    if "drain" in report:
        d = report["drain"]
        print(f"drain: {d['backlog']} records in {d['drain_s']}s ({d['drain_per_s']}/s); live "
              f"latency p50/p99 {d['live_latency_ms_quiet']['p50']}/"
              f"{d['live_latency_ms_quiet']['p99']} ms quiet, "
              f"{d['live_latency_ms_draining']['p50']}/{d['live_latency_ms_draining']['p99']} ms "
              "while draining")
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    from agent.devtools.faults import SCENARIOS, format_report, run_fault_scenario

    unknown = [s for s in args.scenario if s not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown fault scenario {unknown[0]!r}",
                          fix=f"choose from {', '.join(SCENARIOS)}, or none for all of them")
    reports = []
    for scenario in args.scenario or SCENARIOS:
        report = run_fault_scenario(scenario, args.cycles, outage_s=args.outage_s, seed=args.seed)
        reports.append(report)
        print(json.dumps(report.to_json()) if args.json else format_report(report), flush=True)
    return 0 if all(r.ok for r in reports) else 1


def cmd_synth_clip(args: argparse.Namespace) -> int:
    from agent.sources.synthetic import write_clip

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"malformed size {args.size!r}; use WxH, e.g. 640x480",
                          key="--size") from exc
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ConfigError(f"size {width}x{height} out of range", key="--size",
                          fix="width and height from 16 to 8192, e.g. 640x480")
    n = write_clip(str(args.out), width, height, args.fps, args.frames, seed=args.seed)
    print(f"wrote {n} frames of {width}x{height} to {args.out}")
    return 0


def _positive(kind: type[int] | type[float], zero: bool = False) -> Any:
    """An argparse type: a number above zero (or at least zero), with a clear usage error."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'zero or more' if zero else 'above zero'}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-agent", description="Lepton Edge agent")
    parser.add_argument("--version", action="version", version=f"lepton-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.add_argument("--board")
    check.add_argument("-v", "--verbose", action="store_true", help="print the merged config")
    check.set_defaults(func=cmd_config_check)

    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    inspect = models_sub.add_parser("inspect", help="print tensors and the (inferred) manifest")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--delegate", choices=["xnnpack", "none", "reference"], default="xnnpack")
    inspect.add_argument("--labels", type=Path, metavar="FILE",
                         help="check this label file against the model")
    inspect.set_defaults(func=cmd_models_inspect)

    ingest = sub.add_parser("ingest", help="backend consumer: results -> database")
    ingest.add_argument("--broker", required=True)
    ingest.add_argument("--db", required=True,
                        help="sqlite:////ABSOLUTE/PATH (four slashes), sqlite:///RELATIVE/PATH, "
                             "or postgresql://user@host:port/db[?schema=NAME]")
    ingest.add_argument("--reconnect-max", type=float, default=5.0, metavar="SECONDS",
                        help="longest wait between reconnect attempts to the broker")
    ingest.add_argument("--blob-dir", type=Path, default=None,
                        help="where finished shard blobs are written (default: blobs/ beside "
                             "the SQLite file, ./blobs for PostgreSQL)")
    ingest.add_argument("--group", default="ingest",
                        help="shared-subscription group ('' for a plain subscription)")
    ingest.add_argument("--client-id",
                        help="stable id, one per process: the broker keeps its session across "
                             "restarts (default: unique per process, session ends with it)")
    ingest.add_argument("--username")
    ingest.add_argument("--tls-ca", type=Path, metavar="FILE",
                        help="CA certificate (PEM) that signed the mqtts:// broker's")
    ingest.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="client certificate (PEM) for mutual TLS")
    ingest.add_argument("--tls-key", type=Path, metavar="FILE",
                        help="client key (PEM; default: $CREDENTIALS_DIRECTORY/tls-key)")
    ingest.add_argument("--stats-interval", type=float, default=60.0, metavar="SECONDS",
                        help="how often the counters (and reject reasons) are logged")
    ingest.add_argument("--metrics-listen", metavar="HOST:PORT", default="",
                        help="serve Prometheus metrics (counts, rejects by reason) here, "
                             "e.g. 127.0.0.1:9101 (default: off)")
    ingest.add_argument("--ready-file", type=Path,
                        help="written once the subscription is in place (for orchestration)")
    ingest.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    ingest.set_defaults(func=cmd_ingest)

    demo = sub.add_parser("demo", help="the whole loop on this machine: clip -> agent -> "
                                       "mosquitto -> ingest, with a summary")
    demo.add_argument("--frames", type=_positive(int), default=150)
    demo.add_argument("--workdir", type=Path, default=Path("build/demo"))
    demo.add_argument("--model", type=Path)
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="the running agent's live state (exit 3: not running)")
    status.add_argument("--config", type=Path)
    status.add_argument("--state-dir", type=Path)
    status.add_argument("--socket", type=Path,
                        help="status socket (default: the config's, else STATE_DIR/agent.sock, "
                             "then the service's /run/lepton-agent/status.sock)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    diag = sub.add_parser("diag", help="diagnostics: what is wrong and how to fix it")
    diag.add_argument("checks", nargs="*", metavar="CHECK",
                      help="checks to run (default: all): config camera sensors model kernels broker "
                           "cache clock temperature memory; or 'bundle' for a support tarball")
    diag.add_argument("--config", type=Path)
    diag.add_argument("--board")
    diag.add_argument("--snapshot", type=Path, help="save a camera frame here")
    diag.add_argument("--output", type=Path, help="bundle path (default ./lepton-diag-DEVICE.tar.gz)")
    diag.add_argument("--json", action="store_true")
    diag.add_argument("--timeout", type=_positive(float), default=20.0, help="seconds per check")
    diag.set_defaults(func=cmd_diag)

    bench = sub.add_parser("bench", help="benchmarks (ratios against a baseline in the same run)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    pipe = bench_sub.add_parser("pipeline", help="raw invoke vs hand-written loop vs the agent")
    pipe.add_argument("--model", type=Path)
    pipe.add_argument("--source", type=Path)
    pipe.add_argument("--seconds", type=_positive(float), default=10.0)
    pipe.add_argument("--threads", type=_positive(int), default=1)
    pipe.add_argument("--rounds", type=_positive(int), default=2, help="interleaved repeats (medians)")
    pipe.add_argument("--json", action="store_true")
    pipe.set_defaults(func=cmd_bench)

    kb = bench_sub.add_parser("kernels", help="native kernels vs the OpenCV/numpy way")
    kb.add_argument("--rounds", type=_positive(int), default=7)
    kb.add_argument("--opencv-threads", type=_positive(int), default=1,
                    help="OpenCV threads for the baseline (the kernels use one)")
    kb.add_argument("--json", action="store_true")
    kb.set_defaults(func=cmd_bench_kernels)

    sb = bench_sub.add_parser("sync", help="durable outbox path vs raw paho; backlog drain")
    sb.add_argument("--messages", type=_positive(int), default=20_000)
    sb.add_argument("--rounds", type=_positive(int), default=5)
    sb.add_argument("--backlog", type=_positive(int, zero=True), default=100_000,
                    help="0 skips the drain test")
    sb.add_argument("--live-hz", type=_positive(float), default=30.0)
    sb.add_argument("--json", action="store_true")
    sb.set_defaults(func=cmd_bench_sync)

    faults = sub.add_parser("faults", help="fault injection with real processes on loopback "
                            "(broker and agent kills, disk budget, outage); exit 1 on any loss")
    # Checked in cmd_faults: argparse tests an empty nargs="*" against its choices and fails.
    faults.add_argument("scenario", nargs="*",
                        help="broker-kill, agent-kill, budget, outage (default: all of them)")
    faults.add_argument("--cycles", type=_positive(int), default=20)
    faults.add_argument("--outage-s", type=_positive(float), default=20.0)
    faults.add_argument("--seed", type=_positive(int, zero=True), default=0)
    faults.add_argument("--json", action="store_true")
    faults.set_defaults(func=cmd_faults)

    clip = sub.add_parser("synth-clip", help="write a clip of the synthetic traffic scene")
    clip.add_argument("out", type=Path)
    clip.add_argument("--size", default="640x480")
    clip.add_argument("--fps", type=_positive(float), default=15.0)
    clip.add_argument("--frames", type=_positive(int), default=150)
    clip.add_argument("--seed", type=_positive(int, zero=True), default=0)
    clip.set_defaults(func=cmd_synth_clip)
    return parser


_USERINFO = re.compile(r"(://[^/@\s:]*:)[^/@\s]*@")


def _stdout_gone() -> bool:
    """True when whoever read our stdout has left (``lepton-agent status | head -1``): a pipe
    whose read end is closed polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _one_line(exc: BaseException) -> str:
    """The exception as one line, with any password in a URL masked."""
    # A message that embeds a child's traceback keeps only what precedes it; the log has it all.
    text = " ".join(str(exc).split("Traceback (most recent call last)")[0].split()).rstrip(" :")
    text = _USERINFO.sub(r"\1***@", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report_crash(what: str, exc: BaseException) -> None:
    """One line on stderr naming what failed and where its full traceback was written."""
    from agent.service.logs import write_debug_log

    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = write_debug_log(f"lepton-agent {__version__}: {what}\nargv: {sys.argv}\n\n{full}")
    where = f"full traceback in {path}" if path else "no writable place for the traceback"
    with contextlib.suppress(OSError, ValueError):
        print(f"lepton-agent: internal error in {what}: {_one_line(exc)} ({where}; please report "
              "it with that file)", file=sys.stderr, flush=True)


def _thread_crash(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    _report_crash(f"thread {hook.thread.name if hook.thread else '?'}", hook.exc_value)


def _command_name(args: argparse.Namespace) -> str:
    words = [args.command, str(getattr(args, f"{args.command}_command", "") or "")]
    return " ".join(w for w in words if w)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors the agent expects (AgentError) print one line and exit 2; any
    other exception prints one line naming it and the debug log with its traceback, exit 1.
    A reader that stopped reading stdout (a pipe into head) ends the command quietly, with the
    status of a process killed by SIGPIPE (141), as other Unix tools do."""
    args = build_parser().parse_args(argv)
    what = _command_name(args)
    threading.excepthook = _thread_crash
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except AgentError as exc:
        with contextlib.suppress(OSError, ValueError):
            print(f"lepton-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _stdout_gone():
            _quiet_stdout()
            return 128 + signal.SIGPIPE
        _report_crash(what, exc)
        return 1
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        _report_crash(what, exc)
        return 1
