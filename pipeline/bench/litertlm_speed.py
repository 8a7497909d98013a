"""`python -m pipeline bench litertlm`: the streaming bundle against llama.cpp, in one run.

Every engine runs on the same model shape (`gpt2_base.py`: GPT-2 base, random weights; or
`--preset`), the same CPU and the same thread count, each in its own child process so that its
peak RSS is its own:
  - each bundle (`--quantization int8,int4`), timed by our own passes in a process holding
    the runtime only (`bundle_passes.py`: best of three after a warm-up, a full-context fill
    for the peak RSS; the first launch, which packs the weights for XNNPACK, is run apart)
    and by `litert-lm benchmark`, LiteRT-LM's own tool (`yardsticks.py`);
  - llama.cpp's `llama-bench` on GGUF files of the same shape (`--llama-bench PATH --gguf
    FILE...`; Q8_0 is compared with int8, Q4_0 with int4): the targets are ratios to it;
  - Keras generation, for scale.
Reported: prefill tokens/s for 32- and 128-token prompts, decode tokens/s, peak RSS, file size,
first-launch cost; plus the memory read bandwidth, which bounds decode (every token reads
every weight once)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.bench import gpt2_base, yardsticks
from pipeline.bench.child import required_step
from pipeline.export.litertlm import (build_bundle, metadata_textproto, save_streaming_model,
                                      streaming_tflite, write_tokenizer_files)
from pipeline.report import write_benchmark

SELF = "pipeline.bench.litertlm_speed"  # its `__main__` runs the _export and _keras steps

def prompt_with_tokens(tokenizer, n: int) -> str:
    """Returns text of exactly `n` tokens for `tokenizer` (a keras-hub tokenizer)."""
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * n)
    ids = [int(i) for i in tokenizer(text)][:n]
    out = str(tokenizer.detokenize(ids))
    assert len(tokenizer(out)) == n, "prompt length drifted on re-tokenization"
    return out


def child_export(out_dir: str, preset: str, mode: str, context: int, lengths=(32, 128)) -> None:
    """Writes model.litertlm (and its parts) and prompts.json: a prompt per prefill length."""
    tokenizer, weights = gpt2_base.tokenizer_and_weights(preset or None)
    parameters = weights.count()
    with tempfile.TemporaryDirectory() as saved:
        save_streaming_model(weights, context, lengths, saved)
        del weights
        model, _ = streaming_tflite(saved, parameters, mode)
    out = Path(out_dir)
    (out / "model.tflite").write_bytes(model)
    tj = write_tokenizer_files(tokenizer, out)
    meta = metadata_textproto(tokenizer.start_token_id, tokenizer.end_token_id, context)
    build_bundle(out / "model.tflite", tj, meta, out / "model.litertlm")
    (out / "prompts.json").write_text(json.dumps(
        {n: prompt_with_tokens(tokenizer, n) for n in lengths}))


def child_keras(out_dir: str, preset: str, threads: int, new_tokens: int) -> dict:
    """Returns Keras generation's prefill and decode speed per prompt in prompts.json."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    out = Path(out_dir)
    prompts = json.loads((out / "prompts.json").read_text())
    lm = gpt2_base.causal_lm(preset or None)
    lm.compile(sampler="greedy")
    results = {}
    for n, prompt in prompts.items():
        length = int(n) + 1  # + start token

        def timed(max_length):
            lm.generate([prompt], max_length=max_length, stop_token_ids=None)  # trace, warm up
            times = []
            for _ in range(3):  # best of three, as for LiteRT-LM
                started = time.perf_counter()
                lm.generate([prompt], max_length=max_length, stop_token_ids=None)
                times.append(time.perf_counter() - started)
            return min(times)

        first = timed(length + 1)
        full = timed(length + new_tokens)
        results[n] = {"ttft_s": first, "prefill_tokens": length, "prefill_tps": length / first,
                      "decode_tokens": new_tokens - 1,
                      "decode_tps": (new_tokens - 1) / max(full - first, 1e-9)}
    return results


