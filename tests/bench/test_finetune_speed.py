"""`bench finetune` runs end to end on the tiny preset and reports every row it promises."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_bench_finetune_reports_packed_rows_and_mirrored_rows(tiny_preset, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "finetune", "--preset", str(tiny_preset),
         "--lengths", "32", "--batch", "4", "--steps", "2", "--out", str(tmp_path), "--corpus-mb", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "GPT2_PIPELINE_CPU_DEVICES"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "finetune.json").read_text())
    assert result["matmul_peak_gflops"] > 0
    rows = {(r["packing"], r["distribution"], r["replicas"]) for r in result["rows"]}
    assert rows == {(True, "none", 1), (False, "none", 1), (True, "mirrored", 2)}
    for r in result["rows"]:
        assert len(r["step_seconds"]) == 2 and 0 < r["mfu"] < 1
        # useful (non-padding) tokens are a part of all tokens
        assert r["useful_tokens_per_second"] <= r["tokens_per_second"] * (1 + 1e-9)
    packed = next(r for r in result["rows"] if r["packing"] and r["replicas"] == 1)
    rows_ = next(r for r in result["rows"] if not r["packing"])
    assert packed["flops_per_token"] == rows_["flops_per_token"]
    table = (tmp_path / "finetune.md").read_text()
    assert "| 32 | packed | none (1) |" in table and "| 32 | packed | mirrored (2) |" in table
    corpus = result["corpus"][0]
    assert corpus["tokenize"]["tokens"] == corpus["reuse"]["tokens"] > 100_000  # ~1 MB of text
    assert corpus["train"]["windows"] > 0 and corpus["train"]["peak_rss_mb"] > 0
    assert "| first tokenization s |" in table
