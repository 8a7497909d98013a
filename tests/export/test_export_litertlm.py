"""Streaming export to .litertlm, run by LiteRT-LM: parity with Keras and bad inputs."""

import json

import pytest
from ai_edge_litert.interpreter import Interpreter

from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.export.litertlm import export_litertlm
from pipeline.export.tflite import op_report
from pipeline.export.verify import LOGIT_TOLERANCE, enforce_bundle
from pipeline.train.loop import perplexity
from pipeline.train.presets import load_causal_lm, load_tokenizer
from pipeline.train.token_cache import open_corpus


def cfg(**export):
    return load_config(None, {"export": {"prefill_lengths": [16, 32], **export},
                              "finetune": {"sequence_length": 64}})


def export(tiny_preset, out, **settings):
    return export_litertlm(cfg(**settings), str(tiny_preset), out, verbose=False)


@pytest.fixture(scope="module")
def fp32_bundle(tiny_preset, tmp_path_factory):
    out = tmp_path_factory.mktemp("litertlm_fp32") / "litertlm"
    # every validation window (the tiny tokenizer makes 9,241 tokens of them): fine-tuning's
    return export(tiny_preset, out, quantization="none", perplexity_tokens=131072)


def verification(result):
    return json.loads((result.path.parent / "verification.json").read_text())


def test_fp32_greedy_text_equals_keras(fp32_bundle):
    g = verification(fp32_bundle)["greedy"]
    assert g["matches"] == g["prompts"], [r for r in g["rows"] if not r["match"]]
    tokens = [r["prompt_tokens"] for r in g["rows"]]
    assert max(tokens) >= 96 - 8  # at the context limit (96 positions)
    assert any(32 < n < 80 for n in tokens)  # longer than the largest prefill: several chunks
    assert all(r["pieces"] >= 1 for r in g["rows"])


# float32 round-off summed over every validation token (the logits agree to LOGIT_TOLERANCE):
# far below the 3% the quantized files are allowed.
PERPLEXITY_TOLERANCE = 1e-4


def test_fp32_perplexity_equals_keras_on_fine_tunings_windows(fp32_bundle, tiny_preset):
    p = verification(fp32_bundle)["perplexity"]
    assert abs(p["relative_difference"]) <= PERPLEXITY_TOLERANCE, p
    # The windows are fine-tuning's own validation sample (token cache, sequence_length 64):
    # Keras's perplexity over it, as fine-tuning computes it, is the reference the bundle met.
    c = cfg(quantization="none", perplexity_tokens=131072)
    tokenizer = load_tokenizer(str(tiny_preset))
    val = open_corpus(c.data, tokenizer, verbose=False).windows(
        "validation", c.finetune.sequence_length, c.data.packing).sample(c.data.validation_tokens)
    assert p["windows"] == len(val.y) >= 10 and p["tokens"] == int(val.w.sum())
    keras = perplexity(load_causal_lm(str(tiny_preset)), val.x, val.y, val.w)["perplexity"]
    assert p["keras_fp32"] == pytest.approx(keras, rel=1e-6)


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
    folder = fp32_bundle.path.parent
    assert {"tokenizer.json", "vocab.json", "merges.txt"} <= {p.name for p in folder.iterdir()}


def test_int8_perplexity_within_3_percent(int8_bundle, fp32_bundle):
    p = verification(int8_bundle)["perplexity"]
    assert abs(p["relative_difference"]) <= 0.03 and p["windows"] >= 10
    m = int8_bundle.metrics
    assert m["weight_bytes"] < fp32_bundle.metrics["weight_bytes"] / 3
    assert m["weight_bytes"] <= m["parameters"] * 1.12 + 6000  # tied embedding stored once


def test_int4_perplexity_within_3_percent(tiny_preset, tmp_path, kitchen_paragraphs,
                                         int8_bundle):
    int4 = export(tiny_preset, tmp_path / "litertlm", quantization="int4")
    p = verification(int4)["perplexity"]
    assert abs(p["relative_difference"]) <= 0.03 and p["windows"] >= 10
    assert int4.metrics["weight_bytes"] < int8_bundle.metrics["weight_bytes"]
    assert {t for *_, t in cache_types(int4)} == {"float16"}


