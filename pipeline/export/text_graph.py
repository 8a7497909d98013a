"""The one-shot text model: prompt string in, prompt + generated text out, all in one graph.

This is what the classic KerasNLP on-device recipe produced, rebuilt so that it traces on
today's stack: keras-hub's tokenization rebuilt from ops the stock runtime carries
(`CoreTokenizer`), then a `tf.while_loop` over `GPT2Graph.forward` (one token per step, static
shapes, per-layer KV caches), then detokenization in the same graph. `max_length` counts every token including the start token, as
`GPT2CausalLM.generate(max_length=...)` does; a prompt longer than that is truncated.

Example:
    >>> module = TextModel(tokenizer, GPT2Graph(weights), Sampling(), max_length=64)
    >>> module.serve(tf.constant("Tomato soup."))["text"]
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from pipeline.config import Sampler, Sampling
from pipeline.export.core_string_ops import CoreTokenizer


def next_token(logits, step, sampling: Sampling):
    """Returns the next token id (int32 scalar) from (V,) logits, as a TF graph."""
    if sampling.sampler == Sampler.GREEDY:
        return tf.cast(tf.argmax(logits), tf.int32)
    logits = logits / sampling.temperature
    if sampling.sampler == Sampler.TOP_K:
        values, indices = tf.math.top_k(logits, k=sampling.top_k)
    else:
        values, indices = tf.math.top_k(logits, k=tf.shape(logits)[0])  # sorted, descending
        probs = tf.nn.softmax(values)
        before = tf.cumsum(probs, exclusive=True)
        values = tf.where(before < sampling.top_p, values, tf.fill(tf.shape(values), -1e9))
    seed = tf.stack([tf.constant(sampling.seed, tf.int32), tf.cast(step, tf.int32)])
    choice = tf.random.stateless_categorical(values[None], 1, seed=seed, dtype=tf.int32)[0, 0]
    return tf.gather(indices, choice)


class TextModel(tf.Module):
    """`serve(prompt) -> {"text": prompt + continuation}` as one tf.function."""

    def __init__(self, tokenizer, graph, sampling: Sampling, max_length: int):
        super().__init__(name="text_model")
        # Only ids and the core-op tokenizer: a keras-hub tokenizer attribute would carry its
        # hash tables (and their initializers) into the SavedModel and the file.
        self.start_id, self.end_id = tokenizer.start_token_id, tokenizer.end_token_id
        self.core = CoreTokenizer(tokenizer)
        self.graph = graph
        self.sampling = sampling
        self.max_length = max_length

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="prompt")])
    def serve(self, prompt):
        max_length, sampling = self.max_length, self.sampling
        end_id = self.end_id
        ids = self.core.tokenize(prompt)  # keras-hub's eager ids
        ids = tf.concat([[self.start_id], ids], 0)[:max_length]
        n = tf.shape(ids)[0]
        tokens = tf.concat([ids, tf.zeros([max_length - n], tf.int32)], 0)  # (L,)
        caches = self.graph.empty_caches(max_length)

        def cond(i, tokens, done, *caches):
            return tf.logical_and(i < max_length - 1, tf.logical_not(done))

        def body(i, tokens, done, *caches):
            logits, caches = self.graph.forward(tokens[i:i + 1], i, list(caches))
            generated = i + 1 >= n
            new = tf.where(generated, next_token(logits[0], i, sampling), tokens[i + 1])
            tokens = xla.dynamic_update_slice(tokens, new[None], tf.stack([i + 1]))
            done = tf.logical_and(generated, tf.equal(new, end_id))
            return (i + 1, tokens, done, *caches)

        i, tokens, done, *_ = tf.while_loop(
            cond, body, (tf.constant(0), tokens, tf.constant(False), *caches),
            maximum_iterations=max_length - 1,
        )
        # tokens[0] is the start token; tokens[i] is the last written one.
        last = tf.where(done, i, i + 1)
        kept = tokens[1:last]
        return {"text": self.core.detokenize(kept)}
