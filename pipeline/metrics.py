"""Perplexity from summed token losses: one formula for every logits source (Keras in
`train.loop.perplexity`, the bundle's `.tflite` in `runtime.interpreter`), importable without
TensorFlow or Keras."""

from __future__ import annotations

import math


def loss_and_perplexity(total: float, count: float) -> dict:
    """Returns {"loss", "perplexity"} from summed token cross-entropy and token count."""
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
