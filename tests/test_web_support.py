"""What the web console's tests share (no tests here): a real agent, started as
``lepton-agent run`` on a looped synthetic road clip, with its console on a free loopback port
and users (admin, viewer) in a credentials directory of its own."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from agent.service.web.auth import hash_password

ROOT = Path(__file__).resolve().parents[1]
USERS = {"admin": ("admin", "admin-pass-1"), "viewer": ("viewer", "viewer-pass-1")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebAgent:
    """A running agent with its console."""

    proc: subprocess.Popen[str]
    port: int
    state_dir: Path
    log: Path
    tls: bool = False

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text(errors="replace")


def start_agent(tmp: Path, *, users: bool = True, frames: int = 300,
                tls: tuple[Path, Path] | None = None, model: Path | None = None) -> WebAgent:
    """Start ``lepton-agent run`` on a synthetic road clip (looped, real time) with the web
    console on a free loopback port; returns once the console answers. ``tls``: the device
    certificate and key, served as ``[web] tls`` does (the key as the tls-key credential);
    ``model``: the model bundle (default: the default model)."""
    clip = tmp / "road.mp4"
    if not clip.exists():
        subprocess.run([sys.executable, "-m", "agent", "synth-clip", str(clip), "--frames",
                        str(frames)], check=True, capture_output=True, cwd=ROOT, timeout=120)
    creds = tmp / "credentials"
    creds.mkdir(exist_ok=True)
    if users:
        (creds / "web-users").write_text("".join(
            f"{name}:{role}:{hash_password(pw)}\n" for role, (name, pw) in USERS.items()))
    tls_toml = ""
    if tls is not None:
        (creds / "tls-key").write_bytes(tls[1].read_bytes())
        (creds / "tls-key").chmod(0o600)
        tls_toml = f'tls = true\n[mqtt]\ntls_cert_file = "{tls[0]}"\n'
    port = free_port()
    state = tmp / "state"
    config = tmp / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{state}"
device_id = "cam-web"
{f'[model]{chr(10)}path = "{model}"{chr(10)}' if model else ""}[source]
uri = "{clip}"
loop = true
pace = "realtime"
[analytics]
bucket_s = 60
[web]
listen = "127.0.0.1:{port}"
{tls_toml}""" + ("" if tls is not None else "[mqtt]\n") + 'broker = ""\n')
    log = tmp / "agent.log"
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env)
    agent = WebAgent(proc, port, state, log, tls=tls is not None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent ended: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return agent
        except OSError:
            time.sleep(0.2)
    agent.stop()
    raise RuntimeError(f"the console did not answer within 60 s: {log.read_text()[-2000:]}")


@dataclass
class Client:
    """A tiny HTTP client with a cookie jar (http.client: nothing mocked, no extra package)."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            h["X-CSRF-Token"] = self.csrf
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for k, morsel in jar.items():
                if morsel.value:
                    self.cookies[k] = morsel.value
                else:
                    self.cookies.pop(k, None)
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, payload = self.request(method, path, body, **kw)
        return status, json.loads(payload) if payload else None

    def session(self) -> dict[str, Any]:
        status, data = self.json("GET", "/api/v1/session")
        assert status == 200
        self.csrf = data["csrf"]
        return dict(data)

    def login(self, role: str) -> tuple[int, Any]:
        self.session()
        name, password = USERS[role]
        status, data = self.json("POST", "/api/v1/login", {"user": name, "password": password})
        if status == 200:
            self.csrf = data["csrf"]
        return status, data
