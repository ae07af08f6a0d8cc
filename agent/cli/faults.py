"""`lepton-agent faults`: fault injection with real processes on loopback."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``faults`` and its flags to the subcommands."""
    faults = sub.add_parser("faults", help="fault injection with real processes on loopback "
                            "(broker and agent kills, disk budget, outage) and power cuts of "
                            "the outbox's storage; exit 1 on any loss")
    # Checked in cmd_faults: argparse tests an empty nargs="*" against its choices and fails.
    faults.add_argument("scenario", nargs="*",
                        help="broker-kill, agent-kill, budget, outage, power-cut (default: all "
                             "of them)")
    faults.add_argument("--cycles", type=positive(int), default=20)
    faults.add_argument("--outage-s", type=positive(float), default=20.0)
    faults.add_argument("--seed", type=positive(int, zero=True), default=0)
    faults.add_argument("--json", action="store_true")
    faults.set_defaults(func=cmd_faults)


def cmd_faults(args: argparse.Namespace) -> int:
    import logging

    from agent.devtools.faults import (
        SCENARIOS,
        format_power_cut,
        format_report,
        run_fault_scenario,
        run_power_cut,
    )

    choices = (*SCENARIOS, "power-cut")
    unknown = [s for s in args.scenario if s not in choices]
    if unknown:
        raise ConfigError(f"unknown fault scenario {unknown[0]!r}",
                          fix=f"choose from {', '.join(choices)}, or none for all of them")
    ok = True
    for scenario in args.scenario or choices:
        if scenario == "power-cut":
            # Every reopen after a cut warns about the seq gap: expected here, hundreds of times.
            logging.getLogger("agent.outbox").setLevel(logging.ERROR)
            cut = run_power_cut(args.cycles, seed=args.seed)
            ok &= cut.ok
            print(json.dumps(cut.to_json()) if args.json else format_power_cut(cut), flush=True)
            continue
        report = run_fault_scenario(scenario, args.cycles, outage_s=args.outage_s, seed=args.seed)
        ok &= report.ok
        print(json.dumps(report.to_json()) if args.json else format_report(report), flush=True)
    return 0 if ok else 1
