"""`lepton-agent demo`: the whole loop on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import positive


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` and its flags to the subcommands."""
    demo = sub.add_parser("demo", help="the whole loop on this machine: clip -> agent -> "
                                       "mosquitto -> ingest, with a summary")
    demo.add_argument("--frames", type=positive(int), default=150)
    demo.add_argument("--workdir", type=Path, default=Path("build/demo"))
    demo.add_argument("--model", type=Path)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.devtools.demo import run_demo

    return run_demo(frames=args.frames, workdir=args.workdir, model=args.model)
