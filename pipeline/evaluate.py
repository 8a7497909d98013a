"""Evaluation shared by the stages: validation perplexity and generations for fixed prompts."""

from __future__ import annotations

from pipeline.config import EvalConfig
from pipeline.training import perplexity


def samplers(cfg: EvalConfig) -> dict:
    """Returns the named samplers used for before/after generations."""
    import keras_hub

    return {
        "greedy": keras_hub.samplers.GreedySampler(),
        "sampled": keras_hub.samplers.TopKSampler(
            k=cfg.top_k, temperature=cfg.temperature, seed=cfg.seed
        ),
    }


def generate_texts(causal_lm, prompts, max_length: int, sampler) -> list[str]:
    """Returns prompt + continuation for each prompt, decoded with `sampler`."""
    previous = causal_lm.sampler if hasattr(causal_lm, "sampler") else None
    causal_lm.sampler = sampler
    causal_lm.generate_function = None  # rebuild the traced loop for this sampler
    try:
        out = causal_lm.generate(list(prompts), max_length=max_length)
    finally:
        causal_lm.sampler = previous
        causal_lm.generate_function = None
    return [str(t) for t in out]


def evaluate(causal_lm, split, cfg: EvalConfig, max_length: int) -> dict:
    """Returns validation loss/perplexity and greedy and sampled generations."""
    ppl = perplexity(causal_lm, split.x, split.y, split.w, cfg.batch_size)
    gens = {name: generate_texts(causal_lm, cfg.prompts, max_length, s)
            for name, s in samplers(cfg).items()}
    return {"val_loss": ppl["loss"], "val_perplexity": ppl["perplexity"], "generations": gens}
