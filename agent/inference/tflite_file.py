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


# --------------------------------------------------------------------------- tensors, metadata

_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
          7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64",
          13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4"}


@dataclass(frozen=True)
class FileTensor:
    """A tensor as the file declares it (what the interpreter would report)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0
    scales: int = 0  # how many scales (per-channel quantization when > 1)


@dataclass
class ModelInfo:
    """What a ``.tflite`` file says without the runtime: the main subgraph's inputs and
    outputs, operators, metadata entries and files packed with it."""

    version: int
    description: str
    inputs: list[FileTensor]
    outputs: list[FileTensor]
    ops: list[OpInfo]
    subgraphs: int
    metadata: dict[str, int]  # name -> size of its buffer in bytes
    associated_files: list[str]


class NotTFLiteError(ValueError):
    """The file is not a TFLite model, or is cut short; the message says which."""


def _floats(t: _Table, slot: int) -> list[float]:
    start, n = t.vector(slot)
    if start + 4 * n > len(t.buf):
        raise struct.error("vector runs past the end of the file")
    return list(struct.unpack_from(f"<{n}f", t.buf, start)) if n else []


def _ints(t: _Table, slot: int, fmt: str, size: int) -> list[int]:
    start, n = t.vector(slot)
    if start + size * n > len(t.buf):
        raise struct.error("vector runs past the end of the file")
    return list(struct.unpack_from(f"<{n}{fmt}", t.buf, start)) if n else []


def _file_tensor(tensors: list[_Table], i: int) -> FileTensor:
    if not 0 <= i < len(tensors):
        raise struct.error(f"tensor index {i} out of range")
    t = tensors[i]
    shape = tuple(_ints(t, 0, "i", 4))
    dtype = _TYPES.get(t.scalar(1, "<b", 0), f"type_{t.scalar(1, '<b', 0)}")
    scale, zero, count = 0.0, 0, 0
    if t._field(4):
        q = _Table(t.buf, t._indirect(4))
        scales = _floats(q, 2)
        zeros = _ints(q, 3, "q", 8)
        count = len(scales)
        if scales:
            scale, zero = float(scales[0]), int(zeros[0]) if zeros else 0
    return FileTensor(i, t.string(3), shape, dtype, scale, zero, count)


def read_model_info(path: Path) -> ModelInfo:
    """Read the file's structure; NotTFLiteError when it is not a TFLite model (no ``TFL3``
    identifier) or when its tables reach past the end (truncated)."""
    import zipfile

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotTFLiteError(f"cannot read it: {exc.strerror or exc}") from exc
    if size < 8:
        raise NotTFLiteError(f"not a TFLite model: {size} bytes, too short for a flatbuffer")
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[4:8] != b"TFL3":
                head = bytes(buf[:8])
                raise NotTFLiteError(f"not a TFLite model: no 'TFL3' identifier at byte 4 "
                                     f"(starts {head!r})")
            try:
                model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
                codes = [(max(c.scalar(0, "<b", 0), c.scalar(3, "<i", 0)), c.string(1),
                          c.scalar(2, "<i", 1)) for c in model.tables(1)]
                subgraphs = model.tables(2)
                if not subgraphs:
                    raise struct.error("no subgraph")
                main = subgraphs[0]
                tensors = main.tables(0)
                inputs = [_file_tensor(tensors, i) for i in _ints(main, 1, "i", 4)]
                outputs = [_file_tensor(tensors, i) for i in _ints(main, 2, "i", 4)]
                ops = []
                for sg in subgraphs:
                    for op in sg.tables(3):
                        builtin, custom, version = codes[op.scalar(0, "<I", 0)]
                        ops.append(OpInfo(builtin, custom if builtin == CUSTOM else "", version,
                                          op.bytes(5) if builtin == CUSTOM else b""))
                buffers = model.tables(4)
                for b in buffers:  # every buffer's bytes must lie inside the file
                    start, n = b.vector(0)
                    if start + n > len(buf):
                        raise struct.error("buffer runs past the end of the file")
                    offset = b.scalar(1, "<Q", 0)  # >2 GB models keep data after the flatbuffer
                    if offset and offset + b.scalar(2, "<Q", 0) > len(buf):
                        raise struct.error("buffer runs past the end of the file")
                metadata: dict[str, int] = {}
                for m in model.tables(6):
                    index = m.scalar(1, "<I", 0)
                    metadata[m.string(0)] = (buffers[index].vector(0)[1]
                                             if index < len(buffers) else 0)
                info = ModelInfo(model.scalar(0, "<I", 0), model.string(3), inputs, outputs,
                                 ops, len(subgraphs), metadata, [])
            except (struct.error, IndexError, ValueError) as exc:
                detail = ("its tables reach past the end of the file" if "unpack" in str(exc)
                          else str(exc))
                raise NotTFLiteError(f"truncated or corrupt TFLite model ({size} bytes): "
                                     f"{detail}") from exc
    except OSError as exc:
        raise NotTFLiteError(f"cannot read it: {exc.strerror or exc}") from exc
    # Models with TFLite metadata carry their label files as a zip appended to the flatbuffer.
    try:
        with zipfile.ZipFile(path) as archive:
            info.associated_files = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return info


def read_associated_file(path: Path, name: str) -> str | None:
    """The text of a file packed in the model (TFLite metadata's zip), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name).decode("utf-8", "replace")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return None
