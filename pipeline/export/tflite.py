"""Converting a SavedModel to TFLite, rewriting it (tied embedding stored once), quantizing,
listing ops. Identical subgraphs are shared by `shared_subgraphs.py`.

Quantization modes: `pipeline.config.Quantization` (int4 and int8 through ai-edge-quantizer).

How the tied token embedding is stored once: the converter emits `GATHER(wte, ids)` for the
lookup and `FULLY_CONNECTED(x, wte)` for the logits on the same float tensor. Quantizing
that as is gives two copies (per-tensor for GATHER, per-row for FULLY_CONNECTED). Rewriting
the GATHER as an EMBEDDING_LOOKUP, whose hybrid kernel reads int8/int4 tables, lets
ai-edge-quantizer quantize the one tensor once for both ops.
"""

from __future__ import annotations

import collections
import re
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils as fu
from ai_edge_quantizer import qtyping, quantizer, recipe

from pipeline.config import Quantization
from pipeline.errors import PipelineError

BYTES_PER_WEIGHT = {Quantization.NONE: 4.0, Quantization.FP16: 2.0, Quantization.INT8: 1.0,
                    Quantization.INT4: 0.5}


def convert_saved_model(saved_model_dir, select_tf_ops: bool) -> bytes:
    """Returns the float32 TFLite flatbuffer of a SavedModel's signatures."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if select_tf_ops:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        converter.allow_custom_ops = True
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def builtin_code(opcode) -> int:
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def tensor_name(tensor) -> str:
    """The name of a flatbuffer object-API tensor (or signature entry) as a str."""
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def opcode_index(model, code: int, version: int) -> int:
    for i, oc in enumerate(model.operatorCodes):
        if builtin_code(oc) == code and oc.version == version:
            return i
    oc = fu.schema_fb.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = version
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def read_model(flatbuffer: bytes):
    """The flatbuffer as an object-API model, for the rewrites below. Buffers that the
    quantizer stored after the flatbuffer (offset and size) are read inline, so that
    `write_model` writes them back."""
    model = fu.convert_bytearray_to_object(bytearray(flatbuffer))
    for buffer in model.buffers:
        offset, size = int(getattr(buffer, "offset", 0) or 0), int(getattr(buffer, "size", 0) or 0)
        if offset > 1 and buffer.data is None:
            buffer.data = np.frombuffer(flatbuffer, dtype=np.uint8, count=size, offset=offset)
            buffer.offset = buffer.size = 0
    return model


def write_model(model) -> bytes:
    return bytes(fu.convert_object_to_bytearray(model))


def tie_embedding(model) -> int:
    """Rewrites GATHERs on constant float tables as EMBEDDING_LOOKUP; returns how many.

    The token embedding's GATHER shares its table with the logits' FULLY_CONNECTED; as an
    EMBEDDING_LOOKUP both ops accept the same per-row quantized tensor, so it is stored
    once. The position table becomes an EMBEDDING_LOOKUP too, so it is quantized as well.
    Its version is set by `op_versions.with_computed_versions` after quantization, from the
    table's type (per-row int8/int4 tables: version 4, TFLite 2.18+); the text model moves
    the per-row scales into the graph first (`row_scales.py`) so that it runs on 2.16.
    """
    ops = fu.schema_fb.BuiltinOperator
    types = fu.schema_fb.TensorType
    lookup = None
    rewritten = 0
    for sg in model.subgraphs:
        for op in sg.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) != ops.GATHER:
                continue
            params, indices = int(op.inputs[0]), int(op.inputs[1])
            table, ids = sg.tensors[params], sg.tensors[indices]
            data = model.buffers[table.buffer].data
            if (data is None or len(data) == 0 or table.type != types.FLOAT32
                    or len(table.shape) != 2 or len(ids.shape) != 1 or ids.type != types.INT32
                    or getattr(op.builtinOptions, "axis", 0) != 0):
                continue
            if lookup is None:
                lookup = opcode_index(model, ops.EMBEDDING_LOOKUP, 1)
            op.opcodeIndex = lookup
            op.inputs = np.array([indices, params], dtype=np.int32)  # (lookup ids, table)
            op.builtinOptionsType = 0
            op.builtinOptions = None
            rewritten += 1
    return rewritten


def _unique_tensor_names(model) -> None:
    """Suffixes tensor names repeated across subgraphs (ai-edge-quantizer needs unique names)."""
    seen = collections.Counter()
    for index, sg in enumerate(model.subgraphs):
        for tensor in sg.tensors:
            name = tensor_name(tensor)
            seen[name] += 1
            if seen[name] > 1:
                tensor.name = f"{name}__sg{index}_{seen[name]}".encode()


def quantize(model, mode: str, eight_bit_ops=()) -> bytes:
    """Returns the float32 object-API model as a flatbuffer quantized in `mode` (a
    Quantization); repeated tensor names are made unique in place first.

    `eight_bit_ops` (in int4 mode): operators, as (subgraph index, operator index), whose
    weights are quantized to int8 instead (the text model's tied token table, see
    text.text_model_tflite)."""
    mode = Quantization(mode)
    if mode == Quantization.NONE:
        return write_model(model)
    _unique_tensor_names(model)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "float.tflite"
        source.write_bytes(write_model(model))
        qt = quantizer.Quantizer(str(source))
        if mode == Quantization.FP16:
            qt.add_weight_only_config(
                regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                num_bits=16, algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
            )
        elif mode == Quantization.INT8:
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        else:
            qt.load_quantization_recipe(recipe.dynamic_wi4_afp32())
            for sg_index, op_index in eight_bit_ops:
                sg = model.subgraphs[sg_index]
                op = sg.operators[op_index]
                name = tensor_name(sg.tensors[op.outputs[0]])
                code = builtin_code(model.operatorCodes[op.opcodeIndex])
                qt.add_dynamic_config(
                    regex=f"^{re.escape(name)};$", operation_name=_OPERATION_NAMES[code],
                    num_bits=8)
        return bytes(qt.quantize().quantized_model)


_OPERATION_NAMES = {
    fu.schema_fb.BuiltinOperator.FULLY_CONNECTED: qtyping.TFLOperationName.FULLY_CONNECTED,
    fu.schema_fb.BuiltinOperator.EMBEDDING_LOOKUP: qtyping.TFLOperationName.EMBEDDING_LOOKUP,
}


def op_report(flatbuffer: bytes) -> dict:
    """Returns {"builtin": {op: count}, "select_tf": {...}, "custom": {...}} over all subgraphs."""
    model = fu.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {v: k for k, v in vars(fu.schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    report = {"builtin": collections.Counter(), "select_tf": collections.Counter(),
              "custom": collections.Counter()}
    for sg in model.subgraphs:
        for op in sg.operators:
            oc = model.operatorCodes[op.opcodeIndex]
            code = builtin_code(oc)
            if code == fu.schema_fb.BuiltinOperator.CUSTOM:
                custom = oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode
                if custom.startswith("Flex"):
                    report["select_tf"][custom[len("Flex"):]] += 1
                else:
                    report["custom"][custom] += 1
            else:
                report["builtin"][names.get(code, str(code))] += 1
    return {k: dict(sorted(v.items())) for k, v in report.items()}


# Select-TF ops the stock select-TF-ops runtime carries: each name here was checked against
# the Flex delegate's allowlist (tensorflow/lite/delegates/flex/allowlisted_flex_ops.cc), where
# all of them have been since before TF 2.16. The text model may use only these (an export
# that needs another fails); a new op goes here only after checking that file.
STOCK_FLEX_OPS = frozenset({
    "Add", "AddV2", "ArgMax", "Bincount", "BroadcastTo", "Cast", "ConcatV2", "Cumsum",
    "DecodeRaw", "DenseBincount", "Equal", "Exp", "ExpandDims", "Fill", "Fingerprint",
    "FloorDiv", "FloorMod", "GatherV2", "Identity", "Less", "Log", "LogicalAnd", "LogicalNot",
    "LogicalOr", "MatMul", "Max", "Min", "Minimum", "Mul", "NotEqual", "OneHot", "Pack",
    "RaggedGather", "RaggedRange", "RaggedTensorToTensor", "Range", "RealDiv", "ReduceJoin",
    "Reshape", "Select", "SelectV2", "Shape", "Size", "Softmax", "Squeeze",
    "StatelessMultinomial", "StaticRegexReplace", "StridedSlice", "StringJoin", "StringLength",
    "StringSplit", "StringSplitV2", "Sub", "Sum", "TensorScatterUpdate", "Tile", "TopKV2",
    "Transpose", "UnicodeDecode", "UnicodeEncode", "Unpack", "UnsortedSegmentMin", "Where",
    "ZerosLike",
})


def outside_stock_runtime(select_tf) -> list[str]:
    """The select-TF ops the stock select-TF-ops runtime does not carry."""
    return sorted(set(select_tf) - STOCK_FLEX_OPS)


def weight_bytes(model) -> int:
    """Returns the bytes of constant float/int8/int4 tensors of an object-API model, each
    buffer counted once.

    String and integer constants (tokenizer tables, shapes) are left out, so this measures
    how the weights themselves are stored.
    """
    types = fu.schema_fb.TensorType
    weight_types = {types.FLOAT32, types.FLOAT16, types.INT8, types.UINT8, types.INT4}
    used = {t.buffer for sg in model.subgraphs for t in sg.tensors if t.type in weight_types}
    return sum(_buffer_size(model.buffers[b]) for b in used if b < len(model.buffers))


def _buffer_size(buffer) -> int:
    # Large models keep buffers after the flatbuffer (offset/size) instead of inline data.
    if buffer.data is not None:
        return len(buffer.data)
    return int(getattr(buffer, "size", 0) or 0) if int(getattr(buffer, "offset", 0) or 0) > 1 \
        else 0


def lookup_tables(model) -> tuple[list, int]:
    """Returns the operators that read a looked-up constant table, as (subgraph, operator)
    indices (the lookups and the tied output projection), and the tables' elements."""
    tables = set()
    for si, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) == \
                    fu.schema_fb.BuiltinOperator.EMBEDDING_LOOKUP:
                tables.add((si, int(op.inputs[1])))
    users = [(si, oi) for si, sg in enumerate(model.subgraphs)
             for oi, op in enumerate(sg.operators)
             if any((si, int(i)) in tables for i in op.inputs)]
    elements = sum(int(np.prod(model.subgraphs[si].tensors[t].shape)) for si, t in tables)
    return users, elements


def check_size(model, parameters: int, mode: str, eight_bit_parameters: int = 0) -> int:
    """Raises PipelineError unless the object-API model stores `parameters` weights once;
    returns their bytes.

    A file whose weights take much less than parameters x bytes-per-weight has lost them
    (from_concrete_functions did this to Keras 3 models); one well above stores some twice
    (GPT-2's tied embedding is 31% of its weights). Biases, LayerNorm and per-row scales
    stay float32: up to 12% slack, plus 16 KB of graph constants. `eight_bit_parameters` of
    them are int8 whatever the mode (the int4 text model's token and position tables).
    """
    stored = weight_bytes(model)
    expected = ((parameters - eight_bit_parameters) * BYTES_PER_WEIGHT[Quantization(mode)]
                + eight_bit_parameters * BYTES_PER_WEIGHT[Quantization.INT8])
    if stored < 0.95 * expected or stored > 1.12 * expected + 16384:
        raise PipelineError(
            f"{mode} model stores {stored / 1e6:.2f} MB of weights but {parameters:,} "
            f"parameters stored once take about {expected / 1e6:.2f} MB: weights missing or "
            f"duplicated"
        )
    return stored
