"""`lepton-agent eval tracking|counting`: the tracker and the line counts measured against truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.common import positive


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` with its ``tracking`` and ``counting`` commands."""
    ev = sub.add_parser("eval", help="measure tracking and counting against ground truth")
    evsub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--truth", type=Path, required=True,
                        help="MOT Challenge ground truth (synth-clip --truth)")
    common.add_argument("--source", type=Path, required=True, help="the clip the truth is of")
    common.add_argument("--model", type=Path, default=None,
                        help="detector (default: the default model)")
    common.add_argument("--threads", type=positive(int), default=None,
                        help="interpreter threads (default: the config's, else 2)")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    tracking = evsub.add_parser("tracking", parents=[common],
                                help="HOTA, IDF1, MOTA and ID switches (TrackEval)")
    tracking.add_argument("--tracks-out", type=Path, default=None,
                          help="also write the tracks as a MOT file")
    tracking.set_defaults(func=cmd_eval_tracking)
    counting = evsub.add_parser("counting", parents=[common],
                                help="line counts per class and direction: true, measured, error")
    counting.add_argument("--config", type=Path, required=True,
                          help="agent config with [[lines]] (or one [[pipelines]] with its lines); "
                             "read by the agent's loader, its source replaced by --source")
    counting.set_defaults(func=cmd_eval_counting)
    goals = evsub.add_parser("goals", help="issue 16's counting goals on generated scenes: count "
                                           "error at 5 and 15 fps, flicker, interval 3, cost share")
    goals.add_argument("--scenes", type=positive(int), default=10,
                       help="scenes (seeds 1..N) per fps (default 10)")
    goals.add_argument("--seconds", type=positive(float), default=60.0,
                       help="length of each scene (default 60)")
    goals.add_argument("--fps", default="5,15", help="frame rates, comma-separated (default 5,15)")
    goals.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="a config setting for every run, value in TOML "
                            "(analytics.tracker.min_hits=2, model.score_threshold=0.4); repeatable")
    goals.add_argument("--lines", choices=("approach", "junction"), default="approach",
                       help="where the two lines go: on each road's approach (default) or "
                            "inside the junction, where the roads' vehicles overlap")
    goals.add_argument("--no-interval", action="store_true",
                       help="skip the interval-3 count runs")
    goals.add_argument("--no-flicker", action="store_true", help="skip the flicker scene")
    goals.add_argument("--traffic-model", type=Path, default=None,
                       help="model for the interval fps ratio (default "
                            "../shared/data/traffic/traffic_model.tflite)")
    goals.add_argument("--no-traffic", action="store_true",
                       help="skip the traffic model's interval fps ratio")
    goals.add_argument("--workdir", type=Path, default=None,
                       help="keep the clips, truths and configs here (default: a temporary dir)")
    goals.add_argument("--json", action="store_true", help="print one JSON object")
    goals.set_defaults(func=cmd_eval_goals)


def _model(args: argparse.Namespace) -> Path:
    from agent.config.schema import ModelSection
    from agent.errors import ModelError
    from agent.paths import resolve_model

    path = resolve_model(args.model if args.model is not None else ModelSection().path)
    if not path.exists():
        raise ModelError("does not exist", path=str(path), fix="give --model a model directory")
    return path


def cmd_eval_tracking(args: argparse.Namespace) -> int:
    from agent.bench.eval_tracking import clip_size, read_mot, run_clip, tracking_scores

    truth = read_mot(args.truth)
    clip_size(args.source)  # a clip that cannot be opened is said before the model loads
    run = run_clip(args.source, _model(args), threads=args.threads or 2)
    if args.tracks_out is not None:
        args.tracks_out.write_text("".join(r.line() + "\n" for r in run.tracks), encoding="ascii")
    scores = tracking_scores(truth, run.tracks, frames=run.frames)
    out: dict[str, Any] = {"source": str(args.source), "truth": str(args.truth),
                           "frames": run.frames, **scores.to_json(), "evaluator": "TrackEval"}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{run.frames} frames: HOTA {scores.hota:.3f}  IDF1 {scores.idf1:.3f}  "
              f"MOTA {scores.mota:.3f}  ID switches {scores.id_switches}  "
              f"({scores.tracker_ids} tracks for {scores.gt_ids} objects)")
    return 0


