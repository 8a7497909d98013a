"""A float16 KV cache for the streaming model: half the cache memory, attention in float16.

The converter builds the streaming model in float32 (it has no float16 STRIDED_SLICE or
SOFTMAX). This rewrite of the flatbuffer then stores every `kv_cache_*` tensor as float16 and
runs attention (the `tf.cond` bucket branches: slice the cache, two BATCH_MATMULs, SOFTMAX) in
float16, which XNNPACK runs as one delegated partition per branch. At the branch call sites a
CAST turns q and the mask to float16 and the result back to float32; before each
DYNAMIC_UPDATE_SLICE a CAST turns the new keys and values to float16. Attention with a single
bucket (no branch) reads its cache slice through a CAST to float32. Everything else (the
weights' matmuls, norms, logits) stays as it was. A value cast at several call sites (the
mask, the same for every layer) is cast once per signature.

Float16 BATCH_MATMUL and SOFTMAX run in XNNPACK, which LiteRT-LM's CPU backend always applies
(the bundle is built for CPU); TFLite's reference kernels have no float16 version of them.

At context 1024 the GPT-2 base cache is 37.7 MB instead of 75.5 MB. Like llama.cpp's default
f16 cache, it rounds keys and values to float16: used for quantized bundles, whose check is
perplexity within 3% of Keras; fp32 bundles keep a float32 cache and stay token-exact.

Example:
    >>> model = read_model(float_flatbuffer)   # tflite.py; before quantization
    >>> half_cache(model)
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils as fu

from pipeline.config import Quantization
from pipeline.export.tflite import builtin_code, opcode_index, tensor_name

OPS = fu.schema_fb.BuiltinOperator
TYPES = fu.schema_fb.TensorType


def kv_cache_dtype(quantization: str) -> str:
    """The bundle's KV cache type: float32 for fp32 bundles (token-exact), else float16."""
    return "float32" if Quantization(quantization) == Quantization.NONE else "float16"


def half_cache(model) -> None:
    """Makes the caches and the attention branches of an object-API model float16."""
    cast = opcode_index(model, OPS.CAST, 1)
    entry = {sig.subgraphIndex for sig in model.signatureDefs}
    for index, sg in enumerate(model.subgraphs):
        if index not in entry:
            _check_attention_only(model, sg, index)
            _all_half(model, sg)
    for sig in model.signatureDefs:
        sg = model.subgraphs[sig.subgraphIndex]
        for io in [*sig.inputs, *sig.outputs]:
            if tensor_name(io).startswith("kv_cache_"):
                sg.tensors[io.tensorIndex].type = TYPES.FLOAT16
        _cast_at_boundaries(model, sg, cast)


# What the bucket branches of `GPT2Graph._attend` hold; the only tf.cond in the graph.
ATTENTION_OPS = {OPS.STRIDED_SLICE, OPS.BATCH_MATMUL, OPS.MUL, OPS.ADD, OPS.SOFTMAX,
                 OPS.LESS_EQUAL, OPS.IF}


def _check_attention_only(model, sg, index: int) -> None:
    """Refuses to run anything but attention in float16 (a new tf.cond elsewhere in the graph
    would otherwise be rewritten silently)."""
    for op in sg.operators:
        code = builtin_code(model.operatorCodes[op.opcodeIndex])
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
    tensor.name = f"{tensor_name(like)}/{suffix}".encode()
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
    halves: dict[int, int] = {}  # float32 tensor -> its float16 cast, made once

    def as_half(i: int) -> int:
        if i not in halves:
            halves[i] = _new_tensor(sg, sg.tensors[i], TYPES.FLOAT16, "half")
            operators.append(_cast_op(cast, i, halves[i]))
        return halves[i]

    for op in sg.operators:
        code = builtin_code(model.operatorCodes[op.opcodeIndex])
        if code == OPS.DYNAMIC_UPDATE_SLICE:
            cache = int(op.inputs[0])
            if sg.tensors[cache].type != TYPES.FLOAT16:
                raise ValueError(f"half_cache: DYNAMIC_UPDATE_SLICE into "
                                 f"{tensor_name(sg.tensors[cache])}, which is not a kv_cache_* "
                                 f"input")
            sg.tensors[int(op.outputs[0])].type = TYPES.FLOAT16
            op.inputs = np.array([cache, as_half(int(op.inputs[1])), *op.inputs[2:]],
                                 dtype=np.int32)
            operators.append(op)
        elif code == OPS.IF:
            op.inputs = np.array([int(op.inputs[0])] + [
                as_half(int(i)) if sg.tensors[int(i)].type == TYPES.FLOAT32 else int(i)
                for i in op.inputs[1:]], dtype=np.int32)
            operators.append(op)
            outputs = [int(o) for o in op.outputs]
            for k, o in enumerate(outputs):
                if sg.tensors[o].type == TYPES.FLOAT32:
                    outputs[k] = _new_tensor(sg, sg.tensors[o], TYPES.FLOAT16, "half")
                    operators.append(_cast_op(cast, outputs[k], o))
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
