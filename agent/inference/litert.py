"""Import of the LiteRT interpreter: ``ai-edge-litert`` first, ``tflite_runtime`` as fallback."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import ModelError

log = logging.getLogger("agent.inference")
# LiteRT logs this through its C++ logger at every start; it says nothing a user can act on.
_NOISE = re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$")
_UNRESOLVED_CUSTOM = re.compile(r"unresolved custom op: ([^\s.]+)")
_MISSING_BUILTIN = re.compile(r"Didn't find op for builtin opcode '([^']+)' version '(\d+)'")
_stderr_lock = threading.Lock()


def interpreter_class() -> tuple[Any, str]:
    """The Interpreter class and the name of the package that provided it."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        raise ModelError("no LiteRT runtime is installed", path="-",
                         fix="pip install ai-edge-litert (or tflite-runtime on boards "
                             "without an ai-edge-litert wheel)") from exc


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 meanwhile; yield the list it ends up in.

    The XNNPACK INFO line is dropped; every other line is written back to stderr afterwards,
    so a native warning is delayed, never lost. Without a usable fd 2 or temporary directory
    (a read-only root), nothing is captured."""
    captured: list[str] = []
    with _stderr_lock, contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(tempfile.TemporaryFile())
            saved: int | None = os.dup(2)
        except OSError:
            saved = None
        if saved is None:
            yield captured
            return
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        try:
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not _NOISE.match(line)]
            captured.extend(line.rstrip("\n") for line in kept)
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, "".join(kept).encode())


def explain_load_error(message: str, model_path: str) -> tuple[str, str] | None:
    """(what failed, fix) for an op the runtime does not provide; None for other errors."""
    from agent.inference.tflite_file import custom_ops, read_ops

    ops = read_ops(Path(model_path)) or []
    m = _UNRESOLVED_CUSTOM.search(message)
    names = [m.group(1)] if m else []
    if not names and "custom op" in message.lower():
        names = [n for n in custom_ops(ops) if n in message]
    if names:
        name = names[0]
        if name.startswith("Flex"):
            return (f"the model uses the TensorFlow op {name[4:]!r} (custom op {name!r}, "
                    "Select TF ops), which LiteRT does not provide",
                    "convert the model with TFLite builtin ops only (no SELECT_TF_OPS)")
        return (f"the model uses the custom op {name!r}, which LiteRT does not provide",
                "convert the model without it, or use a runtime built with that op registered")
    m = _MISSING_BUILTIN.search(message)
    if m:
        return (f"the model uses builtin op {m.group(1)} version {m.group(2)}, which this LiteRT "
                "does not provide",
                "upgrade ai-edge-litert (pip install -U ai-edge-litert), or convert the model "
                "with an older TensorFlow")
    return None


def make_interpreter(model_path: str, num_threads: int, delegate: str) -> Any:
    """An interpreter with tensors allocated.

    ``delegate``: ``xnnpack`` (the default delegates), ``none`` (builtin optimized kernels,
    no default delegates), ``reference`` (builtin reference kernels: slow, but the only ones
    that run our int8 models under qemu-user, where the optimized ones crash)."""
    interpreter_cls, package = interpreter_class()
    kwargs: dict[str, Any] = {"model_path": model_path, "num_threads": num_threads}
    if delegate in ("none", "reference"):
        if package == "ai-edge-litert":
            from ai_edge_litert.interpreter import OpResolverType
        else:
            from tflite_runtime.interpreter import OpResolverType
        kwargs["experimental_op_resolver_type"] = (
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if delegate == "none"
            else OpResolverType.BUILTIN_REF)
    try:
        with quiet_native_stderr():
            interpreter = interpreter_cls(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        explained = explain_load_error(str(exc), model_path)
        if explained:
            raise ModelError(explained[0], path=model_path, fix=explained[1]) from exc
        raise ModelError(f"not a loadable TFLite model: {exc}", path=model_path,
                         fix="check the file is a .tflite flatbuffer and not truncated; "
                             "re-copy it or rebuild it with `make model`") from exc
    return interpreter