def cmd_eval_counting(args: argparse.Namespace) -> int:
    import tempfile

    from agent.bench.eval_tracking import (
        clip_size,
        count_rows,
        eval_config,
        read_mot,
        run_agent,
    )
    from agent.service.logs import setup_logging

    truth = read_mot(args.truth)
    width, height = clip_size(args.source)
    with tempfile.TemporaryDirectory(prefix="lepton-eval-") as state:
        config = eval_config(args.config, args.source, Path(state), model=args.model,
                             threads=args.threads)
        setup_logging(config.agent.log_level, [])
        run = run_agent(config)
    out = counting_report(run, count_rows(run, truth, width, height))
    out.update({"source": str(args.source), "truth": str(args.truth), "config": str(args.config)})
    if args.json:
        print(json.dumps(out))
    else:
        for r in out["counts"]:
            print(f"{r['line']:<16} {r['class']:<8} {r['direction']:<4} true {r['true']:>4}  "
                  f"measured {r['measured']:>4}  error {r['error']:+d}")
        print(f"summed |error| {out['absolute_error_total']} of {out['true_total']} true "
              f"crossings; {run.frames_processed} frames at {run.processing_fps} fps "
              f"(interval {run.interval}, detector every {run.detector_interval})")
    return 0


def counting_report(run: Any, rows: list[Any]) -> dict[str, Any]:
    """The JSON of ``eval counting``: the rows and the run's figures."""
    total_true = sum(r.true for r in rows)
    total_abs = sum(abs(r.error) for r in rows)
    return {"frames": run.frames_processed, "frames_dropped": run.frames_dropped,
            "processing_fps": run.processing_fps, "interval": run.interval,
            "detector_interval": run.detector_interval,
            "model": str(run.model), "model_sha256": run.model_sha256,
            "counts": [r.to_json() for r in rows], "true_total": total_true,
            "absolute_error_total": total_abs,
            "error_rate": round(total_abs / total_true, 4) if total_true else None,
            "latency": run.stages.to_json()}


def _settings(items: list[str]) -> dict[str, Any]:
    import tomllib

    from agent.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key or not text:
            raise ConfigError(f"--set {item!r} is not SECTION.KEY=VALUE", key="--set",
                              fix="e.g. --set analytics.tracker.min_hits=2")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--set {item!r}: {text!r} is not a TOML value", key="--set",
                              fix="numbers as is, strings quoted: --set model.score_threshold=0.4"
                              ) from None
    return out


def _fps_list(text: str) -> list[float]:
    from agent.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 120 for v in values):
        raise ConfigError(f"--fps {text!r} is not a list of frame rates", key="--fps",
                          fix="comma-separated rates in (0, 120], e.g. --fps 5,15")
    return values


def cmd_eval_goals(args: argparse.Namespace) -> int:
    import sys

    from agent.bench.counting_goals import TRAFFIC_MODEL, goals
    from agent.service.logs import setup_logging

    settings = _settings(args.set)
    fps = _fps_list(args.fps)
    setup_logging("error", [])
    report = goals(scenes=args.scenes, seconds=args.seconds, fps_list=fps, settings=settings,
                   placement=args.lines,
                   interval=not args.no_interval, flicker=not args.no_flicker,
                   traffic_model=None if args.no_traffic else (args.traffic_model or TRAFFIC_MODEL),
                   workdir=args.workdir,
                   progress=lambda line: print(line, file=sys.stderr) if not args.json else None)
    if args.json:
        print(json.dumps(report))
        return 0
    for c in report["counting"]:
        print(f"{c['fps']:g} fps, {report['scenes']} scenes x {report['seconds']:g} s: "
              f"{c['true_total']} true crossings, worst net error {c['worst_error_pct']} % "
              f"(goal <= 2 %: {'met' if c['goal_met'] else 'NOT met'}), per-scene |error| "
              f"{c['scene_abs_error_pct']} %, analytics {c['analytics_share']} of the frame's work")
        for r in c["per_line_class_direction"]:
            print(f"  {r['line']:<7} {r['class']:<6} {r['direction']:<4} true {r['true']:>4}  "
                  f"measured {r['measured']:>4}  error {r['error']:+d} "
                  f"({'-' if r['error_pct'] is None else r['error_pct']} %)  "
                  f"per-scene |error| {r['scene_abs_error']}")
    for t in report.get("truth_as_detections", []):
        print(f"truth's boxes as detections, {t['fps']:g} fps, vehicles >= "
              f"{t['min_visibility']:.0%} visible: per-scene |error| {t['scene_abs_error_pct']} %, "
              f"worst {t['worst_error_pct']} %")
    for c in report["interval_3"]:
        print(f"interval 3, {c['fps']:g} fps: worst net error {c['worst_error_pct']} %, per-scene "
              f"|error| {c['scene_abs_error_pct']} % ({c['vs_interval_1_pp']:+} pp vs interval 1: "
              f"{'met' if c['goal_met'] else 'NOT met'})")
    if "flicker" in report:
        f = report["flicker"]
        print(f"flicker: labels at the parked vehicle {f['labels']}, counted {f['measured']} "
              f"({'met' if f['goal_met'] else 'NOT met'})")
    for t in report.get("traffic_interval", []):
        print(f"traffic model, {t['threads']} thread(s): interval 3 / interval 1 processed fps "
              f"{t['ratio']} ({'met' if t['goal_met'] else 'NOT met'}); analytics share at "
              f"interval 1 {t['analytics_share_interval_1']}")
    return 0
