"""Checks an exported model against Keras, in the runtime phones use, before it is accepted.

Text model (`.tflite`, run in the Flex interpreter): the text for each verification prompt
must equal Keras's greedy text in fp32 (sampling: the same graph run by TensorFlow).
Bundle (`.litertlm`): the tokenizer gives keras-hub's ids; fp32 decode logits match Keras
within LOGIT_TOLERANCE; LiteRT-LM's greedy text equals Keras's in fp32 (prompts longer than
the largest prefill and at the context limit included); a quantized bundle's (fp16, int8,
int4: weights, and its float16 KV cache) validation perplexity through the .tflite is within
PERPLEXITY_TOLERANCE of Keras fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tokenizers

from pipeline.config import Quantization, RunConfig, Sampling
from pipeline.errors import PipelineError
from pipeline.runtime.interpreter import StreamingInterpreter
from pipeline.runtime.litertlm import engine, stream_generate
from pipeline.train.evaluate import generate_texts

LOGIT_TOLERANCE = 1e-3  # fp32 decode logits vs Keras: float32 summation order only
PERPLEXITY_TOLERANCE = 0.03  # a quantized bundle vs Keras fp32, relative
TOKENIZER_STRINGS = [
    "Tomato soup. Serves four.", "", " leading space", "  two  spaces   three",
    "new\nline\n\nblank line\r\n", "tabs\tand\ttabs", "Crème brûlée, naïve façade",
    "emoji 🍮🥖 and 👩‍🍳", "中文 日本語 한국어", "numbers 12345 3.14 1,000", "it's they're we'll",
    "<|endoftext|> special", "trailing spaces   ",
]


# --- the one-shot text model

def text_prompts(cfg: RunConfig, tokenizer) -> list[str]:
    """Returns the configured prompts, or eval.prompts plus edge cases."""
    if cfg.export.prompts:
        return list(cfg.export.prompts)
    n = cfg.export.max_length
    filler = " ".join(["Serve warm with crusty bread."] * n)
    ids = tokenizer(filler)
    near_limit = str(tokenizer.detokenize(ids[: max(1, n - 3)]))  # room for ~2 new tokens
    too_long = str(tokenizer.detokenize(ids[: n + 5]))  # truncated, as Keras does
    return list(cfg.eval.prompts) + ["", "Crème brûlée for two 🍮, naïve façade.",
                                     "Two  spaces,   three.\nNew line\n\ttab", "中文 日本語 한국어",
                                     near_limit, too_long]


def first_difference(a: str, b: str) -> int | None:
    """Returns the first character index where `a` and `b` differ, or None if equal."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def text_parity(prompts, expected, got) -> dict:
    """Returns the per-prompt comparison of expected and exported texts."""
    rows = [{"prompt": p, "expected": e, "tflite": g, "match": e == g,
             "first_difference": first_difference(e, g)}
            for p, e, g in zip(prompts, expected, got)]
    return {"prompts": len(rows), "matches": sum(r["match"] for r in rows),
            "match_share": sum(r["match"] for r in rows) / max(1, len(rows)), "rows": rows}


def enforce_text(verification: dict, quantization: str) -> None:
    """Rejects an fp32 text model whose text differs from the reference on any prompt."""
    if quantization == Quantization.NONE and verification["matches"] != verification["prompts"]:
        bad = next(r for r in verification["rows"] if not r["match"])
        raise PipelineError(
            f"fp32 .tflite differs from {verification['reference']} on prompt "
            f"{bad['prompt'][:40]!r} at character {bad['first_difference']}: export rejected")


# --- the streaming bundle

