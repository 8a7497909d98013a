"""The one-shot text model: prompt string in, prompt + generated text out, all in one graph.

This is what the classic KerasNLP on-device recipe produced, rebuilt so that it traces on
today's stack: keras-hub's tokenizer in graph mode, then a `tf.while_loop` over
`GPT2Graph.forward` (one token per step, static shapes, per-layer KV caches), then graph-mode
detokenization. `max_length` counts every token including the start token, as
`GPT2CausalLM.generate(max_length=...)` does; a prompt longer than that is truncated.

Example:
    >>> module = TextModel(causal_lm, SamplerSpec("greedy"), max_length=64)
    >>> module.serve(tf.constant("Tomato soup."))["text"]
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLERS = ("greedy", "top_k", "top_p")


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "greedy"  # greedy | top_k | top_p
    k: int = 40  # top_k: sample among the k most likely tokens
    p: float = 0.9  # top_p: sample among the most likely tokens holding this probability mass
    temperature: float = 1.0  # logits are divided by this before sampling
    seed: int = 0  # sampling is a pure function of (seed, step): same prompt, same text


def next_token(logits, step, spec: SamplerSpec):
    """Returns the next token id (int32 scalar) from (V,) logits, as a TF graph."""
    import tensorflow as tf

    if spec.name == "greedy":
        return tf.cast(tf.argmax(logits), tf.int32)
    logits = logits / spec.temperature
    if spec.name == "top_k":
        values, indices = tf.math.top_k(logits, k=spec.k)
    else:
        values, indices = tf.math.top_k(logits, k=tf.shape(logits)[0])  # sorted, descending
        probs = tf.nn.softmax(values)
        before = tf.cumsum(probs, exclusive=True)
        values = tf.where(before < spec.p, values, tf.fill(tf.shape(values), -1e9))
    seed = tf.stack([tf.constant(spec.seed, tf.int32), tf.cast(step, tf.int32)])
    choice = tf.random.stateless_categorical(values[None], 1, seed=seed, dtype=tf.int32)[0, 0]
    return tf.gather(indices, choice)


class TextModel:
    """tf.Module factory with `serve(prompt) -> {"text": prompt + continuation}`."""

    def __new__(cls, tokenizer, graph, spec: SamplerSpec, max_length: int):
        import tensorflow as tf
        from tensorflow.compiler.tf2xla.python import xla

        start_id = tokenizer.start_token_id
        end_id = tokenizer.end_token_id

        class _TextModel(tf.Module):
            def __init__(self):
                super().__init__(name="text_model")
                self.tokenizer = tokenizer
                self.graph = graph

            @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="prompt")])
            def serve(self, prompt):
                ids = tf.cast(self.tokenizer(prompt), tf.int32)
                ids = tf.concat([[start_id], ids], 0)[:max_length]
                n = tf.shape(ids)[0]
                tokens = tf.concat([ids, tf.zeros([max_length - n], tf.int32)], 0)  # (L,)
                caches = self.graph.empty_caches(max_length)

                def cond(i, tokens, done, *caches):
                    return tf.logical_and(i < max_length - 1, tf.logical_not(done))

                def body(i, tokens, done, *caches):
                    logits, caches = self.graph.forward(tokens[i:i + 1], i, list(caches))
                    generated = i + 1 >= n
                    new = tf.where(generated, next_token(logits[0], i, spec), tokens[i + 1])
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
                text = self.tokenizer.detokenize(kept[None])[0]
                return {"text": text}

        return _TextModel()
