"""What mobile teams read: manifest.json and MODEL_CARD.md in every export folder.

manifest.json is the machine-readable hand-off: every file with its bytes and SHA-256; every
signature of every `.tflite` with input/output names, shapes and dtypes, read from the file
itself; the tokenizer's kind, size and special ids; the context; the quantization; the
verification results; the training numbers that matter; the versions that made it and the
minimum runtime that runs it. MODEL_CARD.md says the same for people, from the same data.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

from ai_edge_litert.tools import flatbuffer_utils as fu

from pipeline.fsutil import write_json, write_text

MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
PACKAGES = ["tensorflow", "keras", "keras-hub", "ai-edge-litert", "ai-edge-quantizer",
            "litert-lm-api", "litert-lm-builder"]


@dataclass
class ExportResult:
    """What every export target returns: the file an app loads, the target's metrics, and
    the facts of the model it came from (`model_facts`), for the manifest and the card."""
    path: Path
    metrics: dict
    model: dict


def model_facts(causal_lm) -> dict:
    """The shape and tokenizer of a keras-hub GPT-2, taken while the model is loaded."""
    backbone = causal_lm.backbone
    return {"layers": backbone.num_layers, "hidden_dim": backbone.hidden_dim,
            "heads": backbone.num_heads, "max_sequence_length": backbone.max_sequence_length,
            "parameters": backbone.count_params(),
            "tokenizer": tokenizer_facts(causal_lm.preprocessor.tokenizer)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> list[dict]:
    """Every file in `folder` (but the manifest) with its size and SHA-256."""
    return [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]


def signatures(tflite_file: Path) -> dict:
    """{signature key: {"inputs": [...], "outputs": [...]}} read from the flatbuffer."""
    model = fu.read_model(str(tflite_file))
    dtypes = {v: k.lower() for k, v in vars(fu.schema_fb.TensorType).items()
              if not k.startswith("_")}

    def tensors(subgraph, items):
        out = []
        for item in items:
            t = subgraph.tensors[item.tensorIndex]
            name = item.name.decode() if isinstance(item.name, bytes) else item.name
            out.append({"name": name, "shape": [int(d) for d in t.shape],
                        "dtype": dtypes.get(t.type, str(t.type))})
        return out

    found = {}
    for sig in model.signatureDefs or []:
        key = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else sig.signatureKey
        subgraph = model.subgraphs[sig.subgraphIndex]
        found[key] = {"inputs": tensors(subgraph, sig.inputs),
                      "outputs": tensors(subgraph, sig.outputs)}
    return found


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def tokenizer_facts(tok) -> dict:
    return {"kind": "byte-level BPE (GPT-2), BPE over the whole text; special tokens apart",
            "vocabulary_size": int(tok.vocabulary_size()),
            "start_id": int(tok.start_token_id), "end_id": int(tok.end_token_id),
            "pad_id": int(tok.pad_token_id), "end_token": "<|endoftext|>"}


def write_handoff(folder, target: str, role: str, result: ExportResult,
                  training: dict) -> dict:
    """Writes MODEL_CARD.md and manifest.json into an export folder; returns the manifest."""
    folder = Path(folder)
    metrics, shape = result.metrics, dict(result.model)
    tokenizer = shape.pop("tokenizer")
    model = {"architecture": "GPT-2 (keras-hub GPT2Backbone)", "role": role,
             "source_preset": metrics.get("preset"), **shape}
    facts = {"target": target, "model": model, "tokenizer": tokenizer,
             "context": metrics.get("context") or metrics.get("max_length"),
             "quantization": metrics.get("quantization"),
             "verification": metrics.get("verification"), "training": training,
             "versions": versions(), "minimum_runtime": metrics.get("minimum_runtime")}
    write_text(folder / MODEL_CARD, model_card(facts))
    manifest = {"format": "gpt2-to-phone manifest 1", **facts,
                "files": file_entries(folder),
                "signatures": {p.name: signatures(p) for p in sorted(folder.glob("*.tflite"))}}
    write_json(folder / MANIFEST, manifest)
    return manifest


def runtime_line(target: str, runtime: dict | None) -> str:
    if not runtime:
        return "Minimum runtime: not computed."
    where = ("TFLite with the select-TF-ops (Flex) delegate" if target == "text"
             else "LiteRT-LM 0.18 or newer (CPU backend), whose LiteRT runs TFLite")
    return (f"Minimum runtime: {where} {runtime['tflite']} (computed from the file's operator "
            f"versions); Android: {', '.join(runtime['android'])}; iOS: "
            f"{', '.join(runtime['ios'])}.")


def model_card(f: dict) -> str:
    m, t, tr = f["model"], f["tokenizer"], f["training"] or {}
    kind = ("one-shot text model (`.tflite`: prompt in, text out)" if f["target"] == "text"
            else "streaming bundle (`.litertlm`: prefill/decode for LiteRT-LM)")
    teacher = tr.get("teacher_parameters")
    origin = (f"distilled from the fine-tuned teacher ({teacher or '?'} parameters)"
              if m["role"] == "student" else "fine-tuned")
    data = tr.get("data") or {}
    ppl = tr.get("val_perplexity") or {}
    lines = [
        f"# Model card: GPT-2 {m['role']}, {kind}", "",
        "## Model", "",
        f"- GPT-2 decoder, {m['layers']} layers, {m['hidden_dim']} wide, {m['heads']} heads, "
        f"{m['parameters']} parameters; position limit {m['max_sequence_length']} tokens.",
        f"- Base preset `{tr.get('base_preset', '?')}`, {origin}. Weights: "
        f"{f['quantization']}. Context of this file: {f['context']} tokens.",
        f"- Tokenizer: {t['kind']}; {t['vocabulary_size']:,} tokens; start/end "
        f"`<|endoftext|>` = {t['end_id']}, pad = {t['pad_id']}.", "",
        "## Training data", "",
        f"- {tr.get('data_path', '?')}: {data.get('examples', '?')} training examples, "
        f"{data.get('tokens', '?')} tokens"
        + (f", {data.get('tokens_trained_per_epoch')} tokens trained per epoch"
           if data.get("tokens_trained_per_epoch") else "") + ".", "",
        "## Evaluation", "",
    ]
    lines += [f"- Validation perplexity, {k}: {v:.2f}" for k, v in ppl.items()
              if isinstance(v, (int, float))] or ["- No training metrics in this run folder."]
    check = f["verification"]
    lines += [f"- Parity with Keras in the phone runtime: `{json.dumps(check)}`" if check else
              "- Not verified in the phone runtime (export.verify: false).", "",
              "## Intended use", "",
              "Text continuation in the domain of the training data, on device, for "
              "prototypes and research. Not for facts, advice, or anything shown to people "
              "without review.", "",
              "## Limitations and biases", "",
              "GPT-2 was pre-trained on WebText (pages linked from Reddit), and OpenAI's "
              "model card notes that it reproduces the biases of that data (gender, race, "
              "religion), states falsehoods fluently, and does not distinguish fact from "
              "fiction. Fine-tuning on a small corpus narrows its style but removes none of "
              "this. Small models (and the embedded default, pre-trained only on Python's "
              "documentation) repeat themselves and drift off topic. English only in "
              "practice.", "",
              runtime_line(f["target"], f["minimum_runtime"]) + " Files, checksums and "
              "signatures: `manifest.json`."]
    return "\n".join(lines) + "\n"
