"""Where the agent's files live: its shipped data (the source tree in development,
``<prefix>/share/lepton`` once installed from the wheel: board configs, the default model) and
the directories a crash's debug log may be written to."""

from __future__ import annotations

import os
import sys
import tempfile
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


def debug_log_dirs() -> list[Path]:
    """Where a crash's full traceback may be written, most specific first: systemd's
    LogsDirectory= (/var/log/lepton-agent for the service), the user's XDG state directory,
    then the temporary directory."""
    dirs = [Path(d) for d in os.environ.get("LOGS_DIRECTORY", "").split(":") if d]
    xdg = os.environ.get("XDG_STATE_HOME") or (
        str(Path.home() / ".local" / "state") if os.environ.get("HOME") else "")
    if xdg:
        dirs.append(Path(xdg) / "lepton-agent")
    dirs.append(Path(tempfile.gettempdir()))
    return dirs
