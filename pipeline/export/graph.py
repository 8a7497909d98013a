"""GPT-2's forward pass written in plain TensorFlow ops, for export to TFLite.

keras-hub's cached generation keeps a stacked 6-D cache (TFLite's StridedSlice stops at 5-D)
and rewrites the whole cache every step. Here each layer has its own key and value cache,
`[1, heads, S, head_dim]`, updated in place at the new positions only; the token embedding
is one tensor used both for the lookup and for the output logits (GPT-2 ties them), so the
exported file stores it once.

Example:
    >>> weights = weights_from_backbone(causal_lm.backbone)
    >>> model = GPT2Graph(weights)
    >>> logits, caches = model.forward(token_ids, start_pos, model.empty_caches(64))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

LAYER_KEYS = ("ln1_g", "ln1_b", "w_qkv", "b_qkv", "w_o", "b_o",
              "ln2_g", "ln2_b", "w_fc", "b_fc", "w_proj", "b_proj")


@dataclass
class GPT2Weights:
    wte: np.ndarray  # (V, H) token embedding, tied with the output projection
    wpe: np.ndarray  # (P, H) position embedding
    layers: list  # one dict per layer, keys LAYER_KEYS
    lnf_g: np.ndarray  # (H,)
    lnf_b: np.ndarray  # (H,)
    num_heads: int
    layer_norm_epsilon: float = 1e-5

    @property
    def hidden_dim(self) -> int:
        return self.wte.shape[1]

    @property
    def max_positions(self) -> int:
        return self.wpe.shape[0]

    def count(self) -> int:
        arrays = [self.wte, self.wpe, self.lnf_g, self.lnf_b]
        arrays += [layer[k] for layer in self.layers for k in LAYER_KEYS]
        return int(sum(a.size for a in arrays))


def weights_from_backbone(backbone) -> GPT2Weights:
    """Returns the weights of a keras-hub `GPT2Backbone` as float32 numpy arrays."""
    def np32(v):
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype="float32")

    hidden = backbone.hidden_dim
    layers = []
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attn = block._self_attention_layer
        q, k, v = (getattr(attn, name) for name in ("_query_dense", "_key_dense", "_value_dense"))
        layers.append({
            "ln1_g": np32(block._self_attention_layer_norm.gamma),
            "ln1_b": np32(block._self_attention_layer_norm.beta),
            # (H, heads, head_dim) kernels -> one (H, 3H) matmul for q, k and v
            "w_qkv": np.concatenate([np32(d.kernel).reshape(hidden, hidden) for d in (q, k, v)], 1),
            "b_qkv": np.concatenate([np32(d.bias).reshape(hidden) for d in (q, k, v)]),
            "w_o": np32(attn._output_dense.kernel).reshape(hidden, hidden),
            "b_o": np32(attn._output_dense.bias),
            "ln2_g": np32(block._feedforward_layer_norm.gamma),
            "ln2_b": np32(block._feedforward_layer_norm.beta),
            "w_fc": np32(block._feedforward_intermediate_dense.kernel),
            "b_fc": np32(block._feedforward_intermediate_dense.bias),
            "w_proj": np32(block._feedforward_output_dense.kernel),
            "b_proj": np32(block._feedforward_output_dense.bias),
        })
    final = backbone.get_layer("layer_norm")
    return GPT2Weights(
        wte=np32(backbone.get_layer("token_embedding").embeddings),
        wpe=np32(backbone.get_layer("position_embedding").position_embeddings),
        layers=layers, lnf_g=np32(final.gamma), lnf_b=np32(final.beta),
        num_heads=backbone.num_heads,
    )


def random_weights(vocabulary_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                   intermediate_dim: int, max_positions: int, seed: int = 0) -> GPT2Weights:
    """Returns GPT-2-shaped random weights (for size and speed work without a download)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(0.0, 0.02, size=shape).astype("float32")

    h, i = hidden_dim, intermediate_dim
    layers = [{
        "ln1_g": np.ones(h, "float32"), "ln1_b": np.zeros(h, "float32"),
        "w_qkv": normal(h, 3 * h), "b_qkv": np.zeros(3 * h, "float32"),
        "w_o": normal(h, h), "b_o": np.zeros(h, "float32"),
        "ln2_g": np.ones(h, "float32"), "ln2_b": np.zeros(h, "float32"),
        "w_fc": normal(h, i), "b_fc": np.zeros(i, "float32"),
        "w_proj": normal(i, h), "b_proj": np.zeros(h, "float32"),
    } for _ in range(num_layers)]
    return GPT2Weights(wte=normal(vocabulary_size, h), wpe=normal(max_positions, h),
                       layers=layers, lnf_g=np.ones(h, "float32"),
                       lnf_b=np.zeros(h, "float32"), num_heads=num_heads)


