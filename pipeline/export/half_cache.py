"""A float16 KV cache for the streaming model: half the cache memory, attention in float16.

The converter builds the streaming model in float32 (it has no float16 STRIDED_SLICE or
SOFTMAX). This rewrite of the flatbuffer then stores every `kv_cache_*` tensor as float16 and
runs attention (the `tf.cond` bucket branches: slice the cache, two BATCH_MATMULs, SOFTMAX) in
float16, which XNNPACK runs as one delegated partition per branch. At the branch call sites a
CAST turns q and the mask to float16 and the result back to float32; before each
DYNAMIC_UPDATE_SLICE a CAST turns the new keys and values to float16. Attention with a single
bucket (no branch) reads its cache slice through a CAST to float32. Everything else (the
weights' matmuls, norms, logits) stays as it was.

At context 1024 the GPT-2 base cache is 37.7 MB instead of 75.5 MB. Like llama.cpp's default
f16 cache, it rounds keys and values to float16: used for quantized bundles, whose check is
perplexity within 3% of Keras; fp32 bundles keep a float32 cache and stay token-exact.

Example:
    >>> flatbuffer = half_cache(flatbuffer)   # before quantization (it keeps buffer data inline)
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils as fu

from pipeline.export.tflite import _builtin, _opcode_index

OPS = fu.schema_fb.BuiltinOperator
TYPES = fu.schema_fb.TensorType


def half_cache(flatbuffer: bytes) -> bytes:
    """Returns the model with float16 caches and float16 attention branches."""
    model = fu.convert_bytearray_to_object(bytearray(flatbuffer))
    cast = _opcode_index(model, OPS.CAST, 1)
    entry = {sig.subgraphIndex for sig in model.signatureDefs}
    for index, sg in enumerate(model.subgraphs):
        if index not in entry:
            _check_attention_only(model, sg, index)
            _all_half(model, sg)
    for sig in model.signatureDefs:
        sg = model.subgraphs[sig.subgraphIndex]
        for io in [*sig.inputs, *sig.outputs]:
            if _name(io).startswith("kv_cache_"):
                sg.tensors[io.tensorIndex].type = TYPES.FLOAT16
        _cast_at_boundaries(model, sg, cast)
    return bytes(fu.convert_object_to_bytearray(model))


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


# What the bucket branches of `GPT2Graph._attend` hold; the only tf.cond in the graph.
ATTENTION_OPS = {OPS.STRIDED_SLICE, OPS.BATCH_MATMUL, OPS.MUL, OPS.ADD, OPS.SOFTMAX,
                 OPS.LESS_EQUAL, OPS.IF}


def _check_attention_only(model, sg, index: int) -> None:
    """Refuses to run anything but attention in float16 (a new tf.cond elsewhere in the graph
    would otherwise be rewritten silently)."""
    for op in sg.operators:
        code = _builtin(model.operatorCodes[op.opcodeIndex])
        if code not in ATTENTION_OPS:
            name = next((k for k, v in vars(OPS).items() if v == code), str(code))
            raise ValueError(f"half_cache: subgraph {index} runs {name}, which is not part of "
                             f"attention; only attention branches may be float16")


def _all_half(model, sg) -> None:
    """A branch subgraph: every float32 tensor (constants too) becomes float16."""
    for tensor in sg.tensors:
        if tensor.type != TYPES.FLOAT32:
            continue
        tensor.type = TYPES.FLOAT16
        data = model.buffers[tensor.buffer].data
        if data is not None and len(data):
            buffer = fu.schema_fb.BufferT()
            buffer.data = np.frombuffer(bytes(data), np.float32).astype(np.float16).view(np.uint8)
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1


def _new_tensor(sg, like, dtype, suffix: str) -> int:
    tensor = fu.schema_fb.TensorT()
    tensor.shape = np.array(like.shape, dtype=np.int32)
    tensor.shapeSignature = like.shapeSignature
    tensor.type = dtype
    tensor.buffer = 0
    tensor.name = f"{_name(like)}/{suffix}".encode()
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def _cast_op(cast: int, source: int, target: int):
    op = fu.schema_fb.OperatorT()
    op.opcodeIndex = cast
    op.inputs = np.array([source], dtype=np.int32)
    op.outputs = np.array([target], dtype=np.int32)
    return op


def _cast_at_boundaries(model, sg, cast: int) -> None:
    """A signature subgraph: CASTs into and out of the float16 caches and branches."""
    operators = []
    for op in sg.operators:
        code = _builtin(model.operatorCodes[op.opcodeIndex])
        if code == OPS.DYNAMIC_UPDATE_SLICE:
            sg.tensors[int(op.outputs[0])].type = TYPES.FLOAT16
            sg.tensors[int(op.inputs[0])].type = TYPES.FLOAT16
            update = int(op.inputs[1])
            half = _new_tensor(sg, sg.tensors[update], TYPES.FLOAT16, "half")
            operators.append(_cast_op(cast, update, half))
            op.inputs = np.array([op.inputs[0], half, *op.inputs[2:]], dtype=np.int32)
            operators.append(op)
        elif code == OPS.IF:
            inputs = [int(i) for i in op.inputs]
            for k, i in enumerate(inputs[1:], start=1):
                if sg.tensors[i].type == TYPES.FLOAT32:
                    half = _new_tensor(sg, sg.tensors[i], TYPES.FLOAT16, "half")
                    operators.append(_cast_op(cast, i, half))
                    inputs[k] = half
            op.inputs = np.array(inputs, dtype=np.int32)
            operators.append(op)
            outputs = [int(o) for o in op.outputs]
            for k, o in enumerate(outputs):
                if sg.tensors[o].type == TYPES.FLOAT32:
                    half = _new_tensor(sg, sg.tensors[o], TYPES.FLOAT16, "half")
                    outputs[k] = half
                    operators.append(_cast_op(cast, half, o))
            op.outputs = np.array(outputs, dtype=np.int32)
        else:
            _read_as_float32(sg, op, code, cast, operators)
            operators.append(op)
    sg.operators = operators


def _read_as_float32(sg, op, code: int, cast: int, operators: list) -> None:
    """Attention outside a branch (a single bucket): a slice of a float16 cache stays float16
    (it only moves data); any other op reading float16 reads it through a CAST."""
    for k, i in enumerate(int(i) for i in op.inputs):
        if i < 0 or sg.tensors[i].type != TYPES.FLOAT16:
            continue
        if code in (OPS.STRIDED_SLICE, OPS.SLICE, OPS.RESHAPE) and k == 0:
            sg.tensors[int(op.outputs[0])].type = TYPES.FLOAT16
            continue
        full = _new_tensor(sg, sg.tensors[i], TYPES.FLOAT32, "float32")
        operators.append(_cast_op(cast, i, full))
        op.inputs[k] = full
