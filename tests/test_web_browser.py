"""The web console in real Chromium (Debian's package, driven by Playwright with
``executable_path``; no browser download): log in, see a live frame with boxes, draw a vertical
line mid-frame in the editor, save it, watch its counts appear; no errors in the browser
console. Screenshots go to the test's tmp dir and the key ones to /work/notes/screenshots/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from agent.config import load_config
from tests.test_web_support import USERS, WebAgent, start_agent

CHROMIUM = Path("/usr/bin/chromium")
NOTES = Path("/work/notes/screenshots")

playwright_sync = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)

# The same frame with and without the overlay (the renderer keys both by the frame's seq, sent
# as X-Frame-Seq), compared by the page: pixels the overlay turned into a box colour (tracks
# green 80,200,80; a pipeline without tracking: the detector's boxes magenta 255,0,255).
BOX_PIXELS_JS = """async () => {
  async function get(overlay) {
    const r = await fetch('/api/v1/pipelines/cam0/frame.jpg?overlay=' + overlay + '&t=' + Date.now());
    const img = await createImageBitmap(await r.blob());
    const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    return [r.headers.get('X-Frame-Seq'), g.getImageData(0, 0, c.width, c.height).data];
  }
  for (let tries = 0; tries < 20; tries++) {
    const [s1, drawn] = await get(1); const [s0, raw] = await get(0);
    if (s1 !== s0) continue;
    let n = 0;
    for (let i = 0; i < drawn.length; i += 4) {
      const [r, g, b] = [drawn[i], drawn[i + 1], drawn[i + 2]];
      const box = (Math.abs(r - 80) < 40 && Math.abs(g - 200) < 40 && Math.abs(b - 80) < 40)
        || (r > 200 && g < 60 && b > 200);
      const changed = Math.abs(r - raw[i]) + Math.abs(g - raw[i + 1]) + Math.abs(b - raw[i + 2]) > 90;
      if (box && changed) n++;
    }
    return n;
  }
  return -1;
}"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    running = start_agent(tmp_path_factory.mktemp("web-browser"))
    yield running
    running.stop()


def _shot(page, tmp: Path, name: str) -> Path:
    path = tmp / name
    page.screenshot(path=str(path), full_page=True)
    try:
        NOTES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, NOTES / name)
    except OSError:
        pass  # the notes folder is the lead's convenience, not the test's outcome
    return path


def test_login_live_boxes_draw_a_line_save_and_counts_appear(agent: WebAgent,
                                                             tmp_path: Path) -> None:
    problems: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            # 1. the live view needs a login: it sends us to the login page
            page.goto(agent.base + "/live")
            assert page.url.startswith(agent.base + "/login")
            page.fill("#user", USERS["admin"][0])
            page.fill("#password", USERS["admin"][1])
            page.click("#submit")
            page.wait_for_url(agent.base + "/live", timeout=15_000)
            live = page.locator("img.live").first
            live.wait_for(timeout=15_000)
            page.wait_for_function("() => { const i = document.querySelector('img.live'); "
                                   "return i && i.naturalWidth > 0; }", timeout=30_000)
            # boxes: the overlay draws them on the frame the live view shows
            drawn = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and drawn < 300:
                drawn = page.evaluate(BOX_PIXELS_JS)
            assert drawn >= 300, drawn
            _shot(page, tmp_path, "web-live.png")

            # 2. the editor: a vertical line mid-frame over the current frame
            page.goto(agent.base + "/editor")
            page.wait_for_function("() => document.getElementById('bg').naturalWidth > 0",
                                   timeout=30_000)
            box = page.locator("#draw").bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.02)
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.98)
            assert page.locator("#draw line").count() == 2  # the line and its direction arrow
            page.click("#validate")
            page.wait_for_function("() => document.getElementById('msg').textContent === 'valid'",
                                   timeout=15_000)
            page.click("#save")
            page.wait_for_function(
                "() => document.getElementById('msg').textContent.startsWith('saved: config version 1')",
                timeout=60_000)
            # 3. its counts appear in the live preview
            page.wait_for_function(
                "() => [...document.querySelectorAll('#counts td:first-child')]"
                ".some(td => td.textContent === 'line-1')", timeout=90_000)
            _shot(page, tmp_path, "web-editor.png")

            # the other pages render without errors
            for path, name in (("/", "web-overview.png"), ("/counts", "web-counts.png"),
                               ("/events", "web-events.png"),
                               ("/diagnostics", "web-diagnostics.png")):
                page.goto(agent.base + path)
                page.wait_for_load_state("networkidle", timeout=30_000)
                _shot(page, tmp_path, name)
            overview = page.context.request.get(agent.base + "/api/v1/status").json()
            assert overview["config_version"] == 1
        finally:
            browser.close()
    # independent of the page: the agent's applied config holds the line drawn
    applied = load_config(agent.state_dir / "config.applied.toml")
    (line,) = applied.lines
    assert line.name == "line-1"
    assert abs(line.points[0][0] - 0.5) < 0.01 and abs(line.points[1][0] - 0.5) < 0.01
    assert line.points[0][1] < 0.1 and line.points[1][1] > 0.9
    assert not problems, problems


def _browser(p, *args: str):  # type: ignore[no-untyped-def]
    return p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", *args])


