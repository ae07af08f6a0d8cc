"""Still images as a source (issue 17): one file (one frame; --loop repeats it), a directory or a
glob of images in name order, and one clear line for an image that cannot be decoded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.uri import parse_source
from agent.errors import SourceError
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue, QueueClosed
from agent.sources.capture import CaptureWorker
from agent.sources.readers import StillImagesReader, open_reader
from tests.conftest import run_cli, shared_file


def _image(path: Path, value: int, size: tuple[int, int] = (20, 16)) -> Path:
    img = np.full((size[1], size[0], 3), value, np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _values(uri: str) -> list[int]:
    reader = open_reader(parse_source(uri))
    assert isinstance(reader, StillImagesReader)
    out = []
    while (image := reader.read()) is not None:
        out.append(int(image[0, 0, 0]))
    reader.close()
    return out


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp"])
def test_one_image_is_one_frame(tmp_path: Path, suffix: str) -> None:
    path = _image(tmp_path / f"photo{suffix}", 200)
    values = _values(str(path))
    assert len(values) == 1 and abs(values[0] - 200) <= 2  # JPEG may round


def test_directory_and_glob_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for name, value in [("b.png", 20), ("a.png", 10), ("c.bmp", 30), ("notes.txt", 0)]:
        if name.endswith(".txt"):
            (folder / name).write_text("not an image")
        else:
            _image(folder / name, value)
    (folder / "sub").mkdir()
    assert _values(str(folder)) == [10, 20, 30]
    assert _values(str(folder / "*.png")) == [10, 20]


def test_an_undecodable_image_in_a_directory_is_skipped(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _image(tmp_path / "1.png", 10)
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    _image(tmp_path / "3.png", 30)
    assert _values(str(tmp_path)) == [10, 30]
    assert "cannot decode" in caplog.text and "2.png" in caplog.text


def test_an_undecodable_image_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(SourceError, match=r"cannot decode image .*photo\.jpg") as info:
        open_reader(parse_source(str(bad)))
    assert "JPEG, PNG or BMP" in (info.value.fix or "")
    with pytest.raises(SourceError, match="no image in directory"):
        open_reader(parse_source(str(_empty(tmp_path / "empty"))))
    with pytest.raises(SourceError, match="no image in pattern"):
        open_reader(parse_source(str(tmp_path / "*.webp")))


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def test_loop_repeats_one_image(tmp_path: Path) -> None:
    path = _image(tmp_path / "p.bmp", 77)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 4, "block")
    worker = CaptureWorker(parse_source(str(path)), q, lambda im: im[:2, :2], realtime=False,
                           loop_file=True, max_frames=5)
    worker.start()
    frames: list[CapturedFrame] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            item = q.get(0.2)
        except QueueClosed:
            break
        if item is not None:
            frames.append(item)
    worker.join(5)
    assert len(frames) == 5 and all(f.width == 20 and f.height == 16 for f in frames)


def test_run_classifies_a_still_image_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    out = run_cli("run", "--offline", "--max-frames", "1", "--json", "--source",
                  str(shared_file("classify", "cat.bmp")), "--model",
                  str(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite")),
                  "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top_classes"][0]["label"] == "Egyptian cat"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = run_cli("run", "--offline", "--max-frames", "1", "--source", str(bad), "--model",
                  str(shared_file("classify", "mobilenet_v2_1.0_224_quant.tflite")),
                  "--state-dir", str(tmp_path / "s2"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot decode image" in out.stderr and "broken.png" in out.stderr, out.stderr
