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


def write_heads_model(path: Path, in_shape: list[int], heads: list[tuple[str, list[int]]], *,
                      dtype: str = "float32", scale: float = 0.0, zero_point: int = 0) -> Path:
    """A model whose outputs are the input's values cut into ``heads`` (name, shape) in order:
    the input is flattened, each head is a SLICE of it reshaped. A test writes the head values
    it wants into the input tensor, so a decoder meets exactly those values through LiteRT
    (uint8/int8 with ``scale``/``zero_point`` on every tensor for the quantized paths)."""
    import numpy as np

    flatbuffers, schema = _schema()
    types = {"float32": schema.TensorType.FLOAT32, "uint8": schema.TensorType.UINT8,
             "int8": schema.TensorType.INT8}
    total = int(np.prod(in_shape))
    assert sum(int(np.prod(s)) for _, s in heads) <= total, "heads need more values than the input"
    buffers = [schema.BufferT()]
    tensors = []

    def tensor(name: str, shape: list[int], ttype: int, data: bytes | None = None,
               quantized: bool = True) -> int:
        t = _tensor(schema, name, shape, ttype, 0)
        if data is not None:
            b = schema.BufferT()
            b.data = list(data)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        if quantized and scale:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [scale], [zero_point]
            t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    codes = []
    for builtin in (schema.BuiltinOperator.RESHAPE, schema.BuiltinOperator.SLICE):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        code.version = 1
        codes.append(code)
    ops = []

    def reshape(src: int, dst: int, shape: list[int]) -> None:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [src], [dst]
        options = schema.ReshapeOptionsT()
        options.newShape = shape
        op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
        op.builtinOptions = options
        ops.append(op)

    ttype = types[dtype]
    x = tensor("x", in_shape, ttype)
    flat = tensor("flat", [1, total], ttype)
    reshape(x, flat, [1, total])
    outputs = []
    offset = 0
    for name, shape in heads:
        n = int(np.prod(shape))
        begin = tensor(f"{name}/begin", [2], schema.TensorType.INT32,
                       np.array([0, offset], np.int32).tobytes(), quantized=False)
        size = tensor(f"{name}/size", [2], schema.TensorType.INT32,
                      np.array([1, n], np.int32).tobytes(), quantized=False)
        part = tensor(f"{name}/part", [1, n], ttype)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 1, [flat, begin, size], [part]
        op.builtinOptionsType = schema.BuiltinOptions.SliceOptions
        op.builtinOptions = schema.SliceOptionsT()
        ops.append(op)
        out = tensor(name, shape, ttype)
        reshape(part, out, shape)
        outputs.append(out)
        offset += n
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs, subgraph.outputs, subgraph.operators = [x], outputs, ops
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [subgraph]
    model.buffers = buffers
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def head_input(shape: list[int], values: list[object], dtype: str = "float32") -> object:
    """The input tensor that makes a heads model output ``values`` (flattened in order)."""
    import numpy as np

    flat = np.concatenate([np.asarray(v).reshape(-1) for v in values]).astype(dtype)
    full = np.zeros(int(np.prod(shape)), dtype)
    full[:flat.size] = flat
    return full.reshape(shape)


def write_failing_gather(path: Path) -> Path:
    """A model that loads but fails at invoke: GATHER of index 100 from 48 values (LiteRT
    checks indices when it runs the op)."""
    import numpy as np

    flatbuffers, schema = _schema()
    buffers = [schema.BufferT(), schema.BufferT()]
    buffers[1].data = list(np.array([100], np.int32).tobytes())
    x = _tensor(schema, "x", [1, 4, 4, 3], schema.TensorType.FLOAT32, 0)
    flat = _tensor(schema, "flat", [48], schema.TensorType.FLOAT32, 0)
    idx = _tensor(schema, "idx", [1, 1], schema.TensorType.INT32, 1)
    y = _tensor(schema, "y", [1, 1], schema.TensorType.FLOAT32, 0)
    codes = []
    for builtin in (schema.BuiltinOperator.RESHAPE, schema.BuiltinOperator.GATHER):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        code.version = 1
        codes.append(code)
    reshape = schema.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = 0, [0], [1]
    options = schema.ReshapeOptionsT()
    options.newShape = [48]
    reshape.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    reshape.builtinOptions = options
    gather = schema.OperatorT()
    gather.opcodeIndex, gather.inputs, gather.outputs = 1, [1, 2], [3]
    gather.builtinOptionsType = schema.BuiltinOptions.GatherOptions
    gather.builtinOptions = schema.GatherOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors = [x, flat, idx, y]
    subgraph.inputs, subgraph.outputs, subgraph.operators = [0], [3], [reshape, gather]
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [subgraph]
    model.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path
