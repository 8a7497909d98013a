"""Export to a .tflite text model: every quantization mode, parity in the Flex interpreter."""

import json
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError, PresetError
from pipeline.export import op_versions, tflite
from pipeline.export.stage import export_preset
from pipeline.export.text import export_text_model

from conftest import ROOT


def cfg(**export):
    return load_config(None, {"export": {"max_length": 32, **export}})


@pytest.fixture(scope="module")
def tiny_source(tiny_preset):
    return str(tiny_preset)  # exporters load the model themselves, from the preset


@pytest.fixture(scope="module")
def fp32_export(tiny_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_fp32") / "text"
    return export_text_model(cfg(quantization="none"), tiny_source, out, verbose=False)


@pytest.mark.slow  # runs the file in the Flex interpreter
def test_fp32_text_equals_keras_greedy_in_flex_interpreter(fp32_export):
    v = json.loads((fp32_export.path.parent / "verification.json").read_text())
    assert v["reference"] == "keras" and v["tensorflow"] == "2.16.1"  # the stock AAR's runtime
    assert v["matches"] == v["prompts"] >= 7, [r for r in v["rows"] if not r["match"]]
    prompts = [r["prompt"] for r in v["rows"]]
    assert "" in prompts and any("🍮" in p and "è" in p for p in prompts)
    assert any("  " in p and "\n" in p for p in prompts) and any("中文" in p for p in prompts)
    assert v["tensorflow_text_loaded"] is False  # stock kernels only: TF-Text never imported
    # Near the limit the continuation is (almost) empty; past it the prompt is truncated.
    near, too_long = v["rows"][-2], v["rows"][-1]
    assert len(near["tflite"]) - len(near["prompt"]) < 40
    assert too_long["tflite"] != too_long["prompt"] and too_long["prompt"].startswith(
        too_long["tflite"][:20])
    for row in v["rows"]:
        assert row["tflite"].startswith(row["prompt"][:10])


def float_constant_bytes(path):
    """Returns (bytes of float32 constant buffers, sizes of them), each buffer counted once."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    used = {t.buffer for sg in model.subgraphs for t in sg.tensors
            if t.type == fu.schema_fb.TensorType.FLOAT32}
    sizes = [len(model.buffers[b].data) for b in used if model.buffers[b].data is not None]
    return sum(sizes), sorted(sizes, reverse=True)


def test_fp32_file_holds_each_weight_once(fp32_export):
    m = fp32_export.metrics
    weights = 4 * m["parameters"]
    total, sizes = float_constant_bytes(fp32_export.path)
    # Every weight once, plus a few KB of graph constants (masks, cache shapes); a second
    # copy of the tied embedding would add 400 x 32 x 4 = 51,200 bytes.
    assert weights <= total <= weights + 8192, (total, weights)
    assert sizes[0] == 400 * 32 * 4 and sizes.count(400 * 32 * 4) == 1
    assert m["embedding_lookups"] == 2  # token and position tables
    ops = json.loads((fp32_export.path.parent / "ops.json").read_text())
    assert "EMBEDDING_LOOKUP" in ops["builtin"] and "GATHER" in ops["builtin"]
    assert "RegexSplitWithOffsets" not in ops["select_tf"]
    assert all(hasattr(tf.raw_ops, op) for op in ops["select_tf"])  # no TF-Text op
    assert not [op for op in ops["select_tf"] if "Table" in op]  # no hash table
    assert tflite.outside_stock_runtime(ops["select_tf"]) == []  # all in the stock allowlist
    ops_md = (fp32_export.path.parent / "ops.md").read_text()
    assert "none is a TF-Text op" in ops_md and "RegexSplit" not in ops_md
    assert "tensorflow-lite-select-tf-ops:2.16.1" in ops_md
    assert (fp32_export.path.parent / "README.md").is_file()


def assert_runs_on_the_stock_runtime(result):
    """The computed minimum runtime is within README's Android/iOS versions, the file says
    the same, and ops.md and the metrics carry it."""
    runtime = result.metrics["minimum_runtime"]
    assert op_versions.version_tuple(runtime["tflite"]) <= (2, 16, 1), runtime
    assert op_versions.needing_newer(runtime, "2.16.1") == {}
    assert runtime["declared_in_file"] == runtime["tflite"] == op_versions.metadata_runtime(
        result.path.read_bytes())
    assert "org.tensorflow:tensorflow-lite-select-tf-ops:2.16.1" in runtime["android"]
    ops_md = (result.path.parent / "ops.md").read_text()
    assert f"Minimum TFLite runtime: **{runtime['tflite']}**" in ops_md
    assert "EMBEDDING_LOOKUP v4" not in ops_md


def test_fp32_file_runs_on_the_stock_runtime(fp32_export):
    assert_runs_on_the_stock_runtime(fp32_export)


def test_weightless_file_fails_the_size_check(fp32_export):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(fp32_export.path))
    for buffer in model.buffers:  # drop the large constants, as from_concrete_functions did
        if buffer.data is not None and len(buffer.data) > 10_000:
            buffer.data = None
    parameters = fp32_export.metrics["parameters"]
    with pytest.raises(PipelineError, match="weights missing or duplicated"):
        tflite.check_size(model, parameters, "none")
    whole = fu.read_model(str(fp32_export.path))
    tflite.check_size(whole, parameters, "none")
    with pytest.raises(PipelineError, match="weights missing or duplicated"):  # as if doubled
        tflite.check_size(whole, int(parameters * 0.7), "none")


TABLES = 400 * 32 + 96 * 32  # the tiny model's token and position tables


@pytest.mark.parametrize("mode, ratio", [pytest.param("fp16", 0.5, marks=pytest.mark.slow),
                                         ("int8", 0.25),
                                         pytest.param("int4", 0.125, marks=pytest.mark.slow)])
def test_quantized_modes_run_on_the_stock_runtime_and_shrink(tiny_source, tmp_path, fp32_export,
                                                             mode, ratio):
    result = export_text_model(cfg(quantization=mode), tiny_source, tmp_path / "text", verbose=False)
    m = result.metrics
    expected = 4 * m["parameters"] * ratio
    if mode == "int4":  # its looked-up tables stay int8: TFLite 2.16 has no int4 lookup
        expected += TABLES * (1 - 0.5)
    # Biases, LayerNorm and scales stay float32 (about 5 KB in this tiny model); a second
    # copy of the embedding would add 400 x 32 x ratio x 4 bytes (12.8 KB at int8).
    assert expected <= m["weight_bytes"] <= expected * 1.12 + 6000, (m["weight_bytes"], expected)
    assert m["size_bytes"] < fp32_export.metrics["size_bytes"]
    assert_runs_on_the_stock_runtime(result)
    v = json.loads((result.path.parent / "verification.json").read_text())
    assert v["tensorflow"] == "2.16.1" and v["tensorflow_text_loaded"] is False
    # quantized: may differ from Keras; on this model at most one prompt does
    assert v["prompts"] >= 7 and v["matches"] >= v["prompts"] - 1, v["rows"]
    assert len(m["verification"]["first_differences"]) == v["prompts"]
    # every hybrid matrix product quantizes its input rows asymmetrically, as newer runtimes'
    # XNNPACK does: what keeps the 2.19 texts in 2.16 (row_scales.asymmetric_inputs)
    from pipeline.export.row_scales import OPS, TYPES
    from pipeline.export.tflite import builtin_code, read_model
    model = read_model(result.path.read_bytes())
    flags = [op.builtinOptions.asymmetricQuantizeInputs for sg in model.subgraphs
             for op in sg.operators
             if builtin_code(model.operatorCodes[op.opcodeIndex]) == OPS.FULLY_CONNECTED
             and sg.tensors[int(op.inputs[1])].type in (TYPES.INT8, TYPES.INT4)]
    if mode != "fp16":  # (fp16 weights are dequantized: no hybrid kernel)
        assert len(flags) >= 2 * 4 + 1 and all(flags)  # 4 per block, and the logits


def test_a_text_model_needing_a_newer_runtime_fails_the_export(tiny_source, tmp_path, monkeypatch):
    from pipeline.export import text

    monkeypatch.setattr(text, "scales_in_graph", lambda model: 0)  # keep per-row scales
    with pytest.raises(PipelineError, match=r"^the int8 text model needs TFLite 2\.18\.0, newer "
                                            r"than the runtime it must run on \(2\.16\.1\): "
                                            r"EMBEDDING_LOOKUP v4 needs TFLite 2\.18\.0"):
        export_text_model(cfg(quantization="int8", verify=False), tiny_source, tmp_path / "text",
                          verbose=False)
    assert not (tmp_path / "text").exists()


@pytest.mark.slow  # runs the file in the Flex interpreter
def test_top_k_export_matches_tensorflow_graph(tiny_source, tmp_path):
    result = export_text_model(cfg(quantization="none", sampler="top_k", top_k=5, seed=3,
                                   temperature=0.7, prompts=["Tomato soup.", "Bread"]),
                               tiny_source, tmp_path / "text", verbose=False)
    v = result.metrics["verification"]
    assert v["reference"] == "tensorflow" and v["matches"] == 2


def test_max_length_above_position_limit(tiny_source, tmp_path):
    with pytest.raises(ConfigError, match="export.max_length: 500 is above the model's position "
                                          "limit 96"):
        export_text_model(cfg(max_length=500), tiny_source, tmp_path / "text", verbose=False)
    assert not (tmp_path / "text").exists()


def test_preset_without_weights(tiny_preset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_preset.iterdir():
        if f.is_file() and f.name != "model.weights.h5":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PresetError, match="no model.weights.h5"):
        export_preset(cfg(), tmp_path / "run", preset=str(broken), verbose=False)
    assert not (tmp_path / "run").exists()


def test_unknown_quantization_is_one_line_cli_error(tmp_path, tiny_preset):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "export", "--preset", str(tiny_preset), "--run-dir",
         str(tmp_path / "run"), "--set", "export.quantization=int3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: export.quantization: 'int3' is not one of none, fp16, int8, int4")
    assert not (tmp_path / "run").exists()


def test_an_op_outside_the_stock_runtime_fails_the_export(tiny_source, tmp_path, monkeypatch):
    from pipeline.export import text

    assert tflite.outside_stock_runtime(["MatMul", "RegexSplitWithOffsets", "HashTableV2"]) == [
        "HashTableV2", "RegexSplitWithOffsets"]
    real = text.op_report
    monkeypatch.setattr(text, "op_report", lambda flatbuffer: {
        **real(flatbuffer), "select_tf": {"MatMul": 1, "RegexSplitWithOffsets": 1}})
    with pytest.raises(PipelineError, match=r"runtime lacks \(RegexSplitWithOffsets\)"):
        export_text_model(cfg(verify=False), tiny_source, tmp_path / "text", verbose=False)
    assert not (tmp_path / "text").exists()
