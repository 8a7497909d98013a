"""Runs the streaming .tflite directly in the ai-edge-litert interpreter, as LiteRT-LM does.

Used for what LiteRT-LM's Python API does not expose: decode logits (parity with Keras)
and per-token losses (perplexity through the quantized file). Follows the runtime's
protocol: caches start at zero, each call writes its tokens at input_pos[0]..., the mask
holds 0 for visible positions and a large negative value elsewhere.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from pipeline.metrics import loss_and_perplexity

NEG = -0.7 * 3.4028235e38  # what LiteRT-LM's CPU executor writes for masked positions


class StreamingInterpreter:
    """The streaming .tflite in ai-edge-litert's interpreter, fed one token at a time."""

    def __init__(self, model_path, threads: int = 2):
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.decode = self.interpreter.get_signature_runner("decode")
        details = self.decode.get_input_details()
        self.names = [n for n in details if n.startswith("kv_cache_")]
        self.cache_shape = tuple(details[self.names[0]]["shape"])
        self.cache_dtype = details[self.names[0]]["dtype"]  # float16 in quantized bundles
        self.context = int(details["mask"]["shape"][-1])
        self.reset()

    def reset(self) -> None:
        self.caches = {n: np.zeros(self.cache_shape, self.cache_dtype) for n in self.names}

    def _mask(self, positions) -> np.ndarray:
        """(1, 1, T, S): each query row sees the cache rows up to its own position."""
        mask = np.full((1, 1, len(positions), self.context), NEG, np.float32)
        for row, p in enumerate(positions):
            mask[0, 0, row, : p + 1] = 0.0
        return mask

    def prefill(self, token_ids, start: int = 0) -> None:
        """Writes len(token_ids) tokens at start... with the `prefill_<T>` signature of that
        length (the runtime's prompt path; it returns no logits)."""
        positions = np.arange(start, start + len(token_ids), dtype=np.int32)
        runner = self.interpreter.get_signature_runner(f"prefill_{len(token_ids)}")
        out = runner(tokens=np.array([token_ids], np.int32), input_pos=positions,
                     mask=self._mask(positions), **self.caches)
        self.caches = {n: out[n] for n in self.names}

    def decode_step(self, token: int, position: int) -> np.ndarray:
        """Feeds one token at `position`; returns its (V,) logits."""
        out = self.decode(tokens=np.array([[token]], np.int32),
                          input_pos=np.array([position], np.int32), mask=self._mask([position]),
                          **self.caches)
        self.caches = {n: out[n] for n in self.names}
        return out["logits"][0, 0]

    def sequence_logits(self, token_ids) -> np.ndarray:
        """Returns (N, V) logits for a sequence fed one token at a time from position 0."""
        self.reset()
        return np.stack([self.decode_step(int(t), i) for i, t in enumerate(token_ids)])


def interpreter_perplexity(runner: StreamingInterpreter, split) -> dict:
    """Returns {"loss", "perplexity"} over a TokenizedSplit, reduced as `loop.perplexity`."""
    total, count = 0.0, 0.0
    for row in range(len(split.y)):
        n = int(split.x["padding_mask"][row].sum())
        logits = runner.sequence_logits(split.x["token_ids"][row, :n])
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets, weights = split.y[row, :n], split.w[row, :n]
        total += float(-(log_probs[np.arange(n), targets] * weights).sum())
        count += float(weights.sum())
    return loss_and_perplexity(total, count)
