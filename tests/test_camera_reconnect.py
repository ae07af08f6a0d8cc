"""Camera reconnect against a real source that goes away: an HTTP MJPEG server the test starts,
stops and starts again on the same port, read by a real agent through OpenCV's FFmpeg backend."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess


class MjpegServer:
    """multipart/x-mixed-replace JPEG frames at about ``fps``, on one loopback port that
    survives stop() and start()."""

    def __init__(self, fps: float = 20.0) -> None:
        self.port = 0
        self.period = 1.0 / fps
        self.frames_sent = 0
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    def _jpeg(self, index: int) -> bytes:
        image = np.full((120, 160, 3), 40, np.uint8)
        x = 10 + (index * 4) % 120
        image[40:80, x:x + 30] = (0, 200, 255)  # a moving box, so frames differ
        return bytes(cv2.imencode(".jpg", image)[1])

    def start(self) -> None:
        server = self
        stop = self._stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                # The wait paces the stream like a camera; it also ends it when stopped.
                while not stop.wait(server.period):
                    jpeg = server._jpeg(index)
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                    except OSError:
                        return
                    index += 1
                    server.frames_sent += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="mjpeg", daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket and every stream: the camera is gone."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def test_agent_reconnects_to_a_camera_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    camera = MjpegServer()
    camera.start()
    url = f"http://127.0.0.1:{camera.port}/stream.mjpg"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "{url}"
reconnect_initial_s = 0.2
reconnect_max_s = 0.5
[mqtt]
broker = ""
""")
    agent = AgentProcess(config)
    try:
        up = agent.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 10,
                               "frames from the camera", timeout=120)
        assert up["stages"]["capture"]["reconnects"] == 0
        assert up["stages"]["capture"]["source"] == url

        camera.stop()
        # The stream breaks (a failed read: one reconnect), then reopening fails while the
        # camera is away, and the capture thread keeps trying instead of ending.
        away = agent.wait_status(
            lambda s: s["stages"]["capture"]["reconnects"] >= 1
            and "cannot open" in (s["stages"]["capture"]["last_error"] or ""),
            "the agent to notice the camera is gone and fail to reopen it")
        assert away["state"] == "running" and away["stages"]["capture"]["alive"]
        lost = agent.wait_status(lambda s: s["last_error"] is not None, "the error reported")
        assert url in lost["last_error"]
        frames_while_away = away["stages"]["capture"]["frames"]
        reconnects = away["stages"]["capture"]["reconnects"]

        camera.start()  # the same port: the camera is back
        back = agent.wait_status(
            lambda s: s["stages"]["capture"]["frames"] >= frames_while_away + 10
            and s["stages"]["inference"]["frames"] > up["stages"]["inference"]["frames"] + 10,
            "frames to resume after the camera came back")
        assert back["stages"]["capture"]["alive"]
        assert back["stages"]["capture"]["reconnects"] == reconnects  # reopened, not lost again

        summary = agent.stop()
        assert summary["frames_captured"] >= back["stages"]["capture"]["frames"]
        assert summary["error"] is None
    finally:
        agent.kill()
        camera.stop()
