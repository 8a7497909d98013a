"""The `.litertlm` bundle: streaming model + tokenizer + metadata, run by LiteRT-LM.

Bundle contents (built with `litert_lm_builder`):
  - LLM metadata: `llm_model_type { generic_model {} }`, start token and stop token
    `<|endoftext|>` (keras-hub's GPT-2 also starts every prompt with it), max tokens = the
    context size of the exported caches;
  - the `prefill_<T>`/`decode` .tflite as the PREFILL_DECODE model;
  - the tokenizer as a Hugging Face `tokenizer.json`: keras-hub's own byte-level BPE
    (`tokenizers` with keras-hub's split pattern), so ids are identical.

Example:
    >>> for piece in stream_generate("gpt2.litertlm", "Tomato soup.", max_new_tokens=32):
    ...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError


def hf_tokenizer(tokenizer):
    """Returns the `tokenizers.Tokenizer` that keras-hub's GPT2Tokenizer itself runs on.

    keras-hub 0.32 tokenizes eagerly with the `tokenizers` package, using its own split
    pattern (not GPT-2's original regex: repeated spaces and newlines group differently),
    so serializing that very tokenizer gives a tokenizer.json with identical ids.
    """
    tokenizer._maybe_initialized_tokenizers()
    return tokenizer._tokenizer


def keras_vocabulary(tokenizer) -> tuple[dict, list[str]]:
    """Returns (vocabulary, merges) of a keras-hub GPT2Tokenizer."""
    vocabulary = tokenizer.get_vocabulary()
    vocab = vocabulary if isinstance(vocabulary, dict) else {t: i for i, t in
                                                            enumerate(vocabulary)}
    return dict(vocab), list(tokenizer.merges)


def write_tokenizer_files(tokenizer, folder: Path) -> Path:
    """Writes tokenizer.json, vocab.json and merges.txt; returns the tokenizer.json path."""
    vocab, merges = keras_vocabulary(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    # Compact JSON with merges as "a b" strings (the classic form every reader accepts):
    # about 100 KB less in the bundle for GPT-2's vocabulary.
    data = json.loads(hf_tokenizer(tokenizer).to_str())
    merges_in = data["model"].get("merges", [])
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges_in]
    (folder / "tokenizer.json").write_text(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
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
    import litert_lm_builder as lb

    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "llm_metadata.textproto"
        meta_path.write_text(metadata)
        builder = lb.LitertLmFileBuilder()
        builder.add_system_metadata(lb.Metadata(key="Authors", value="gpt2-to-phone",
                                                dtype=lb.DType.STRING))
        builder.add_llm_metadata(str(meta_path))
        builder.add_hf_tokenizer(str(tokenizer_json))
        builder.add_tflite_model(str(model_path), lb.TfLiteModelType.PREFILL_DECODE,
                                 backend_constraint="cpu")
        with open(out_path, "wb") as f:
            builder.build(f, validate_metadata=True)


@dataclass(frozen=True)
class Sampling:
    top_k: int = 1  # 1 = greedy
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0


def find_bundle(path) -> Path:
    """Returns the .litertlm named by `path`: the file itself, or the newest one in a run."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".litertlm":
            raise PipelineError(f"{p} is not a .litertlm bundle")
        return p
    if p.is_dir():
        found = sorted(p.glob("export/litertlm/*.litertlm")) + sorted(p.glob("*.litertlm"))
        if found:
            return found[0]
        raise PipelineError(f"{p} holds no .litertlm bundle (export it with `python -m "
                            f"pipeline export` and export.targets including litertlm)")
    raise PipelineError(f"{p} does not exist: give a .litertlm file or a run folder")


def context_of(bundle: Path) -> int:
    """Returns max_num_tokens from the bundle's metadata (written next to it on export)."""
    meta = bundle.parent / "llm_metadata.textproto"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.startswith("max_num_tokens:"):
                return int(line.split(":")[1])
    return 1024


def check_prompt(bundle: Path, prompt: str, context: int) -> int:
    """Returns the prompt's token count (start token included) or raises a one-line error.

    Uses the tokenizer.json exported beside the bundle, so no runtime is started.
    """
    if not prompt.strip():
        raise PipelineError("the prompt is empty: give some text to continue")
    tokenizer_json = bundle.parent / "tokenizer.json"
    if not tokenizer_json.is_file():
        return 1  # a bare bundle: the runtime itself refuses over-long prompts
    import tokenizers

    n = len(tokenizers.Tokenizer.from_file(str(tokenizer_json)).encode(prompt).ids) + 1
    if n >= context:
        raise PipelineError(f"the prompt has {n} tokens but the model's context is {context}: "
                            f"shorten it to fewer than {context - 1} tokens")
    return n


def engine(bundle: Path, threads: int = 2, max_tokens: int | None = None, cache_dir=None):
    """Returns a LiteRT-LM engine on the CPU; `cache_dir` keeps XNNPACK's packed weights."""
    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)  # quiet the runtime's INFO logs
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "litertlm-cache")
    cache.mkdir(parents=True, exist_ok=True)
    # float32 activations: the runtime's default for text decoders is fp16, which would
    # break exact parity with Keras.
    return litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=threads),
                            max_num_tokens=max_tokens, cache_dir=str(cache),
                            activation_data_type=litert_lm.ActivationDataType.FLOAT32,
                            enable_benchmark=True)


def stream_generate(bundle, prompt: str, max_new_tokens: int = 64,
                    sampling: Sampling = Sampling(), threads: int = 2, eng=None):
    """Yields the generated text piece by piece (the prompt is not repeated)."""
    import litert_lm

    owned = eng is None
    eng = eng or engine(Path(bundle), threads)
    try:
        session = eng.create_session(
            apply_prompt_template=False,
            sampler_config=litert_lm.SamplerConfig(top_k=sampling.top_k, top_p=sampling.top_p,
                                                   temperature=sampling.temperature,
                                                   seed=sampling.seed),
            max_output_tokens=max_new_tokens)
        session.run_prefill([prompt])
        for response in session.run_decode_async():
            if response.texts:
                yield response.texts[0]
        session.close()
    finally:
        if owned:
            eng.close()
