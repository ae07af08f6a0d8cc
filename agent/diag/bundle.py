"""``diag bundle``: a support tarball a technician can send, with every secret removed."""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentError

REDACTED = "***"
PACKAGES = ("lepton-edge", "ai-edge-litert", "tflite-runtime", "numpy", "opencv-python-headless",
            "paho-mqtt", "pyserial", "cffi", "pydantic", "jsonschema", "prometheus-client")


def secret_values() -> list[str]:
    """Every credential the agent can see: the files of $CREDENTIALS_DIRECTORY."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    values: list[str] = []
    if directory and Path(directory).is_dir():
        for path in Path(directory).iterdir():
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            values.extend(v for v in (text, *text.splitlines()) if len(v) >= 4)
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, REDACTED)
    return text


def _versions() -> dict[str, Any]:
    from agent import kernels

    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"agent": __version__, "python": sys.version, "platform": platform.platform(),
            "machine": platform.machine(), "kernels": kernels.variant(), "packages": found}


def _board() -> str:
    parts = []
    for path in ("/proc/device-tree/model", "/etc/nv_tegra_release", "/etc/os-release"):
        try:
            parts.append(f"== {path}\n" + Path(path).read_text(errors="replace").strip("\0\n"))
        except OSError:
            continue
    parts.append(f"== uname\n{' '.join(platform.uname())}")
    return "\n".join(parts) + "\n"


def _logs(cfg: AgentConfig) -> str:
    journalctl = shutil.which("journalctl")
    if journalctl:
        try:
            out = subprocess.run([journalctl, "-u", "lepton-agent", "--no-pager", "-n", "2000",
                                  "-o", "short-iso"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out and out.stdout.strip() and "No entries" not in out.stdout:
            return out.stdout
    logs = sorted(cfg.agent.state_dir.glob("*.log"))
    if logs:
        return "".join(f"== {p}\n{_tail(p)}" for p in logs)
    return "no journal entries for lepton-agent and no log files in the state directory\n"


def _tail(path: Path, limit: int = 200_000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as exc:
        return f"(unreadable: {exc.strerror})\n"


def _crash_logs(newest: int = 5) -> str:
    """The newest tracebacks the CLI wrote (``lepton-agent: internal error ... full traceback
    in PATH``), so that a support bundle carries them."""
    from agent.paths import debug_log_dirs

    found = sorted({p for d in debug_log_dirs() for p in d.glob("lepton-agent-*-*.log")},
                   key=lambda p: p.stat().st_mtime if p.exists() else 0)[-newest:]
    return "".join(f"== {p}\n{_tail(p, 50_000)}\n" for p in found) or "none\n"


def write_bundle(cfg: AgentConfig, diag: dict[str, Any], output: Path,
                 status: dict[str, Any] | None, config_file: Path | None = None,
                 config_error: str | None = None) -> Path:
    """Write the tarball; returns its path. With ``config_error`` (the config did not load,
    ``cfg`` is the built-in defaults) config.json holds the error, not the defaults."""
    secrets = secret_values()
    members = {
        "diag.json": json.dumps(diag, indent=2),
        "config.json": json.dumps({"error": config_error} if config_error
                                  else cfg.model_dump(mode="json"), indent=2),
        "versions.json": json.dumps(_versions(), indent=2),
        "board.txt": _board(),
        "logs.txt": _logs(cfg),
        "status.json": json.dumps(status or {"state": "not running"}, indent=2),
        "crashes.txt": _crash_logs(),
    }
    if config_file is not None:
        members["config-file.toml"] = _tail(config_file)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root = f"lepton-diag-{cfg.agent.device_id}-{stamp}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(output, "w:gz") as tar:
            for name, text in members.items():
                data = redact(text, secrets).encode()
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o640
                tar.addfile(info, io.BytesIO(data))
    except OSError as exc:
        raise AgentError(f"cannot write the bundle {output}: {exc.strerror or exc}",
                         fix="choose a writable place with --output") from exc
    return output
