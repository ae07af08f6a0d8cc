"""Pseudo-terminal serial devices for tests: a real tty the agent opens by path, fed by a
writer thread with real protocol traffic at a baud-like pace, that can be unplugged."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path


class PtyDevice:
    """A tty at ``path`` (a symlink to the pty's slave, like /dev/serial/by-id/...)."""

    def __init__(self, path: Path, lines: Callable[[], Iterator[bytes]], baud: int = 115200,
                 pace_s: float | None = None) -> None:
        self.path = path
        self.lines = lines
        self.baud = baud
        self.pace_s = pace_s  # seconds per item from ``lines``; default: the baud rate's pace
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = self._slave = -1
        self.plug()

    def plug(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo back into the master before the reader opens it
        self.path.unlink(missing_ok=True)
        self.path.symlink_to(os.ttyname(self._slave))
        self._stop.clear()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        for line in self.lines():
            if self._stop.is_set():
                return
            try:
                os.write(self._master, line)
            except OSError:
                return
            self.written += len(line)
            time.sleep(self.pace_s if self.pace_s is not None
                       else len(line) * 10 / self.baud)  # 8N1: ten bits a byte

    def unplug(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.unplug()
