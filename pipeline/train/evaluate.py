"""Evaluation shared by the stages: validation perplexity, generations, Keras decode speed."""

from __future__ import annotations

import time

import keras_hub

from pipeline.config import EvalConfig, Sampler, Sampling
from pipeline.train.loop import perplexity


def keras_sampler(sampling: Sampling):
    """Returns the keras-hub sampler for `sampling`."""
    if sampling.sampler == Sampler.GREEDY:
        return keras_hub.samplers.GreedySampler()
    if sampling.sampler == Sampler.TOP_K:
        return keras_hub.samplers.TopKSampler(k=sampling.top_k, temperature=sampling.temperature,
                                              seed=sampling.seed)
    return keras_hub.samplers.TopPSampler(p=sampling.top_p, k=sampling.top_k,
                                          temperature=sampling.temperature, seed=sampling.seed)


def generate_texts(causal_lm, prompts, max_length: int, sampling: Sampling = Sampling()
                   ) -> list[str]:
    """Returns prompt + continuation for each prompt, decoded with `sampling`."""
    previous = causal_lm.sampler if hasattr(causal_lm, "sampler") else None
    causal_lm.sampler = keras_sampler(sampling)
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
    gens = {name: generate_texts(causal_lm, cfg.prompts, max_length, sampling)
            for name, sampling in (("greedy", Sampling()), ("sampled", cfg.sampling))}
    return {"val_loss": ppl["loss"], "val_perplexity": ppl["perplexity"], "generations": gens}


def decode_tokens_per_second(causal_lm, prompt: str, new_tokens: int) -> float:
    """Returns Keras greedy decode speed (tokens/s), timed after a warm-up call."""
    causal_lm.sampler = keras_sampler(Sampling())
    causal_lm.generate_function = None
    prompt_tokens = len(causal_lm.preprocessor.tokenizer(prompt)) + 1
    length = min(prompt_tokens + new_tokens, causal_lm.backbone.max_sequence_length)
    causal_lm.generate([prompt], max_length=length, stop_token_ids=None)  # trace + warm up
    started = time.perf_counter()
    causal_lm.generate([prompt], max_length=length, stop_token_ids=None)
    seconds = time.perf_counter() - started
    causal_lm.generate_function = None
    return (length - prompt_tokens) / seconds
