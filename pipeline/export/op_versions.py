"""Operator versions and the minimum TFLite runtime of an exported file, computed by TFLite.

A runtime refuses a file whose (operator, version) pair it does not register, and runs the
kernel it has for a lower version without a check of the tensor types. The converter sets
each operator's version from its tensor types, but ai-edge-quantizer changes the types
(int8/int4 weights) and leaves the versions and the `min_runtime_version` metadata as they
were. So after quantization both are computed again, by TFLite's own versioning code
(`tensorflow/lite/tools/versioning/`: `op_version.cc` picks each operator's version from its
signature, `runtime_version.cc` maps (operator, version) to the first release that runs it),
which TensorFlow's library exports as `tflite::UpdateOpVersion` and
`tflite::UpdateMinimumRuntimeVersionForModel`; both edit a flatbuffer in place.

Example:
    >>> model_bytes = with_computed_versions(model_bytes)
    >>> minimum_runtime(model_bytes)   # {"version": "2.4.0", "operators": {...}}
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils as fu

from pipeline.errors import PipelineError
from pipeline.export.tflite import read_model, write_model

# The stock runtimes mobile teams install (README "On a phone"). The text model needs the
# select-TF-ops library, whose newest Maven release is 2.16.1 (LiteRT ships none); the iOS
# TensorFlowLiteSelectTfOps pods run from 2.14 to 2.17.
STOCK_TEXT_RUNTIME = "2.16.1"
ANDROID_TEXT_ARTIFACTS = ["org.tensorflow:tensorflow-lite:2.16.1",
                          "org.tensorflow:tensorflow-lite-select-tf-ops:2.16.1"]
IOS_TEXT_PODS = ["TensorFlowLiteSwift", "TensorFlowLiteSelectTfOps"]  # 2.14.0 ... 2.17.0
IOS_POD_VERSIONS = ("2.14.0", "2.17.0")
# The bundle runs in LiteRT-LM 0.18 (its own LiteRT, built after TensorFlow 2.21: it runs
# every operator version TF 2.21's table knows, which this check holds the bundle to).
BUNDLE_RUNTIME = "2.21.0"
# TFLite's versioning table gives FULLY_CONNECTED with float inputs and int4 weights no version
# of its own (version 1): the int4 text model is verified in TFLite 2.16.1 itself.
METADATA_NAME = b"min_runtime_version"
METADATA_BYTES = 16  # the converter's fixed-size field; the runtime version is written in it


@functools.lru_cache(maxsize=None)
def _tflite_versioning():
    """TensorFlow's library, already loaded by `import tensorflow`, for its versioning calls."""
    folder = Path(tf.__file__).parent
    candidates = sorted(folder.glob("libtensorflow_cc.so*")) + sorted(
        folder.glob("libtensorflow_cc*.dylib"))
    if not candidates:
        raise PipelineError(f"TensorFlow's library libtensorflow_cc is not in {folder}: "
                            f"cannot compute operator versions")
    lib = ctypes.CDLL(str(candidates[0]))
    update_ops = lib._ZN6tflite15UpdateOpVersionEPh
    update_runtime = lib._ZN6tflite35UpdateMinimumRuntimeVersionForModelEPh
    for fn in (update_ops, update_runtime):
        fn.argtypes, fn.restype = [ctypes.c_char_p], None
    return update_ops, update_runtime


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def with_computed_versions(flatbuffer: bytes) -> bytes:
    """Returns the file with every builtin operator's version and its `min_runtime_version`
    metadata computed from its tensors by TFLite's versioning code.

    UpdateOpVersion writes a version into an operator code: operators sharing a code would
    leave the last one's version, so each operator gets its own code first, and identical
    codes are merged after. A field at its default (version 1) is not in the buffer and could
    not be written, so every code is written with version 0 first.
    """
    model = read_model(flatbuffer)
    codes, model.operatorCodes = model.operatorCodes, []
    for sg in model.subgraphs:
        for op in sg.operators:
            code = _copy_code(codes[op.opcodeIndex])
            custom = fu.schema_fb.BuiltinOperator.CUSTOM
            if max(code.builtinCode, code.deprecatedBuiltinCode) != custom:
                code.version = 0
            model.operatorCodes.append(code)
            op.opcodeIndex = len(model.operatorCodes) - 1
    _ensure_metadata(model)
    buffer = ctypes.create_string_buffer(write_model(model))
    del model
    update_ops, update_runtime = _tflite_versioning()
    update_ops(buffer)
    update_runtime(buffer)
    model = read_model(buffer.raw)
    del buffer
    _merge_codes(model)
    return write_model(model)


