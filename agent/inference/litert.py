"""Import of the LiteRT interpreter: ``ai-edge-litert`` first, ``tflite_runtime`` as fallback."""

from __future__ import annotations

from typing import Any

from agent.errors import ModelError


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
        interpreter = interpreter_cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"not a loadable TFLite model: {exc}", path=model_path,
                         fix="check the file is a .tflite flatbuffer and not truncated; "
                             "re-copy it or rebuild it with `make model`") from exc
    return interpreter
