"""`lepton-agent config check`: validate a config file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config check`` and its flags to the subcommands."""
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.add_argument("--board")
    check.add_argument("-v", "--verbose", action="store_true", help="print the merged config")
    check.set_defaults(func=cmd_config_check)


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
