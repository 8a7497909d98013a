"""The text target: a GPT-2 model -> one `.tflite` text model that mobile apps run as is.

Signature `serving_default`: input `prompt` (string scalar), output `text` (the prompt plus
its continuation), the whole generation loop, tokenizer and detokenizer inside the graph
(`text_graph.TextModel`). It needs TFLite's select-TF-ops (Flex) runtime for a few TF string
ops of the tokenizer (`core_string_ops`), each one the stock select-TF-ops library carries:
no TF-Text op, no hash table; an export that would need another op fails.

Writes `<run_dir>/export/text/` (the student's: `student_text/`):
  gpt2_text_<quantization>.tflite  the model
  ops.json, ops.md                 builtin and select-TF ops to link
  verification.json                Flex-interpreter outputs vs Keras, per prompt
  README.md                        how to call it, for the mobile team
  run_config.yaml                  the run's resolved config
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from pipeline.config import ExportConfig, Quantization, RunConfig, Sampler, dump_yaml
from pipeline.errors import ConfigError, PipelineError
from pipeline.export.graph import GPT2Graph, weights_from_backbone
from pipeline.export.handoff import ExportResult, model_facts
from pipeline.export.snippets import text_model_snippets
from pipeline.export.text_graph import TextModel
from pipeline.export.op_versions import (STOCK_TEXT_RUNTIME, require_runtime, runtime_facts,
                                         with_computed_versions)
from pipeline.export.row_scales import asymmetric_inputs, scales_in_graph
from pipeline.export.children import build_in_child, convert_in_child
from pipeline.export.tflite import (check_size, lookup_tables, op_report,
                                    outside_stock_runtime, quantize, read_model, tie_embedding,
                                    write_model)
from pipeline.export.verify import enforce_text, text_parity, text_prompts
from pipeline.fsutil import atomic_dir, write_json, write_text
from pipeline.runtime.flex import require_flex, run_in_flex
from pipeline.train.evaluate import generate_texts
from pipeline.train.presets import load_causal_lm


# The thread count the snippets set: in TFLite 2.16 a second thread made the text model slower
# at GPT-2 base shape (README "Benchmarks", `bench export`), its hybrid kernels run on one.
APP_THREADS = 1


def export_text_model(cfg: RunConfig, source: str, out_dir, verbose: bool = True) -> ExportResult:
    """Exports the GPT-2 of preset `source` as a verified text .tflite in `out_dir`."""
    ex = cfg.export
    log = print if verbose else (lambda *a, **k: None)
    started = time.time()
    if ex.verify:
        require_flex(ex)  # the set-up message comes before any work
    log(f"Building the text model ({ex.max_length} tokens, {ex.sampler} sampling) ...")
    with tempfile.TemporaryDirectory() as saved:
        # The Keras model and the graph live only in the child (build_child.py).
        built = build_in_child("text", cfg, source, saved)
        prompts, expected, reference = built["prompts"], built["expected"], built["reference"]
        model = built["model"]
        parameters = model["parameters"]
        log(f"Converting ({parameters:,} parameters, {ex.quantization}) ...")
        model_bytes, stored, lookups = text_model_tflite(saved, parameters, ex.quantization)
    ops = op_report(model_bytes)
    outside = outside_stock_runtime(ops["select_tf"])
    if outside:
        raise PipelineError(f"the text model needs select-TF ops the stock select-TF-ops "
                            f"runtime lacks ({', '.join(outside)}); see tflite.STOCK_FLEX_OPS")
    runtime = runtime_facts(model_bytes, "text")
    require_runtime(runtime, STOCK_TEXT_RUNTIME, f"the {ex.quantization} text model")
    ops["minimum_runtime"] = runtime
    export_seconds = time.time() - started

    name = f"gpt2_text_{ex.quantization}.tflite"
    final_dir = Path(out_dir)
    verification = None
    with atomic_dir(final_dir) as out:
        (out / name).write_bytes(model_bytes)
        if ex.verify:
            log("Verifying in the Flex interpreter ...")
            flex = run_in_flex(out / name, prompts, ex)
            verification = text_parity(prompts, expected, flex["outputs"])
            verification.update(reference=reference, tensorflow=flex["tensorflow"],
                                tensorflow_text_loaded=flex["tensorflow_text_loaded"],
                                seconds_per_prompt=flex["seconds"])
            write_json(out / "verification.json", verification)
            enforce_text(verification, ex.quantization)
            log(f"  {verification['matches']}/{verification['prompts']} prompts give the same "
                f"text as {reference}")
        write_json(out / "ops.json", ops)
        write_text(out / "ops.md", ops_markdown(ops))
        write_text(out / "README.md", mobile_readme(name, ex, parameters, runtime, APP_THREADS))
        write_text(out / "run_config.yaml", dump_yaml(cfg))
    model_path = final_dir / name
    metrics = {
        "preset": source, "file": str(model_path), "quantization": ex.quantization,
        "size_bytes": len(model_bytes), "parameters": parameters,
        "bytes_per_parameter": len(model_bytes) / parameters,
        "weight_bytes": stored,
        "embedding_lookups": lookups, "max_length": ex.max_length, "sampler": ex.sampler,
        "export_seconds": round(export_seconds, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "select_tf_ops": sorted(ops["select_tf"]), "minimum_runtime": runtime,
        "verification": None if verification is None else {
            k: verification[k] for k in ("prompts", "matches", "match_share", "reference")},
    }
    if verification is not None:
        metrics["verification"]["first_differences"] = [
            r["first_difference"] for r in verification["rows"]]
    log(f"Wrote {model_path} ({len(model_bytes) / 1e6:.1f} MB)")
    return ExportResult(path=model_path, metrics=metrics, model=model)


def build_text_model(cfg: RunConfig, source: str, folder) -> dict:
    """Saves preset `source`'s TextModel as a SavedModel in `folder` (in build_child's
    process); returns the prompts, the expected texts, their reference and the model facts."""
    module, prompts, expected, reference, model = _graph_and_expected(cfg, source)
    save_text_model(module, folder)
    return {"prompts": prompts, "expected": expected, "reference": reference, "model": model}


def _graph_and_expected(cfg: RunConfig, source: str):
    """Loads the Keras model; returns (TextModel module, prompts, expected texts, reference,
    model facts)."""
    ex = cfg.export
    causal_lm = load_causal_lm(source)
    limit = causal_lm.backbone.max_sequence_length
    if ex.max_length > limit:
        raise ConfigError(f"export.max_length: {ex.max_length} is above the model's position "
                          f"limit {limit}")
    tokenizer = causal_lm.preprocessor.tokenizer
    module = TextModel(tokenizer, GPT2Graph(weights_from_backbone(causal_lm.backbone)),
                       ex.sampling, ex.max_length)
    prompts = text_prompts(cfg, tokenizer)
    if ex.sampler == Sampler.GREEDY:
        reference = "keras"
        expected = generate_texts(causal_lm, prompts, ex.max_length)
    else:  # sampling: the reference is the same graph run by TensorFlow before conversion
        reference = "tensorflow"
        expected = [module.serve(tf.constant(p))["text"].numpy().decode("utf-8", "replace")
                    for p in prompts]
    return module, prompts, expected, reference, model_facts(causal_lm)


def save_text_model(module, folder) -> None:
    """Saves a TextModel module as the SavedModel `text_model_tflite` converts."""
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def text_model_tflite(saved_model_dir, parameters: int, quantization: str):
    """Returns (flatbuffer, weight bytes, embedding lookups) of a TextModel's SavedModel
    (`save_text_model`; the caller drops the module first, so that converting holds one
    model fewer: GPT-2 medium's is 1.4 GB).

    SavedModel -> `from_saved_model` (which freezes the weights into the file, unlike
    `from_concrete_functions`), tied table rewired, quantized, per-row scales moved into the
    graph (`row_scales.py`), operator versions and `min_runtime_version` computed
    (`op_versions.py`), and checked for size. So the file runs on TFLite 2.16: in int4 mode
    the looked-up tables (the tied token table, the position table) are int8, since TFLite
    reads int4 lookup tables only from 2.18.
    """
    float_model = convert_in_child(saved_model_dir, select_tf_ops=True)
    rewritten = read_model(float_model)
    del float_model  # read_model copied it: one fewer model in memory while quantizing
    lookups = tie_embedding(rewritten)
    check_size(rewritten, parameters, "none")  # a weightless or doubled file stops here
    table_users, table_parameters = lookup_tables(rewritten)
    eight_bit = table_users if quantization == Quantization.INT4 else ()
    quantized = read_model(quantize(rewritten, quantization, eight_bit))
    scales_in_graph(quantized)
    asymmetric_inputs(quantized)  # the 2.19 texts in 2.16 (row_scales.py)
    model_bytes = with_computed_versions(write_model(quantized))
    stored = check_size(read_model(model_bytes), parameters, quantization,
                        table_parameters if eight_bit else 0)
    return model_bytes, stored, lookups


def ops_markdown(ops: dict) -> str:
    """ops.md: every operator, and which select-TF ops the stock runtime carries."""
    lines = ["# Operators in the exported model", ""]
    for kind, title in (("builtin", "TFLite builtin ops"),
                        ("select_tf", "Select TF ops (Flex delegate)"),
                        ("custom", "Custom ops")):
        lines += [f"## {title}", ""]
        lines += [f"- `{name}` × {count}" for name, count in ops[kind].items()] or ["- none"]
        lines.append("")
    runtime = ops["minimum_runtime"]
    lines += ["## Runtime", "",
              f"Minimum TFLite runtime: **{runtime['tflite']}**, computed from every "
              f"operator's version by TFLite's own tables (`tensorflow/lite/tools/versioning`), "
              f"after quantization; the file's `min_runtime_version` metadata says "
              f"{runtime['declared_in_file']}.", "",
              "- Android: " + ", ".join(f"`{a}`" for a in runtime["android"])
              + " (the newest stock select-TF-ops release).",
              "- iOS (CocoaPods): " + ", ".join(f"`{p}`" for p in runtime["ios"]) + ".",
              f"- Verified here in TFLite {runtime['checked_against']}'s interpreter (pip "
              f"`tensorflow-cpu=={runtime['checked_against']}`) with the Flex delegate, in a "
              "process that never imports TF-Text; not run on a phone.", "",
              "Every select TF op above is in the Flex delegate's allowlist "
              "(`tensorflow/lite/delegates/flex/allowlisted_flex_ops.cc`, unchanged for these "
              "ops since before TF 2.16); none is a TF-Text op or a hash table.", "",
              "| operator | first TFLite release |", "| --- | --- |"]
    lines += [f"| `{op}` | {v} |" for op, v in runtime["operators"].items()]
    lines += ["", "TFLite's table gives FULLY_CONNECTED with int4 weights no version of its own; "
              "the int4 file was run in the interpreter named above.", ""]
    return "\n".join(lines)


def mobile_readme(name: str, ex: ExportConfig, parameters: int, runtime: dict,
                  threads: int) -> str:
    return f"""# GPT-2 text model for mobile

File: `{name}` ({parameters:,} parameters, {ex.quantization} weights).

- Signature `serving_default`: input `prompt` (string scalar, UTF-8), output `text`
  (string scalar: the prompt followed by the generated continuation).
- Generation runs inside the model: at most {ex.max_length} tokens in all (prompt included;
  longer prompts are truncated), {ex.sampler} sampling{'' if ex.sampler == 'greedy' else
  f' (temperature {ex.temperature}, seed {ex.seed})'}, stops at `<|endoftext|>`.
- Runtime: the TFLite interpreter with select TF ops (Android:
  `org.tensorflow:tensorflow-lite-select-tf-ops`). The tokenizer is a few TF string ops,
  all in the stock select-TF-ops library (no TF-Text op, no hash table). `ops.md` lists every
  op and which stock artifact runs the file.
- Minimum runtime TFLite {runtime['tflite']} (Android `{runtime['android'][1]}`; iOS
  {', '.join(f'`{p}`' for p in runtime['ios'])}); verified in TFLite {runtime['checked_against']}.

""" + text_model_snippets(name, threads)
