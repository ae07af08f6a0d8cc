"""Logging: journald's native protocol under systemd (structured fields, no duplicate
timestamps), plain lines on a terminal; secrets are masked in every message."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("paho").setLevel(logging.WARNING)
