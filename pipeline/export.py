"""Export stage: a GPT-2 preset -> one `.tflite` text model that mobile apps run as is.

Signature `serving_default`: input `prompt` (string scalar), output `text` (the prompt plus
its continuation), the whole generation loop, tokenizer and detokenizer inside the graph.
It needs TFLite's select-TF-ops (Flex) runtime: the tokenizer uses TF string and TF-Text ops.

Writes `<run_dir>/export/text/`:
  gpt2_text_<quantization>.tflite  the model
  ops.json, ops.md                 builtin and select-TF ops to link
  verification.json                Flex-interpreter outputs vs Keras, per prompt
  README.md                        how to call it, for the mobile team

Example:
    >>> result = export_text_model(load_config("configs/default.yaml"), "runs/default")
    >>> result.metrics["verification"]["match_share"]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PROJECT_ROOT, ExportConfig, RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.fsutil import atomic_dir, write_json, write_text
from pipeline.presets import check_local_preset, load_causal_lm
from pipeline.tflite_tools import (check_size, convert_saved_model, op_report, quantize,
                                   tie_embedding)


@dataclass
class ExportResult:
    model_path: Path
    metrics: dict


def sampler_spec(x: ExportConfig):
    from pipeline.textmodel import SamplerSpec

    return SamplerSpec(name=x.sampler, k=x.top_k, p=x.top_p, temperature=x.temperature,
                       seed=x.seed)


def verification_prompts(cfg: RunConfig, tokenizer) -> list[str]:
    """Returns the configured prompts, or eval.prompts plus edge cases."""
    if cfg.export.prompts:
        return list(cfg.export.prompts)
    n = cfg.export.max_length
    filler = " ".join(["Serve warm with crusty bread."] * n)
    ids = tokenizer(filler)
    near_limit = str(tokenizer.detokenize(ids[: max(1, n - 3)]))  # room for ~2 new tokens
    too_long = str(tokenizer.detokenize(ids[: n + 5]))  # truncated, as Keras does
    return list(cfg.eval.prompts) + ["", "Crème brûlée for two 🍮, naïve façade.",
                                     near_limit, too_long]


def first_difference(a: str, b: str) -> int | None:
    """Returns the first character index where `a` and `b` differ, or None if equal."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def flex_python(x: ExportConfig) -> Path:
    path = Path(x.flex_python)
    return path if path.is_absolute() else PROJECT_ROOT / path


def require_flex(x: ExportConfig) -> Path:
    """Returns the Flex environment's Python, or raises a one-line set-up message."""
    python = flex_python(x)
    if not python.exists():
        raise PipelineError(
            f"export.verify needs a Python whose TFLite interpreter has the Flex delegate "
            f"(TF <= 2.19) at {python}: run `make flex-env` or set export.verify: false"
        )
    return python


def run_in_flex(model_path: Path, prompts: list[str], x: ExportConfig) -> dict:
    """Runs the .tflite in the Flex interpreter of the TF 2.19 environment."""
    python = require_flex(x)
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file, out_file = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        prompts_file.write_text(json.dumps(prompts, ensure_ascii=False), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [str(python), "-m", "pipeline.flex_runner", str(model_path), str(prompts_file),
             str(out_file)], capture_output=True, text=True, env=env, cwd=str(PROJECT_ROOT),
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"the Flex interpreter could not run {model_path.name}: {tail}")
        return json.loads(out_file.read_text(encoding="utf-8"))


def compare(prompts, expected, got) -> dict:
    rows = [{"prompt": p, "expected": e, "tflite": g, "match": e == g,
             "first_difference": first_difference(e, g)}
            for p, e, g in zip(prompts, expected, got)]
    return {"prompts": len(rows), "matches": sum(r["match"] for r in rows),
            "match_share": sum(r["match"] for r in rows) / max(1, len(rows)), "rows": rows}


