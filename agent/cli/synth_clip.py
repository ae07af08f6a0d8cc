"""`lepton-agent synth-clip`: write a clip of the synthetic traffic scene."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``synth-clip`` and its flags to the subcommands."""
    clip = sub.add_parser("synth-clip", help="write a clip of the synthetic traffic scene")
    clip.add_argument("out", type=Path)
    clip.add_argument("--size", default="640x480")
    clip.add_argument("--fps", type=positive(float), default=15.0)
    clip.add_argument("--frames", type=positive(int), default=150)
    clip.add_argument("--seed", type=positive(int, zero=True), default=0)
    clip.set_defaults(func=cmd_synth_clip)


def cmd_synth_clip(args: argparse.Namespace) -> int:
    from agent.sources.synthetic import write_clip

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"malformed size {args.size!r}; use WxH, e.g. 640x480",
                          key="--size") from exc
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ConfigError(f"size {width}x{height} out of range", key="--size",
                          fix="width and height from 16 to 8192, e.g. 640x480")
    n = write_clip(str(args.out), width, height, args.fps, args.frames, seed=args.seed)
    print(f"wrote {n} frames of {width}x{height} to {args.out}")
    return 0