def _log_in(page, base: str, role: str = "admin") -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/login")
    page.fill("#user", USERS[role][0])
    page.fill("#password", USERS[role][1])
    page.click("#submit")
    page.wait_for_url(base + "/", timeout=15_000)


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
def test_diagnostics_runs_the_checks_and_downloads_a_support_bundle(agent: WebAgent,
                                                                     tmp_path: Path) -> None:
    import json
    import tarfile

    problems: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900},
                                    accept_downloads=True)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            _log_in(page, agent.base)
            page.goto(agent.base + "/diagnostics")
            page.click("#run")
            page.wait_for_function(
                "() => document.querySelectorAll('#checks tr').length > 1"
                " || document.getElementById('msg').className === 'fail'", timeout=240_000)
            assert page.locator("#msg").get_attribute("class") != "fail", \
                page.locator("#msg").text_content()
            shown = page.locator("#checks td:first-child").all_text_contents()
            assert {"model", "config"} <= set(shown), shown
            _shot(page, tmp_path, "web-diagnostics-checks.png")
            with page.expect_download(timeout=240_000) as download:
                page.click("#bundle")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
        finally:
            browser.close()
    assert saved.name.startswith("lepton-diag-cam-web") and saved.name.endswith(".tar.gz")
    with tarfile.open(saved, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        assert {"diag.json", "config.json", "versions.json", "logs.txt",
                "status.json"} <= set(members), sorted(members)
        config = json.loads(tar.extractfile(members["config.json"]).read())  # type: ignore[union-attr]
        status = json.loads(tar.extractfile(members["status.json"]).read())  # type: ignore[union-attr]
    # the running agent's config and live status, not the defaults
    assert config["agent"]["device_id"] == "cam-web"
    assert status["device"] == "cam-web" and status["pipelines"][0]["stream"] == "cam0"
    assert not problems, problems


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
def test_the_console_under_tls_with_the_device_certificate(tmp_path: Path) -> None:
    import base64
    import hashlib
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.conftest import run_cli

    out = run_cli("pki", "init", "--out", str(tmp_path / "ca"))
    assert out.returncode == 0, out.stderr
    out = run_cli("pki", "issue", "cam-web", "--role", "device", "--ca", str(tmp_path / "ca"),
                  "--out", str(tmp_path / "certs"))
    assert out.returncode == 0, out.stderr
    cert, key = tmp_path / "certs" / "cam-web.crt", tmp_path / "certs" / "cam-web.key"
    running = start_agent(tmp_path, tls=(cert, key))
    problems: list[str] = []
    try:
        # the console serves the device certificate itself (read apart from the browser)
        served = ssl.get_server_certificate(("127.0.0.1", running.port))
        device = x509.load_pem_x509_certificate(cert.read_bytes())
        assert x509.load_pem_x509_certificate(served.encode()) == device
        # the device certificate names no host and is for client auth (it is the MQTT
        # identity): the browser is told to accept exactly this key, as an installer would
        spki = device.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        with playwright_sync.sync_playwright() as p:
            browser = _browser(p, f"--ignore-certificate-errors-spki-list={pin}")
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                assert running.base.startswith("https://")
                _log_in(page, running.base)
                (cookie,) = [c for c in page.context.cookies() if c["name"] == "lepton_session"]
                assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                page.goto(running.base + "/live")
                page.wait_for_function("() => { const i = document.querySelector('img.live'); "
                                       "return i && i.naturalWidth > 0; }", timeout=60_000)
                _shot(page, tmp_path, "web-tls-live.png")
                # from the page (the browser's TLS, not Playwright's own client)
                status = page.evaluate("async () => (await fetch('/api/v1/status')).json()")
                assert status["device"] == "cam-web"
            finally:
                browser.close()
            # without the pin the browser refuses the certificate: nothing is loaded silently
            browser = _browser(p)
            try:
                page = browser.new_page()
                with pytest.raises(playwright_sync.Error, match="ERR_CERT"):
                    page.goto(running.base + "/login")
            finally:
                browser.close()
    finally:
        log = running.stop()
    assert "web console on https://127.0.0.1" in log, log[-2000:]
    assert key.read_text().strip().splitlines()[1] not in log  # the key never reaches the log
    assert not problems, problems


@pytest.mark.slow  # a whole agent or browser run: the default tier keeps < 15 min
def test_the_overview_shows_the_ota_slot(tmp_path: Path) -> None:
    from tests.conftest import DEFAULT_MODEL

    # a pipeline run from where model OTA installs a bundle: {state_dir}/ota/slots/{model}/b
    slot = tmp_path / "state" / "ota" / "slots" / "lepton-vehicles-tiny" / "b"
    shutil.copytree(DEFAULT_MODEL, slot)
    running = start_agent(tmp_path, model=slot)
    problems: list[str] = []
    try:
        with playwright_sync.sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 700})
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                _log_in(page, running.base, "viewer")
                page.wait_for_function("() => document.querySelectorAll('#ota td').length > 0"
                                       " && document.querySelectorAll('#pipelines td').length",
                                       timeout=30_000)
                header = page.locator("#pipelines th").all_text_contents()
                row = page.locator("#pipelines tr").nth(1).locator("td").all_text_contents()
                assert row[header.index("slot")] == "b", (header, row)
                ota = page.locator("#ota td").all_text_contents()
                assert ota[0] == "b" and ota[1] == "lepton-vehicles-tiny", ota
                _shot(page, tmp_path, "web-overview-ota-slot.png")
            finally:
                browser.close()
    finally:
        running.stop()
    assert not problems, problems
