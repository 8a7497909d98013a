"""The streaming model: `prefill_<T>` and `decode` signatures over an external KV cache.

This is the contract of the LiteRT-LM runtime (read from its sources, 0.17/0.18):
  inputs   tokens int32 [1, T]; input_pos int32 [T]; mask float32 [1, 1, T, S]
           (0 = attend, large negative = masked; its last dim tells the runtime the
           context size S); kv_cache_k_<i>, kv_cache_v_<i> float32 [1, heads, S, head_dim]
           (float16 in quantized bundles: `half_cache.py` rewrites the converted model)
  outputs  every cache under the same name (the runtime binds one buffer in and out);
           `decode` (T = 1) also outputs logits float32 [1, 1, V]
The runtime pads unused prefill slots with token 0 at position 0, so cache writes go
contiguously from input_pos[0], never scattered by position. All shapes are static.
Builtin TFLite ops only; the weights are shared by all signatures and stored once.

Example:
    >>> module = StreamingModel(GPT2Graph(weights), context=256, prefill_lengths=(32, 128))
    >>> tf.saved_model.save(module, folder, signatures=module.signatures())
"""

from __future__ import annotations

import tensorflow as tf

# The runtime masks with -0.7 * FLT_MAX. Clamped to this, a masked score still gets
# exactly zero weight (exp underflows) and the mask stays finite in float16 (half_cache.py):
# as -inf it made rows that see nothing (the runtime's padding) NaN, and their NaN keys and
# values poisoned the cache.
MASKED = -30000.0


def cache_names(num_layers: int) -> list[str]:
    names = []
    for i in range(num_layers):
        names += [f"kv_cache_k_{i}", f"kv_cache_v_{i}"]
    return names


class StreamingModel(tf.Module):
    """One tf.function per signature: `decode` and `prefill_<T>` for each prefill length."""

    def __init__(self, graph, context: int, prefill_lengths):
        super().__init__(name="streaming")
        self.graph = graph
        self.context = context
        self.prefill_lengths = tuple(prefill_lengths)
        self.names = cache_names(graph.num_layers)
        # attention reads the smallest of these that holds the text so far (static shapes: a
        # dynamic slice would keep XNNPACK off the layers after it). Small first buckets: a
        # decode step reads the cache rows of its bucket, which for short texts cost as much
        # as a tenth of the int8 weights at 256 rows (64 and 128: decode +5-15% measured).
        self.buckets = [b for b in (64, 128, 256, 512) if b < context] + [context]

    def _specs(self, t: int) -> dict:
        cache_spec = (1, self.graph.num_heads, self.context, self.graph.head_dim)
        spec = {"tokens": tf.TensorSpec([1, t], tf.int32, name="tokens"),
                "input_pos": tf.TensorSpec([t], tf.int32, name="input_pos"),
                "mask": tf.TensorSpec([1, 1, t, self.context], tf.float32, name="mask")}
        spec.update({n: tf.TensorSpec(cache_spec, tf.float32, name=n) for n in self.names})
        return spec

    def prefill_buckets(self, t):
        # Fewer for prefill: each level adds IF subgraphs (file size), and a prompt chunk
        # costs far more than the rows it attends over.
        return [b for b in (256,) if t <= b < self.context] + [self.context]

    def _step(self, inputs, logits: bool):
        caches = [inputs[n] for n in self.names]
        positions = inputs["input_pos"]
        t = inputs["tokens"].shape[1]
        # Rows past start + T are empty: attention reads only the text so far.
        out_logits, new = self.graph.forward(
            tf.reshape(inputs["tokens"], [-1]), positions[0], caches,
            logits_for="last" if logits else None, positions=positions,
            mask=tf.maximum(inputs["mask"], MASKED), visible=positions[0] + t,
            buckets=self.buckets if t == 1 else self.prefill_buckets(t))
        outputs = dict(zip(self.names, new))
        if logits:
            outputs["logits"] = tf.reshape(out_logits, [1, 1, -1])
        return outputs

    def signatures(self) -> dict:
        sigs = {"decode": tf.function(lambda **kw: self._step(kw, True))
                .get_concrete_function(**self._specs(1))}
        for t in self.prefill_lengths:
            sigs[f"prefill_{t}"] = tf.function(
                lambda **kw: self._step(kw, False)).get_concrete_function(**self._specs(t))
        return sigs
