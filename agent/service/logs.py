"""Logging setup: journald-friendly under systemd (no duplicate timestamps)."""

from __future__ import annotations

import logging
import os
import sys
from typing import ClassVar


def setup_logging(level: str = "info") -> None:
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = ("<%(levelno)s>%(name)s: %(message)s" if under_journald
           else "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter(fmt) if under_journald else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("paho").setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    """Prefixes syslog priorities (<3> error ... <7> debug) that journald understands."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        record.levelno = self._PRIORITY.get(record.levelno, 6)
        return super().format(record)
