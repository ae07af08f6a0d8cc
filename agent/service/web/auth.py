"""The web console's users, password hashes, sessions and login rate limit.

Users come from ``$CREDENTIALS_DIRECTORY/{[web] users_credential}`` (systemd's
``LoadCredential=``), one ``NAME:ROLE:HASH`` line each, ROLE ``viewer`` or ``admin``; the hash
is scrypt (``hashlib.scrypt``, no extra package): ``scrypt$N$r$p$SALT$KEY`` with the salt and
key in unpadded base64. :func:`hash_password` makes one. Sessions live in memory (a restart
logs everyone out) and are referred to by a random token in an HttpOnly, SameSite=Strict
cookie; each has its own CSRF token, which every write must echo in ``X-CSRF-Token``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import ConfigError

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
# N=2^14, r=8: 16 MiB and 76 ms per check (measured on this 2-core x86 dev host, shared);
# the login rate limit bounds how often an attacker can make the device pay it.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MAX_SESSIONS = 256  # anonymous pre-login sessions included; the oldest is dropped beyond
LOGIN_FAILURES = 5  # failed logins per client address ...
LOGIN_WINDOW_S = 60.0  # ... within this window; more are answered 429


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                  salt: bytes | None = None) -> str:
    """The ``scrypt$N$r$p$SALT$KEY`` form of ``password`` for a users file line."""
    salt = salt or os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024,
                         dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the scrypt hash ``encoded`` (constant-time compare)."""
    try:
        kind, n, r, p, salt, key = encoded.split("$")
        if kind != "scrypt":
            return False
        want = _unb64(key)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=128 * 1024 * 1024, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hash: str


def credentials_file(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name``, or None when the variable is not set."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / name if directory else None


def load_users(path: Path | None) -> dict[str, User]:
    """The users of a ``NAME:ROLE:HASH`` file (empty when there is no file). ConfigError names
    the line of a malformed entry, never its hash."""
    if path is None or not path.is_file():
        return {}
    users: dict[str, User] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ROLES or not parts[2].startswith("scrypt$") \
                or not parts[0]:
            raise ConfigError(f"{path.name} line {number} is not NAME:ROLE:HASH with ROLE viewer "
                              "or admin and an scrypt hash", file=str(path),
                              fix="make the hash with agent.service.web.auth.hash_password "
                                  "(docs/web.md)")
        name, role, encoded = parts
        users[name] = User(name, role, encoded)  # type: ignore[arg-type]
    return users


@dataclass
class Session:
    token: str
    csrf: str
    user: str | None  # None: not logged in
    role: Role | None
    expires: float  # time.monotonic()


class Sessions:
    """In-memory sessions by token, bounded (the oldest goes first)."""

    def __init__(self, ttl_s: float, limit: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def new(self, user: str | None, role: Role | None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, role,
                          time.monotonic() + self.ttl_s)
        self._by_token[session.token] = session
        while len(self._by_token) > self.limit:
            self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if time.monotonic() >= session.expires:
            del self._by_token[token]
            return None
        return session

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)


@dataclass
class LoginLimiter:
    """At most ``failures`` failed logins per client address in ``window_s``."""

    failures: int = LOGIN_FAILURES
    window_s: float = LOGIN_WINDOW_S
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        times = self._seen.get(client)
        if not times:
            return 0.0
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) < self.failures:
            return 0.0
        return max(0.0, self.window_s - (now - times[0]))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._seen) > 4096:  # bounded: forget addresses with nothing recent
            self._seen = {k: v for k, v in self._seen.items() if v and now - v[-1] < self.window_s}
        self._seen.setdefault(client, deque(maxlen=self.failures)).append(now)

    def succeeded(self, client: str) -> None:
        self._seen.pop(client, None)
