"""`lepton-agent bench pipeline|kernels|sync`: benchmarks against a baseline in the same run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench pipeline``, ``kernels``, ``analytics`` and ``sync`` and their flags."""
    bench = sub.add_parser("bench", help="benchmarks (ratios against a baseline in the same run)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    pipe = bench_sub.add_parser("pipeline", help="raw invoke vs hand-written loop vs the agent")
    pipe.add_argument("--model", type=Path)
    pipe.add_argument("--source", type=Path)
    pipe.add_argument("--seconds", type=positive(float), default=10.0)
    pipe.add_argument("--threads", type=positive(int), default=1,
                      help="interpreter threads of raw, peer and each of the agent's pipelines")
    pipe.add_argument("--rounds", type=positive(int), default=2, help="interleaved repeats (medians)")
    pipe.add_argument("--streams", type=positive(int), default=1,
                      help="N > 1: also run one agent with N pipelines on the clip")
    pipe.add_argument("--thread-budget", type=positive(int, zero=True), default=0,
                      help="[agent] thread_budget of the N-stream agent (0: the CPU count)")
    pipe.add_argument("--json", action="store_true")
    pipe.set_defaults(func=cmd_bench)

    kb = bench_sub.add_parser("kernels", help="native kernels vs the OpenCV/numpy way")
    kb.add_argument("--rounds", type=positive(int), default=7)
    kb.add_argument("--opencv-threads", type=positive(int), default=1,
                    help="OpenCV threads for the baseline (the kernels use one)")
    kb.add_argument("--json", action="store_true")
    kb.set_defaults(func=cmd_bench_kernels)

    ab = bench_sub.add_parser("analytics", help="tracker + counting cost per frame and accuracy "
                                               "vs tracker libraries, on a generated scene")
    ab.add_argument("--tracks", type=positive(int), nargs="+", default=[10, 50, 200])
    ab.add_argument("--frames", type=positive(int), default=150)
    ab.add_argument("--repeats", type=positive(int), default=3)
    ab.add_argument("--json", action="store_true")
    ab.set_defaults(func=cmd_bench_analytics)

    sb = bench_sub.add_parser("sync", help="durable outbox path vs raw paho; backlog drain")
    sb.add_argument("--messages", type=positive(int), default=20_000)
    sb.add_argument("--rounds", type=positive(int), default=5)
    sb.add_argument("--backlog", type=positive(int, zero=True), default=100_000,
                    help="0 skips the drain test")
    sb.add_argument("--live-hz", type=positive(float), default=30.0)
    sb.add_argument("--live-s", type=positive(int), default=1200,
                    help="simulated seconds of a live 15 fps camera for its disk writes (long "
                         "enough for the checkpoints the agent makes, every ~10 minutes)")
    sb.add_argument("--live-commit-ms", type=positive(int), default=None,
                    help="the live camera's commit interval (default: [outbox] "
                         "commit_interval_ms's default)")
    sb.add_argument("--json", action="store_true")
    sb.set_defaults(func=cmd_bench_sync)

    wb = bench_sub.add_parser("web", help="pipeline fps with two live-view viewers vs none")
    wb.add_argument("--seconds", type=positive(float), default=8.0, help="per phase")
    wb.add_argument("--rounds", type=positive(int), default=2, help="interleaved repeats (medians)")
    wb.add_argument("--viewers", type=positive(int), default=2)
    wb.add_argument("--pace", choices=["fast", "realtime"], default="fast",
                    help="fast: the clip as fast as possible (any cost shows); realtime: 15 fps")
    wb.add_argument("--json", action="store_true")
    wb.set_defaults(func=cmd_bench_web)

    ob = bench_sub.add_parser("ota", help="model swap gap and frames lost on a traffic clip; "
                                         "command round trip on loopback")
    ob.add_argument("--model", type=Path, help="model bundle (default: the default model)")
    ob.add_argument("--clip", type=Path, help="video file (default: a generated junction clip)")
    ob.add_argument("--seconds", type=positive(float), default=8.0)
    ob.add_argument("--fps", type=positive(float), default=15.0)
    ob.add_argument("--commands", type=positive(int, zero=True), default=200,
                    help="pings for command_rtt_ms (0 skips it)")
    ob.add_argument("--json", action="store_true")
    ob.set_defaults(func=cmd_bench_ota)

    ib = bench_sub.add_parser("ingest", help="ingest into SQLite and PostgreSQL vs a raw paho "
                                             "subscriber; scale-out; overload through the "
                                             "fleet simulator")
    ib.add_argument("--records", type=positive(int), default=20_000)
    ib.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL server (a schema of its own is made and dropped)")
    ib.add_argument("--processes", type=positive(int), default=1,
                    help="N > 1: also N ingest processes on one shared subscription vs one")
    ib.add_argument("--overload", type=positive(float, zero=True), default=0.0,
                    help="offer this many times the measured SQLite rate (0: skip)")
    ib.add_argument("--seconds", type=positive(float), default=60.0,
                    help="length of the overload burst")
    ib.add_argument("--rounds", type=positive(int), default=3, help="interleaved repeats (medians)")
    ib.add_argument("--json", action="store_true")
    ib.set_defaults(func=cmd_bench_ingest)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from agent.bench.ingest import bench_ingest

    report = bench_ingest(records=args.records, pg_server=args.pg, processes=args.processes,
                          overload=args.overload, seconds=args.seconds, rounds=args.rounds)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"records/s: raw subscriber {report['raw_subscriber_per_s']}, SQLite "
          f"{report['sqlite_per_s']} ({report['sqlite_ratio']}x), PostgreSQL "
          f"{report['postgresql_per_s']} ({report.get('postgresql_ratio')}x); goal >= 0.5x")
    if "processes" in report:
        p = report["processes"]
        print(f"{p['n']} processes: {p['n_per_s']}/s vs one {p['one_per_s']}/s "
              f"({p['ratio']}x, goal >= 1.3x)")
    if "overload" in report:
        o = report["overload"]
        print(f"overload: offered {o['offered']}, stored {o['stored']}, lost {o['lost']}, "
              f"duplicates stored {o['duplicates_stored']}, caught up {o['catch_up_s']} s after")
    return 0


