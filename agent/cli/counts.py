"""`lepton-agent counts`: tallies of the line and zone counts ingest stored, re-bucketed."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``counts`` and its flags to the subcommands."""
    counts = sub.add_parser(
        "counts", help="tallies of stored line/zone counts per rule, class and direction",
        description="Sum the counts ingest stored (lepton.count records) per device, stream, "
                    "rule, class and direction over buckets of --by. Buckets that hold a "
                    "partial interval (the agent stopped or restarted inside it) are flagged.")
    counts.add_argument("--db", required=True,
                        help="ingest's database: sqlite:////ABSOLUTE/PATH, sqlite:///RELATIVE, "
                             "or postgresql://user@host:port/db[?schema=NAME]")
    counts.add_argument("--site", help="only this site")
    counts.add_argument("--device", help="only this device")
    counts.add_argument("--stream", help="only this pipeline (its stream name)")
    counts.add_argument("--line", metavar="RULE", help="only this line (or zone), by name")
    counts.add_argument("--since", metavar="T",
                        help="from the --by bucket holding T on: RFC 3339 time, a date, or an "
                             "age (90m, 2h, 7d)")
    counts.add_argument("--by", default="15m",
                        help="bucket length, a multiple of the stored one (default 15m; "
                             "e.g. 60s, 1h, 1d)")
    counts.add_argument("--json", action="store_true", help="print the tallies as JSON")
    counts.set_defaults(func=cmd_counts)


def cmd_counts(args: argparse.Namespace) -> int:
    from agent.backend.counts import CountFilter, parse_by, parse_since, render, tally

    by_s = parse_by(args.by)
    since = parse_since(args.since) if args.since is not None else None
    report = tally(args.db, CountFilter(site=args.site, device=args.device, source=args.stream,
                                        rule=args.line, since_s=since), by_s)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(render(report), end="")
    return 0
