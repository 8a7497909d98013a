"""Streaming export to .litertlm, run by LiteRT-LM: parity with Keras and bad inputs."""

import json
import subprocess
import sys

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.export_stream import LOGIT_TOLERANCE, export_litertlm

from conftest import ROOT


def cfg(**export):
    return load_config(None, {"export": {"prefill_lengths": [16, 32], **export},
                              "finetune": {"sequence_length": 64}})


@pytest.fixture(scope="module")
def fp32_bundle(tiny_preset, tmp_path_factory):
    run = tmp_path_factory.mktemp("litertlm_fp32")
    return export_litertlm(cfg(quantization="none"), run, preset=str(tiny_preset), verbose=False)


@pytest.fixture(scope="module")
def int8_bundle(tiny_preset, tmp_path_factory):
    run = tmp_path_factory.mktemp("litertlm_int8")
    return export_litertlm(cfg(quantization="int8"), run, preset=str(tiny_preset), verbose=False)


def verification(result):
    return json.loads((result.bundle_path.parent / "verification.json").read_text())


def test_fp32_greedy_text_equals_keras(fp32_bundle):
    g = verification(fp32_bundle)["greedy"]
    assert g["matches"] == g["prompts"], [r for r in g["rows"] if not r["match"]]
    tokens = [r["prompt_tokens"] for r in g["rows"]]
    assert max(tokens) >= 96 - 8  # at the context limit (96 positions)
    assert any(32 < n < 80 for n in tokens)  # longer than the largest prefill: several chunks
    assert all(r["pieces"] >= 1 for r in g["rows"])


def test_fp32_decode_logits_match_keras(fp32_bundle):
    assert verification(fp32_bundle)["logits_max_abs_diff"] <= LOGIT_TOLERANCE


def test_bundle_tokenizer_ids_equal_keras_hub(fp32_bundle):
    t = verification(fp32_bundle)["tokenizer"]
    assert t["identical"] == t["strings"] >= 12
    texts = [r["text"] for r in t["rows"]]
    assert any("🍮" in s for s in texts) and any("  " in s for s in texts)
    assert any("\n\n" in s for s in texts)
    for row in t["rows"]:
        assert row["litertlm"] == row["keras"] == row["tokenizer_json"]
    folder = fp32_bundle.bundle_path.parent
    assert {"tokenizer.json", "vocab.json", "merges.txt"} <= {p.name for p in folder.iterdir()}


def test_int8_perplexity_within_3_percent(int8_bundle, fp32_bundle):
    p = verification(int8_bundle)["perplexity"]
    assert abs(p["relative_difference"]) <= 0.03 and p["examples"] >= 10
    m = int8_bundle.metrics
    assert m["weight_bytes"] < fp32_bundle.metrics["weight_bytes"] / 3
    assert m["weight_bytes"] <= m["parameters"] * 1.12 + 6000  # tied embedding stored once


def test_builtin_ops_only(int8_bundle):
    from pipeline.tflite_tools import op_report

    ops = op_report((int8_bundle.bundle_path.with_suffix(".tflite")).read_bytes())
    assert not ops["select_tf"] and not ops["custom"]
    assert "DYNAMIC_UPDATE_SLICE" in ops["builtin"] and "EMBEDDING_LOOKUP" in ops["builtin"]


def generate(bundle, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", "generate", str(bundle), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generate_streams_text(int8_bundle):
    proc = generate(int8_bundle.bundle_path, "Tomato soup.", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Tomato soup.") and len(proc.stdout.rstrip("\n")) > len("Tomato soup.")
    run_dir = int8_bundle.bundle_path.parent.parent.parent  # a run folder works too
    proc = generate(run_dir, "Bread", "--sampler", "top_k", "--top-k", "5", "--seed", "1",
                    "--max-new-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.startswith("Bread")


@pytest.mark.parametrize("args, message", [
    (["x " * 200], r"error: the prompt has \d+ tokens but the model's context is 96: shorten"),
    (["   "], "error: the prompt is empty"),
])
def test_generate_bad_prompts(int8_bundle, args, message):
    import re

    proc = generate(int8_bundle.bundle_path, *args)
    assert proc.returncode == 2
    assert re.match(message, proc.stderr.strip().splitlines()[-1])


def test_generate_unknown_bundle(tmp_path):
    proc = generate(tmp_path / "nope.litertlm", "hi")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope.litertlm'} does not exist: give a .litertlm file or a run folder")


def test_prefill_longer_than_context(tiny_preset, tmp_path):
    with pytest.raises(ConfigError, match="export.prefill_lengths: 128 is longer than the "
                                          "context 96"):
        export_litertlm(cfg(prefill_lengths=[16, 128]), tmp_path, preset=str(tiny_preset),
                        verbose=False)
    with pytest.raises(ConfigError, match="prime above 10"):
        export_litertlm(cfg(prefill_lengths=[17]), tmp_path, preset=str(tiny_preset),
                        verbose=False)
    assert not (tmp_path / "export").exists()
