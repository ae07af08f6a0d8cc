"""What several commands share: the config from a file and the flags, and argparse number types."""

from __future__ import annotations

import argparse
import math
from typing import Any

from agent.errors import ConfigError

FLAG_FOR_KEY = {
    "source.uri": "--source", "model.path": "--model", "mqtt.broker": "--broker",
    "agent.device_id": "--device-id", "agent.site": "--site", "agent.state_dir": "--state-dir",
    "source.max_frames": "--max-frames", "source.pace": "--pace", "model.num_threads": "--threads",
    "model.delegate": "--delegate", "source.stream": "--stream", "model.labels": "--labels",
}



def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        section, key = path.split(".")
        out.setdefault(section, {})[key] = value

    put("source.uri", args.source)
    put("source.stream", args.stream)
    put("model.path", args.model)
    put("mqtt.broker", "" if args.offline else args.broker)
    put("agent.device_id", args.device_id)
    put("agent.site", args.site)
    put("agent.state_dir", args.state_dir)
    put("source.max_frames", args.max_frames)
    put("source.pace", args.pace)
    put("source.loop", True if args.loop else None)
    put("model.num_threads", args.threads)
    put("model.delegate", args.delegate)
    put("model.labels", getattr(args, "labels", None))
    put("agent.log_level", args.log_level)
    put("outbox.delivery", args.delivery)
    if getattr(args, "sensor", None):
        out["sensors"] = [{"uri": uri} for uri in args.sensor]
    return out


def load_config_from_args(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    if args.offline and args.broker:
        raise ConfigError("--offline and --broker exclude each other", key="--offline",
                          fix="drop one of them")
    try:
        return load_config(args.config, board=args.board, overrides=overrides_from_args(args))
    except ConfigError as exc:
        if exc.file == "command line" and exc.key in FLAG_FOR_KEY:
            raise ConfigError(exc.message.split(": ", 1)[-1], key=FLAG_FOR_KEY[exc.key],
                              fix=exc.fix) from exc
        raise


def positive(kind: type[int] | type[float], zero: bool = False) -> Any:
    """An argparse type: a number above zero (or at least zero), with a clear usage error."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'zero or more' if zero else 'above zero'}")
        return value
    parse.__name__ = kind.__name__
    return parse
