"""`lepton-agent pki init|issue`: a CA and certificates for a test fleet (docs/security.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki init`` and ``pki issue`` and their flags to the subcommands."""
    pki = sub.add_parser("pki", help="a CA and TLS certificates for a test fleet")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init = pki_sub.add_parser("init", help="make a CA: ca.key (0600) and ca.crt in --out")
    init.add_argument("--out", type=Path, required=True, metavar="DIR")
    init.add_argument("--name", default="lepton-test-ca", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650)
    init.add_argument("--force", action="store_true", help="replace a CA already in --out")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_pki_init)
    issue = pki_sub.add_parser(
        "issue", help="sign NAME.crt and NAME.key (0600) with the CA; NAME is the MQTT user name")
    issue.add_argument("name", metavar="NAME",
                       help="device id, lepton-ingest or lepton-ctl (a topic segment); for "
                            "--role broker any label")
    issue.add_argument("--ca", type=Path, required=True, metavar="DIR",
                       help="the folder 'pki init' wrote")
    issue.add_argument("--out", type=Path, required=True, metavar="DIR")
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--role", choices=["device", "ingest", "ctl", "broker"], default="device")
    issue.add_argument("--host", action="append", default=[], metavar="HOST",
                       help="--role broker: an IP or DNS name of the broker (repeatable; "
                            "default 127.0.0.1 and localhost)")
    issue.add_argument("--force", action="store_true", help="replace NAME.crt/NAME.key in --out")
    issue.add_argument("--json", action="store_true")
    issue.set_defaults(func=cmd_pki_issue)


def _print(issued: object, as_json: bool) -> None:
    from agent.devtools.pki import Issued

    assert isinstance(issued, Issued)
    if as_json:
        print(json.dumps({"name": issued.name, "role": issued.role, "cert": str(issued.cert),
                          "key": str(issued.key), "not_before": issued.not_before.isoformat(),
                          "not_after": issued.not_after.isoformat()}))
    else:
        print(f"{issued.role} {issued.name}: certificate {issued.cert}, key {issued.key} (0600), "
              f"valid until {issued.not_after:%Y-%m-%d}")


def cmd_pki_init(args: argparse.Namespace) -> int:
    from agent.devtools.pki import init_ca

    _print(init_ca(args.out, name=args.name, days=args.days, force=args.force), args.json)
    return 0


def cmd_pki_issue(args: argparse.Namespace) -> int:
    from agent.devtools.pki import issue

    _print(issue(args.name, args.ca, args.out, role=args.role, days=args.days,
                 hosts=tuple(args.host), force=args.force), args.json)
    return 0
