"""A real HTTP MJPEG camera on loopback (multipart/x-mixed-replace), read by the agent through
OpenCV's FFmpeg backend: it can go away and come back on the same port, or stall mid-stream
with its connections open, as a camera or a network that hangs does."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import cv2
import numpy as np


def jpeg_frame(index: int) -> bytes:
    """A small frame with a box that moves with ``index``, so that frames differ."""
    image = np.full((120, 160, 3), 40, np.uint8)
    x = 10 + (index * 4) % 120
    image[40:80, x:x + 30] = (0, 200, 255)
    return bytes(cv2.imencode(".jpg", image)[1])


class MjpegCamera:
    """JPEG frames at about ``fps`` on one loopback port that survives stop() and start();
    while ``stalled`` is set, nothing is sent and every connection stays open."""

    def __init__(self, fps: float = 20.0) -> None:
        self.port = 0
        self.period = 1.0 / fps
        self.frames_sent = 0
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegCamera:
        camera = self
        stop = self._stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                # The wait paces the stream like a camera; it also ends it when stopped.
                while not stop.wait(camera.period):
                    if camera.stalled.is_set():
                        continue
                    jpeg = jpeg_frame(index)
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                    except OSError:
                        return
                    index += 1
                    camera.frames_sent += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="mjpeg", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every stream: the camera is gone."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
