"""The sd_notify protocol (READY, WATCHDOG, STATUS, STOPPING) over $NOTIFY_SOCKET, in stdlib.

No libsystemd binding is needed: the protocol is one datagram of ``KEY=VALUE`` lines to a
unix socket (abstract when the path starts with '@').
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("agent.notify")


class Notifier:
    """Sends notifications when running under systemd; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path:
            self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and owned else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines; False if not under systemd or the socket is gone."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                # Non-blocking: sent from the event loop, where a full socket queue (a stalled
                # systemd, a test that stopped reading) must cost one lost ping, not the loop.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), exc)
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready="1", status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog="1")

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def stopping(self) -> bool:
        return self.send(stopping="1", status="stopping: publishing what is left")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
