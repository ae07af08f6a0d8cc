"""`lepton-agent simulate`: a fleet of virtual devices against a broker and a running ingest."""

from __future__ import annotations

import argparse
import asyncio
import json

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` and its flags to the subcommands."""
    sim = sub.add_parser("simulate", help="N virtual devices publishing results until ingest "
                                          "acknowledges them (load and loss test)")
    sim.add_argument("--broker", required=True)
    sim.add_argument("--devices", type=positive(int), default=10)
    sim.add_argument("--rate", type=positive(float), default=1.0,
                     help="records per second per device")
    sim.add_argument("--seconds", type=positive(float), default=10.0)
    sim.add_argument("--backlog", type=positive(int, zero=True), default=0,
                     help="records each device holds at start (a fleet back from an outage)")
    sim.add_argument("--site", default="sim")
    sim.add_argument("--ack-timeout", type=positive(float), default=5.0, metavar="SECONDS",
                     help="publish again what ingest has not acknowledged after this long "
                          "(doubles while acks lag, up to 60 s)")
    sim.add_argument("--drain", type=positive(float), default=60.0, metavar="SECONDS",
                     help="after the last record, how long to wait for the acks")
    sim.add_argument("--db", help="ingest's database (sqlite:///PATH or postgresql://...): read "
                                  "at the end for stored and lost")
    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.core.contract.topics import check_segment
    from agent.core.uri import parse_broker
    from agent.devtools.simulate import FleetOptions, run_fleet, store_reader

    try:
        broker = parse_broker(args.broker)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--broker") from exc
    try:
        check_segment("site", args.site)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--site") from exc
    reader = store_reader(args.db) if args.db else None
    options = FleetOptions(devices=args.devices, rate=args.rate, seconds=args.seconds,
                           backlog=args.backlog, site=args.site, ack_timeout_s=args.ack_timeout,
                           drain_s=args.drain)
    report = asyncio.run(run_fleet(broker, options, reader))
    print(json.dumps(report.to_json()))
    return 0 if report.pending == 0 and not report.lost else 1
