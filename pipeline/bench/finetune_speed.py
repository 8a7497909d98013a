"""`python -m pipeline bench finetune`: training throughput and model FLOPs utilisation.

One run measures, side by side on the same machine:
  - this CPU's fp32 matmul peak (the best of several 2048x2048 matmuls);
  - training steps of the benchmark model (`gpt2_base.py`: GPT-2 base shape, random weights,
    the real GPT-2 tokenizer; or `--preset`) on the bundled corpus, for each sequence length:
    packed windows (`data.packing: true`) against one example per row (padded), so the
    "useful tokens/s" column counts only real target tokens;
  - the same packed steps under MirroredStrategy over 2 logical CPU devices;
  - the token cache on generated 10 MB and 100 MB corpora (`corpus_scale.py`): first
    tokenization, reuse, and the peak RSS of training steps read from disk.
MFU = useful tokens/s x (6 N + 12 L d T) / peak, N parameters, L layers, d width, T sequence.
Prints a Markdown table and writes JSON; no pass/fail: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras_hub
import tensorflow as tf

from pipeline.bench import corpus_scale, gpt2_base
from pipeline.bench.child import json_step
from pipeline.config import PROJECT_ROOT, DataConfig
from pipeline.fsutil import write_json
from pipeline.report import write_benchmark
from pipeline.train.data import load_split, tokenize
from pipeline.train.distribution import CPU_DEVICES, place, split_cpu
from pipeline.train.loop import (TrainingStep, attach_optimizer, make_optimizer, token_loss,
                                 training_batches)
from pipeline.train.presets import load_causal_lm


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Returns the best fp32 matmul rate of this machine, in GFLOP/s."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    matmul().numpy()
    best = min(_timed(lambda: matmul().numpy()) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def flops_per_token(causal_lm, sequence_length: int) -> float:
    """6 N + 12 L d T: the training FLOPs of one token (weights, plus attention scores)."""
    b = causal_lm.backbone
    return 6 * b.count_params() + 12 * b.num_layers * b.hidden_dim * sequence_length


def measure(preset, split, batch: int, steps: int, distribution: str) -> dict:
    """Times one warm-up step (tracing, XLA) and `steps` more; returns best and worst rates."""
    placement = place(distribution, batch, "bench")
    with placement.strategy.scope():
        causal_lm = gpt2_base.causal_lm(preset)
        attach_optimizer(causal_lm, make_optimizer(1e-4, steps + 1, 0.0, 0.0))
    epochs = 1 + (steps + 1) * batch // max(1, len(split))
    data = training_batches(split, batch, 0, 0, epochs).take(steps + 1)
    step = TrainingStep(token_loss(causal_lm), causal_lm.trainable_variables,
                        causal_lm.optimizer, data, placement.strategy)  # what fine-tuning runs
    useful = [float(w.numpy().sum()) for _, _, w in data]
    times = [_timed(step) for _ in useful]
    length = int(next(iter(data))[1].shape[1])
    rates = [u / t for u, t in zip(useful[1:], times[1:])]
    return {"distribution": placement.kind, "replicas": placement.replicas, "batch": batch,
            "sequence_length": length, "steps": steps, "first_step_seconds": times[0],
            "step_seconds": times[1:],
            "tokens_per_second": batch * length / min(times[1:]),
            "useful_tokens_per_second": max(rates), "useful_tokens_per_second_worst": min(rates),
            "flops_per_token": flops_per_token(causal_lm, length)}


def bench_finetune(preset, lengths, batch: int, steps: int, data_path: Path) -> dict:
    """Each row runs in its own child process: its memory is its own, and a row the machine
    cannot hold (killed for memory) is reported as such instead of ending the benchmark."""
    peak = matmul_peak_gflops()
    rows = []
    plan = [(True, "none"), (False, "none"), (True, "mirrored")]
    for length in lengths:
        for packing, distribution in plan:
            spec = {"preset": preset, "length": length, "packing": packing, "batch": batch,
                    "steps": steps, "distribution": distribution, "data": str(data_path)}
            row = _row_in_child(spec)
            if "useful_tokens_per_second" in row:
                row["mfu"] = (row["useful_tokens_per_second"] * row["flops_per_token"]
                              / (peak * 1e9))
                print(f"  T={length} packing={packing} {distribution}: "
                      f"{row['useful_tokens_per_second']:.0f} useful tokens/s, "
                      f"MFU {row['mfu']:.1%}")
            else:
                print(f"  T={length} packing={packing} {distribution}: {row['failed']}")
            rows.append(row)
    return {"matmul_peak_gflops": peak, "model": preset or "gpt2_base shape (random weights)",
            "rows": rows}


def _row_in_child(spec: dict) -> dict:
    row = json_step("pipeline.bench.finetune_speed", [json.dumps(spec)], env={CPU_DEVICES: "2"})
    if "failed" in row:
        row.update(sequence_length=spec["length"], packing=spec["packing"],
                   distribution=spec["distribution"], batch=spec["batch"])
    return row


def measure_row(spec: dict) -> dict:
    """One row, in this process: tokenize the corpus at the row's length, then `measure`."""
    split_cpu()
    preset = spec["preset"]
    preprocessor = (load_causal_lm(preset).preprocessor if preset else
                    keras_hub.models.GPT2CausalLMPreprocessor(gpt2_base.gpt2_tokenizer()))
    preprocessor.sequence_length = spec["length"]
    texts, _ = load_split(DataConfig(path=spec["data"]))
    split = tokenize(texts, preprocessor, spec["packing"])
    row = measure(preset, split, spec["batch"], spec["steps"], spec["distribution"])
    row["packing"] = spec["packing"]
    return row


