"""The web console's HTTP server: pages, the JSON API under ``/api/v1/`` and the live JPEG stream.

It runs on the agent's own event loop (aiohttp: docs/web.md says why), started by
``AgentApp._run`` after the command service and closed at shutdown. Everything it shows comes
from the typed health snapshot (``RuntimeHealth.snapshot()``), the pipelines' latest-frame
slots and the outbox's read-only report API; the editor saves through the command service's
config-apply path (``CommandService.apply``: only changed pipelines restart, a failed start
rolls back, the config version goes up), the diagnostics page runs the command service's diag
(``lepton-agent diag --json`` in a process of its own).

Security (docs/web.md): a login is required on any address but loopback, and on loopback too
when a users file exists; a session cookie (HttpOnly, SameSite=Strict, Secure under TLS); every
write carries the session's CSRF token in ``X-CSRF-Token``; only ``admin`` writes; failed logins
are rate-limited per client address. Nothing secret reaches a page or a log line: no access
log, passwords and tokens are never logged, the broker address is not shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from agent import __version__
from agent.config.schema import LineSection, PipelineSection, ZoneSection, parse_listen
from agent.core.contract.command import Command, CommandError
from agent.core.contract.result import iso_utc
from agent.errors import AgentError, ConfigError, StorageError
from agent.service.web.auth import (
    LoginLimiter,
    Role,
    Session,
    Sessions,
    User,
    credentials_file,
    hash_password,
    load_users,
    verify_password,
)
from agent.service.web.live import Overlay, Renderer
from agent.storage.report import (
    blobs_present,
    read_blob,
    read_counts,
    read_delivery_marks,
    read_events,
)

if TYPE_CHECKING:
    from agent.config import AgentConfig, Secrets
    from agent.service.app import AgentApp
    from agent.service.pipelines import Pipeline

log = logging.getLogger("agent.web")

COOKIE = "lepton_session"
CSRF_HEADER = "X-CSRF-Token"
PAGES = {"/": "overview.html", "/live": "live.html", "/editor": "editor.html",
         "/counts": "counts.html", "/events": "events.html", "/diagnostics": "diagnostics.html",
         "/login": "login.html"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
FRAME_WAIT_S = 3.0  # a frame request waits this long for the first frame of a watched pipeline
BUNDLE_TIMEOUT_S = 120.0
MAX_BODY = 256 * 1024
# Compared with when a user is unknown, so a login takes as long either way.
_DUMMY_HASH = hash_password("not a password", n=1 << 14, salt=b"\0" * 16)


class WebUnavailable(AgentError):
    """The web console cannot start (its address is taken, TLS files or users are missing)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_error(status: int, reason: str, fix: str | None = None, **extra: Any) -> web.Response:
    body = {"ok": False, "reason": reason, **({"fix": fix} if fix else {}), **extra}
    return web.json_response(body, status=status)


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _snapshot_of(payload: bytes) -> str | None:
    try:
        snap = json.loads(payload).get("snapshot") or {}
        return str(snap["sha256"]) if "sha256" in snap else None
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    role: Role | None  # None: public (login page, static files, session, login)


