"""Identical called subgraphs of a TFLite model stored once (`share_subgraphs`).

The streaming model's `tf.cond` branches repeat per layer; see `share_subgraphs`.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils as fu

# Options fields that name a subgraph, per options class of the control-flow ops.
SUBGRAPH_FIELDS = {fu.schema_fb.IfOptionsT: ("thenSubgraphIndex", "elseSubgraphIndex"),
                   fu.schema_fb.WhileOptionsT: ("condSubgraphIndex", "bodySubgraphIndex"),
                   fu.schema_fb.CallOnceOptionsT: ("initSubgraphIndex",)}


def share_subgraphs(model) -> int:
    """Stores identical called subgraphs once; returns how many were dropped.

    The converter emits each `tf.cond` branch as its own subgraph, so every layer carries a
    copy of the same attention branches (GPT-2 base's streaming model: 143 subgraphs, 15
    distinct). The runtime builds an interpreter subgraph, its tensors and an XNNPACK runtime
    for each (about 6 MB resident at GPT-2 base); the control-flow ops of every layer can
    call one copy, since they run one after another. Identical means the same operators,
    tensors (shapes, types, constant contents, quantization; names aside) and callees.
    Signature subgraphs are kept as they are.
    """
    entry = {sig.subgraphIndex for sig in model.signatureDefs}
    tensors = [None if i in entry else  # signature subgraphs hold the weights: not hashed
               _fingerprint([(t.shape, t.shapeSignature, t.type, t.quantization, t.isVariable,
                              t.sparsity, model.buffers[t.buffer]) for t in sg.tensors])
               for i, sg in enumerate(model.subgraphs)]
    same = list(range(len(model.subgraphs)))  # subgraph -> the first identical one
    while True:  # callees first: callers become identical once their callees are
        first: dict = {}
        found = [i if i in entry else first.setdefault(
                     (tensors[i], _fingerprint(sg.inputs), _fingerprint(sg.outputs),
                      tuple(_op_fingerprint(op, same) for op in sg.operators)), i)
                 for i, sg in enumerate(model.subgraphs)]
        if found == same:
            break
        same = found
    kept = [i for i in range(len(model.subgraphs)) if same[i] == i]
    position = {old: new for new, old in enumerate(kept)}
    for sg in model.subgraphs:
        for op in sg.operators:
            for field in SUBGRAPH_FIELDS.get(type(op.builtinOptions), ()):
                setattr(op.builtinOptions, field,
                        position[same[getattr(op.builtinOptions, field)]])
    for sig in model.signatureDefs:
        sig.subgraphIndex = position[sig.subgraphIndex]
    dropped = len(model.subgraphs) - len(kept)
    model.subgraphs = [model.subgraphs[i] for i in kept]
    return dropped


def _op_fingerprint(op, same: list) -> tuple:
    options = op.builtinOptions
    fields = SUBGRAPH_FIELDS.get(type(options), ())
    callees = tuple(same[getattr(options, f)] for f in fields)
    rest = None if options is None else {k: v for k, v in vars(options).items()
                                         if k not in fields}
    return _fingerprint((op.opcodeIndex, op.inputs, op.outputs, op.intermediates,
                         op.builtinOptionsType, rest, op.customOptions)) + callees


def _fingerprint(value):
    """A hashable, exact summary of an object-API value (arrays by content)."""
    if isinstance(value, np.ndarray):
        return (str(value.dtype), value.shape, hashlib.sha1(value.tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _fingerprint(v)) for k, v in value.items()))
    if hasattr(value, "__dict__"):
        return (type(value).__name__, _fingerprint(vars(value)))
    return value
