"""Serial sensor ports through pyserial: one reader thread per port, bytes handed to the event
loop (``call_soon_threadsafe``), where the protocol parser turns them into readings.

A port that disappears (USB unplug) or never opens is retried with capped, jittered backoff;
the first failure to open is reported with the port and the likely fix.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import serial

from agent.core.backoff import Backoff
from agent.core.uri import SensorUri

log = logging.getLogger("agent.serial")


def open_failure_hint(port: str, exc: BaseException) -> str:
    """The likely fix for a port that does not open."""
    err = getattr(exc, "errno", None)
    if err == errno.ENOENT or not os.path.exists(port):
        return (f"{port} does not exist: check the cable and the device name "
                "(ls -l /dev/serial/by-id/); USB adapters may come up as another ttyUSB/ttyACM")
    if err in (errno.EACCES, errno.EPERM) or not os.access(port, os.R_OK | os.W_OK):
        return (f"no permission on {port}: add the user to the dialout group "
                "(sudo usermod -aG dialout $USER; the service has SupplementaryGroups=dialout)")
    if err == errno.EBUSY:
        return f"{port} is busy: another program holds it (fuser {port})"
    return "check the device and its driver (dmesg | tail)"


@dataclass
class PortStats:
    bytes: int = 0
    opens: int = 0
    disconnects: int = 0
    last_error: str | None = None
    connected: bool = False
    last_data_at: float | None = None


@dataclass
class SerialReader:
    """Reads one port in its own thread and hands each chunk to ``on_bytes``."""

    uri: SensorUri
    on_bytes: Callable[[bytes], None]
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0))
    stats: PortStats = field(default_factory=PortStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.uri.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                port = serial.Serial(self.uri.port, self.uri.baud, timeout=0.2)
            except (serial.SerialException, OSError) as exc:
                self.stats.last_error = f"cannot open {self.uri.port}: {exc}. " + \
                    open_failure_hint(self.uri.port, exc)
                if not warned:
                    log.error("sensor %s: %s", self.uri.name, self.stats.last_error)
                    warned = True
                self._stop.wait(self.backoff.next_delay())
                continue
            warned = False
            self.backoff.reset()
            self.stats.opens += 1
            self.stats.connected = True
            log.info("sensor %s: %s open at %d baud (%s)", self.uri.name, self.uri.port,
                     self.uri.baud, self.uri.protocol)
            try:
                while not self._stop.is_set():
                    data = port.read(1)  # returns as soon as a byte arrives (or the timeout)
                    if data:
                        data += port.read(port.in_waiting)
                        self.stats.bytes += len(data)
                        self.stats.last_data_at = time.time()
                        self.on_bytes(data)
            except (serial.SerialException, OSError) as exc:
                self.stats.disconnects += 1
                self.stats.last_error = f"{self.uri.port} lost: {exc}"
                log.warning("sensor %s: %s; reconnecting", self.uri.name, self.stats.last_error)
            finally:
                self.stats.connected = False
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()
            self._stop.wait(self.backoff.next_delay())