class GPT2Graph(tf.Module):
    """GPT-2 forward as a tf.Module, with per-layer in-place KV caches."""

    def __init__(self, weights: GPT2Weights):
        super().__init__(name="gpt2")
        self.num_heads = weights.num_heads
        self.hidden_dim = weights.hidden_dim
        self.head_dim = weights.hidden_dim // weights.num_heads
        self.num_layers = len(weights.layers)
        self.max_positions = weights.max_positions
        self.vocabulary_size = weights.wte.shape[0]
        self.epsilon = weights.layer_norm_epsilon
        self.wte = tf.Variable(weights.wte, trainable=False, name="wte")
        self.wpe = tf.Variable(weights.wpe, trainable=False, name="wpe")
        self.lnf_g = tf.Variable(weights.lnf_g, trainable=False, name="lnf_g")
        self.lnf_b = tf.Variable(weights.lnf_b, trainable=False, name="lnf_b")
        self.blocks = [
            {k: tf.Variable(layer[k], trainable=False, name=f"h{i}_{k}")
             for k in LAYER_KEYS}
            for i, layer in enumerate(weights.layers)
        ]

    def empty_caches(self, length: int):
        shape = (1, self.num_heads, length, self.head_dim)
        return [tf.zeros(shape) for _ in range(2 * self.num_layers)]  # k0, v0, k1, ...

    def _norm(self, x, g, b):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + self.epsilon) * g + b

    def _heads(self, x, t):
        # (T, H) -> (1, heads, T, head_dim)
        return tf.transpose(tf.reshape(x, (1, t, self.num_heads, self.head_dim)),
                            (0, 2, 1, 3))

    def _attend(self, q, k_cache, v_cache, bias, visible, buckets):
        """Softmax attention of q (1, heads, T, hd) over the first cache rows.

        With `buckets` (static sizes), it reads the smallest bucket holding
        `visible` rows, chosen by nested tf.cond: static shapes, so the runtime
        never re-plans memory between decode steps. Else it slices to `visible`.
        """
        scale = 1.0 / math.sqrt(self.head_dim)

        def core(k, v, b):
            # q scaled first, as Keras does; float16 attention (half_cache.py) then also
            # keeps its dot products small
            scores = tf.matmul(q * scale, k, transpose_b=True)
            return tf.matmul(tf.nn.softmax(scores + b, axis=-1), v)

        if visible is None:
            return core(k_cache, v_cache, bias)
        if not buckets:
            return core(k_cache[:, :, :visible], v_cache[:, :, :visible],
                        bias[:, :, :, :visible])

        def branch(size):
            if size == k_cache.shape[2]:  # the whole cache: a slice would only copy it
                return lambda: core(k_cache, v_cache, bias)
            return lambda: core(k_cache[:, :, :size], v_cache[:, :, :size],
                                bias[:, :, :, :size])

        out = branch(buckets[-1])
        for size in reversed(buckets[:-1]):
            out = (lambda size, rest: lambda: tf.cond(
                visible <= size, branch(size), rest))(size, out)
        return out()

    def forward(self, token_ids, start, caches, logits_for="last", positions=None,
                mask=None, visible=None, buckets=None):
        """Runs T new tokens written to the caches at start..start+T-1.

        token_ids: (T,) int32; start: int32 scalar; caches: list of
        (1, heads, S, head_dim) tensors, k and v per layer. `positions` (T,) default
        to start..start+T-1; `mask` (1, 1, T, S) is added to the attention scores
        (0 = attend, large negative = masked) and defaults to causal over the
        positions. `visible` (int32 scalar) limits attention to the first
        `visible` cache rows (all later rows are masked anyway), so its cost follows
        the text so far instead of the cache size. Returns logits ((1, V) for the
        last token, (T, V) for all, or None) and the new caches.
        """
        t = tf.shape(token_ids)[0]
        s = tf.shape(caches[0])[2]
        if positions is None:
            positions = start + tf.range(t)
        x = tf.gather(self.wte, token_ids) + tf.gather(self.wpe, positions)  # (T, H)
        if mask is None:  # query i sees keys 0..positions[i]
            seen = tf.range(s)[None, :] <= positions[:, None]  # (T, S)
            mask = tf.where(seen, 0.0, -1e9)[None, None]  # (1, 1, T, S)
        bias = mask
        new_caches = []
        for i, p in enumerate(self.blocks):
            h = self._norm(x, p["ln1_g"], p["ln1_b"])
            qkv = tf.matmul(h, p["w_qkv"]) + p["b_qkv"]  # (T, 3H)
            q, k, v = tf.split(qkv, 3, axis=-1)
            at = [0, 0, start, 0]
            k_cache = _write(caches[2 * i], self._heads(k, t), at)
            v_cache = _write(caches[2 * i + 1], self._heads(v, t), at)
            new_caches += [k_cache, v_cache]
            a = self._attend(self._heads(q, t), k_cache, v_cache, bias, visible,
                             buckets)  # (1, heads, T, head_dim)
            a = tf.reshape(tf.transpose(a, (0, 2, 1, 3)), (t, self.hidden_dim))
            x = x + tf.matmul(a, p["w_o"]) + p["b_o"]
            h = self._norm(x, p["ln2_g"], p["ln2_b"])
            h = tf.nn.gelu(tf.matmul(h, p["w_fc"]) + p["b_fc"], approximate=True)
            x = x + tf.matmul(h, p["w_proj"]) + p["b_proj"]
        if logits_for is None:
            return None, new_caches
        if logits_for == "last":
            x = x[-1:]
        x = self._norm(x, self.lnf_g, self.lnf_b)
        # Tied output projection: the same tensor as the lookup above.
        return tf.matmul(x, self.wte, transpose_b=True), new_caches


def _write(cache, new, at):
    """Writes `new` into `cache` at offset `at`; TFLite: DYNAMIC_UPDATE_SLICE."""
    return xla.dynamic_update_slice(cache, new, tf.stack(at))