def export_preset(cfg: RunConfig, run_dir, preset: str | None = None, prefix: str = "",
                  verbose: bool = True) -> dict:
    """Exports one preset to every target in export.targets; returns {target: result}.

    Folders: <run_dir>/export/<prefix>text/ and <run_dir>/export/<prefix>litertlm/.
    """
    from pipeline.export_stream import export_litertlm

    results = {}
    if "text" in cfg.export.targets:
        results["text"] = export_text_model(cfg, run_dir, preset=preset, folder=prefix + "text",
                                            verbose=verbose)
    if "litertlm" in cfg.export.targets:
        results["litertlm"] = export_litertlm(cfg, run_dir, preset=preset,
                                              folder=prefix + "litertlm", verbose=verbose)
    return results


def export_run_models(cfg: RunConfig, run_dir, verbose: bool = True) -> dict:
    """Exports the run's models: the teacher (export.preset, else the fine-tuned model) and,
    when the run distilled one, the student. Returns {"teacher": {target: result}, ...}."""
    results = {"teacher": export_preset(cfg, run_dir, verbose=verbose)}
    student = Path(run_dir) / "distill" / "preset"
    if cfg.distill.enabled and not cfg.export.preset and (student / "model.weights.h5").is_file():
        results["student"] = export_preset(cfg, run_dir, preset=str(student), prefix="student_",
                                           verbose=verbose)
    return results


def load_export_source(cfg: RunConfig, run_dir, preset: str | None = None):
    """Returns (preset, GPT2CausalLM): `preset`, else export.preset, else the run's
    fine-tuned model (which must exist)."""
    source = preset or cfg.export.preset or str(Path(run_dir) / "finetune" / "preset")
    if not (preset or cfg.export.preset):
        check_local_preset(Path(source))
    return source, load_causal_lm(source)


