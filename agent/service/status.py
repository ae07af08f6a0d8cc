"""The status socket: the running agent answers each connection with one JSON snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import AgentError


def socket_path(state_dir: Path, configured: Path | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    """Where the status socket lives: configured, else systemd's RuntimeDirectory (from
    ``environ``, this process's by default), else state_dir."""
    if configured:
        return configured
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / "status.sock" if runtime else state_dir / "agent.sock"


# The unit (systemd/lepton-agent.service) sets RuntimeDirectory=lepton-agent, so the service's
# socket is /run/lepton-agent/status.sock. A `status` typed in a shell has no $RUNTIME_DIRECTORY
# (systemd sets it only inside the unit), so it looks there by name; likewise for the state
# directory (StateDirectory=lepton-agent) when the outbox is read without a running agent.
SYSTEMD_RUNTIME_DIR = Path("/run/lepton-agent")
SYSTEMD_STATE_DIR = Path("/var/lib/lepton-agent")


def socket_candidates(state_dir: Path, configured: Path | None = None) -> list[Path]:
    """Where to look for a running agent's socket, first match wins: the configured path only,
    when one is given; else this environment's default, the state directory's, then the
    systemd service's, then that of the volatile outbox an agent runs on when the state
    directory cannot be written (agent.storage.volatile)."""
    from agent.storage.volatile import volatile_dir

    if configured:
        return [configured]
    found: list[Path] = []
    for path in (socket_path(state_dir), state_dir / "agent.sock",
                 SYSTEMD_RUNTIME_DIR / "status.sock", volatile_dir(state_dir) / "agent.sock"):
        if path not in found:
            found.append(path)
    return found


def query(path: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running agent's snapshot, or None when nothing answers at ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError):
        return None
    try:
        data: dict[str, Any] = json.loads(b"".join(chunks))
    except json.JSONDecodeError:
        return None
    return data


def claim(path: Path) -> None:
    """Make ``path`` free for our socket: remove a stale one left by a dead process; refuse to
    start when another agent answers there (two agents would share one outbox)."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    answer = query(path, timeout=1.0)
    if answer is not None:
        raise AgentError(f"another agent (pid {answer.get('pid')}) is running with status socket "
                         f"{path}", fix="stop it first (systemctl stop lepton-agent), or give this "
                                        "one another --state-dir")
    path.unlink()


async def serve(path: Path, snapshot: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer:
    """Start answering on ``path`` (mode 0660: the lepton group may read the status)."""
    claim(path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(snapshot()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(answer, path=str(path))
    os.chmod(path, 0o660)
    return server
