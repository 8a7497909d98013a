"""The one-shot text model's speed as an app gets it, beside the bundle and llama.cpp.

Part of `python -m pipeline bench export`. At GPT-2 base shape (`gpt2_base.py`), per
quantization mode (int8, int4) and per thread count (1, 2), in one run:
  - the text model in TFLite 2.16.1's interpreter with the Flex delegate (`.venv-flex`, the
    runtime of the stock select-TF-ops AAR), created and called as an app does
    (`runtime/flex_child.py`): the first call (interpreter creation included), then the best
    of three warm calls, for a 32-token prompt and 64 or 256 new tokens (`max_length`
    = 1 + 32 + new tokens: the file generates to its limit, random weights never stop it);
    new tokens/s = new tokens / the whole call (its prompt is read one token per step, inside);
  - the bundle of the same weights and mode in LiteRT-LM (`bundle_passes.py`): decode
    tokens/s after a 32-token prompt, best of three;
  - llama.cpp's decode (`llama-bench -n`), Q8_0 beside int8 and Q4_0 beside int4.
The target: the text model at >= 1.0x the bundle's decode at every thread count.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pipeline.bench import gpt2_base, yardsticks
from pipeline.bench.child import required_step, run_measured
from pipeline.bench.litertlm_speed import SELF as BUNDLE_EXPORT, prompt_with_tokens

PROMPT_TOKENS = 32
NEW_TOKENS = (64, 256)
CONTEXT = 512  # the bundle's: holds the longest prompt and generation
WARM_CALLS = 3


def text_passes(flex_python: Path, model: Path, prompt: str, threads: int) -> dict:
    """First call and best warm call of the text model in the 2.16 interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        prompts.write_text(json.dumps([prompt] * (1 + WARM_CALLS)))
        _, status, rss = run_measured([str(flex_python), "-m", "pipeline.runtime.flex_child",
                                       str(model), str(prompts), str(out), str(threads)],
                                      env={"TF_CPP_MIN_LOG_LEVEL": "3"})
        if status:
            raise SystemExit(f"the text model failed in the Flex interpreter (status {status})")
        report = json.loads(out.read_text())
    return {"first_call_s": report["load_seconds"] + report["seconds"][0],
            "warm_call_s": min(report["seconds"][1:]),
            "worst_warm_call_s": max(report["seconds"][1:]),
            "tensorflow": report["tensorflow"], "text": report["outputs"][-1],
            "peak_rss_mb": rss}


def bench_mode(work: Path, preset: str | None, mode: str, threads_list, flex_python: Path,
               llama_bench: Path | None, gguf: Path | None) -> dict:
    tokenizer, _ = gpt2_base.tokenizer_and_weights(preset) if preset else (
        gpt2_base.gpt2_tokenizer(), None)
    prompt = prompt_with_tokens(tokenizer, PROMPT_TOKENS)
    files = {}
    for new in NEW_TOKENS:
        path = work / f"text_{mode}_{new}.tflite"
        print(f"[{mode}] exporting the text model for {new} new tokens ...", flush=True)
        required_step("pipeline.bench.export_size", [mode, path, preset or "",
                                                     1 + PROMPT_TOKENS + new])
        files[new] = path
    bundle_dir = work / f"bundle_{mode}"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{mode}] exporting the bundle ...", flush=True)
    required_step(BUNDLE_EXPORT, ["_export", bundle_dir, preset or "", mode, CONTEXT])
    # the bundle's prompts.json holds its 32- and 128-token prompts: decode after the 32
    rows = []
    for threads in threads_list:
        row = {"mode": mode, "threads": threads, "text": {}, "bundle": {}, "llama_cpp": {}}
        for new, path in files.items():
            print(f"[{mode}] {threads} thread(s): text model, {new} new tokens ...", flush=True)
            passes = text_passes(flex_python, path, prompt, threads)
            # the file generates to its limit (random weights never stop it): re-tokenizing
            # the text may merge or split tokens (more or a few fewer than were made); only a
            # text much shorter than that is an early stop
            counted = len(tokenizer(passes.pop("text"))) - len(tokenizer(prompt))
            made = new if counted >= new - 4 else counted
            passes.update(new_tokens=made, new_tokens_per_s=made / passes["warm_call_s"],
                          worst_new_tokens_per_s=made / passes["worst_warm_call_s"])
            row["text"][str(new)] = passes
            print(f"[{mode}] {threads} thread(s): bundle, {new} new tokens ...", flush=True)
            bundle = required_step("pipeline.bench.bundle_passes",
                                   [bundle_dir, threads, new, CONTEXT])
            row["bundle"][str(new)] = {"decode_tps": bundle["passes"][str(PROMPT_TOKENS)][
                "decode_tps"], "peak_rss_mb": bundle["peak_rss_mb"]}
            if llama_bench and gguf:
                ll = yardsticks.llama_bench(llama_bench, gguf, threads, (PROMPT_TOKENS,), new)
                row["llama_cpp"][str(new)] = {"file": gguf.name, "decode_tps": ll["decode_tps"]}
        row["text_vs_bundle"] = {n: t["new_tokens_per_s"] / row["bundle"][n]["decode_tps"]
                                 for n, t in row["text"].items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(work / f"bundle_{mode}")
    for path in files.values():
        path.unlink()
        Path(str(path) + ".json").unlink(missing_ok=True)
    return rows


def bench_speed(out_dir: Path, preset: str | None, modes, threads_list, flex_python: Path,
                llama_bench: Path | None = None, ggufs=()) -> dict:
    work = out_dir / "text-speed-work"
    work.mkdir(parents=True, exist_ok=True)
    by_mode = {yardsticks.quantization_of(g): g for g in ggufs}
    rows = []
    for mode in modes:
        rows += bench_mode(work, preset, mode, threads_list, flex_python, llama_bench,
                           by_mode.get(mode))
    shutil.rmtree(work)
    meets = {f"{r['mode']} text model >= 1.0x the bundle's decode, {r['threads']} thread(s)":
             min(r["text_vs_bundle"].values()) >= 1.0 for r in rows}
    return {"prompt_tokens": PROMPT_TOKENS, "new_tokens": list(NEW_TOKENS), "rows": rows,
            "meets": meets}


def markdown(result: dict) -> str:
    lines = [f"Text model (TFLite {result['rows'][0]['text']['64']['tensorflow']} with Flex) "
             f"beside the bundle (LiteRT-LM) and llama.cpp, {result['prompt_tokens']}-token "
             "prompt, new tokens/s", "",
             "| mode | threads | new tokens | text first call s | text tok/s (worst) | "
             "bundle decode tok/s | llama.cpp decode tok/s | text / bundle |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for n, t in r["text"].items():
            ll = r["llama_cpp"].get(n)
            llama = f"{ll['decode_tps']:.0f}" if ll else ""
            lines.append(
                f"| {r['mode']} | {r['threads']} | {t['new_tokens']} | {t['first_call_s']:.2f} "
                f"| {t['new_tokens_per_s']:.0f} ({t['worst_new_tokens_per_s']:.0f}) | "
                f"{r['bundle'][n]['decode_tps']:.0f} | "
                f"{llama} | "
                f"{r['text_vs_bundle'][n]:.2f}x |")
    lines += ["", "Targets: " + "; ".join(f"{k}: {'yes' if v else 'NO'}"
                                         for k, v in result["meets"].items())]
    return "\n".join(lines) + "\n"