def test_a_quantized_bundle_3_percent_off_is_rejected(int8_bundle):
    v = verification(int8_bundle)
    v["perplexity"] = {**v["perplexity"], "tflite": 105.0, "keras_fp32": 100.0,
                       "relative_difference": 0.05}
    for mode in ("int8", "int4", "fp16"):
        with pytest.raises(PipelineError, match=f"{mode} perplexity 105.00 is more than 3%"):
            enforce_bundle(v, mode)
    exact = {**v, "logits_max_abs_diff": 0.0,
             "greedy": {**v["greedy"], "matches": v["greedy"]["prompts"]}}
    enforce_bundle(exact, "none")  # fp32 is held to exact text and logits instead


def cache_types(bundle) -> set:
    """(signature, "in"/"out", dtype) of every kv_cache_* input and output."""
    interpreter = Interpreter(model_path=str(bundle.path.with_suffix(".tflite")))
    found = set()
    for name in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(name)
        for side, details in (("in", runner.get_input_details()),
                              ("out", runner.get_output_details())):
            found |= {(name, side, d["dtype"].__name__) for n, d in details.items()
                      if n.startswith("kv_cache_")}
    return found


def test_quantized_bundles_keep_a_float16_cache(int8_bundle, fp32_bundle):
    # half the cache memory; parity above: int8 perplexity within 3%, fp32 token-exact
    assert {t for *_, t in cache_types(int8_bundle)} == {"float16"}
    assert {t for *_, t in cache_types(fp32_bundle)} == {"float32"}
    assert {(name, side) for name, side, _ in cache_types(int8_bundle)} == {
        (name, side) for name in ("decode", "prefill_16", "prefill_32") for side in ("in", "out")}


def test_builtin_ops_only(int8_bundle):
    ops = op_report((int8_bundle.path.with_suffix(".tflite")).read_bytes())
    assert not ops["select_tf"] and not ops["custom"]
    assert "DYNAMIC_UPDATE_SLICE" in ops["builtin"] and "EMBEDDING_LOOKUP" in ops["builtin"]


def test_bundle_runtime_is_computed_from_its_operators(int8_bundle, fp32_bundle):
    from pipeline.export.op_versions import BUNDLE_RUNTIME, metadata_runtime, needing_newer

    path = int8_bundle.path.with_suffix(".tflite")
    runtime = int8_bundle.metrics["minimum_runtime"]
    # per-row int8 tables (the lookup's version 4) and the float16 cache's in-place update:
    # both in LiteRT-LM's runtime
    assert runtime["operators"]["EMBEDDING_LOOKUP v4"] == "2.18.0"
    assert runtime["operators"]["DYNAMIC_UPDATE_SLICE v3"] == "2.19.0" == runtime["tflite"]
    assert metadata_runtime(path.read_bytes()) == "2.19.0"
    assert needing_newer(runtime, BUNDLE_RUNTIME) == {}
    assert "EMBEDDING_LOOKUP v1" in fp32_bundle.metrics["minimum_runtime"]["operators"]


def test_prefill_longer_than_context(tiny_preset, tmp_path):
    with pytest.raises(ConfigError, match="export.prefill_lengths: 128 is longer than the "
                                          "context 96"):
        export(tiny_preset, tmp_path / "litertlm", prefill_lengths=[16, 128])
    with pytest.raises(ConfigError, match="prime above 10"):
        export(tiny_preset, tmp_path / "litertlm", prefill_lengths=[17])
    assert not (tmp_path / "litertlm").exists()



def test_a_truncated_bundle_is_refused_before_the_runtime_sees_it(fp32_bundle, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    from pipeline.errors import PipelineError
    from pipeline.runtime.litertlm import check_bundle

    whole = fp32_bundle.path.read_bytes()
    assert check_bundle(fp32_bundle.path) == fp32_bundle.path  # a whole one is fine
    cut = tmp_path / "cut.litertlm"
    cut.write_bytes(whole[:len(whole) // 2])  # a copy that stopped half-way
    with pytest.raises(PipelineError, match=r"cut.litertlm is not a complete .litertlm bundle "
                                            r"\(section \d+ spans bytes \d+-\d+, the file has"):
        check_bundle(cut)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "generate", str(cut), "Soup."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2  # not 134 from an abort inside the runtime
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {cut} is not a complete")
