"""Frame readers: open a source, read BGR frames, close. One class per kind of source."""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from typing import Protocol

import cv2
import numpy as np

from agent.core.uri import SourceUri
from agent.errors import SourceError
from agent.sources.synthetic import SyntheticScene

log = logging.getLogger("agent.capture")


class FrameReader(Protocol):
    fps: float

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None at the end of the stream or when the source is lost."""
        ...

    def close(self) -> None: ...


@lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    return any("GStreamer" in line and "YES" in line for line in info.splitlines())


class OpenCVReader:
    """Files, V4L2 devices, RTSP/HTTP streams and GStreamer pipelines through cv2.VideoCapture."""

    def __init__(self, uri: SourceUri) -> None:
        self.uri = uri
        backend = cv2.CAP_ANY
        if uri.kind == "file":
            if not os.path.isfile(uri.target):
                raise SourceError("no such file", uri=uri.raw,
                                  fix="check the path; for a camera use v4l2:///dev/video0")
        elif uri.kind == "v4l2":
            if not os.path.exists(uri.target):
                raise SourceError("no such device", uri=uri.raw,
                                  fix="check the camera is plugged in (`ls /dev/video*`) and the "
                                      "user is in the 'video' group")
            backend = cv2.CAP_V4L2
        elif uri.kind == "gst":
            if not opencv_has_gstreamer():
                raise SourceError("this OpenCV build has no GStreamer backend", uri=uri.raw,
                                  fix="use the distribution's python3-opencv (JetPack's on Jetson) "
                                      "in a venv with --system-site-packages, or a v4l2:// source")
            backend = cv2.CAP_GSTREAMER
        elif uri.kind in ("rtsp", "http"):
            backend = cv2.CAP_FFMPEG
        target: str | int = uri.target
        self.capture = cv2.VideoCapture(target, backend)
        if not self.capture.isOpened():
            self.capture.release()
            fix = {
                "file": "the file is not a video OpenCV can decode (try MJPG .avi or mp4v .mp4)",
                "v4l2": "check permissions (video group) and that no other process holds it",
                "rtsp": "check the URL, credentials and that the camera is reachable",
                "gst": "test the pipeline with gst-launch-1.0 first",
                "http": "check the URL",
            }[uri.kind]
            raise SourceError("cannot open", uri=uri.raw, fix=fix)
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def close(self) -> None:
        self.capture.release()


_SEQUENCE = re.compile(r"%(0?)(\d*)d")


def sequence_pattern(target: str) -> re.Pattern[str] | None:
    """For an image sequence (``frames/%04d.bmp``, OpenCV's syntax), a regex matching the
    names of its files (number in group 1); None for an ordinary path."""
    name = os.path.basename(target)
    found = list(_SEQUENCE.finditer(name))
    if len(found) != 1:
        return None
    m = found[0]
    digits = rf"(\d{{{int(m.group(2))}}})" if m.group(1) and m.group(2) else r"(\d+)"
    return re.compile(re.escape(name[:m.start()]) + digits + re.escape(name[m.end():]) + "$")


class ImageSequenceReader:
    """Numbered still images (``frames/%04d.bmp``) in number order, wherever the numbering
    starts (OpenCV's own image-sequence backends give up unless it starts at 0..4). Finite;
    unpaced (no frame rate of its own). An unreadable file is skipped with a warning."""

    fps = 0.0

    def __init__(self, uri: SourceUri, pattern: re.Pattern[str]) -> None:
        self.uri = uri
        folder = os.path.dirname(uri.target) or "."
        if not os.path.isdir(folder):
            raise SourceError(f"no such directory {folder}", uri=uri.raw,
                              fix="check the path of the image sequence")
        numbered = []
        with os.scandir(folder) as entries:
            for entry in entries:
                m = pattern.match(entry.name)
                if m and entry.is_file():
                    numbered.append((int(m.group(1)), entry.path))
        if not numbered:
            raise SourceError(f"no file in {folder} matches {os.path.basename(uri.target)}",
                              uri=uri.raw,
                              fix="name the images with the number the pattern gives, e.g. "
                                  "frames/%04d.bmp for frames/0001.bmp, frames/0002.bmp, ...")
        self.files = [path for _, path in sorted(numbered)]
        self.position = 0

    def read(self) -> np.ndarray | None:
        while self.position < len(self.files):
            path = self.files[self.position]
            self.position += 1
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is not None:
                return image
            log.warning("source %s: cannot decode %s; skipped", self.uri.raw, path)
        return None

    def close(self) -> None:
        pass


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm",
                  ".pnm")
_GLOB = re.compile(r"[*?\[]")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _read_image(path: str) -> np.ndarray | None:
    # imdecode of the bytes, not imread: the same decoders, and a path with non-ASCII
    # characters works everywhere.
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


class StillImagesReader:
    """Still images as frames: one file (one frame; ``--loop`` repeats it), or every image of
    a directory or glob in name order. Unpaced (no frame rate of its own). One file that cannot
    be decoded is an error at open; within a directory or glob it is skipped with a warning."""

    fps = 0.0

    def __init__(self, uri: SourceUri, files: list[str], *, single: bool) -> None:
        self.uri = uri
        self.files = files
        self.position = 0
        self.first: np.ndarray | None = None
        if single:
            self.first = _read_image(files[0])
            if self.first is None:
                raise SourceError(f"cannot decode image {files[0]}", uri=uri.raw,
                                  fix="give a JPEG, PNG or BMP file that opens in an image "
                                      "viewer (the file may be truncated or not an image)")

    @classmethod
    def open(cls, uri: SourceUri) -> StillImagesReader:
        target = uri.target
        if os.path.isfile(target):
            return cls(uri, [target], single=True)
        if os.path.isdir(target):
            with os.scandir(target) as entries:
                files = sorted(e.path for e in entries if e.is_file() and is_image_path(e.name))
            where = f"directory {target}"
        else:
            import glob

            files = sorted(f for f in glob.glob(target) if os.path.isfile(f))
            where = f"pattern {target}"
        if not files:
            raise SourceError(f"no image in {where}", uri=uri.raw,
                              fix=f"put images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) there, or "
                                  "check the path")
        return cls(uri, files, single=False)

    def read(self) -> np.ndarray | None:
        if self.first is not None:
            first: np.ndarray = self.first
            self.first = None
            self.position = len(self.files)
            return first
        while self.position < len(self.files):
            path = self.files[self.position]
            self.position += 1
            image = _read_image(path)
            if image is not None:
                return image
            log.warning("source %s: cannot decode %s; skipped", self.uri.raw, path)
        return None

    def close(self) -> None:
        pass


class SyntheticReader:
    """The generated traffic scene; endless."""

    def __init__(self, uri: SourceUri, seed: int = 0) -> None:
        self.scene = SyntheticScene(uri.width, uri.height, uri.fps, seed=seed)
        self.fps = uri.fps

    def read(self) -> np.ndarray | None:
        frame, _truth = self.scene.step()
        return frame

    def close(self) -> None:
        pass


def open_reader(uri: SourceUri) -> FrameReader:
    """Open a reader for ``uri``; raises SourceError naming the source and the fix."""
    if uri.kind == "synthetic":
        return SyntheticReader(uri)
    if uri.kind == "file" and not os.path.isfile(uri.target):
        pattern = sequence_pattern(uri.target)
        if pattern is not None:
            return ImageSequenceReader(uri, pattern)
        if os.path.isdir(uri.target) or _GLOB.search(os.path.basename(uri.target)):
            return StillImagesReader.open(uri)
    if uri.kind == "file" and is_image_path(uri.target) and os.path.isfile(uri.target):
        return StillImagesReader.open(uri)
    return OpenCVReader(uri)