def read_bandwidth_gbs() -> float:
    """Returns single-process memory read bandwidth (GB/s) from summing a 512 MB array."""
    data = np.ones(64 * 1024 * 1024, dtype=np.float64)  # 512 MB
    data.sum()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def bench_bundle(work: Path, preset: str | None, mode: str, threads: int, new_tokens: int,
                 context: int, lengths) -> dict:
    """Exports one bundle and times it: our own passes (first launch packs the weights, the
    second reuses them) and `litert-lm benchmark` at each prompt length."""
    work.mkdir(parents=True, exist_ok=True)
    print(f"exporting the streaming model ({mode}) ...", flush=True)
    export = required_step(SELF, ["_export", work, preset or "", mode, context])
    print(f"running LiteRT-LM ({mode}; the first launch packs the weights) ...", flush=True)
    step = [work, threads, new_tokens, context]
    first = required_step("pipeline.bench.bundle_passes", step)
    # private, file-backed and PSS memory polled from outside, as llama.cpp's (yardsticks):
    # each field's peak over the run, which ends with the whole context filled
    ours = required_step("pipeline.bench.bundle_passes", step, memory=True)
    bundle = work / "model.litertlm"
    print(f"running litert-lm benchmark ({mode}) ...", flush=True)
    cli = {str(n): yardsticks.litert_lm_benchmark(bundle, threads, n, new_tokens, context)
           for n in lengths}
    return {"quantization": mode, "file_mb": bundle.stat().st_size / 1e6,
            "export_seconds": export["seconds"], "export_peak_rss_mb": export["peak_rss_mb"],
            "first_launch": {"first_token_s": first["first_token_s"],
                             "peak_rss_mb": first["peak_rss_mb"]},
            "first_token_s": ours["first_token_s"], "peak_rss_mb": ours["peak_rss_mb"],
            "memory_mb": ours["memory_mb"], "memory_at_start_mb": ours["memory_at_start_mb"],
            "memory_full_context_mb": ours["memory_peaks_mb"],
            "full_context": ours["full_context"],
            "ours": ours["passes"], "litert_lm_benchmark": cli}


def bench(out_dir: Path, preset: str | None, modes, threads: int, new_tokens: int,
          context: int, llama_bench: Path | None = None, ggufs=()) -> dict:
    lengths = (32, 128)
    result = {"model": preset or "GPT-2 base shape, random weights", "threads": threads,
              "context": context, "new_tokens": new_tokens, "bundles": {}, "llama_cpp": []}
    for mode in modes:
        work = out_dir / f"litertlm-work-{mode}"
        result["bundles"][mode] = bench_bundle(work, preset, mode, threads, new_tokens,
                                               context, lengths)
        if mode == modes[0]:
            print("running Keras ...", flush=True)
            keras = required_step(SELF, ["_keras", work, preset or "", threads,
                                                  new_tokens])
            result["keras_peak_rss_mb"] = keras.pop("peak_rss_mb")
            result["keras"] = keras
        shutil.rmtree(work)
    for gguf in ggufs:
        print(f"running llama-bench on {gguf.name} ...", flush=True)
        result["llama_cpp"].append(yardsticks.llama_bench(llama_bench, gguf, threads, lengths,
                                                          new_tokens, context=context))
    # last: it holds 512 MB while the engines run in children
    result["read_bandwidth_gbs"] = read_bandwidth_gbs()
    result["ratios"], result["meets"] = against_llama_cpp(result)
    return result


def engine_rows(r: dict) -> list[dict]:
    """Every engine as one row: prefill tokens/s per prompt length, decode, size, RSS."""
    rows = [{"engine": f"llama.cpp {g['file'].rsplit('-', 1)[-1].removesuffix('.gguf')}",
             "quantization": g["quantization"], "file_mb": g["file_mb"],
             "prefill": g["prefill_tps"], "decode": g.get("decode_tps", 0.0),
             "rss": g["peak_rss_mb"], "full": g.get("memory_full_context_mb", {})}
            for g in r["llama_cpp"]]
    for mode, b in r["bundles"].items():
        rows.append({"engine": f"bundle {mode}, our passes", "quantization": mode,
                     "file_mb": b["file_mb"], "rss": b["peak_rss_mb"],
                     "full": b.get("memory_full_context_mb", {}),
                     "prefill": {n: v["prefill_tps"] for n, v in b["ours"].items()},
                     "decode": b["ours"]["32"]["decode_tps"]})
        cli = b["litert_lm_benchmark"]
        rows.append({"engine": f"bundle {mode}, litert-lm benchmark", "quantization": mode,
                     "file_mb": b["file_mb"], "rss": max(v["peak_rss_mb"] for v in cli.values()),
                     "prefill": {n: v["prefill_tps"] for n, v in cli.items()},
                     "decode": cli["32"]["decode_tps"]})
    if "keras" in r:
        rows.append({"engine": "Keras fp32", "quantization": "none", "file_mb": None,
                     "rss": r["keras_peak_rss_mb"],
                     "prefill": {n: v["prefill_tps"] for n, v in r["keras"].items()},
                     "decode": r["keras"]["32"]["decode_tps"]})
    return rows