def markdown_table(result: dict) -> str:
    lines = [f"Matmul peak (fp32, this run): {result['matmul_peak_gflops']:.0f} GFLOP/s. "
             f"Model: {result['model']}.", "",
             "| T | data | strategy (replicas) | batch | tokens/s | useful tokens/s, best / "
             "worst step | MFU (best) | first step s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['sequence_length']} | {'packed' if r['packing'] else 'rows'} | "
                         f"{r['distribution']} | {r['batch']} | {r['failed']} | | | |")
            continue
        lines.append(f"| {r['sequence_length']} | {'packed' if r['packing'] else 'rows'} | "
                     f"{r['distribution']} ({r['replicas']}) | {r['batch']} | "
                     f"{r['tokens_per_second']:.0f} | {r['useful_tokens_per_second']:.0f} / "
                     f"{r['useful_tokens_per_second_worst']:.0f} | {r['mfu']:.1%} | "
                     f"{r['first_step_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench finetune")
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown")
    parser.add_argument("--preset", help="a real preset instead of random GPT-2-base weights")
    parser.add_argument("--lengths", default="256,1024", help="sequence lengths")
    parser.add_argument("--batch", type=int, default=2, help="global batch (even: 2 replicas)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per row")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "configs/data/kitchen_notes.txt"))
    parser.add_argument("--corpus-mb", default="10,100",
                        help="sizes of the generated corpora for the token-cache rows ('' = none)")
    args = parser.parse_args(argv)
    result = bench_finetune(args.preset, [int(n) for n in args.lengths.split(",")], args.batch,
                            args.steps, Path(args.data))
    table = markdown_table(result)
    sizes = [int(n) for n in args.corpus_mb.split(",") if n.strip()]
    if sizes:
        print("Token cache on generated corpora ...")
        result["corpus"] = corpus_scale.bench_corpus(sizes, args.preset, batch=args.batch,
                                                      steps=args.steps)
        table += "\n" + corpus_scale.markdown_table(result["corpus"])
    write_benchmark(args.out, "finetune", result, table)
    return 0


if __name__ == "__main__":  # one row in a child process: SPEC_JSON OUT_FILE
    write_json(Path(sys.argv[2]), measure_row(json.loads(sys.argv[1])))
