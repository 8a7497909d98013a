"""Per-row weight scales applied in the graph, so a quantized text model runs on TFLite 2.16.

ai-edge-quantizer stores int8 weights with one scale per output row (per-channel). TFLite
reads those scales in FULLY_CONNECTED's hybrid kernel only from version 12 (TFLite 2.17) and
in EMBEDDING_LOOKUP only from version 4 (2.18); older kernels read one scale per tensor. The
stock select-TF-ops library mobile teams can install is 2.16.1. This rewrite keeps the same
int8 values and the same per-row scales, but moves the scales out of the tensor into the
graph: the weight gets one scale of 1.0, and

    FULLY_CONNECTED(x, W[s], b)       ->  FULLY_CONNECTED(x, W[1.0], b / s) * s
    EMBEDDING_LOOKUP(ids, E[s])       ->  EMBEDDING_LOOKUP(ids, E[1.0]) * GATHER(s, ids)

which is the same arithmetic (the hybrid kernel multiplies its int32 sums by input scale x
weight scale, then adds the bias), through operator versions TFLite has run since 1.15. One
MUL per weight and no other operator: each operator costs a few microseconds per step. The int8 table is still
stored once for the lookup and the tied output projection; `s` is stored once per weight
(float32, one value per row: what the per-channel quantization held).

The hybrid kernel then quantizes each input row on the fly; `asymmetric_inputs` makes it do so
asymmetrically (a zero point per row, as XNNPACK's dynamically quantized kernels of newer
runtimes do), so the file gives in 2.16 the texts it gives in 2.19 (measured: 9/9 verification
prompts for make run's teacher and student, where symmetric inputs gave 6/9 and 5/9).

Example:
    >>> rewritten = scales_in_graph(model)   # an object-API model, after quantization
    >>> asymmetric_inputs(model)
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils as fu

from pipeline.export.tflite import builtin_code, opcode_index

OPS = fu.schema_fb.BuiltinOperator
TYPES = fu.schema_fb.TensorType


def scales_in_graph(model) -> int:
    """Rewrites every FULLY_CONNECTED and EMBEDDING_LOOKUP on a per-row int8 constant as
    above (in place); returns how many operators were rewritten."""
    rewritten = 0
    for sg in model.subgraphs:
        users = [(op, builtin_code(model.operatorCodes[op.opcodeIndex])) for op in sg.operators]
        weights = {int(op.inputs[1]) for op, code in users
                   if code in (OPS.FULLY_CONNECTED, OPS.EMBEDDING_LOOKUP) and len(op.inputs) > 1
                   and _per_row_int8(model, sg, int(op.inputs[1]))}
        for op, code in users:  # a tensor read elsewhere must keep its scales
            others = [int(i) for i in op.inputs if int(i) in weights]
            if others and (code not in (OPS.FULLY_CONNECTED, OPS.EMBEDDING_LOOKUP)
                           or others != [int(op.inputs[1])]):
                weights -= set(others)
        row_scales = {w: np.asarray(sg.tensors[w].quantization.scale, np.float32)
                      for w in weights}
        scales: dict = {}  # weight -> scale buffer; (weight, shape) -> scale tensor
        operators = []
        for op, code in users:
            weight = int(op.inputs[1]) if len(op.inputs) > 1 else -1
            if weight in weights and code in (OPS.FULLY_CONNECTED, OPS.EMBEDDING_LOOKUP):
                operators += _rewrite(model, sg, op, code, weight, row_scales[weight], scales)
                rewritten += 1
            else:
                operators.append(op)
        for w in weights:  # same int8 values, one scale of 1.0
            q = sg.tensors[w].quantization
            q.scale = np.array([1.0], dtype=np.float32)
            q.zeroPoint = np.array([0], dtype=np.int64)
            q.quantizedDimension = 0
        sg.operators = operators
    return rewritten


def _per_row_int8(model, sg, index: int) -> bool:
    tensor = sg.tensors[index]
    q = tensor.quantization
    data = model.buffers[tensor.buffer].data
    return not (tensor.type != TYPES.INT8 or q is None or q.scale is None or len(q.scale) < 2
                or data is None or len(data) == 0 or len(tensor.shape) != 2
                or q.quantizedDimension != 0 or np.any(np.asarray(q.zeroPoint) != 0))


def _rewrite(model, sg, op, code: int, weight: int, row_scales, scales: dict) -> list:
    rows = int(sg.tensors[weight].shape[0])
    output = int(op.outputs[0])
    out = sg.tensors[output]
    raw = _tensor(sg, out.shape, TYPES.FLOAT32, f"{_name(out)}/unscaled")
    op.outputs = np.array([raw], dtype=np.int32)
    mul = _op(model, OPS.MUL, fu.schema_fb.MulOptionsT())
    if code == OPS.FULLY_CONNECTED:
        if op.builtinOptions.fusedActivationFunction != 0:
            raise ValueError("a fused activation after a per-row weight cannot be rewritten")
        # (1, rows) when the output is one row: the same shape, no broadcast in the MUL
        shape = (1, rows) if list(out.shape) == [1, rows] else (rows,)
        s = _scale_tensor(model, sg, scales, weight, row_scales, shape)
        bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        if bias >= 0:  # (x W + b / s) * s = x W s + b: the bias stays inside the kernel
            inputs = list(op.inputs)
            inputs[2] = _divided_bias(model, sg, bias, row_scales)
            op.inputs = np.array(inputs, dtype=np.int32)
        mul.inputs, mul.outputs = np.array([raw, s], np.int32), np.array([output], np.int32)
        return [op, mul]
    # EMBEDDING_LOOKUP(ids, table) -> (T, H); each looked-up row times its scale, (T, 1)
    ids = int(op.inputs[0])
    s = _scale_tensor(model, sg, scales, weight, row_scales, (rows, 1))
    looked_up = _tensor(sg, [int(sg.tensors[ids].shape[0]), 1], TYPES.FLOAT32,
                        f"{_name(out)}/row_scales")
    gather = _op(model, OPS.GATHER, fu.schema_fb.GatherOptionsT())
    gather.inputs, gather.outputs = np.array([s, ids], np.int32), np.array([looked_up], np.int32)
    mul.inputs, mul.outputs = np.array([raw, looked_up], np.int32), np.array([output], np.int32)
    return [gather, op, mul]


def _divided_bias(model, sg, bias: int, row_scales) -> int:
    """The kernel's bias input as b / s: the constant rewritten in place when this operator
    is its only reader (the usual case: no second copy), else a new constant."""
    tensor = sg.tensors[bias]
    values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.float32)
    data = np.frombuffer((values / row_scales).astype(np.float32).tobytes(), np.uint8)
    readers = sum(int(i) == bias for op in sg.operators for i in op.inputs)
    sharing = sum(t.buffer == tensor.buffer for g in model.subgraphs for t in g.tensors)
    if readers == 1 and sharing == 1:
        model.buffers[tensor.buffer].data = data
        return bias
    buffer = fu.schema_fb.BufferT()
    buffer.data = data
    model.buffers.append(buffer)
    return _tensor(sg, list(tensor.shape), TYPES.FLOAT32, f"{_name(tensor)}/over_row_scales",
                   buffer=len(model.buffers) - 1)


def _scale_tensor(model, sg, scales: dict, weight: int, values, shape) -> int:
    """The scales as a (rows,) or (rows, 1) constant; both shapes share one buffer."""
    if weight not in scales:
        buffer = fu.schema_fb.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        scales[weight] = len(model.buffers) - 1
    key = (weight, shape)
    if key not in scales:
        scales[key] = _tensor(sg, list(shape), TYPES.FLOAT32,
                              f"{_name(sg.tensors[weight])}/row_scales{len(shape)}",
                              buffer=scales[weight])
    return scales[key]


def _tensor(sg, shape, dtype, name: str, buffer: int = 0) -> int:
    tensor = fu.schema_fb.TensorT()
    tensor.shape = np.array(shape, dtype=np.int32)
    tensor.type, tensor.buffer, tensor.name = dtype, buffer, name.encode()
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def _op(model, code: int, options):
    op = fu.schema_fb.OperatorT()
    op.opcodeIndex = opcode_index(model, code, 1)  # versions are computed after (op_versions)
    op.builtinOptionsType = {OPS.MUL: fu.schema_fb.BuiltinOptions.MulOptions,
                             OPS.ADD: fu.schema_fb.BuiltinOptions.AddOptions,
                             OPS.GATHER: fu.schema_fb.BuiltinOptions.GatherOptions}[code]
    op.builtinOptions = options
    return op


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def asymmetric_inputs(model) -> int:
    """Sets `asymmetric_quantize_inputs` on every hybrid FULLY_CONNECTED (float input,
    quantized weight), in place; returns how many."""
    count = 0
    for sg in model.subgraphs:
        for op in sg.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) != OPS.FULLY_CONNECTED:
                continue
            x, w = (sg.tensors[int(i)] for i in op.inputs[:2])
            if x.type == TYPES.FLOAT32 and w.type in (TYPES.INT8, TYPES.INT4) and \
                    op.builtinOptions is not None:
                op.builtinOptions.asymmetricQuantizeInputs = True
                count += 1
    return count
