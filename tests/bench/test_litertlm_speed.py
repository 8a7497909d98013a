"""`bench litertlm` against llama.cpp: reading llama-bench, ratios, targets, the table.

llama.cpp is built outside the project (../shared/anchors/llamacpp.sh, 8 minutes), so a
stand-in script prints what `llama-bench -o json` prints (the fields we read, as llama.cpp
0.3.36's llama-bench writes them)."""

import sys

import pytest

from pipeline.bench import yardsticks
from pipeline.bench.litertlm_speed import against_llama_cpp, markdown

RECORDS = [{"model_filename": "m.gguf", "n_prompt": 32, "n_gen": 0, "avg_ts": 640.0,
            "build_commit": "0c1e570"},
           {"model_filename": "m.gguf", "n_prompt": 128, "n_gen": 0, "avg_ts": 700.0,
            "build_commit": "0c1e570"},
           {"model_filename": "m.gguf", "n_prompt": 0, "n_gen": 64, "avg_ts": 160.0,
            "build_commit": "0c1e570"}]


@pytest.fixture
def fake_llama_bench(tmp_path):
    script = tmp_path / "llama-bench"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"assert sys.argv[sys.argv.index('-p') + 1] in ('32,128', '0')\n"
                      f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                      f"print(json.dumps({RECORDS!r}))\n")
    script.chmod(0o755)
    gguf = tmp_path / "gpt2-124M-random-Q8_0.gguf"
    gguf.write_bytes(b"\0" * 1000)
    return script, gguf


def bundle(prefill32, prefill128, decode, cli_decode, rss=120.0, file_mb=129.9,
           full=None):
    run = {"prefill_tps": 0.0, "decode_tps": 0.0}
    ours = {"32": {**run, "prefill_tps": prefill32, "decode_tps": decode},
            "128": {**run, "prefill_tps": prefill128, "decode_tps": decode}}
    cli = {n: {"prefill_tps": ours[n]["prefill_tps"], "decode_tps": cli_decode, "init_s": 0.1,
               "peak_rss_mb": 400.0} for n in ours}
    return {"file_mb": file_mb, "peak_rss_mb": rss, "first_token_s": 0.2,
            "first_launch": {"first_token_s": 0.5, "peak_rss_mb": 160.0}, "ours": ours,
            "litert_lm_benchmark": cli,
            "memory_mb": {"packed_weights": 60.0, "runtime_library": 17.0},
            "memory_at_start_mb": {"packed_weights": 0.1, "runtime_library": 5.0},
            "full_context": {"tokens": 1023, "decode_tps": 70.0},
            "memory_full_context_mb": full or {}}


def test_llama_bench_is_read_per_prompt_length(fake_llama_bench):
    script, gguf = fake_llama_bench
    row = yardsticks.llama_bench(script, gguf, 2, (32, 128), 64)
    assert row["quantization"] == "int8" and row["file_mb"] == pytest.approx(0.001)
    assert row["prefill_tps"] == {"32": 640.0, "128": 700.0} and row["decode_tps"] == 160.0
    assert row["peak_rss_mb"] > 0
    assert yardsticks.quantization_of(gguf.with_name("x-Q4_0.gguf")) == "int4"
    full = yardsticks.llama_bench(script, gguf, 2, (32, 128), 64, context=1024)
    calls = (script.parent / "calls.txt").read_text().splitlines()
    assert "-p 0 -n 0 -pg 960,64 -r 1" in calls[-1]  # one run that fills the context
    assert full["peak_rss_mb"] > 0 and full["peak_rss_short_mb"] > 0
    assert set(full["memory_full_context_mb"]) <= {"rss_mb", "private_mb", "file_backed_mb",
                                                   "pss_mb"}  # {} if it ended before a poll


def test_ratios_and_targets_are_against_llama_cpp(fake_llama_bench):
    script, gguf = fake_llama_bench
    result = {"model": "m", "threads": 2, "context": 1024, "new_tokens": 64,
              "read_bandwidth_gbs": 30.0,
              "bundles": {"int8": bundle(320.0, 770.0, 176.0, cli_decode=140.0, full={
                  "rss_mb": 118.0, "private_mb": 80.0, "file_backed_mb": 38.0, "pss_mb": 110.0})},
              "llama_cpp": [yardsticks.llama_bench(script, gguf, 2, (32, 128), 64)]}
    result["llama_cpp"][0]["memory_full_context_mb"] = {
        "rss_mb": 209.0, "private_mb": 70.0, "file_backed_mb": 139.0, "pss_mb": 150.0}
    ratios, meets = against_llama_cpp(result)
    ours = ratios["bundle int8, our passes"]
    assert ours == pytest.approx({"prefill_32": 0.5, "prefill_128": 1.1, "decode": 1.1})
    assert meets["int8 vs Q8_0: decode and prefill >= 1.0x"] is False  # prefill 32 is 0.5x
    assert meets["litert-lm benchmark int8 decode >= 150 tokens/s"] is False
    # what an app pays, from our lean child (not the CLI): more private memory than
    # llama.cpp's (80 > 70 MB), less PSS (110 < 150 MB)
    assert meets["int8 private memory <= llama.cpp Q8_0's, context 1024 filled"] is False
    assert meets["int8 PSS <= llama.cpp Q8_0's, context 1024 filled"] is True
    result["ratios"], result["meets"] = ratios, meets
    table = markdown(result)
    assert "| llama.cpp Q8_0 | 0.0 | 640 | 700 | 160.0 |" in table
    assert "| bundle int8, our passes | 129.9 | 320 | 770 | 176.0 | 120 | 0.50x / 1.10x / 1.10x |" in table
    assert "| llama.cpp Q8_0 | 70 | 139 | 150 |" in table
    assert "| bundle int8, our passes | 80 | 38 | 110 | 120 |" in table
    assert ("resident MB at 1023 tokens: packed weights 60, runtime library 17 (runtime library "
            "just after start-up: 5)") in table
    assert "start-up to first token 0.50 s on a first launch" in table
