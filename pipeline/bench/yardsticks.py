"""The engines `bench litertlm` measures the bundle against, run as their users run them.

  llama.cpp   `llama-bench` (built outside the project: ../shared/anchors/llamacpp.sh), on
              GGUF files of the same shape: prefill at each prompt length, decode, peak RSS;
  litert-lm   `litert-lm benchmark`, LiteRT-LM's own command-line tool (PyPI `litert-lm`),
              on our bundle: what users of the runtime will run first.
Both run as child processes; their peak RSS is their own (`child.run_measured`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pipeline.bench.child import run_measured
from pipeline.bench.smaps import peaks

LITERT_LM = Path(sys.executable).with_name("litert-lm")


def quantization_of(gguf: Path) -> str:
    """Q8_0 -> int8, Q4_0 -> int4, F16 -> fp16: the bundle mode it is compared with."""
    match = re.search(r"(Q(\d)_\w+|F16|F32)", gguf.name, re.IGNORECASE)
    if not match:
        return "unknown"
    tag = match.group(1).upper()
    return {"F16": "fp16", "F32": "none"}.get(tag, f"int{match.group(2)}" if match.group(2)
                                                else "unknown")


def llama_bench(binary: Path, gguf: Path, threads: int, prompt_lengths, new_tokens: int,
                repeats: int = 3, context: int | None = None) -> dict:
    """Returns llama.cpp's prefill tokens/s per prompt length, decode tokens/s (the mean of
    `repeats` repetitions, as it reports), file MB and peak RSS: with `context`, that of one
    more run whose prompt and generation fill `context` tokens (its KV cache is that long;
    the timed runs' caches hold only their own prompt or generation)."""
    def run(*test: str, memory: list | None = None) -> tuple[str, float]:
        args = [str(binary), "-m", str(gguf), "-t", str(threads), *test, "-o", "json"]
        out, status, rss = run_measured(args, memory=memory)
        if status:
            raise SystemExit(f"llama-bench failed (status {status}): {' '.join(args)}")
        return out, rss

    out, rss = run("-p", ",".join(map(str, prompt_lengths)), "-n", str(new_tokens),
                   "-r", str(repeats))
    records = json.loads(out)
    result = {"engine": "llama.cpp", "file": gguf.name, "quantization": quantization_of(gguf),
              "file_mb": gguf.stat().st_size / 1e6, "prefill_tps": {}, "peak_rss_mb": rss}
    if context:  # llama-bench sizes its KV cache to each test: one test that fills `context`
        result["peak_rss_short_mb"] = rss
        samples: list = []
        result["peak_rss_mb"] = run("-p", "0", "-n", "0", "-pg",
                                    f"{context - new_tokens},{new_tokens}", "-r", "1",
                                    memory=samples)[1]
        result["memory_full_context_mb"] = peaks(samples)  # private, file-backed, PSS
    for r in records:
        if r.get("n_prompt") and not r.get("n_gen"):
            result["prefill_tps"][str(r["n_prompt"])] = float(r["avg_ts"])
        elif r.get("n_gen") and not r.get("n_prompt"):
            result["decode_tps"] = float(r["avg_ts"])
            result["build"] = r.get("build_commit", "")
    return result


def litert_lm_benchmark(bundle: Path, threads: int, prefill_tokens: int, decode_tokens: int,
                        context: int, runs: int = 3) -> dict:
    """Returns what `litert-lm benchmark` prints (its mean over `runs`, after a warm-up)."""
    args = [str(LITERT_LM), "benchmark", str(bundle), "--backend", "cpu",
            "--cpu-thread-count", str(threads), "-p", str(prefill_tokens),
            "-d", str(decode_tokens), "--max-num-tokens", str(context), "--runs", str(runs)]
    out, status, rss = run_measured(args)
    values = dict(re.findall(r"^(Prefill speed|Decode speed|Init time|Time to first token):"
                             r"\s+([\d.]+)", out, re.MULTILINE))
    if status or len(values) < 4:
        raise SystemExit(f"litert-lm benchmark failed (status {status}): "
                         f"{out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    return {"prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
            "prefill_tps": float(values["Prefill speed"]),
            "decode_tps": float(values["Decode speed"]),
            "init_s": float(values["Init time"]), "ttft_s": float(values["Time to first token"]),
            "peak_rss_mb": rss}


def add_llama_arguments(parser) -> None:
    """--llama-bench and --gguf, as `bench export` and `bench litertlm` take them."""
    parser.add_argument("--llama-bench", type=Path,
                        help="llama.cpp's llama-bench binary (../shared/anchors/llamacpp.sh paths)")
    parser.add_argument("--gguf", type=Path, nargs="*", default=[],
                        help="GGUF files of the same shape (Q8_0 is compared with int8, Q4_0 "
                             "with int4)")


def llama_arguments_problem(parser, args) -> bool:
    """Checks --llama-bench and --gguf; prints a one-line error and returns True if wrong."""
    if args.gguf and not args.llama_bench:
        parser.error("--gguf needs --llama-bench")
    for path in [args.llama_bench, *args.gguf] if args.llama_bench else []:
        if not path.is_file():
            print(f"error: {path} does not exist (build it: ../shared/anchors/llamacpp.sh paths)",
                  file=sys.stderr)
            return True
    return False