def cmd_bench_web(args: argparse.Namespace) -> int:
    from agent.bench.web import bench_web

    result = bench_web(seconds=args.seconds, rounds=args.rounds, viewers=args.viewers,
                       pace=args.pace)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pipeline fps: {result['fps_without']} without viewers, "
              f"{result['fps_with_viewers']} with {result['viewers']} on the live view "
              f"(ratio {result['ratio']}, goal >= 0.97); each viewer got "
              f"{result['viewer_jpegs_per_s']} JPEG/s")
    return 0


def cmd_bench_ota(args: argparse.Namespace) -> int:
    from agent.bench.ota import bench_swap
    from agent.cli.ctl import bench_commands
    from agent.config.schema import ModelSection

    model = args.model or ModelSection().path
    if not model.exists():
        raise ConfigError(f"model {model} does not exist", fix="give --model a model bundle")
    if args.clip is not None and not args.clip.is_file():
        raise ConfigError(f"clip {args.clip} does not exist", fix="give --clip a video file")
    report = bench_swap(model, seconds=args.seconds, fps=args.fps, clip=args.clip)
    if args.commands:
        rtt = bench_commands(args.commands)
        report["command_rtt_ms"] = rtt["command_rtt_ms"]
        report["command_rtt_ms_broker_nodelay"] = rtt["command_rtt_ms_broker_nodelay"]
    if args.json:
        print(json.dumps(report))
    else:
        print(f"swap gap {report['swap_gap_ms']} ms (frame interval "
              f"{report['frame_interval_ms']} ms, longest steady gap "
              f"{report['max_gap_ms_steady']} ms), frames lost {report['frames_lost']} of "
              f"{report['frames_read']}" + (f"; command round trip p50/p99 "
                                           f"{report['command_rtt_ms']}" if args.commands else ""))
    return 0


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
    if args.thread_budget and args.threads > args.thread_budget:
        raise ConfigError(f"--threads {args.threads} is more than --thread-budget "
                          f"{args.thread_budget}", key="--threads",
                          fix="give each pipeline at most the budget's threads")
    report = bench_pipeline(model=args.model, source=args.source, seconds=args.seconds,
                            threads=args.threads, rounds=args.rounds, streams=args.streams,
                            thread_budget=args.thread_budget)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def cmd_bench_analytics(args: argparse.Namespace) -> int:
    from agent.bench.analytics import bench_analytics

    report = bench_analytics(tracks=args.tracks, frames=args.frames, repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, costs in report["cost_ms_per_frame"].items():
        print(f"{name}: " + ", ".join(f"{n} tracks {ms['cpu']:.3f} ms" for n, ms in costs.items()))
    if report["not_installed"]:
        print(f"not installed (not measured): {', '.join(report['not_installed'])}")
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from agent.bench.sync import bench_sync

    report = bench_sync(n=args.messages, rounds=args.rounds, backlog=args.backlog,
                        live_hz=args.live_hz, live_s=args.live_s,
                        live_commit_ms=args.live_commit_ms)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"raw paho QoS 1: {report['raw_paho_per_s']}/s; durable outbox path: "
          f"{report['durable_per_s']}/s ({report['durable_vs_raw']:.2f}x); "
          f"{report['disk_bytes_per_record']} disk bytes per record of {report['payload_bytes']} "
          f"(write amplification {report['write_amplification']})")
    live = report["live"]
    print(f"live camera at {live['fps']} fps, commits every {live['commit_interval_ms']} ms: "
          f"{live['disk_bytes_per_record']} disk bytes per record of {live['payload_bytes']} "
          f"(write amplification {live['write_amplification']}), "
          f"{live['bytes_per_day'] / 1e9:.2f} GB a day")
    if "drain" in report:
        d = report["drain"]
        print(f"drain: {d['backlog']} records in {d['drain_s']}s ({d['drain_per_s']}/s); live "
              f"latency p50/p99 {d['live_latency_ms_quiet']['p50']}/"
              f"{d['live_latency_ms_quiet']['p99']} ms quiet, "
              f"{d['live_latency_ms_draining']['p50']}/{d['live_latency_ms_draining']['p99']} ms "
              "while draining")
    return 0
