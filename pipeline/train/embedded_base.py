"""The embedded base model: a small GPT-2 built offline, deterministically, on this machine.

No network reaches Kaggle or Hugging Face here, so the default base model is built from text
that ships with Python itself (the interpreter's help topics and the standard library's
docstrings): a byte-level BPE tokenizer trained with `tokenizers`, and a small `GPT2Backbone`
briefly pre-trained on that text. The result is a keras-hub preset folder in the cache,
reused until the spec below changes.

Example:
    >>> folder = embedded_preset()      # builds on first use (about 2 minutes on 2 cores)
    >>> lm = keras_hub.models.GPT2CausalLM.from_preset(str(folder))
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_hub
import numpy as np
from tokenizers import ByteLevelBPETokenizer
from tokenizers.models import BPE

from pipeline.fsutil import atomic_dir, file_lock, remove_leftovers, seal_folder, sealed_problem
from pipeline.run_folder import cache_dir
from pipeline.train.checkpoints import progress_bar
from pipeline.train.data import TokenizedSplit
from pipeline.train.loop import (TrainingStep, attach_optimizer, make_optimizer, perplexity,
                                 token_loss, training_batches)

END_TOKEN = "<|endoftext|>"
BUILD_VERSION = 3  # bump when the build code changes what it produces


@dataclass(frozen=True)
class BaseSpec:
    vocabulary_size: int = 4096
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 128
    intermediate_dim: int = 512
    max_sequence_length: int = 256  # position limit of the model
    sequence_length: int = 128  # tokens per pre-training window
    batch_size: int = 32
    steps: int = 220  # about 2 minutes on 2 cores
    learning_rate: float = 3e-3
    max_corpus_chars: int = 3_000_000
    seed: int = 0


def spec_key(spec: BaseSpec) -> str:
    blob = json.dumps([BUILD_VERSION, dataclasses.asdict(spec), sys.version_info[:2]])
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


SEAL = "cache_seal.json"  # every file's size and checksum, written last


def embedded_preset(spec: BaseSpec = BaseSpec(), verbose: bool = True) -> Path:
    """Returns the embedded base preset folder, building it first if the cache lacks it (or
    holds a damaged copy: every file's size and checksum are checked). Built under a lock, so
    concurrent runs build it once."""
    folder = cache_dir() / f"embedded-{spec_key(spec)}"
    if sealed_problem(folder, SEAL) is None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder.parent)
    with file_lock(folder.with_name(f".{folder.name}.lock"), wait=True):
        problem = sealed_problem(folder, SEAL)
        if problem is not None:
            if problem != "missing":
                print(f"embedded base: {folder} is damaged ({problem}): rebuilding it")
            build_base(folder, python_text(spec.max_corpus_chars), spec, verbose=verbose)
    return folder


def python_text(max_chars: int) -> list[str]:
    """Returns English documents that ship with Python: help topics and stdlib docstrings."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    docs.append(doc)
    out, size = [], 0
    for doc in docs:
        if size >= max_chars:
            break
        out.append(doc)
        size += len(doc)
    return out


def train_tokenizer(texts: list[str], vocabulary_size: int):
    """Returns (vocabulary dict, merges list) of a byte-level BPE trained on `texts`."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=vocabulary_size, min_frequency=2, special_tokens=[END_TOKEN],
        show_progress=False,
    )
    state = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    # keras-hub's GPT2Tokenizer pads with id 0, so the end token must not be id 0: put it
    # last, as in GPT-2's own vocabulary (50256 of 50257).
    ordered = sorted(state["vocab"].items(), key=lambda kv: (kv[0] == END_TOKEN, kv[1]))
    return {token: i for i, (token, _) in enumerate(ordered)}, merges


def windows(token_lists: list[list[int]], end_id: int, length: int) -> np.ndarray:
    """Returns the documents joined by the end token and cut into (N, length + 1) windows."""
    stream = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(end_id)
    n = (len(stream) - 1) // length
    flat = np.asarray(stream[: n * length + 1], dtype="int32")
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return flat[idx]  # (N, length + 1): inputs are [:, :-1], targets [:, 1:]


def build_base(folder: Path, texts: list[str], spec: BaseSpec, verbose: bool = True) -> Path:
    """Trains tokenizer and backbone on `texts` and saves a keras-hub preset at `folder`."""
    started = time.time()
    log = print if verbose else (lambda *a, **k: None)
    log(f"Building the embedded base model in {folder} (once; cached afterwards)")
    keras.utils.set_random_seed(spec.seed)
    vocabulary, merges = train_tokenizer(texts, spec.vocabulary_size)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=spec.sequence_length
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        hidden_dim=spec.hidden_dim,
        intermediate_dim=spec.intermediate_dim,
        dropout=0.0,
        max_sequence_length=spec.max_sequence_length,
    )
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)

    fast = ByteLevelBPETokenizer(add_prefix_space=False)
    fast._tokenizer.model = BPE(vocab=vocabulary, merges=[tuple(m.split(" ")) for m in merges])
    ids = [e.ids for e in fast.encode_batch(texts)]
    data = windows(ids, vocabulary[END_TOKEN], spec.sequence_length)
    rng = np.random.default_rng(spec.seed)
    data = data[rng.permutation(len(data))]
    held_out = data[:64]
    train = data[64:]
    log(f"  corpus: {len(texts)} documents, {sum(map(len, ids)):,} tokens, "
        f"{len(train)} windows of {spec.sequence_length}")

    def arrays(w):
        x = {"token_ids": w[:, :-1], "padding_mask": np.ones_like(w[:, :-1], dtype="int32")}
        return TokenizedSplit(x, w[:, 1:], np.ones_like(w[:, 1:], dtype="float32"), {})

    attach_optimizer(causal_lm, make_optimizer(spec.learning_rate, spec.steps, 0.05, 0.01))
    train = arrays(train)
    step = TrainingStep(token_loss(causal_lm), causal_lm.trainable_variables,
                        causal_lm.optimizer,
                        training_batches(train, spec.batch_size, spec.seed, 0,
                                         -(-spec.steps * spec.batch_size // len(train)) + 1))
    bar = progress_bar(total=spec.steps, desc="  pre-training", unit="step", mininterval=2.0,
                       disable=not verbose)
    for _ in range(spec.steps):
        bar.set_postfix(loss=f"{step():.3f}", refresh=False)
        bar.update(1)
    bar.close()
    step.close()
    held_out = arrays(held_out)
    ppl = perplexity(causal_lm, held_out.x, held_out.y, held_out.w)
    log(f"  held-out perplexity {ppl['perplexity']:.1f} after {spec.steps} steps "
        f"({time.time() - started:.0f}s)")
    causal_lm.preprocessor = preprocessor
    with atomic_dir(folder) as tmp:
        causal_lm.save_to_preset(str(tmp))
        seal_folder(tmp, {"spec": dataclasses.asdict(spec)}, SEAL)
    return folder
