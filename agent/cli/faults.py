"""`lepton-agent faults`: fault injection with real processes on loopback."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``faults`` and its flags to the subcommands."""
    faults = sub.add_parser("faults", help="fault injection with real processes on loopback "
                            "(broker and agent kills, disk budget, outage); exit 1 on any loss")
    # Checked in cmd_faults: argparse tests an empty nargs="*" against its choices and fails.
    faults.add_argument("scenario", nargs="*",
                        help="broker-kill, agent-kill, budget, outage (default: all of them)")
    faults.add_argument("--cycles", type=positive(int), default=20)
    faults.add_argument("--outage-s", type=positive(float), default=20.0)
    faults.add_argument("--seed", type=positive(int, zero=True), default=0)
    faults.add_argument("--json", action="store_true")
    faults.set_defaults(func=cmd_faults)


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
