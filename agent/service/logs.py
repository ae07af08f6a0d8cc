"""Logging: journald's native protocol under systemd (structured fields, no duplicate
timestamps), plain lines on a terminal; secrets are masked in every message."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from agent.paths import debug_log_dirs

JOURNAL_SOCKET = "/run/systemd/journal/socket"


class SecretFilter(logging.Filter):
    """Replaces known secret values in log messages (never log a credential by accident)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class JournalHandler(logging.Handler):
    """Sends records to journald as structured entries (MESSAGE, PRIORITY, LOGGER, ...)."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, address: str = JOURNAL_SOCKET, identifier: str = "lepton-agent") -> None:
        super().__init__()
        self.address = address
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @staticmethod
    def _field(name: str, value: str) -> bytes:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:  # journald's binary-safe form: NAME\n<64-bit LE length><data>\n
            return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        return name.encode() + b"=" + data + b"\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = {
                "MESSAGE": message, "PRIORITY": str(self.PRIORITY.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name,
                "THREAD_NAME": record.threadName or "", "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName,
            }
            self.sock.sendto(b"".join(self._field(k, v) for k, v in fields.items()), self.address)
        except OSError:
            self.handleError(record)


def setup_logging(level: str = "info", secrets: Iterable[str] = ()) -> None:
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") and Path(JOURNAL_SOCKET).exists():
        handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineTracebacks("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("paho").setLevel(logging.WARNING)


def write_debug_log(text: str, kind: str = "crash") -> Path | None:
    """Write ``text`` (a traceback) to a new private file ``lepton-agent-KIND-TIME-PID.log`` in the
    first writable of ``debug_log_dirs()``; its path, or None when nowhere is writable."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for directory in debug_log_dirs():
        for n in range(100):
            suffix = f"-{n}" if n else ""
            path = directory / f"lepton-agent-{kind}-{stamp}-{os.getpid()}{suffix}.log"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                # O_EXCL: never follow a planted link in a shared directory such as /tmp.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError:
                break
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
                out.write(text)
            return path
    return None


class OneLineTracebacks(logging.Formatter):
    """A terminal formatter that writes a logged exception's traceback to a debug log and shows
    one line naming the exception and that file (``--log-level debug`` shows it in full)."""

    def formatException(self, ei: Any) -> str:
        full = super().formatException(ei)
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return full
        path = write_debug_log(full, kind="traceback")
        name = ei[0].__name__ if ei and ei[0] else "exception"
        where = f"full traceback in {path}" if path else "no writable place for its traceback"
        return f"  {name}: {str(ei[1]).splitlines()[0] if ei[1] and str(ei[1]) else ''} ({where})"
