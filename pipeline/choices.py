"""The settings that take one of a fixed set of values, and the sampler settings they form.

Imported through `pipeline.config` (which re-exports them) by the config, the CLI and the stages.
The config's fields hold these types, converted once when the config is loaded (`overrides`);
each is a `StrEnum`, so it compares, formats and serializes as its value ("int8").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quantization(enum.StrEnum):
    """How exported weights are stored (config `export.quantization`, CLI, export, README).

    none  float32 weights;
    fp16  float16 weights, dequantized once when the interpreter prepares the model;
    int8  dynamic range: int8 weights with one scale per output row, activations quantized
          on the fly inside FULLY_CONNECTED (the default);
    int4  the same with 4-bit weights.
    """
    NONE = "none"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


class Sampler(enum.StrEnum):
    """How the next token is picked (config `export.sampler`, `generate --sampler`).

    greedy  the most likely token;
    top_k   sample among the k most likely tokens;
    top_p   sample among the most likely tokens that hold probability mass p.
    """
    GREEDY = "greedy"
    TOP_K = "top_k"
    TOP_P = "top_p"


class Distribution(enum.StrEnum):
    """Which tf.distribute strategy trains (`finetune.distribution`): train/distribution.py."""
    AUTO = "auto"
    NONE = "none"
    MIRRORED = "mirrored"
    MULTI_WORKER = "multi_worker"
    TPU = "tpu"


class Precision(enum.StrEnum):
    """The trained models' dtype policy (`finetune.precision`): train/distribution.py."""
    FLOAT32 = "float32"
    MIXED_FLOAT16 = "mixed_float16"
    MIXED_BFLOAT16 = "mixed_bfloat16"


@dataclass(frozen=True)
class Sampling:
    """One sampler's settings: used by Keras generations, the text model and LiteRT-LM alike."""
    sampler: Sampler = Sampler.GREEDY
    top_k: int = 40  # top_k: sample among the k most likely tokens
    top_p: float = 0.9  # top_p: the probability mass kept
    temperature: float = 1.0  # logits are divided by this before sampling
    seed: int = 0  # sampling is a pure function of (seed, step): same prompt, same text


def choices(enum_type) -> str:
    return ", ".join(m.value for m in enum_type)


class ExportTarget(enum.StrEnum):
    """What `export.targets` may name (export/stage.py's EXPORTERS builds each)."""
    TEXT = "text"  # one-shot .tflite: prompt in, text out
    LITERTLM = "litertlm"  # streaming prefill/decode bundle
