"""The web console's API and its security against a real running agent (``lepton-agent run``
with the console on loopback and users in its credentials directory): no session -> 401, a
viewer cannot edit (403), a write without the CSRF token -> 403, a line outside the frame is
refused with its reason and the running config stays, logins are rate-limited (429), page
weight <= 200 KB, cookie flags, nothing secret in pages or logs."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from agent.config import load_config
from tests.test_web_support import USERS, Client, WebAgent, start_agent

PAGES = ["/", "/live", "/editor", "/counts", "/events", "/diagnostics", "/login"]
PAGE_BUDGET = 200 * 1024


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    running = start_agent(tmp_path_factory.mktemp("web-api"))
    yield running
    running.stop()


def _wait(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_session_is_401_and_pages_redirect_to_login(agent: WebAgent) -> None:
    c = Client(agent.port)
    for path in ("/api/v1/status", "/api/v1/pipelines/cam0/rules", "/api/v1/counts",
                 "/api/v1/events", "/api/v1/pipelines/cam0/live.mjpeg"):
        status, _, _ = c.request("GET", path)
        assert status == 401, path
    status, headers, _ = c.request("GET", "/editor")
    assert status == 302 and headers["location"].startswith("/login")
    # a pre-login session (it only carries the login form's CSRF token) is not a login
    c.session()
    assert c.json("GET", "/api/v1/status")[0] == 401


def test_login_sets_a_strict_httponly_cookie_and_a_new_token(agent: WebAgent) -> None:
    c = Client(agent.port)
    c.session()
    before = dict(c.cookies)
    status, _, body = c.request("POST", "/api/v1/login", {"user": "admin",
                                                          "password": USERS["admin"][1]})
    assert status == 200
    # the raw header: HttpOnly and SameSite=Strict, no Secure without TLS
    c2 = Client(agent.port)
    c2.session()
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    conn.request("POST", "/api/v1/login", body=json.dumps(
        {"user": "viewer", "password": USERS["viewer"][1]}), headers={
        "Content-Type": "application/json", "X-CSRF-Token": c2.csrf or "",
        "Cookie": "; ".join(f"{k}={v}" for k, v in c2.cookies.items())})
    resp = conn.getresponse()
    resp.read()
    cookie = resp.headers["Set-Cookie"]
    conn.close()
    assert resp.status == 200
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert c.cookies["lepton_session"] != before["lepton_session"]  # no session fixation
    assert c.json("GET", "/api/v1/status")[0] == 200
    assert USERS["admin"][1].encode() not in body


def test_status_is_the_overview_from_the_health_snapshot(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("viewer")[0] == 200
    status, s = _wait(lambda: (r := c.json("GET", "/api/v1/status"))[1]["pipelines"][0][
        "frames_processed"] > 0 and r, what="frames processed")
    assert status == 200
    p = s["pipelines"][0]
    assert p["stream"] == "cam0" and p["state"] == "running" and p["source"]["state"] == "ok"
    assert p["model"]["name"] == "lepton-vehicles-tiny" and len(p["model"]["sha256"]) == 64
    assert p["model"]["version"]
    d = s["delivery"]
    # offline: everything waits in the outbox, nothing was acknowledged
    assert d["outbox_depth"] > 0 and d["last_puback"] is None and d["last_ingest_ack"] is None
    assert d["evictions"] == {} and s["config_version"] == 0
    assert set(s["thermal"]) == {"temp_c", "throttled", "level"}
    # the configured model, not an OTA slot
    assert p["model"]["slot"] is None
    assert s["ota"]["slot"] is None and s["ota"]["deployment"] is None


def test_the_overview_shows_the_model_ota_slot_a_pipeline_runs(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import DEFAULT_MODEL

    # where model OTA installs a bundle (docs/ota.md): {state_dir}/ota/slots/{model}/a|b
    slot = tmp_path / "state" / "ota" / "slots" / "lepton-vehicles-tiny" / "b"
    shutil.copytree(DEFAULT_MODEL, slot)
    running = start_agent(tmp_path, model=slot)
    try:
        c = Client(running.port)
        assert c.login("viewer")[0] == 200
        _, s = _wait(lambda: (r := c.json("GET", "/api/v1/status"))[1]["pipelines"]
                     and r, what="a pipeline")
        assert s["pipelines"][0]["model"]["slot"] == "b"
        assert s["ota"]["slot"] == "b" and s["ota"]["model"] == "lepton-vehicles-tiny"
        status, _, page = c.request("GET", "/static/overview.js")
        assert status == 200 and b"running slot" in page
    finally:
        running.stop()


def test_a_viewer_cannot_edit(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("viewer")[0] == 200
    status, rules = c.json("GET", "/api/v1/pipelines/cam0/rules")
    assert status == 200
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", {
        "version": rules["version"], "lines": [{"name": "v", "points": [[0.5, 0.1], [0.5, 0.9]]}]})
    assert status == 403 and "admin" in body["reason"]
    assert c.json("GET", "/api/v1/pipelines/cam0/rules")[1] == rules
    assert c.json("GET", "/api/v1/support-bundle")[0] == 403


def test_a_write_without_the_csrf_token_is_403(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    _, rules = c.json("GET", "/api/v1/pipelines/cam0/rules")
    line = {"version": rules["version"], "lines": [{"name": "c", "points": [[0.5, 0], [0.5, 1]]}]}
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", line, csrf=False)
    assert status == 403 and "CSRF" in body["reason"]
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", line, csrf=False,
                          headers={"X-CSRF-Token": "not-the-token"})
    assert status == 403
    assert c.json("POST", "/api/v1/logout", csrf=False)[0] == 403
    assert c.json("GET", "/api/v1/pipelines/cam0/rules")[1] == rules


def test_a_line_outside_the_frame_is_refused_with_its_reason_and_nothing_changes(
        agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    _, before = c.json("GET", "/api/v1/pipelines/cam0/rules")
    bad = {"version": before["version"],
           "lines": [{"name": "off", "points": [[0.5, 0.1], [1.4, 0.9]]}]}
    status, body = c.json("POST", "/api/v1/pipelines/cam0/rules/validate", bad)
    assert status == 422 and "x = 1.4 is outside [0, 1]" in body["reason"], body
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", bad)
    assert status == 422 and "outside [0, 1]" in body["reason"] and body["fix"]
    assert c.json("GET", "/api/v1/pipelines/cam0/rules")[1] == before
    assert c.json("GET", "/api/v1/status")[1]["config_version"] == before["version"]
    assert not (agent.state_dir / "config.applied.toml").exists()


def test_a_stale_version_is_refused(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    _, before = c.json("GET", "/api/v1/pipelines/cam0/rules")
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", {
        "version": before["version"] + 7, "lines": [{"name": "x", "points": [[0.5, 0], [0.5, 1]]}]})
    assert status == 409 and "version" in body["reason"]


def test_saving_applies_through_the_config_path_and_counts_appear(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    _, before = c.json("GET", "/api/v1/pipelines/cam0/rules")
    status, body = c.json("PUT", "/api/v1/pipelines/cam0/rules", {
        "version": before["version"],
        "lines": [{"name": "api-mid", "points": [[0.5, 0.02], [0.5, 0.98]]}]})
    assert status == 200 and body["version"] == before["version"] + 1
    assert body["restarted"] == ["cam0"]
    # the independent reference: the applied file the agent loads at its next start
    applied = load_config(agent.state_dir / "config.applied.toml")
    assert [(r.name, r.points) for r in applied.lines] == [("api-mid", [[0.5, 0.02], [0.5, 0.98]])]
    counts = _wait(lambda: [r for r in c.json("GET", "/api/v1/pipelines/cam0/counts")[1][
        "counts"] if r["rule"] == "api-mid" and r["count"] > 0], timeout=60, what="a count")
    assert {r["label"] for r in counts} <= {"car", "truck"}


def test_pages_weigh_under_200_kb_and_hold_no_secret(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    weights = {}
    for page in PAGES:
        status, headers, html = c.request("GET", page)
        assert status == 200, page
        assert "script-src 'self'" in headers["content-security-policy"]
        assets = re.findall(rb'(?:src|href)="(/static/[^"]+)"', html)
        total = len(html)
        for asset in assets:
            st, _, body = c.request("GET", asset.decode())
            assert st == 200, asset
            total += len(body)
        assert not re.search(rb'(?:src|href)="(?:https?:)?//', html), f"{page} loads from elsewhere"
        weights[page] = total
        text = html.lower()
        for secret in (b"scrypt$", USERS["admin"][1].encode(), b"password\":"):
            assert secret not in text
    assert max(weights.values()) <= PAGE_BUDGET, weights
    print("page weights (bytes):", weights)


def test_the_log_holds_no_password_hash_or_token(agent: WebAgent) -> None:
    c = Client(agent.port)
    assert c.login("admin")[0] == 200
    log = agent.log.read_text(errors="replace")
    assert "web console on http://127.0.0.1" in log
    for secret in (USERS["admin"][1], USERS["viewer"][1], "scrypt$", c.csrf or "x" * 40,
                   c.cookies["lepton_session"]):
        assert secret not in log


def test_non_loopback_without_users_does_not_start(tmp_path: Path) -> None:
    from agent.config.schema import WebSection
    from agent.service.web.server import WebConsole, WebUnavailable

    config = load_config(None).model_copy(update={"web": WebSection(listen="0.0.0.0:8089")})
    console = WebConsole(None, config, None)  # type: ignore[arg-type]
    assert console.login_required
    with pytest.raises(WebUnavailable, match="no users"):
        asyncio.run(console.start())  # refused before anything is bound


def test_logins_are_rate_limited(agent: WebAgent) -> None:
    # last in this module: it locks 127.0.0.1 out of logging in for a minute
    c = Client(agent.port)
    c.session()
    codes = [c.json("POST", "/api/v1/login", {"user": "admin", "password": f"wrong{i}"})[0]
             for i in range(5)]
    assert codes == [401] * 5
    status, body = c.json("POST", "/api/v1/login", {"user": "admin",
                                                    "password": USERS["admin"][1]})
    assert status == 429 and body["retry_after_s"] > 0
    assert c.json("POST", "/api/v1/login", {"user": "admin", "password": "x"}, csrf=False)[0] in (
        403, 429)
