"""Tiny .tflite files built in the test, for shapes and ops no shipped model has.

Written with the flatbuffer schema that ships in ai-edge-litert (no TensorFlow needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _schema():
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        pytest.skip("ai-edge-litert's flatbuffer schema is not installed")
    return flatbuffers, schema


def _tensor(schema, name: str, shape: list[int], dtype: int, buffer: int):
    t = schema.TensorT()
    t.name, t.shape, t.type, t.buffer = name, shape, dtype, buffer
    return t


def write_model(path: Path, in_shape: list[int], out_shape: list[int], *, uint8: bool = False,
                custom_op: str | None = None) -> Path:
    """One op from input ``x`` to output ``y``: RESHAPE, or the custom op ``custom_op``."""
    flatbuffers, schema = _schema()
    dtype = schema.TensorType.UINT8 if uint8 else schema.TensorType.FLOAT32
    code = schema.OperatorCodeT()
    op = schema.OperatorT()
    op.inputs, op.outputs, op.opcodeIndex = [0], [1], 0
    if custom_op:
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        code.customCode = custom_op
    else:
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RESHAPE
        options = schema.ReshapeOptionsT()
        options.newShape = out_shape
        op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
        op.builtinOptions = options
    code.version = 1
    subgraph = schema.SubGraphT()
    subgraph.tensors = [_tensor(schema, "x", in_shape, dtype, 0),
                        _tensor(schema, "y", out_shape, dtype, 0)]
    subgraph.inputs, subgraph.outputs, subgraph.operators = [0], [1], [op]
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [code]
    model.subgraphs = [subgraph]
    model.buffers = [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def rename_custom_op(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of ``source`` whose custom op ``old`` is called ``new`` (tensor names untouched)."""
    flatbuffers, schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    renamed = 0
    for code in model.operatorCodes:
        if code.customCode is not None and code.customCode.decode() == old:
            code.customCode = new
            renamed += 1
    assert renamed, f"{source} has no custom op {old}"
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(builder.Output())
    return target
