"""A private mosquitto on a free loopback port, with its own config file and data folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from agent.errors import AgentError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)


class LocalBroker:
    """Starts and stops one mosquitto bound to 127.0.0.1; restartable on the same port.

    ``tls`` (keys ``ca``, ``cert``, ``key``: the CA that signs the clients, the broker's
    certificate and key) makes it an mqtts listener that requires a client certificate. With
    ``acl_file`` anonymous clients are refused and the file decides who reads and writes what:
    the client certificate's CN is the user name (``use_identity_as_username``) under TLS,
    else the CONNECT's user name, checked against ``password_file`` when one is given."""

    def __init__(self, workdir: Path | None = None, port: int | None = None,
                 persistence: bool = True, tls: dict[str, Path] | None = None,
                 acl_file: Path | None = None, password_file: Path | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise AgentError("mosquitto is not installed",
                             fix="sudo apt-get install mosquitto (the demo and the broker tests "
                                 "start their own instance)")
        self.binary = binary
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lepton-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *([f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}",
               "require_certificate true"] if tls else []),
            *(["use_identity_as_username true"] if tls and acl_file else []),
            *([f"acl_file {acl_file}"] if acl_file else []),
            *([f"password_file {password_file}"] if password_file else []),
            f"allow_anonymous {'false' if acl_file or password_file else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to the 'mosquitto' user, which cannot read our files.
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"
        self.tls = tls is not None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 5.0) -> LocalBroker:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AgentError(f"mosquitto exited with {self.process.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05 if self.tls else 0)
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise AgentError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
