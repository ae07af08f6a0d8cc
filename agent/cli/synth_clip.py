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
    clip.add_argument("--density", type=positive(float), default=0.5,
                      help="how many vehicles enter (junction: 0.5 is about 2 a second)")
    clip.add_argument("--scene", choices=("road", "junction"), default=None,
                      help="road: the model's training scene (default without --truth); "
                           "junction: two roads crossing, for counting (default with --truth)")
    clip.add_argument("--truth", type=Path, default=None, metavar="GT.txt",
                      help="also write the scene's exact ground truth (MOT Challenge format)")
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
    if args.density > 10:
        raise ConfigError(f"density {args.density:g} out of range", key="--density",
                          fix="from above 0 to 10 (0.5 is the default)")
    scene = args.scene or ("junction" if args.truth is not None else "road")
    truth = str(args.truth) if args.truth is not None else None
    n = write_clip(str(args.out), width, height, args.fps, args.frames, seed=args.seed,
                   scene=scene, density=args.density, truth=truth)
    print(f"wrote {n} frames of {width}x{height} to {args.out}"
          + (f" ({scene} scene)" if scene != "road" else "")
          + (f", ground truth to {truth}" if truth else ""))
    return 0
