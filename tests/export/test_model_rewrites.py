"""Rewrites of the converted streaming model, through prefill and decode across every attention
bucket: the float16 KV cache (same logits as float32 within a bound; refuses to rewrite
anything but attention) and shared subgraphs (identical logits, one copy of each branch)."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.export.graph import GPT2Graph, random_weights
from pipeline.export.half_cache import half_cache
from pipeline.export.shared_subgraphs import share_subgraphs
from pipeline.export.streaming_graph import StreamingModel
from pipeline.export.tflite import convert_saved_model, read_model, write_model
from pipeline.runtime.interpreter import StreamingInterpreter

CONTEXT = 300  # decode buckets 64, 128, 256, 300; prefill_32 buckets 256, 300


@pytest.fixture(scope="module")
def float32_model(tmp_path_factory):
    weights = random_weights(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
                             intermediate_dim=64, max_positions=CONTEXT, seed=3)
    module = StreamingModel(GPT2Graph(weights), CONTEXT, (32,))
    folder = tmp_path_factory.mktemp("streaming")
    tf.saved_model.save(module, str(folder), signatures=module.signatures())
    return convert_saved_model(folder, select_tf_ops=False)


def halved(flatbuffer: bytes) -> bytes:
    model = read_model(flatbuffer)
    half_cache(model)
    return write_model(model)


def run(flatbuffer: bytes, tokens, path) -> np.ndarray:
    """Prefills 32 tokens, then decodes the rest one by one; returns every decode's logits."""
    path.write_bytes(flatbuffer)
    runner = StreamingInterpreter(path)
    runner.prefill(tokens[:32])
    return np.stack([runner.decode_step(t, p) for p, t in enumerate(tokens) if p >= 32])


def test_float16_cache_logits_match_float32_across_buckets(float32_model, tmp_path):
    tokens = np.random.default_rng(0).integers(1, 64, size=CONTEXT - 20).tolist()
    # decode positions 32..279: buckets 64 to 300
    full = run(float32_model, tokens, tmp_path / "float32.tflite")
    half = run(halved(float32_model), tokens, tmp_path / "float16.tflite")
    assert np.isfinite(half).all()
    scale = np.abs(full).max()
    assert np.abs(half - full).max() <= 5e-4 * scale, np.abs(half - full).max() / scale  # 5e-5 here
    assert (half.argmax(-1) == full.argmax(-1)).mean() >= 0.97


def test_half_cache_refuses_a_branch_that_is_not_attention():
    class Branchy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def f(self, x, n):
            return tf.cond(n > 2, lambda: tf.exp(x), lambda: x * 2.0)

    module = Branchy()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    with pytest.raises(ValueError, match="runs EXP, which is not part of attention"):
        half_cache(read_model(converter.convert()))


def test_shared_subgraphs_give_identical_logits_with_one_copy_per_branch(float32_model,
                                                                         tmp_path):
    model = read_model(float32_model)
    before = len(model.subgraphs)
    share_subgraphs(model)
    # one layer's worth of branches is left: decode's buckets 64/128/256/300 are 3 nested
    # conds (6 branches), prefill_32's 256/300 one (2); plus the 2 signatures
    assert len(model.subgraphs) == 2 + 6 + 2 < before
    tokens = np.random.default_rng(1).integers(1, 64, size=CONTEXT - 20).tolist()
    shared = run(write_model(model), tokens, tmp_path / "shared.tflite")
    np.testing.assert_array_equal(shared, run(float32_model, tokens, tmp_path / "copies.tflite"))


def test_subgraphs_differing_in_a_constant_stay_apart():
    class TwoConds(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def f(self, x, n):
            a = tf.cond(n > 2, lambda: x * 2.0, lambda: x + 1.0)
            b = tf.cond(n > 3, lambda: a * 2.0, lambda: a + 1.0)   # the same as a's
            return tf.cond(n > 4, lambda: b * 3.0, lambda: b + 1.0)  # 3.0: not the same

    module = TwoConds()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    model = read_model(converter.convert())
    assert len(model.subgraphs) == 7
    assert share_subgraphs(model) == 3  # b's branches are a's; the last else too, not its then
    calls = [(op.builtinOptions.thenSubgraphIndex, op.builtinOptions.elseSubgraphIndex)
             for op in model.subgraphs[0].operators if op.builtinOptions is not None
             and hasattr(op.builtinOptions, "thenSubgraphIndex")]
    assert calls[0] == calls[1] and calls[2][0] not in calls[0] and calls[2][1] == calls[0][1]