def against_llama_cpp(r: dict) -> tuple[dict, dict]:
    """Returns (ratios of each bundle row to the llama.cpp row of its quantization, targets)."""
    rows = engine_rows(r)
    reference = {row["quantization"]: row for row in rows if row["engine"].startswith("llama")}
    ratios = {}
    for row in rows:
        ref = reference.get(row["quantization"])
        if ref and row["engine"].startswith("bundle"):
            ratios[row["engine"]] = {**{f"prefill_{n}": row["prefill"][n] / ref["prefill"][n]
                                        for n in ref["prefill"] if n in row["prefill"]},
                                     "decode": row["decode"] / ref["decode"]}
    meets = {}
    ours8, cli8 = ratios.get("bundle int8, our passes"), r["bundles"].get("int8")
    if ours8:
        meets["int8 vs Q8_0: decode and prefill >= 1.0x"] = min(ours8.values()) >= 1.0
    ours4 = ratios.get("bundle int4, our passes")
    if ours4:
        meets["int4 vs Q4_0: decode >= 1.0x at <= 85 MB"] = (
            ours4["decode"] >= 1.0 and r["bundles"]["int4"]["file_mb"] <= 85)
    if cli8:
        meets["litert-lm benchmark int8 decode >= 150 tokens/s"] = (
            cli8["litert_lm_benchmark"]["32"]["decode_tps"] >= 150)
    # what an app pays, context filled: our passes run in a process holding the runtime only
    for row in rows:
        ref = reference.get(row["quantization"])
        if row["engine"].endswith("our passes") and ref and ref["full"] and row["full"]:
            for field, name in (("private_mb", "private memory"), ("pss_mb", "PSS")):
                meets[f"{row['quantization']} {name} <= {ref['engine']}'s, context "
                      f"{r['context']} filled"] = row["full"][field] <= ref["full"][field]
    return ratios, meets


def markdown(r: dict) -> str:
    lines = [f"On-device engines, {r['model']}, {r['threads']} threads, context {r['context']}, "
             f"{r['new_tokens']} new tokens; memory read bandwidth "
             f"{r['read_bandwidth_gbs']:.1f} GB/s", "",
             "| engine | file MB | prefill 32 tok/s | prefill 128 tok/s | decode tok/s | "
             "peak RSS MB | vs llama.cpp (prefill 32 / 128 / decode) |",
             "|---|---|---|---|---|---|---|"]
    for row in engine_rows(r):
        ratio = r["ratios"].get(row["engine"])
        vs = (" / ".join(f"{ratio[k]:.2f}x" for k in ("prefill_32", "prefill_128", "decode")
                         if k in ratio) if ratio else "")
        size = f"{row['file_mb']:.1f}" if row["file_mb"] else ""
        lines.append(f"| {row['engine']} | {size} | {row['prefill'].get('32', 0):.0f} | "
                     f"{row['prefill'].get('128', 0):.0f} | {row['decode']:.1f} | "
                     f"{row['rss']:.0f} | {vs} |")
    lines += ["", f"Memory with the context filled ({r['context']} tokens), MB: private "
              "(anonymous: this process's alone), file-backed (model file, packed weights, "
              "libraries: shared, the kernel can drop them), PSS (shared pages divided among "
              "their holders); each its peak over the fill", "",
              "| engine | private | file-backed | PSS | peak RSS |", "|---|---|---|---|---|"]
    for row in engine_rows(r):
        if row.get("full"):
            f = row["full"]
            lines.append(f"| {row['engine']} | {f['private_mb']:.0f} | "
                         f"{f['file_backed_mb']:.0f} | {f['pss_mb']:.0f} | {row['rss']:.0f} |")
    lines.append("")
    for mode, b in r["bundles"].items():
        held = ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in
                         sorted(b["memory_mb"].items(), key=lambda kv: -kv[1]))
        first = b["first_launch"]
        lines.append(f"- bundle {mode}: start-up to first token {first['first_token_s']:.2f} "
                     f"s on a first launch (XNNPACK packs the weights; peak RSS "
                     f"{first['peak_rss_mb']:.0f} MB), {b['first_token_s']:.2f} s "
                     f"later (litert-lm benchmark's init: "
                     f"{b['litert_lm_benchmark']['32']['init_s']:.2f} s); "
                     f"resident MB at {b['full_context']['tokens']} tokens: {held} (runtime "
                     f"library just after start-up: "
                     f"{b['memory_at_start_mb']['runtime_library']:.0f}); decode at "
                     f"the end of the context {b['full_context']['decode_tps']:.0f} tok/s")
    if r["meets"]:
        lines.append("")
        lines.append("Targets: " + "; ".join(f"{k}: {'yes' if v else 'NO'}"
                                             for k, v in r["meets"].items()))
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench litertlm")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--preset", help="a real preset instead of random GPT-2-base weights")
    parser.add_argument("--quantization", default="int8",
                        help="bundle modes, comma-separated (e.g. int8,int4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024)
    yardsticks.add_llama_arguments(parser)
    args = parser.parse_args(argv)
    if yardsticks.llama_arguments_problem(parser, args):
        return 2
    modes = [m.strip() for m in args.quantization.split(",") if m.strip()]
    result = bench(Path(args.out), args.preset, modes, args.threads, args.new_tokens,
                   args.context, args.llama_bench, args.gguf)
    table = markdown(result)
    write_benchmark(args.out, "litertlm", result, table)
    return 0


def timed_export(*args) -> dict:
    started = time.time()
    child_export(*args)
    return {"seconds": time.time() - started}


if __name__ == "__main__":  # one child step: _export | _keras, its arguments, then OUT_JSON
    name, *rest, out = sys.argv[1:]
    result = {"_export": lambda: timed_export(rest[0], rest[1], rest[2], int(rest[3])),
              "_keras": lambda: child_keras(rest[0], rest[1], int(rest[2]), int(rest[3]))}[name]()
    Path(out).write_text(json.dumps(result))