class WebConsole:
    """The console of one agent run."""

    def __init__(self, app: AgentApp, config: AgentConfig, secrets_: Secrets) -> None:
        self.app = app
        self.config = config
        self.secrets = secrets_
        w = config.web
        self.host, self.port = parse_listen(w.listen)
        self.users: dict[str, User] = load_users(credentials_file(w.users_credential))
        self.login_required = bool(self.users) or not is_loopback(self.host)
        self.sessions = Sessions(w.session_ttl_s)
        self.limiter = LoginLimiter()
        self.renderers: dict[int, Renderer] = {}
        self.closing = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._marks: tuple[float, Any] = (0.0, None)

    # -- start and stop ---------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.config.web.tls:
            return None
        cert, key = self.config.mqtt.tls_cert_file, self.secrets.tls_key_file
        if cert is None or key is None:
            raise WebUnavailable("[web] tls is on but the device certificate or key is missing",
                                 fix="set [mqtt] tls_cert_file and put the key in "
                                     "$CREDENTIALS_DIRECTORY/tls-key, or set [web] tls = false")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise WebUnavailable(f"cannot load the device certificate for the web console: "
                                 f"{exc}", fix="check [mqtt] tls_cert_file and the tls-key "
                                               "credential") from None
        return ctx

    async def start(self) -> None:
        """Bind and serve; raises WebUnavailable (the agent logs it and runs on without)."""
        if not is_loopback(self.host) and not self.users:
            raise WebUnavailable(
                f"[web] listen {self.config.web.listen} is not loopback and no users are "
                f"configured, so nobody could log in",
                fix=f"add NAME:ROLE:HASH lines to $CREDENTIALS_DIRECTORY/"
                    f"{self.config.web.users_credential} (docs/web.md), or listen on 127.0.0.1")
        ctx = self._ssl()
        application = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        for route in self.routes():
            application.router.add_route(route.method, route.path, route.handler)
        self.runner = web.AppRunner(application, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, ssl_context=ctx,
                           shutdown_timeout=1.0, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise WebUnavailable(f"web console: cannot listen on {self.config.web.listen}: "
                                 f"{exc.strerror}", fix="choose another [web] listen "
                                 "(--web-listen), or stop what uses that port") from None
        server = site._server  # the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        scheme = "https" if ctx else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{scheme}://{host}:{self.port}"
        log.info("web console on %s (%s)", self.url,
                 "login required" if self.login_required else "loopback, no login")

    async def close(self) -> None:
        self.closing.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def routes(self) -> list[Route]:
        r: list[Route] = [Route("GET", path, self.page, None if path == "/login" else "viewer")
                          for path in PAGES]
        return [
            *r,
            Route("GET", "/static/{name}", self.static, None),
            Route("GET", "/api/v1/session", self.session_info, None),
            Route("POST", "/api/v1/login", self.login, None),
            Route("POST", "/api/v1/logout", self.logout, "viewer"),
            Route("GET", "/api/v1/status", self.status, "viewer"),
            Route("GET", "/api/v1/pipelines/{stream}/frame.jpg", self.frame, "viewer"),
            Route("GET", "/api/v1/pipelines/{stream}/live.mjpeg", self.mjpeg, "viewer"),
            Route("GET", "/api/v1/pipelines/{stream}/rules", self.get_rules, "viewer"),
            Route("POST", "/api/v1/pipelines/{stream}/rules/validate", self.validate_rules,
                  "viewer"),
            Route("PUT", "/api/v1/pipelines/{stream}/rules", self.put_rules, "admin"),
            Route("GET", "/api/v1/pipelines/{stream}/counts", self.live_counts, "viewer"),
            Route("GET", "/api/v1/counts", self.counts, "viewer"),
            Route("GET", "/api/v1/events", self.events, "viewer"),
            Route("GET", "/api/v1/snapshots/{blob}", self.snapshot, "viewer"),
            Route("GET", "/api/v1/diag", self.diag, "viewer"),
            Route("GET", "/api/v1/support-bundle", self.bundle, "admin"),
        ]

    # -- the middleware: session, role, CSRF, headers ---------------------------------------------

    def _route_role(self, request: web.Request) -> tuple[bool, Role | None]:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        for route in self.routes():
            if route.path == canonical and route.method == request.method:
                return True, route.role
        return False, None

    def _session(self, request: web.Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None and not self.login_required:
            # loopback without users: everyone here is the device's admin; the cookie still
            # carries a CSRF token of its own
            session = self.sessions.new("local", "admin")
            request["new_session"] = session
        return session

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        known, role = self._route_role(request)
        if known:
            session = self._session(request)
            request["session"] = session
            response = await self._guarded(request, handler, session, role)
        else:
            response = await handler(request)  # 404 / 405 by the router
        new = request.get("new_session")
        if isinstance(new, Session):
            self._set_cookie(response, new)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _guarded(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       session: Session | None, role: Role | None) -> web.StreamResponse:
        writes = request.method not in ("GET", "HEAD")
        if role is not None and (session is None or session.role is None):
            if request.path.startswith("/api/"):
                return _json_error(401, "not logged in", "log in at /login")
            raise web.HTTPFound(f"/login?next={request.path}")
        if writes:
            token = request.headers.get(CSRF_HEADER, "")
            if session is None or not token or not secrets.compare_digest(token, session.csrf):
                return _json_error(403, "missing or wrong CSRF token",
                                   f"send the session's token (GET /api/v1/session) in "
                                   f"{CSRF_HEADER}")
        if role == "admin" and (session is None or session.role != "admin"):
            return _json_error(403, "only an admin may change this",
                               "log in as a user with the admin role")
        return await handler(request)

    def _set_cookie(self, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict",
                            secure=self.config.web.tls, path="/",
                            max_age=int(self.config.web.session_ttl_s))

    # -- pages and static files -------------------------------------------------------------------

    @staticmethod
    def _asset(name: str) -> bytes | None:
        if "/" in name or name.startswith("."):
            return None
        try:
            return (resources.files("agent.service.web") / "static" / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, OSError):
            return None

    async def page(self, request: web.Request) -> web.StreamResponse:
        body = self._asset(PAGES[request.match_info.route.resource.canonical  # type: ignore[union-attr]
                                 ])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self._asset(name)
        kind = STATIC_TYPES.get(Path(name).suffix)
        if body is None or kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type=kind,
                            headers={"Cache-Control": "max-age=300"})

    # -- session ----------------------------------------------------------------------------------

    async def session_info(self, request: web.Request) -> web.StreamResponse:
        session = request["session"]
        if session is None:  # a pre-login session: a CSRF token for the login form
            session = self.sessions.new(None, None)
            request["new_session"] = session
        return web.json_response({"user": session.user, "role": session.role,
                                  "csrf": session.csrf, "login_required": self.login_required,
                                  "device": self.config.agent.device_id,
                                  "version": __version__})

    async def login(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or "?"
        wait = self.limiter.retry_after(client)
        if wait > 0:
            return _json_error(429, "too many failed logins from this address",
                               f"wait {wait:.0f} s", retry_after_s=round(wait, 1))
        try:
            body = await request.json()
            name, password = str(body["user"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return _json_error(400, "the body is not {\"user\": ..., \"password\": ...}")
        user = self.users.get(name)
        ok = await asyncio.to_thread(verify_password, password,
                                     user.hash if user else _DUMMY_HASH)
        if not ok or user is None:
            self.limiter.failed(client)
            log.warning("web console: failed login from %s", client)  # never the name tried
            return _json_error(401, "wrong user or password")
        self.limiter.succeeded(client)
        old = request["session"]
        if old is not None:
            self.sessions.drop(old.token)  # a new token at login: no session fixation
        session = self.sessions.new(user.name, user.role)
        request["new_session"] = session
        log.info("web console: %s (%s) logged in from %s", user.name, user.role, client)
        return web.json_response({"ok": True, "user": user.name, "role": user.role,
                                  "csrf": session.csrf})

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request["session"]
        if session is not None:
            self.sessions.drop(session.token)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- the overview -----------------------------------------------------------------------------

    def _pipeline(self, request: web.Request) -> Pipeline:
        parts = self.app.parts
        stream = request.match_info["stream"]
        pipeline = parts.pipelines.get(stream) if parts is not None else None
        if pipeline is None:
            raise web.HTTPNotFound(text=json.dumps({"ok": False, "reason":
                                                    f"no pipeline {stream!r}"}),
                                   content_type="application/json")
        return pipeline

    async def _delivery_marks(self) -> Any:
        at, marks = self._marks
        if marks is None or time.monotonic() - at > 1.0:
            try:
                marks = await asyncio.to_thread(read_delivery_marks, self.config.agent.state_dir)
            except StorageError:
                marks = None
            self._marks = (time.monotonic(), marks)
        return marks

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.status_json())

    async def status_json(self) -> dict[str, Any]:
        """The overview's data, from the typed health snapshot (``/api/v1/status``)."""
        parts = self.app.parts
        assert parts is not None
        snap = parts.health.snapshot()
        marks = await self._delivery_marks()
        now_ns = time.time_ns()

        def when(ns: int | None) -> dict[str, Any] | None:
            return None if ns is None else {"at": iso_utc(ns / 1e9),
                                            "age_s": round((now_ns - ns) / 1e9, 1)}

        pipelines = []
        for status in snap.pipelines:
            pipeline = parts.pipelines.get(status.stream)
            ref = pipeline.model_ref if pipeline is not None else None
            cap = status.capture
            pipelines.append({
                "stream": status.stream, "state": status.state, "reason": status.reason,
                "fps": status.fps, "frames_captured": cap.frames,
                "frames_processed": status.inference.frames, "frames_dropped": status.frames.dropped,
                "queue": {"depth": status.frames.depth, "capacity": status.frames.capacity},
                "source": {"uri": status.source,
                           "state": ("ok" if cap.alive and not cap.last_error else
                                     "error" if cap.last_error else
                                     "ended" if status.state == "finished" else "stopped"),
                           "last_error": cap.last_error, "reconnects": cap.reconnects},
                "model": {"name": ref.name if ref else status.model,
                          "version": ref.version if ref else None,
                          "sha256": status.model_sha256,
                          "slot": self._slot(pipeline)},
            })
        o = snap.outbox
        return {
            "device": snap.device, "site": snap.site, "version": __version__,
            "state": snap.state, "health": {"status": snap.health.status,
                                            "problems": list(snap.health.problems)},
            "uptime_s": snap.uptime_s, "fps": snap.fps,
            "config_version": self.app.config_version,
            "pipelines": pipelines,
            "thermal": {"temp_c": snap.thermal.temp_c, "throttled": snap.thermal.throttled,
                        "level": snap.thermal.level},
            "delivery": {
                "mode": self.config.outbox.delivery,
                "outbox_depth": o.backlog, "oldest_unsent_s": o.oldest_unsent_s,
                "published": o.published, "ingested": o.ingested,
                "last_puback": when(marks.last_puback_ns) if marks else None,
                "last_ingest_ack": when(marks.last_ingest_ack_ns) if marks else None,
                "evictions": {k: {"records": v.records, "bytes": v.bytes}
                              for k, v in o.evictions.items()},
                "blobs_waiting": o.blobs_waiting, "storage_error": o.storage_error,
                "broker": {"connected": snap.broker.connected,
                           "connects": snap.broker.connects,
                           "last_error": snap.broker.last_error},
            },
            "ota": snap.ota.to_json(),
            "last_error": snap.last_error,
        }

    def _slot(self, pipeline: Pipeline | None) -> str | None:
        """The model OTA slot (``a``/``b``) this pipeline's model is loaded from; None while it
        runs its configured model (agent.service.ota installs into
        ``{state_dir}/ota/slots/{model}/a|b``)."""
        if pipeline is None:
            return None
        path = Path(pipeline.spec.model)
        slots = self.config.agent.state_dir / "ota" / "slots"
        return path.name if path.parent.parent == slots and path.name in ("a", "b") else None

    # -- live view --------------------------------------------------------------------------------

    def _renderer(self, pipeline: Pipeline) -> Renderer:
        slot = pipeline.latest
        renderer = self.renderers.get(id(slot))
        if renderer is None or renderer.slot is not slot:
            self.renderers = {k: v for k, v in self.renderers.items()
                              if any(p.latest is v.slot for p in self._pipelines())}
            renderer = self.renderers[id(slot)] = Renderer(
                slot, min_interval_s=0.9 / self.config.web.live_fps)
            slot.min_interval_s = 0.5 / self.config.web.live_fps  # twice what is drawn
        return renderer

    def _pipelines(self) -> list[Pipeline]:
        return list(self.app.parts.pipelines) if self.app.parts is not None else []

    @staticmethod
    def _overlay(pipeline: Pipeline) -> Overlay:
        spec = pipeline.spec.analytics
        if spec is None:
            return Overlay()
        def pts(points: Any) -> tuple[tuple[float, float], ...]:
            return tuple((float(p[0]), float(p[1])) for p in points)

        return Overlay(lines=tuple((r.name, pts((r.line.p1, r.line.p2))) for r in spec.lines),
                       zones=tuple((z.name, pts(z.polygon.vertices)) for z in spec.zones))

    async def frame(self, request: web.Request) -> web.StreamResponse:
        pipeline = self._pipeline(request)
        overlay = self._overlay(pipeline) if request.query.get("overlay") == "1" else None
        renderer = self._renderer(pipeline)
        pipeline.latest.want()
        deadline = time.monotonic() + FRAME_WAIT_S
        while True:
            got = await asyncio.to_thread(renderer.jpeg, overlay)
            if got is not None or time.monotonic() > deadline:
                break
            pipeline.latest.want()
            await asyncio.sleep(0.1)
        if got is None:
            return _json_error(503, f"no frame from {pipeline.stream} yet",
                               "check the pipeline's source on the overview")
        return web.Response(body=got[1], content_type="image/jpeg",
                            headers={"Cache-Control": "no-store", "X-Frame-Seq": str(got[0])})

    async def mjpeg(self, request: web.Request) -> web.StreamResponse:
        """``multipart/x-mixed-replace`` JPEGs with the overlay, at most ``[web] live_fps`` a
        second for this viewer; a frame is drawn and encoded once however many watch."""
        pipeline = self._pipeline(request)
        renderer = self._renderer(pipeline)
        period = 1.0 / self.config.web.live_fps
        response = web.StreamResponse(headers={
            "Content-Type": "multipart/x-mixed-replace; boundary=frame",
            "Cache-Control": "no-store"})
        await response.prepare(request)
        last = -1
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while not self.closing.is_set():
                started = time.monotonic()
                pipeline.latest.want()
                got = await asyncio.to_thread(renderer.jpeg, self._overlay(pipeline))
                if got is not None and got[0] != last:
                    last, jpeg = got
                    await response.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: " + str(len(jpeg)).encode()
                                         + b"\r\n\r\n" + jpeg + b"\r\n")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.closing.wait(),
                                           max(0.0, period - (time.monotonic() - started)))
        return response

    # -- the editor -------------------------------------------------------------------------------

    def _sections(self) -> list[PipelineSection]:
        config = self.app.config
        if config.pipelines is not None:
            return list(config.pipelines)
        return [PipelineSection(stream=config.source.stream, source=config.source.uri,
                                lines=list(config.lines), zones=list(config.zones))]

    async def get_rules(self, request: web.Request) -> web.StreamResponse:
        pipeline = self._pipeline(request)
        section = next((s for s in self._sections() if s.stream == pipeline.stream), None)
        model = pipeline.model
        labels: list[str] = []
        if model is not None:
            manifest = model.manifest
            labels = [manifest.label(i) for i in range(model.classes or 0)] \
                or list(manifest.labels.values())
        return web.json_response({
            "stream": pipeline.stream, "version": self.app.config_version,
            "lines": [r.model_dump(mode="json") for r in (section.lines if section else [])],
            "zones": [z.model_dump(mode="json") for z in (section.zones if section else [])],
            "classes": labels, "model_task": model.manifest.task if model else None})

    def _proposed(self, stream: str, body: Any) -> AgentConfig:
        """The running config with this pipeline's lines and zones replaced by ``body``'s;
        ConfigError says what is wrong (the same checks as a config file)."""
        if not isinstance(body, dict) or not isinstance(body.get("lines", []), list) \
                or not isinstance(body.get("zones", []), list):
            raise ConfigError("the body is not {\"lines\": [...], \"zones\": [...]}")
        try:
            lines = [LineSection.model_validate(x) for x in body.get("lines", [])]
            zones = [ZoneSection.model_validate(x) for x in body.get("zones", [])]
        except ValidationError as exc:
            raise ConfigError(_problem(exc), fix="see docs/config.md, [[lines]] and [[zones]]"
                              ) from None
        config = self.app.config
        if config.pipelines is None:
            return config.with_rules(lines, zones)
        sections = [s.model_copy(update={"lines": lines, "zones": zones})
                    if s.stream == stream else s for s in config.pipelines]
        return config.with_pipelines(sections)

    async def _read_body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"ok": False, "reason": "the body is not "
                                                      "JSON"}), content_type="application/json"
                                     ) from None

    async def validate_rules(self, request: web.Request) -> web.StreamResponse:
        pipeline = self._pipeline(request)
        body = await self._read_body(request)
        try:
            self._proposed(pipeline.stream, body)
        except ConfigError as exc:
            return _json_error(422, exc.message, exc.fix)
        return web.json_response({"ok": True})

    async def put_rules(self, request: web.Request) -> web.StreamResponse:
        """Save: the running config with new lines and zones, through the command service's
        apply (the path of set-config/assign: changed pipelines restart, rollback on a failed
        start, config.applied.toml and the version written)."""
        pipeline = self._pipeline(request)
        body = await self._read_body(request)
        commands = self.app.commands
        if commands is None:
            return _json_error(503, "the agent is starting", "try again in a moment")
        version = body.get("version") if isinstance(body, dict) else None
        async with commands.lock:  # one state-changing command at a time, remote ones included
            if version is not None and version != self.app.config_version:
                return _json_error(409, f"the config is at version {self.app.config_version}, "
                                   f"not {version}", "reload the editor and draw again")
            try:
                new = self._proposed(pipeline.stream, body)
            except ConfigError as exc:
                return _json_error(422, exc.message, exc.fix)
            try:
                result = await commands.apply(new)
            except CommandError as exc:
                status = 422 if exc.code == "bad_args" else 500
                return _json_error(status, exc.reason, exc.fix, code=exc.code)
        log.info("web console: %s saved the rules of %s (config version %d)",
                 request["session"].user, pipeline.stream, self.app.config_version)
        return web.json_response({"ok": True, **result})

    async def live_counts(self, request: web.Request) -> web.StreamResponse:
        pipeline = self._pipeline(request)
        stage = pipeline.analytics
        totals: dict[tuple[str, str, str, str], int] = {}
        if stage is not None:
            totals = dict(stage.totals)
            for key, n in stage.open_counts.items():  # the open bucket's counts so far
                totals[key] = totals.get(key, 0) + n
        return web.json_response({
            "stream": pipeline.stream, "version": self.app.config_version,
            "counts": [{"rule": r, "kind": k, "label": lb, "direction": d, "count": n}
                       for (r, k, lb, d), n in sorted(totals.items())]})

    # -- counts, events, diagnostics --------------------------------------------------------------

    async def counts(self, request: web.Request) -> web.StreamResponse:
        try:
            hours = min(24.0, max(0.01, float(request.query.get("hours", "24"))))
        except ValueError:
            return _json_error(400, "hours is not a number")
        try:
            rows = await asyncio.to_thread(read_counts, self.config.agent.state_dir,
                                           hours * 3600)
        except StorageError as exc:
            return _json_error(500, exc.message, exc.fix)
        buckets = []
        for row in rows:
            with contextlib.suppress(ValueError, KeyError):
                record = json.loads(row.payload)
                buckets.append({"source": record["source"], "seq": row.seq, **record["bucket"],
                                "counts": record["counts"]})
        return web.json_response({"hours": hours, "buckets": buckets})

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = min(500, max(1, int(request.query.get("limit", "100"))))
        except ValueError:
            return _json_error(400, "limit is not a number")
        state_dir = self.config.agent.state_dir
        try:
            rows = await asyncio.to_thread(read_events, state_dir, limit)
            shas = [str(s) for r in rows for s in [_snapshot_of(r.payload)] if s]
            present = await asyncio.to_thread(blobs_present, state_dir, shas)
        except StorageError as exc:
            return _json_error(500, exc.message, exc.fix)
        out = []
        for row in rows:
            with contextlib.suppress(ValueError, KeyError):
                e = json.loads(row.payload)
                snap = e.get("snapshot") or {}
                out.append({"source": e.get("source"), "seq": row.seq, "ts": e.get("ts"),
                            "type": e.get("type"), "rule": e.get("rule"),
                            "track_id": e.get("track_id"), "label": e.get("label"),
                            "direction": e.get("direction"), "dwell_s": e.get("dwell_s"),
                            "snapshot": snap.get("sha256"),
                            "snapshot_available": snap.get("sha256") in present})
        return web.json_response({"events": out})

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        blob = request.match_info["blob"]
        if len(blob) != 64 or any(c not in "0123456789abcdef" for c in blob):
            return _json_error(400, "not a sha256")
        try:
            found = await asyncio.to_thread(read_blob, self.config.agent.state_dir, blob)
        except StorageError as exc:
            return _json_error(500, exc.message, exc.fix)
        if found is None or not found[0].startswith("image/"):
            return _json_error(404, "that snapshot is no longer on the device",
                               "it was delivered and pruned; the datacenter has it")
        return web.Response(body=found[1], content_type=found[0],
                            headers={"Cache-Control": "max-age=3600"})

    async def diag(self, request: web.Request) -> web.StreamResponse:
        commands = self.app.commands
        if commands is None:
            return _json_error(503, "the agent is starting", "try again in a moment")
        try:  # the command service's diag: `lepton-agent diag --json` in a process of its own
            report = await commands.diag(Command("diag", f"web-{uuid.uuid4().hex[:12]}", {}))
        except CommandError as exc:
            return _json_error(500, exc.reason, exc.fix)
        return web.json_response(report)

    async def bundle(self, request: web.Request) -> web.StreamResponse:
        """``lepton-agent diag bundle`` of the running config, in a process of its own (the
        runtime may not import diag), streamed back as a download."""
        from agent.service.commands import config_toml

        with tempfile.TemporaryDirectory(prefix="lepton-web-bundle-") as tmp:
            config_path = Path(tmp) / "running.toml"
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(config_toml(self.app.config))
            out = Path(tmp) / f"lepton-diag-{self.config.agent.device_id}.tar.gz"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "diag", "bundle", "--output", str(out),
                "--config", str(config_path), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), BUNDLE_TIMEOUT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return _json_error(504, f"the bundle took over {BUNDLE_TIMEOUT_S:g} s",
                                   "run `lepton-agent diag bundle` on the device")
            if proc.returncode != 0 or not out.is_file():
                lines = err.decode(errors="replace").strip().splitlines()
                return _json_error(500, "diag bundle failed: "
                                   + (lines[-1] if lines else f"exit {proc.returncode}"))
            data = out.read_bytes()
        return web.Response(body=data, content_type="application/gzip", headers={
            "Content-Disposition": f'attachment; filename="{out.name}"'})


async def start_web(app: AgentApp, config: AgentConfig, secrets_: Secrets) -> WebConsole | None:
    """Start the console when ``[web] listen`` is set; None when off or when it cannot start
    (logged in one line with its fix: the agent runs on without it)."""
    if not config.web.listen:
        return None
    console = WebConsole(app, config, secrets_)
    try:
        await console.start()
    except (WebUnavailable, ConfigError) as exc:
        log.error("%s; the agent runs on without the web console", exc)
        return None
    return console
