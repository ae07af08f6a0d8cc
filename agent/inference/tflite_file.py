"""What a ``.tflite`` flatbuffer says about its operators, read without the runtime.

The interpreter does not expose operator codes or custom options: they name the custom op a
runtime lacks, and hold the class count of TFLite_Detection_PostProcess. Only the few fields
needed are read (schema: tensorflow/compiler/mlir/lite/schema/schema.fbs); every offset is
bounds-checked, so a corrupt file gives ``None``, never an exception.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CUSTOM = 32  # BuiltinOperator.CUSTOM
# Custom ops that LiteRT's builtin op resolver registers.
PROVIDED_CUSTOM_OPS = frozenset({"TFLite_Detection_PostProcess", "Convolution2DTransposeBias",
                                 "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Mfcc",
                                 "AudioSpectrogram"})
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


@dataclass(frozen=True)
class OpInfo:
    """One operator as the file declares it."""

    builtin_code: int
    custom_code: str  # "" for a builtin op
    version: int
    custom_options: bytes = b""

    @property
    def custom(self) -> bool:
        return self.builtin_code == CUSTOM


class _Table:
    """A flatbuffer table at ``pos`` in ``buf``."""

    def __init__(self, buf: Any, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt, self.vt_size = vtable, struct.unpack_from("<H", buf, vtable)[0]

    def _field(self, slot: int) -> int:
        at = 4 + 2 * slot
        if at + 2 > self.vt_size:
            return 0
        off: int = struct.unpack_from("<H", self.buf, self.vt + at)[0]
        return self.pos + off if off else 0

    def scalar(self, slot: int, fmt: str, default: int) -> int:
        at = self._field(slot)
        return int(struct.unpack_from(fmt, self.buf, at)[0]) if at else default

    def _indirect(self, slot: int) -> int:
        at = self._field(slot)
        return at + struct.unpack_from("<I", self.buf, at)[0] if at else 0

    def vector(self, slot: int) -> tuple[int, int]:
        """(first element, length) of a vector field; (0, 0) when absent."""
        at = self._indirect(slot)
        if not at:
            return 0, 0
        return at + 4, struct.unpack_from("<I", self.buf, at)[0]

    def bytes(self, slot: int) -> bytes:
        start, n = self.vector(slot)
        if start + n > len(self.buf):
            raise struct.error("vector runs past the end of the file")
        return bytes(self.buf[start:start + n])

    def string(self, slot: int) -> str:
        return self.bytes(slot).decode("utf-8", "replace")

    def tables(self, slot: int) -> list[_Table]:
        start, n = self.vector(slot)
        if start + 4 * n > len(self.buf):
            raise struct.error("vector runs past the end of the file")
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(n)]


def read_ops(path: Path) -> list[OpInfo] | None:
    """Every operator of every subgraph, in order; None when the file is not a TFLite model."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if len(buf) < 8 or buf[4:8] != b"TFL3":
                return None
            model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
            codes = [(max(c.scalar(0, "<b", 0), c.scalar(3, "<i", 0)), c.string(1),
                      c.scalar(2, "<i", 1)) for c in model.tables(1)]
            ops = []
            for subgraph in model.tables(2):
                for op in subgraph.tables(3):
                    builtin, custom, version = codes[op.scalar(0, "<I", 0)]
                    options = op.bytes(5) if builtin == CUSTOM else b""
                    ops.append(OpInfo(builtin, custom if builtin == CUSTOM else "", version,
                                      options))
            return ops
    except (OSError, ValueError, IndexError, struct.error):
        return None


def custom_ops(ops: list[OpInfo]) -> list[str]:
    """The distinct custom op names, in order of first use."""
    return list(dict.fromkeys(op.custom_code for op in ops if op.custom))


def detection_classes(ops: list[OpInfo]) -> int | None:
    """``num_classes`` of the TFLite_Detection_PostProcess op (background excluded), if any."""
    for op in ops:
        if op.custom_code == DETECTION_POSTPROCESS and op.custom_options:
            try:
                from flatbuffers import flexbuffers  # ships with ai-edge-litert
            except ImportError:
                return None
            try:
                options = flexbuffers.Loads(op.custom_options)
            except Exception:  # any decoding failure means "unknown"
                return None
            value = options.get("num_classes") if isinstance(options, dict) else None
            return int(value) if isinstance(value, int) and value > 0 else None
    return None
