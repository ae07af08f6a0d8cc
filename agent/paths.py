"""Where the agent's shipped data lives: the source tree in development, ``<prefix>/share/lepton``
once installed from the wheel (board configs, the default model)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _candidates(name: str) -> list[Path]:
    env = os.environ.get("LEPTON_SHARE_DIR")
    roots = [Path(env)] if env else []
    roots += [SOURCE_ROOT, Path(sys.prefix) / "share" / "lepton", Path("/usr/share/lepton")]
    return [root / name for root in roots]


def shared_dir(name: str) -> Path:
    """The first existing ``name`` directory (``board_configs``, ``models``) among the roots."""
    for path in _candidates(name):
        if path.is_dir():
            return path
    return SOURCE_ROOT / name


def resolve_model(path: Path) -> Path:
    """A relative model path that does not exist here is looked up among the shipped models."""
    if path.is_absolute() or path.exists() or path.parts[:1] != ("models",):
        return path
    shipped = shared_dir("models").joinpath(*path.parts[1:])
    return shipped if shipped.exists() else path
