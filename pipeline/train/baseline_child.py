"""The distillation baseline trained in a child process: `distill.train_baseline` from the
student's initial weights, its losses, perplexity and seconds written as JSON. Its memory
goes back to the system when it exits (see `distill.py`); `distill._baseline_in_child`
starts it.

    python -m pipeline.train.baseline_child CONFIG_YAML TOKENIZER_PRESET STUDENT_CONFIG \\
        INITIAL_WEIGHTS VERBOSE(0|1) RESULT_JSON
"""

from __future__ import annotations

import json
from pathlib import Path

import keras_hub

from pipeline.config import RunConfig
from pipeline.processes import config_child_main
from pipeline.train.distill import train_baseline, training_windows
from pipeline.train.distribution import place
from pipeline.train.presets import load_tokenizer


def main(cfg: RunConfig, tokenizer_preset: str, student_config: str, initial: str,
         verbose: str) -> dict:
    shape = json.loads(student_config)
    placement = place(cfg.finetune.distribution, cfg.distill.batch_size, "distill")
    tokenizer = load_tokenizer(tokenizer_preset)
    length = min(cfg.finetune.sequence_length, shape["max_sequence_length"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=length)
    train, val = training_windows(cfg, tokenizer, length, verbose=False)
    losses, ppl, seconds = train_baseline(cfg, shape, preprocessor, train, val, placement,
                                          Path(initial), verbose == "1")
    return {"losses": losses, "perplexity": ppl, "seconds": seconds}


if __name__ == "__main__":
    config_child_main(main)