def minimum_runtime(flatbuffer: bytes) -> dict:
    """Returns {"version": the file's minimum runtime, "operators": {"NAME vN": release}}.

    Each distinct (operator, version) is mapped through TFLite's table on a one-operator
    model, so an error can name the operator that needs a newer runtime.
    """
    model = fu.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {v: k for k, v in vars(fu.schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    operators = {}
    for code in model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == fu.schema_fb.BuiltinOperator.CUSTOM:
            continue
        operators[f"{names.get(builtin, builtin)} v{code.version}"] = _runtime_of(
            builtin, code.version)
    overall = max(operators.values(), key=version_tuple, default="")
    return {"version": overall, "operators": dict(sorted(operators.items()))}


def runtime_facts(flatbuffer: bytes, target: str) -> dict:
    """What manifest.json, ops.md and the metrics say of the runtime a file needs."""
    runtime = minimum_runtime(flatbuffer)
    facts = {"tflite": runtime["version"], "declared_in_file": metadata_runtime(flatbuffer),
             "operators": runtime["operators"]}
    if target == "text":
        lowest = max(IOS_POD_VERSIONS[0], runtime["version"], key=version_tuple)
        facts.update(android=ANDROID_TEXT_ARTIFACTS,
                     ios=[f"{pod} {lowest} to {IOS_POD_VERSIONS[1]}" for pod in IOS_TEXT_PODS],
                     checked_against=STOCK_TEXT_RUNTIME)
    else:
        facts.update(android=["com.google.ai.edge.litertlm:litertlm-android (LiteRT-LM 0.18+)"],
                     ios=["LiteRTLM Swift package (LiteRT-LM 0.18+)"],
                     checked_against=BUNDLE_RUNTIME)
    return facts


def metadata_runtime(flatbuffer: bytes) -> str:
    """The `min_runtime_version` the file itself declares."""
    model = fu.convert_bytearray_to_object(bytearray(flatbuffer))
    for md in model.metadata or []:
        if md.name == METADATA_NAME:
            return bytes(model.buffers[md.buffer].data).split(b"\0")[0].decode()
    return ""


def needing_newer(runtime: dict, oldest: str) -> dict:
    """The operators of `minimum_runtime(...)` or `runtime_facts(...)` that `oldest` (a
    release) does not run."""
    return {op: v for op, v in runtime["operators"].items()
            if version_tuple(v) > version_tuple(oldest)}


def require_runtime(facts: dict, oldest: str, what: str) -> None:
    """Raises a one-line error naming the operators of `runtime_facts(...)` that `oldest`
    cannot run."""
    newer = needing_newer(facts, oldest)
    if newer:
        listed = ", ".join(f"{op} needs TFLite {v}" for op, v in newer.items())
        raise PipelineError(f"{what} needs TFLite {facts['tflite']}, newer than the "
                            f"runtime it must run on ({oldest}): {listed}")


@functools.lru_cache(maxsize=None)
def _runtime_of(builtin: int, version: int) -> str:
    model = fu.schema_fb.ModelT()
    model.version = 3
    code = fu.schema_fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes = [code]
    op = fu.schema_fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [], []
    sg = fu.schema_fb.SubGraphT()
    sg.operators, sg.tensors, sg.inputs, sg.outputs = [op], [], [], []
    model.subgraphs = [sg]
    empty = fu.schema_fb.BufferT()
    model.buffers = [empty]
    _ensure_metadata(model)
    buffer = ctypes.create_string_buffer(bytes(fu.convert_object_to_bytearray(model)))
    _tflite_versioning()[1](buffer)
    return metadata_runtime(buffer.raw)


def _ensure_metadata(model) -> None:
    """Gives the model a zeroed `min_runtime_version` field for TFLite to write into."""
    for md in model.metadata or []:
        if md.name == METADATA_NAME:
            model.buffers[md.buffer].data = bytearray(METADATA_BYTES)
            return
    buffer = fu.schema_fb.BufferT()
    buffer.data = bytearray(METADATA_BYTES)
    model.buffers.append(buffer)
    md = fu.schema_fb.MetadataT()
    md.name, md.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]


def _copy_code(code):
    copy = fu.schema_fb.OperatorCodeT()
    copy.builtinCode, copy.deprecatedBuiltinCode = code.builtinCode, code.deprecatedBuiltinCode
    copy.customCode, copy.version = code.customCode, code.version
    return copy


def _merge_codes(model) -> None:
    first: dict = {}
    merged = []
    for code in model.operatorCodes:
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        if key not in first:
            first[key] = len(merged)
            merged.append(code)
    index = [first[(c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)]
             for c in model.operatorCodes]
    for sg in model.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = index[op.opcodeIndex]
    model.operatorCodes = merged
