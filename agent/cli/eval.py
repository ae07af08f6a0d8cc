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
    common.add_argument("--threads", type=positive(int), default=2)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    tracking = evsub.add_parser("tracking", parents=[common],
                                help="HOTA, IDF1, MOTA and ID switches (TrackEval)")
    tracking.add_argument("--tracks-out", type=Path, default=None,
                          help="also write the tracks as a MOT file")
    tracking.set_defaults(func=cmd_eval_tracking)
    counting = evsub.add_parser("counting", parents=[common],
                                help="line counts per class and direction: true, measured, error")
    counting.add_argument("--config", type=Path, required=True,
                          help="agent config with [[lines]] (or [[pipelines.lines]])")
    counting.set_defaults(func=cmd_eval_counting)


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
    run = run_clip(args.source, _model(args), threads=args.threads)
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
    from agent.bench.eval_tracking import clip_size, read_lines, read_mot, run_clip, true_line_counts

    lines = read_lines(args.config)
    truth = read_mot(args.truth)
    width, height = clip_size(args.source)
    run = run_clip(args.source, _model(args), lines, threads=args.threads)
    rows: list[dict[str, Any]] = []
    for line in lines:
        true = true_line_counts(truth, line, width, height, run.labels)
        measured = run.measured[line.name]
        classes = sorted(set(run.labels.values()) if line.classes is None else line.classes)
        for label in classes:
            for direction in ("in", "out"):
                t, m = true[(label, direction)], measured[(label, direction)]
                rows.append({"line": line.name, "class": label, "direction": direction,
                             "true": t, "measured": m, "error": m - t})
    total_true = sum(r["true"] for r in rows)
    total_abs = sum(abs(r["error"]) for r in rows)
    out = {"source": str(args.source), "truth": str(args.truth), "config": str(args.config),
           "frames": run.frames, "counts": rows, "true_total": total_true,
           "absolute_error_total": total_abs,
           "error_rate": round(total_abs / total_true, 4) if total_true else None}
    if args.json:
        print(json.dumps(out))
    else:
        for r in rows:
            print(f"{r['line']:<16} {r['class']:<8} {r['direction']:<4} true {r['true']:>4}  "
                  f"measured {r['measured']:>4}  error {r['error']:+d}")
        print(f"summed |error| {total_abs} of {total_true} true crossings")
    return 0
