"""The float16 KV cache rewrite: same logits as the float32 cache through prefill and decode,
across every attention bucket; refuses to rewrite anything but attention."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from pipeline.export.graph import GPT2Graph, random_weights
from pipeline.export.half_cache import half_cache
from pipeline.export.streaming_graph import StreamingModel
from pipeline.export.tflite import convert_saved_model
from pipeline.runtime.interpreter import NEG

CONTEXT = 300  # decode buckets 64, 128, 256, 300; prefill_32 buckets 256, 300


@pytest.fixture(scope="module")
def float32_model(tmp_path_factory):
    weights = random_weights(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
                             intermediate_dim=64, max_positions=CONTEXT, seed=3)
    module = StreamingModel(GPT2Graph(weights), CONTEXT, (32,))
    folder = tmp_path_factory.mktemp("half_cache")
    tf.saved_model.save(module, str(folder), signatures=module.signatures())
    return convert_saved_model(folder, select_tf_ops=False)


def mask(positions) -> np.ndarray:
    m = np.full((1, 1, len(positions), CONTEXT), NEG, np.float32)
    for row, p in enumerate(positions):
        m[0, 0, row, : p + 1] = 0.0
    return m


def run(flatbuffer: bytes, tokens) -> np.ndarray:
    """Prefills 32 tokens, then decodes the rest one by one; returns every decode's logits."""
    interpreter = Interpreter(model_content=flatbuffer, num_threads=2)
    prefill = interpreter.get_signature_runner("prefill_32")
    decode = interpreter.get_signature_runner("decode")
    inputs = decode.get_input_details()
    caches = {n: np.zeros(d["shape"], d["dtype"]) for n, d in inputs.items()
              if n.startswith("kv_cache_")}
    caches = {n: v for n, v in prefill(tokens=np.array([tokens[:32]], np.int32),
                                       input_pos=np.arange(32, dtype=np.int32),
                                       mask=mask(range(32)), **caches).items() if n in caches}
    logits = []
    for p in range(32, len(tokens)):
        out = decode(tokens=np.array([[tokens[p]]], np.int32),
                     input_pos=np.array([p], np.int32), mask=mask([p]), **caches)
        caches = {n: out[n] for n in caches}
        logits.append(out["logits"][0, 0])
    return np.stack(logits)


def test_float16_cache_logits_match_float32_across_buckets(float32_model):
    tokens = np.random.default_rng(0).integers(1, 64, size=CONTEXT - 20).tolist()
    full = run(float32_model, tokens)  # decode positions 32..279: buckets 64 to 300
    half = run(half_cache(float32_model), tokens)
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