def bundle_prompts(cfg: RunConfig, tokenizer, context: int, longest: int) -> list[str]:
    """Returns eval.prompts plus one longer than the largest prefill and one at the limit."""
    filler = " ".join(["Knead the dough, then let it rest for ten minutes."] * (context // 4))
    ids = tokenizer(filler)
    beyond_prefill = str(tokenizer.detokenize(ids[: longest + longest // 2 + 3]))
    near_limit = str(tokenizer.detokenize(ids[: context - 6]))
    return list(cfg.eval.prompts) + [beyond_prefill, near_limit]


def tokenizer_parity(tokenizer, tokenizer_json: Path, eng) -> dict:
    hf = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    rows = []
    for text in TOKENIZER_STRINGS:
        keras_ids = [int(i) for i in tokenizer(text)]
        rows.append({"text": text, "keras": keras_ids, "tokenizer_json": hf.encode(text).ids,
                     "litertlm": list(eng.tokenize(text)) if eng is not None else None})
    same = [r["keras"] == r["tokenizer_json"] and r["litertlm"] in (None, r["keras"])
            for r in rows]
    return {"strings": len(rows), "identical": sum(same), "rows": rows}


def greedy_parity(causal_lm, bundle: Path, prompts, context: int, max_new: int,
                  threads: int) -> dict:
    tokenizer = causal_lm.preprocessor.tokenizer
    rows = []
    eng = engine(bundle, threads, max_tokens=context)
    try:
        for prompt in prompts:
            n_prompt = len(tokenizer(prompt)) + 1  # + start token
            n_new = max(1, min(max_new, context - n_prompt))
            keras_text = generate_texts(causal_lm, [prompt], n_prompt + n_new)[0]
            pieces = list(stream_generate(bundle, prompt, n_new, Sampling(), eng=eng))
            litert_text = prompt + "".join(pieces)
            rows.append({"prompt": prompt, "prompt_tokens": n_prompt, "new_tokens": n_new,
                         "keras": keras_text, "litertlm": litert_text,
                         "match": keras_text == litert_text, "pieces": len(pieces)})
    finally:
        eng.close()
    return {"prompts": len(rows), "matches": sum(r["match"] for r in rows),
            "match_share": sum(r["match"] for r in rows) / len(rows), "rows": rows}


def logits_parity(causal_lm, model_path: Path, prompt: str, threads: int) -> float:
    """Returns max |decode logits - Keras logits| over every position of `prompt`."""
    x = causal_lm.preprocessor.generate_preprocess([prompt])
    n = int(np.asarray(x["padding_mask"])[0].sum())
    ids = np.asarray(x["token_ids"])[0, :n]
    keras_logits = np.asarray(causal_lm({"token_ids": ids[None],
                                         "padding_mask": np.ones((1, n), bool)}))[0]
    tflite_logits = StreamingInterpreter(model_path, threads).sequence_logits(ids)
    return float(np.abs(tflite_logits - keras_logits).max())


def enforce_bundle(v: dict, quantization: str) -> None:
    """Rejects a bundle that fails the checks in the module docstring."""
    t = v["tokenizer"]
    if t["identical"] != t["strings"]:
        bad = next(r for r in t["rows"] if r["keras"] != r["tokenizer_json"]
                   or r["litertlm"] not in (None, r["keras"]))
        raise PipelineError(f"bundle tokenizer differs from keras-hub on {bad['text']!r}")
    if quantization == Quantization.NONE:
        if v["logits_max_abs_diff"] > LOGIT_TOLERANCE:
            raise PipelineError(f"fp32 decode logits differ from Keras by "
                                f"{v['logits_max_abs_diff']:.2e} > {LOGIT_TOLERANCE}")
        if v["greedy"]["matches"] != v["greedy"]["prompts"]:
            bad = next(r for r in v["greedy"]["rows"] if not r["match"])
            raise PipelineError(f"fp32 LiteRT-LM text differs from Keras on prompt "
                                f"{bad['prompt'][:40]!r}: export rejected")
    if quantization != Quantization.NONE and abs(v["perplexity"]["relative_difference"]) > \
            PERPLEXITY_TOLERANCE:
        raise PipelineError(f"{quantization} perplexity {v['perplexity']['tflite']:.2f} is "
                            f"more than 3% from Keras fp32 {v['perplexity']['keras_fp32']:.2f}")


def bundle_summary(v: dict) -> dict | None:
    if not v:
        return None
    return {"tokenizer_identical": f"{v['tokenizer']['identical']}/{v['tokenizer']['strings']}",
            "logits_max_abs_diff": v["logits_max_abs_diff"],
            "greedy_matches": f"{v['greedy']['matches']}/{v['greedy']['prompts']}",
            "perplexity": v["perplexity"]}
