"""A bundle timed by our own passes, in a process that holds the runtime and nothing else.

No TensorFlow or Keras is imported here, so the process's peak RSS is what an app pays for the
runtime: Python itself (about 10 MB) and LiteRT-LM. Run as a child step (`child.json_step`):

    python -m pipeline.bench.bundle_passes WORK_DIR THREADS NEW_TOKENS CONTEXT OUT_JSON

WORK_DIR holds `model.litertlm` and `prompts.json` ({"32": text, "128": text}). Per prompt
length: one warm-up pass, then the best of three (prefill and decode tokens/s, time to first
token, from the runtime's own benchmark counters); also the time from start-up to the first
token (on a first launch XNNPACK packs the weights into its cache first). Then one session
fills the whole context (the longest prompt, then decoding to the last position), so the peak
RSS is the one at full context; the resident memory is split by what holds it, there and just
after the engine started.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from pipeline.bench.child import own_peak_rss_mb
from pipeline.bench.smaps import is_runtime_library, mappings
from pipeline.config import Sampling
from pipeline.runtime.litertlm import engine, sampler_config


def timed_pass(eng, prompt: str, new_tokens: int) -> dict:
    session = eng.create_session(apply_prompt_template=False,
                                 sampler_config=sampler_config(Sampling()),  # greedy
                                 max_output_tokens=new_tokens)
    session.run_prefill([prompt])
    pieces = sum(1 for _ in session.run_decode_async())
    info = session.get_benchmark_info()
    session.close()
    return {"ttft_s": info.time_to_first_token_in_second,
            "prefill_tokens": info.last_prefill_token_count,
            "prefill_tps": info.last_prefill_tokens_per_second,
            "decode_tokens": info.last_decode_token_count,
            "decode_tps": info.last_decode_tokens_per_second, "pieces": pieces}


def best_of(runs: list[dict]) -> dict:
    return {k: (min if k == "ttft_s" else max)(r[k] for r in runs) for k in runs[0]}


def memory_by_mapping() -> dict:
    """Resident MB of this process now, by what holds it: the packed weights (XNNPACK's cache
    file, mapped), the runtime library's pages, the bundle file itself, heap and anonymous
    memory (KV cache, tensor arenas, tokenizer), and the rest (Python, other libraries)."""
    groups: Counter = Counter()
    for m in mappings():
        group = ("packed_weights" if m.file.endswith(".xnnpack_cache") else
                 "runtime_library" if is_runtime_library(m.file) else
                 "bundle_file" if m.file.endswith(".litertlm") else
                 "heap_and_anonymous" if m.file in ("", "[heap]", "[stack]")
                 or m.file.startswith("[anon:") else "other")
        groups[group] += m.rss_kb
    return {k: round(v / 1024, 1) for k, v in groups.items()}


def run(work: Path, threads: int, new_tokens: int, context: int) -> dict:
    prompts = json.loads((work / "prompts.json").read_text())
    started = time.perf_counter()
    eng = engine(work / "model.litertlm", threads, max_tokens=context, cache_dir=work / "cache")
    init_s = time.perf_counter() - started  # on a first launch XNNPACK packs the weights
    try:
        at_start = memory_by_mapping()
        runs = {n: [timed_pass(eng, p, new_tokens) for _ in range(4)] for n, p in prompts.items()}
        longest = max(prompts, key=int)
        full = timed_pass(eng, prompts[longest], context - int(longest) - 2)
        memory = memory_by_mapping()  # while the engine still holds it
    finally:
        eng.close()
    first = next(iter(runs.values()))[0]
    return {"init_s": init_s, "first_token_s": init_s + first["ttft_s"],
            "passes": {n: best_of(r[1:]) for n, r in runs.items()},  # the first warms up
            "memory_at_start_mb": at_start, "memory_mb": memory,
            "full_context": {"tokens": full["prefill_tokens"] + full["decode_tokens"],
                             "decode_tps": full["decode_tps"]},
            "peak_rss_mb": own_peak_rss_mb()}


if __name__ == "__main__":
    work, threads, new_tokens, context, out = sys.argv[1:]
    Path(out).write_text(json.dumps(run(Path(work), int(threads), int(new_tokens),
                                        int(context))))
