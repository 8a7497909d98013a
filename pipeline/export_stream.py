"""Streaming export: a GPT-2 preset -> prefill/decode .tflite + tokenizer -> `.litertlm`.

Writes `<run_dir>/export/litertlm/`:
  gpt2_<quantization>.litertlm   the bundle LiteRT-LM loads (Android, iOS, desktop, web)
  gpt2_<quantization>.tflite     the same model alone: prefill_<T> and decode signatures
  tokenizer.json, vocab.json, merges.txt, llm_metadata.textproto
  verification.json              tokenizer ids, decode logits, greedy text, perplexity

Checks (when export.verify): the bundle's tokenizer gives keras-hub's ids; decode logits of
the .tflite match Keras (fp32: within 1e-3, float32 summation order differs between XNNPACK
and TensorFlow); LiteRT-LM's greedy text equals Keras's (fp32: all prompts, including ones
longer than the largest prefill and ones at the context limit; quantized: reported); int8
validation perplexity through the .tflite is within 3% of Keras fp32.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.fsutil import atomic_dir, write_json, write_text
from pipeline.tflite_tools import check_size, convert_saved_model, quantize, tie_embedding

LOGIT_TOLERANCE = 1e-3  # fp32 decode logits vs Keras: summation order only
PERPLEXITY_TOLERANCE = 0.03  # int8 vs Keras fp32, relative
TOKENIZER_STRINGS = [
    "Tomato soup. Serves four.", "", " leading space", "  two  spaces   three",
    "new\nline\n\nblank line\r\n", "tabs\tand\ttabs", "Crème brûlée, naïve façade",
    "emoji 🍮🥖 and 👩‍🍳", "中文 日本語 한국어", "numbers 12345 3.14 1,000", "it's they're we'll",
    "<|endoftext|> special", "trailing spaces   ",
]


@dataclass
class StreamExportResult:
    bundle_path: Path
    metrics: dict


def _is_prime_above_10(n: int) -> bool:
    return n > 10 and all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def plan_shapes(cfg: RunConfig, max_positions: int) -> tuple[int, list[int]]:
    x = cfg.export
    context = x.context or min(max_positions, 1024)
    if context > max_positions:
        raise ConfigError(f"export.context: {context} is above the model's position limit "
                          f"{max_positions}")
    lengths = sorted(set(x.prefill_lengths))
    if lengths[-1] > context:
        raise ConfigError(f"export.prefill_lengths: {lengths[-1]} is longer than the context "
                          f"{context}")
    for n in [context, *lengths]:  # LiteRT-LM rewrites such sizes as placeholders
        if _is_prime_above_10(n):
            raise ConfigError(f"export: {n} is a prime above 10, which LiteRT-LM treats as a "
                              f"placeholder size; use e.g. {n + 1}")
    return context, lengths


def streaming_tflite(weights, context: int, lengths, quantization: str):
    """Returns (flatbuffer, weight bytes) of the prefill/decode model, builtin ops only."""
    import tensorflow as tf

    from pipeline.gpt2_graph import GPT2Graph
    from pipeline.streaming import StreamingModel

    module = StreamingModel(GPT2Graph(weights), context, lengths)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        float_model = convert_saved_model(tmp, select_tf_ops=False)
    float_model, _ = tie_embedding(float_model)
    check_size(float_model, weights.count(), "none")
    model = quantize(float_model, quantization)
    return model, check_size(model, weights.count(), quantization)


def parity_prompts(cfg: RunConfig, tokenizer, context: int, longest: int) -> list[str]:
    filler = " ".join(["Knead the dough, then let it rest for ten minutes."] * (context // 4))
    ids = tokenizer(filler)
    beyond_prefill = str(tokenizer.detokenize(ids[: longest + longest // 2 + 3]))
    near_limit = str(tokenizer.detokenize(ids[: context - 6]))
    return list(cfg.eval.prompts) + [beyond_prefill, near_limit]


def check_tokenizer(tokenizer, tokenizer_json: Path, eng) -> dict:
    import tokenizers

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
    import keras_hub

    from pipeline.evaluate import generate_texts
    from pipeline.litertlm import Sampling, engine, stream_generate

    tokenizer = causal_lm.preprocessor.tokenizer
    rows = []
    eng = engine(bundle, threads, max_tokens=context)
    try:
        for prompt in prompts:
            n_prompt = len(tokenizer(prompt)) + 1  # + start token
            n_new = max(1, min(max_new, context - n_prompt))
            keras_text = generate_texts(causal_lm, [prompt], n_prompt + n_new,
                                        keras_hub.samplers.GreedySampler())[0]
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
    from pipeline.stream_runner import StreamRunner

    x = causal_lm.preprocessor.generate_preprocess([prompt])
    n = int(np.asarray(x["padding_mask"])[0].sum())
    ids = np.asarray(x["token_ids"])[0, :n]
    keras_logits = np.asarray(causal_lm({"token_ids": ids[None],
                                         "padding_mask": np.ones((1, n), bool)}))[0]
    tflite_logits = StreamRunner(model_path, threads).sequence_logits(ids)
    return float(np.abs(tflite_logits - keras_logits).max())


def export_litertlm(cfg: RunConfig, run_dir, preset: str | None = None,
                    folder: str = "litertlm", verbose: bool = True) -> StreamExportResult:
    """Exports `preset` (default: export.preset, else the run's fine-tuned model) as a
    verified `.litertlm` bundle in `<run_dir>/export/<folder>/`."""
    from pipeline.data import load_examples, split_examples, tokenize
    from pipeline.gpt2_graph import weights_from_backbone
    from pipeline.litertlm import build_bundle, engine, metadata_textproto, write_tokenizer_files
    from pipeline.stream_runner import StreamRunner, perplexity as tflite_perplexity
    from pipeline.training import perplexity as keras_perplexity

    from pipeline.export import load_export_source

    x = cfg.export
    log = print if verbose else (lambda *a, **k: None)
    started = time.time()
    source, causal_lm = load_export_source(cfg, run_dir, preset)
    context, lengths = plan_shapes(cfg, causal_lm.backbone.max_sequence_length)
    tokenizer = causal_lm.preprocessor.tokenizer
    weights = weights_from_backbone(causal_lm.backbone)
    log(f"Converting the streaming model ({weights.count():,} parameters, context {context}, "
        f"prefill {lengths}, {x.quantization}) ...")
    model_bytes, stored = streaming_tflite(weights, context, lengths, x.quantization)
    export_seconds = time.time() - started

    stem = f"gpt2_{x.quantization}"
    final_dir = Path(run_dir) / "export" / folder
    verification = {}
    with atomic_dir(final_dir) as out:
        model_path = out / f"{stem}.tflite"
        model_path.write_bytes(model_bytes)
        tokenizer_json = write_tokenizer_files(tokenizer, out)
        metadata = metadata_textproto(tokenizer.start_token_id, tokenizer.end_token_id, context)
        write_text(out / "llm_metadata.textproto", metadata)
        bundle = out / f"{stem}.litertlm"
        build_bundle(model_path, tokenizer_json, metadata, bundle)
        if x.verify:
            log("Verifying: tokenizer, decode logits, LiteRT-LM greedy text, perplexity ...")
            eng = engine(bundle, x.threads, max_tokens=context)
            try:
                verification["tokenizer"] = check_tokenizer(tokenizer, tokenizer_json, eng)
            finally:
                eng.close()
            prompts = parity_prompts(cfg, tokenizer, context, lengths[-1])
            verification["logits_max_abs_diff"] = logits_parity(causal_lm, model_path,
                                                                 prompts[0], x.threads)
            verification["greedy"] = greedy_parity(causal_lm, bundle, prompts, context, 24,
                                                   x.threads)
            examples = load_examples(cfg.data)
            _, val_text = split_examples(examples, cfg.data.validation_fraction, cfg.data.seed)
            causal_lm.preprocessor.sequence_length = min(cfg.finetune.sequence_length, context)
            val = tokenize(val_text[:32], causal_lm.preprocessor)
            keras_ppl = keras_perplexity(causal_lm, val.x, val.y, val.w)["perplexity"]
            tflite_ppl = tflite_perplexity(StreamRunner(model_path, x.threads), val)["perplexity"]
            verification["perplexity"] = {"keras_fp32": keras_ppl, "tflite": tflite_ppl,
                                          "relative_difference": tflite_ppl / keras_ppl - 1.0,
                                          "examples": len(val.y)}
            write_json(out / "verification.json", verification)
            _enforce(verification, x.quantization)
            g = verification["greedy"]
            log(f"  tokenizer {verification['tokenizer']['identical']}/"
                f"{verification['tokenizer']['strings']} identical; logits max diff "
                f"{verification['logits_max_abs_diff']:.2e}; greedy {g['matches']}/"
                f"{g['prompts']} equal Keras; perplexity {tflite_ppl:.2f} vs Keras "
                f"{keras_ppl:.2f}")
    bundle = final_dir / f"{stem}.litertlm"
    metrics = {
        "preset": source, "bundle": str(bundle), "quantization": x.quantization,
        "bundle_bytes": bundle.stat().st_size, "tflite_bytes": len(model_bytes),
        "weight_bytes": stored, "parameters": weights.count(), "context": context,
        "prefill_lengths": lengths, "export_seconds": round(export_seconds, 1),
        "verification": _summary(verification),
    }
    log(f"Wrote {bundle} ({bundle.stat().st_size / 1e6:.1f} MB)")
    return StreamExportResult(bundle_path=bundle, metrics=metrics)


def _enforce(v: dict, quantization: str) -> None:
    t = v["tokenizer"]
    if t["identical"] != t["strings"]:
        bad = next(r for r in t["rows"] if r["keras"] != r["tokenizer_json"]
                   or r["litertlm"] not in (None, r["keras"]))
        raise PipelineError(f"bundle tokenizer differs from keras-hub on {bad['text']!r}")
    if quantization == "none":
        if v["logits_max_abs_diff"] > LOGIT_TOLERANCE:
            raise PipelineError(f"fp32 decode logits differ from Keras by "
                                f"{v['logits_max_abs_diff']:.2e} > {LOGIT_TOLERANCE}")
        if v["greedy"]["matches"] != v["greedy"]["prompts"]:
            bad = next(r for r in v["greedy"]["rows"] if not r["match"])
            raise PipelineError(f"fp32 LiteRT-LM text differs from Keras on prompt "
                                f"{bad['prompt'][:40]!r}: export rejected")
    if quantization == "int8" and abs(v["perplexity"]["relative_difference"]) > \
            PERPLEXITY_TOLERANCE:
        raise PipelineError(f"int8 perplexity {v['perplexity']['tflite']:.2f} is more than 3% "
                            f"from Keras fp32 {v['perplexity']['keras_fp32']:.2f}")


def _summary(v: dict) -> dict | None:
    if not v:
        return None
    return {"tokenizer_identical": f"{v['tokenizer']['identical']}/{v['tokenizer']['strings']}",
            "logits_max_abs_diff": v["logits_max_abs_diff"],
            "greedy_matches": f"{v['greedy']['matches']}/{v['greedy']['prompts']}",
            "perplexity": v["perplexity"]}
