"""Corpus-scale rows of `bench finetune`: the token cache on a generated corpus.

For each size (default 10 MB and 100 MB of paragraphs drawn from Python's own documentation,
written to a temporary folder and deleted after), three child processes, so that each peak
RSS is that step's alone:
  tokenize  the first `open_corpus` with the real GPT-2 tokenizer: seconds and peak RSS;
  reuse     `open_corpus` again, in a new process: seconds (nothing is tokenized);
  train     a few training steps of the benchmark model (GPT-2 base shape) reading windows
            from the cache: seconds per step and peak RSS, which should not grow with the corpus.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench import gpt2_base
from pipeline.bench.child import json_step
from pipeline.config import DataConfig
from pipeline.fsutil import write_json
from pipeline.train.embedded_base import python_text
from pipeline.train.loop import (TrainingStep, attach_optimizer, make_optimizer, token_loss,
                                 training_batches)
from pipeline.train.presets import load_tokenizer
from pipeline.train.token_cache import open_corpus

MB = 1 << 20


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> Path:
    """Writes about `megabytes` MB of blank-line-separated paragraphs to `path`."""
    docs = python_text(3_000_000)
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * MB:
            f.write("\n\n".join(docs[i] for i in rng.integers(0, len(docs), 256)) + "\n\n")
    return path


def bench_corpus(sizes, preset=None, length: int = 256, batch: int = 2, steps: int = 3
                 ) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            data = write_corpus(Path(tmp) / f"corpus_{size}mb.txt", size)
            spec = {"data": str(data), "cache": str(Path(tmp) / f"cache_{size}"),
                    "length": length, "batch": batch, "steps": steps, "preset": preset}
            row = {"corpus_mb": round(data.stat().st_size / MB, 1)}
            for step in ("tokenize", "reuse", "train"):
                row[step] = json_step("pipeline.bench.corpus_scale", [step, json.dumps(spec)])
            rows.append(row)
            print(f"  {row['corpus_mb']} MB: " + ", ".join(
                f"{k} {v.get('seconds', 0):.1f}s {v.get('peak_rss_mb', 0):.0f} MB"
                for k, v in row.items() if isinstance(v, dict)))
            data.unlink()
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| corpus | tokens | first tokenization s | its peak RSS | reuse s | "
             "training: s per step | training peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, u, s = r["tokenize"], r["reuse"], r["train"]
        if any("failed" in v for v in (t, u, s)):
            why = next(v["failed"] for v in (t, u, s) if "failed" in v)
            lines.append(f"| {r['corpus_mb']} MB | failed: {why} | | | | | |")
            continue
        lines.append(f"| {r['corpus_mb']} MB | {t['tokens']:,} | {t['seconds']:.1f} | "
                     f"{t['peak_rss_mb']:.0f} MB | {u['seconds']:.2f} | "
                     f"{s['seconds_per_step']:.1f} | {s['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def run_step(step: str, spec: dict) -> dict:
    """One step, in this process (a child of `bench_corpus`)."""
    preset = spec["preset"]  # else the GPT-2 base shape and the real GPT-2 tokenizer
    causal_lm = gpt2_base.causal_lm(preset) if step == "train" else None
    tokenizer = (causal_lm.preprocessor.tokenizer if causal_lm else
                 load_tokenizer(preset) if preset else gpt2_base.gpt2_tokenizer())
    started = time.perf_counter()
    corpus = open_corpus(DataConfig(path=spec["data"]), tokenizer, verbose=step == "tokenize",
                         root=spec["cache"])
    out = {"seconds": time.perf_counter() - started,
           "tokens": sum(f["tokens"] for f in corpus.files)}
    if step == "train":
        length = min(spec["length"], causal_lm.backbone.max_sequence_length)
        train = corpus.windows("train", length, packing=True)
        causal_lm.preprocessor = None
        attach_optimizer(causal_lm, make_optimizer(1e-4, spec["steps"] + 1, 0.0, 0.0))
        step = TrainingStep(token_loss(causal_lm), causal_lm.trainable_variables,
                            causal_lm.optimizer, training_batches(train, spec["batch"], 0, 0, 1))
        times = []
        for _ in range(spec["steps"] + 1):  # the first step traces and compiles
            started = time.perf_counter()
            step()  # reads its batch from disk, as fine-tuning does
            times.append(time.perf_counter() - started)
        out.update(seconds_per_step=min(times[1:]), windows=len(train))
    return out  # its peak RSS is measured from outside (`child.json_step`)


if __name__ == "__main__":  # STEP SPEC_JSON OUT_FILE
    write_json(Path(sys.argv[3]), run_step(sys.argv[1], json.loads(sys.argv[2])))