def export_text_model(cfg: RunConfig, run_dir, preset: str | None = None,
                      folder: str = "text", verbose: bool = True) -> ExportResult:
    """Exports `preset` (default: export.preset, else the run's fine-tuned model) as a
    verified text .tflite in `<run_dir>/export/<folder>/`."""
    import tensorflow as tf

    from pipeline.evaluate import generate_texts
    from pipeline.gpt2_graph import GPT2Graph, weights_from_backbone
    from pipeline.textmodel import TextModel

    x = cfg.export
    log = print if verbose else (lambda *a, **k: None)
    started = time.time()
    source, causal_lm = load_export_source(cfg, run_dir, preset)
    limit = causal_lm.backbone.max_sequence_length
    if x.max_length > limit:
        raise ConfigError(f"export.max_length: {x.max_length} is above the model's position "
                          f"limit {limit}")
    if x.verify:
        require_flex(x)  # the set-up message comes before any work

    tokenizer = causal_lm.preprocessor.tokenizer
    weights = weights_from_backbone(causal_lm.backbone)
    parameters = weights.count()
    module = TextModel(tokenizer, GPT2Graph(weights), sampler_spec(x), x.max_length)
    prompts = verification_prompts(cfg, tokenizer)
    if x.sampler == "greedy":
        reference = "keras"
        import keras_hub

        expected = generate_texts(causal_lm, prompts, x.max_length,
                                  keras_hub.samplers.GreedySampler())
    else:  # sampling: the reference is the same graph run by TensorFlow before conversion
        reference = "tensorflow"
        expected = [module.serve(tf.constant(p))["text"].numpy().decode("utf-8", "replace")
                    for p in prompts]

    log(f"Converting ({parameters:,} parameters, max_length {x.max_length}, "
        f"{x.sampler} sampling, {x.quantization}) ...")
    model_bytes, stored, lookups = text_model_tflite(module, parameters, x.quantization)
    ops = op_report(model_bytes)
    export_seconds = time.time() - started

    name = f"gpt2_text_{x.quantization}.tflite"
    final_dir = Path(run_dir) / "export" / folder
    with atomic_dir(final_dir) as out:
        model_path = out / name
        model_path.write_bytes(model_bytes)
        verification = None
        if x.verify:
            log("Verifying in the Flex interpreter ...")
            flex = run_in_flex(model_path, prompts, x)
            verification = compare(prompts, expected, flex["outputs"])
            verification.update(reference=reference, tensorflow=flex["tensorflow"],
                                seconds_per_prompt=flex["seconds"])
            write_json(out / "verification.json", verification)
            if x.quantization == "none" and verification["matches"] != verification["prompts"]:
                bad = next(r for r in verification["rows"] if not r["match"])
                raise PipelineError(
                    f"fp32 .tflite differs from {reference} on prompt {bad['prompt'][:40]!r} "
                    f"at character {bad['first_difference']}: export rejected"
                )
            log(f"  {verification['matches']}/{verification['prompts']} prompts give the same "
                f"text as {reference}")
        write_json(out / "ops.json", ops)
        write_text(out / "ops.md", ops_markdown(ops))
        write_text(out / "README.md", mobile_readme(name, x, ops, parameters))
    model_path = final_dir / name
    metrics = {
        "preset": source, "file": str(model_path), "quantization": x.quantization,
        "size_bytes": len(model_bytes), "parameters": parameters,
        "bytes_per_parameter": len(model_bytes) / parameters,
        "weight_bytes": stored,
        "embedding_lookups": lookups, "max_length": x.max_length, "sampler": x.sampler,
        "export_seconds": round(export_seconds, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "select_tf_ops": sorted(ops["select_tf"]),
        "verification": None if verification is None else {
            k: verification[k] for k in ("prompts", "matches", "match_share", "reference")},
    }
    if verification is not None:
        metrics["verification"]["first_differences"] = [
            r["first_difference"] for r in verification["rows"]]
    log(f"Wrote {model_path} ({len(model_bytes) / 1e6:.1f} MB)")
    return ExportResult(model_path=model_path, metrics=metrics)


def text_model_tflite(module, parameters: int, quantization: str):
    """Returns (flatbuffer, weight bytes, embedding lookups) of a TextModel module.

    SavedModel -> `from_saved_model` (which freezes the weights into the file, unlike
    `from_concrete_functions`), tied table rewired, quantized, and checked for size.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        float_model = convert_saved_model(tmp, select_tf_ops=True)
    float_model, lookups = tie_embedding(float_model)
    check_size(float_model, parameters, "none")  # a weightless or doubled file stops here
    model_bytes = quantize(float_model, quantization)
    stored = check_size(model_bytes, parameters, quantization)
    return model_bytes, stored, lookups


def ops_markdown(ops: dict) -> str:
    lines = ["# Operators in the exported model", ""]
    for kind, title in (("builtin", "TFLite builtin ops"),
                        ("select_tf", "Select TF ops (link `tensorflow-lite-select-tf-ops`)"),
                        ("custom", "Custom ops")):
        lines += [f"## {title}", ""]
        lines += [f"- `{name}` × {count}" for name, count in ops[kind].items()] or ["- none"]
        lines.append("")
    return "\n".join(lines)


def mobile_readme(name: str, x: ExportConfig, ops: dict, parameters: int) -> str:
    return f"""# GPT-2 text model for mobile

File: `{name}` ({parameters:,} parameters, {x.quantization} weights).

- Signature `serving_default`: input `prompt` (string scalar, UTF-8), output `text`
  (string scalar: the prompt followed by the generated continuation).
- Generation runs inside the model: at most {x.max_length} tokens in all (prompt included;
  longer prompts are truncated), {x.sampler} sampling{'' if x.sampler == 'greedy' else
  f' (temperature {x.temperature}, seed {x.seed})'}, stops at `<|endoftext|>`.
- Runtime: the TFLite interpreter with select TF ops (Android:
  `org.tensorflow:tensorflow-lite-select-tf-ops`). The tokenizer uses TF string ops and the
  TF-Text op `RegexSplitWithOffsets`; build the select-TF-ops library with TF-Text kernels
  included. The full op list is in `ops.md`.
- Quantized weights need TFLite 2.18 or newer (per-row quantized EMBEDDING_LOOKUP).
"""
