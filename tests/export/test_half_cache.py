"""The float16 KV cache rewrite: same logits as the float32 cache through prefill and decode,
across every attention bucket; refuses to rewrite anything but attention."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.export.graph import GPT2Graph, random_weights
from pipeline.export.half_cache import half_cache
from pipeline.export.streaming_graph import StreamingModel
from pipeline.export.tflite import convert_saved_model
from pipeline.runtime.interpreter import StreamingInterpreter

CONTEXT = 300  # decode buckets 64, 128, 256, 300; prefill_32 buckets 256, 300


@pytest.fixture(scope="module")
def float32_model(tmp_path_factory):
    weights = random_weights(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
                             intermediate_dim=64, max_positions=CONTEXT, seed=3)
    module = StreamingModel(GPT2Graph(weights), CONTEXT, (32,))
    folder = tmp_path_factory.mktemp("half_cache")
    tf.saved_model.save(module, str(folder), signatures=module.signatures())
    return convert_saved_model(folder, select_tf_ops=False)


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
    half = run(half_cache(float32_model), tokens, tmp_path / "float16.tflite")
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
        half_cache(converter.convert())
