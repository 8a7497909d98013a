"""The streaming target: a GPT-2 model -> prefill/decode .tflite + tokenizer -> `.litertlm`.

Writes `<run_dir>/export/litertlm/` (the student's: `student_litertlm/`):
  gpt2_<quantization>.litertlm   the bundle LiteRT-LM loads (Android, iOS, desktop, web)
  gpt2_<quantization>.tflite     the same model alone: prefill_<T> and decode signatures
  tokenizer.json, vocab.json, merges.txt, llm_metadata.textproto, run_config.yaml
  verification.json              tokenizer ids, decode logits, greedy text, perplexity
  README.md                      the files, and Kotlin / Swift snippets

Bundle contents (built with `litert_lm_builder`): LLM metadata (`generic_model`, start and
stop token `<|endoftext|>` as keras-hub's GPT-2 uses, max tokens = the cache context); the
model as PREFILL_DECODE; the tokenizer as a Hugging Face `tokenizer.json` serialized from the
very `tokenizers` object keras-hub runs (its split pattern differs from GPT-2's original
regex on repeated spaces and newlines), so ids are identical. Checks: `export/verify.py`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import litert_lm_builder as lb
import tensorflow as tf

from pipeline.config import RunConfig, dump_yaml
from pipeline.errors import ConfigError
from pipeline.export.children import build_in_child, convert_in_child
from pipeline.export.graph import GPT2Graph, weights_from_backbone
from pipeline.export.half_cache import half_cache, kv_cache_dtype
from pipeline.export.handoff import ExportResult, model_facts
from pipeline.export.op_versions import (BUNDLE_RUNTIME, require_runtime, runtime_facts,
                                         with_computed_versions)
from pipeline.export.shared_subgraphs import share_subgraphs
from pipeline.export.snippets import bundle_snippets
from pipeline.export.streaming_graph import StreamingModel
from pipeline.export.tflite import check_size, quantize, read_model, tie_embedding
from pipeline.export.verify import (bundle_prompts, bundle_summary, enforce_bundle,
                                    greedy_parity, logits_parity, tokenizer_parity)
from pipeline.fsutil import atomic_dir, write_json, write_text
from pipeline.runtime.interpreter import StreamingInterpreter, interpreter_perplexity
from pipeline.runtime.litertlm import engine
from pipeline.train.loop import perplexity
from pipeline.train.presets import load_causal_lm, load_tokenizer
from pipeline.train.token_cache import open_corpus


def export_litertlm(cfg: RunConfig, source: str, out_dir, verbose: bool = True) -> ExportResult:
    """Exports the GPT-2 of preset `source` as a verified `.litertlm` bundle in `out_dir`."""
    ex = cfg.export
    log = print if verbose else (lambda *a, **k: None)
    started = time.time()
    with tempfile.TemporaryDirectory() as saved:
        # The Keras model and the graph live only in the child (build_child.py).
        built = build_in_child("litertlm", cfg, source, saved)
        model, context, lengths = built["model"], built["context"], built["lengths"]
        parameters = model["parameters"]
        log(f"Converting the streaming model ({parameters:,} parameters, context {context}, "
            f"prefill {lengths}, {ex.quantization}) ...")
        model_bytes, stored = streaming_tflite(saved, parameters, ex.quantization)
    tokenizer = load_tokenizer(source)  # vocabulary and merges only, no weights
    runtime = runtime_facts(model_bytes, "litertlm")
    require_runtime(runtime, BUNDLE_RUNTIME, f"the {ex.quantization} bundle's .tflite")
    export_seconds = time.time() - started

    stem = f"gpt2_{ex.quantization}"
    final_dir = Path(out_dir)
    verification = {}
    with atomic_dir(final_dir) as out:
        model_path = out / f"{stem}.tflite"
        model_path.write_bytes(model_bytes)
        tokenizer_json = write_tokenizer_files(tokenizer, out)
        metadata = metadata_textproto(tokenizer.start_token_id, tokenizer.end_token_id, context)
        write_text(out / "llm_metadata.textproto", metadata)
        write_text(out / "run_config.yaml", dump_yaml(cfg))
        write_text(out / "README.md", bundle_readme(stem, ex.quantization, context, lengths))
        bundle = out / f"{stem}.litertlm"
        build_bundle(model_path, tokenizer_json, metadata, bundle)
        if ex.verify:
            log("Verifying: tokenizer, decode logits, LiteRT-LM greedy text, perplexity ...")
            verification = _verify(cfg, source, bundle, model_path, tokenizer_json, context,
                                   lengths)
            write_json(out / "verification.json", verification)
            enforce_bundle(verification, ex.quantization)
            log(f"  tokenizer {verification['tokenizer']['identical']}/"
                f"{verification['tokenizer']['strings']} identical; logits max diff "
                f"{verification['logits_max_abs_diff']:.2e}; greedy "
                f"{verification['greedy']['matches']}/{verification['greedy']['prompts']} equal "
                f"Keras; perplexity {verification['perplexity']['tflite']:.2f} vs Keras "
                f"{verification['perplexity']['keras_fp32']:.2f}")
    bundle = final_dir / f"{stem}.litertlm"
    metrics = {
        "preset": source, "file": str(bundle), "quantization": ex.quantization,
        "size_bytes": bundle.stat().st_size, "tflite_bytes": len(model_bytes),
        "weight_bytes": stored, "parameters": parameters, "context": context,
        "prefill_lengths": lengths, "export_seconds": round(export_seconds, 1),
        "verification": bundle_summary(verification), "minimum_runtime": runtime,
    }
    log(f"Wrote {bundle} ({bundle.stat().st_size / 1e6:.1f} MB)")
    return ExportResult(path=bundle, metrics=metrics, model=model)


def build_streaming_model(cfg: RunConfig, source: str, folder) -> dict:
    """Saves preset `source`'s streaming model as a SavedModel in `folder` (in build_child's
    process); returns the model facts, the context and the prefill lengths."""
    causal_lm = load_causal_lm(source)
    context, lengths = plan_shapes(cfg, causal_lm.backbone.max_sequence_length)
    save_streaming_model(weights_from_backbone(causal_lm.backbone), context, lengths, folder)
    return {"model": model_facts(causal_lm), "context": context, "lengths": lengths}


def _verify(cfg: RunConfig, source: str, bundle, model_path, tokenizer_json, context,
            lengths) -> dict:
    """Checks the bundle against the Keras model, loaded again from `source` for it."""
    ex = cfg.export
    causal_lm = load_causal_lm(source)
    tokenizer = causal_lm.preprocessor.tokenizer
    eng = engine(bundle, ex.threads, max_tokens=context)
    try:
        verification = {"tokenizer": tokenizer_parity(tokenizer, tokenizer_json, eng)}
    finally:
        eng.close()
    prompts = bundle_prompts(cfg, tokenizer, context, lengths[-1])
    verification["logits_max_abs_diff"] = logits_parity(causal_lm, model_path, prompts[0],
                                                        ex.threads)
    verification["greedy"] = greedy_parity(causal_lm, bundle, prompts, context, 24, ex.threads)
    val = validation_windows(cfg, tokenizer, context)
    keras_ppl = perplexity(causal_lm, val.x, val.y, val.w, cfg.eval.batch_size)["perplexity"]
    tflite_ppl = interpreter_perplexity(StreamingInterpreter(model_path, ex.threads),
                                        val)["perplexity"]
    verification["perplexity"] = {"keras_fp32": keras_ppl, "tflite": tflite_ppl,
                                  "relative_difference": tflite_ppl / keras_ppl - 1.0,
                                  "windows": len(val.y), "tokens": int(val.w.sum())}
    return verification


def validation_windows(cfg: RunConfig, tokenizer, context: int):
    """Fine-tuning's validation windows, from the token cache (finetune.sequence_length, at
    most the context), at most export.perplexity_tokens of them, evenly spaced: with the
    defaults, the very windows `finetune.after.val_perplexity` is computed on."""
    length = min(cfg.finetune.sequence_length, context)
    windows = open_corpus(cfg.data, tokenizer, verbose=False).windows("validation", length,
                                                                      cfg.data.packing)
    return windows.sample(min(cfg.data.validation_tokens, cfg.export.perplexity_tokens))


def _is_prime_above_10(n: int) -> bool:
    return n > 10 and all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def plan_shapes(cfg: RunConfig, max_positions: int) -> tuple[int, list[int]]:
    """Returns (context, prefill lengths), checked against the model and the runtime."""
    ex = cfg.export
    context = ex.context or min(max_positions, 1024)
    if context > max_positions:
        raise ConfigError(f"export.context: {context} is above the model's position limit "
                          f"{max_positions}")
    lengths = sorted(set(ex.prefill_lengths))
    if lengths[-1] > context:
        raise ConfigError(f"export.prefill_lengths: {lengths[-1]} is longer than the context "
                          f"{context}")
    for n in [context, *lengths]:  # LiteRT-LM rewrites such sizes as placeholders
        if _is_prime_above_10(n):
            raise ConfigError(f"export: {n} is a prime above 10, which LiteRT-LM treats as a "
                              f"placeholder size; use e.g. {n + 1}")
    return context, lengths


def save_streaming_model(weights, context: int, lengths, folder) -> None:
    """Saves the prefill/decode module of `weights` as the SavedModel `streaming_tflite`
    converts."""
    module = StreamingModel(GPT2Graph(weights), context, lengths)
    tf.saved_model.save(module, str(folder), signatures=module.signatures())


def streaming_tflite(saved_model_dir, parameters: int, quantization: str):
    """Returns (flatbuffer, weight bytes) of a streaming SavedModel (`save_streaming_model`),
    builtin ops only. Quantized modes get a float16 KV cache (`half_cache.py`: half the cache
    memory, faster decode over long texts); fp32 keeps a float32 cache, token-exact with Keras.
    Each copy of the model is dropped once the next exists."""
    float_model = convert_in_child(saved_model_dir, select_tf_ops=False)
    rewritten = read_model(float_model)  # one parse of the ~500 MB model for every rewrite
    del float_model
    tie_embedding(rewritten)
    if kv_cache_dtype(quantization) == "float16":
        half_cache(rewritten)
    share_subgraphs(rewritten)  # every layer's attention branches, stored once
    check_size(rewritten, parameters, "none")
    model = with_computed_versions(quantize(rewritten, quantization))
    return model, check_size(read_model(model), parameters, quantization)


def write_tokenizer_files(tokenizer, folder: Path) -> Path:
    """Writes tokenizer.json, vocab.json and merges.txt; returns the tokenizer.json path."""
    vocabulary = tokenizer.get_vocabulary()
    vocab = vocabulary if isinstance(vocabulary, dict) else {t: i for i, t in
                                                            enumerate(vocabulary)}
    folder.mkdir(parents=True, exist_ok=True)
    # keras-hub 0.32 tokenizes eagerly with the `tokenizers` package and its own split
    # pattern: serializing that very object gives identical ids.
    tokenizer._maybe_initialized_tokenizers()
    data = json.loads(tokenizer._tokenizer.to_str())
    # Compact JSON with merges as "a b" strings (the classic form every reader accepts):
    # about 100 KB less in the bundle for GPT-2's vocabulary.
    merges_in = data["model"].get("merges", [])
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges_in]
    (folder / "tokenizer.json").write_text(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n",
                                       encoding="utf-8")
    return folder / "tokenizer.json"


def metadata_textproto(start_id: int, stop_id: int, max_tokens: int) -> str:
    # The CPU sampler takes TOP_P; k = 1 is greedy (callers pass their own sampler anyway).
    return (f"start_token {{ token_ids {{ ids: {start_id} }} }}\n"
            f"stop_tokens {{ token_ids {{ ids: {stop_id} }} }}\n"
            f"max_num_tokens: {max_tokens}\n"
            "llm_model_type { generic_model {} }\n"
            "sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 seed: 0 }\n"
            "supports_thinking: false\n"
            "supports_function_calling: false\n")


def build_bundle(model_path: Path, tokenizer_json: Path, metadata: str, out_path: Path) -> None:
    """Writes the .litertlm bundle to `out_path`."""
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "llm_metadata.textproto"
        meta_path.write_text(metadata)
        builder = lb.LitertLmFileBuilder()
        builder.add_system_metadata(lb.Metadata(key="Authors", value="gpt2-to-phone",
                                                dtype=lb.DType.STRING))
        builder.add_llm_metadata(str(meta_path))
        builder.add_hf_tokenizer(str(tokenizer_json))
        # fp32 activations by default (the runtime's default is fp16): what verification ran
        builder.add_tflite_model(str(model_path), lb.TfLiteModelType.PREFILL_DECODE,
                                 backend_constraint="cpu", prefer_activation_type="fp32")
        with open(out_path, "wb") as f:
            builder.build(f, validate_metadata=True)


def bundle_readme(stem: str, quantization: str, context: int, lengths) -> str:
    """README.md of the bundle folder: what each file is, and how to call the bundle."""
    return f"""# GPT-2 streaming bundle for LiteRT-LM

- `{stem}.litertlm`: what apps load (model, tokenizer, metadata); runtime LiteRT-LM, CPU.
- `{stem}.tflite`: the same model bare, builtin ops only; signatures `prefill_<T>` for
  T in {list(lengths)} and `decode`, over an external KV cache of {context} positions
  ({kv_cache_dtype(quantization)}; runs on LiteRT-LM's CPU backend, with XNNPACK);
  {quantization} weights.
- `tokenizer.json` (Hugging Face format, byte-level BPE), `vocab.json`, `merges.txt`,
  `llm_metadata.textproto`: what went into the bundle.
- `manifest.json`, `MODEL_CARD.md`, `verification.json`, `run_config.yaml`.

""" + bundle_snippets(f"{stem}.litertlm", context)
