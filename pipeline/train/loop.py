"""Training plumbing shared by pre-training, fine-tuning and distillation.

The data order is a pure function of (seed, epoch): a run resumed at epoch k sees exactly the
batches the uninterrupted run saw from epoch k on.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from pipeline.metrics import loss_and_perplexity


def make_optimizer(learning_rate: float, total_steps: int, warmup_fraction: float,
                   weight_decay: float, accumulation: int = 1):
    """Returns AdamW with linear warm-up to `learning_rate`, then cosine decay to 0, over
    `total_steps` optimizer steps.

    With `accumulation` > 1 the optimizer is called once per micro-batch and updates the
    weights every `accumulation` calls with the mean of their gradients (Keras's
    `gradient_accumulation_steps`); the schedule still counts optimizer steps, so a step of
    N micro-batches gets the learning rate one step of the whole batch gets.
    """
    warmup = int(total_steps * warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    if accumulation > 1:
        schedule = PerOptimizerStep(schedule, accumulation)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, global_clipnorm=1.0,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    # LayerNorm and biases are not decayed, as in GPT-2 training recipes.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


class PerOptimizerStep(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` of optimizer steps, read by an optimizer that counts micro-batches."""

    def __init__(self, schedule, accumulation: int):
        self.schedule, self.accumulation = schedule, accumulation

    def __call__(self, step):
        return self.schedule(step // self.accumulation)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "accumulation": self.accumulation}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]),
                   config["accumulation"])


def compile_lm(causal_lm, optimizer, replicas: int = 1, jit_compile: bool = True) -> None:
    # XLA on one device: Keras's "auto" leaves it off on CPU-only machines, where it makes the
    # training step about 1.8x faster by fusing the many small elementwise ops. With several
    # replicas (tf.distribute) the compiled step fails to all-reduce gradients: off there.
    # `jit_compile=False` (finetune.jit_compile) for large models: the compiled step writes
    # new weights and optimizer slots beside the old ones before assigning them, a second
    # copy of the training state (GPT-2 medium: 15.8 GB peak with micro-batches of 4).
    causal_lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        jit_compile=jit_compile and replicas == 1,
    )


@contextlib.contextmanager
def preprocessor_detached(causal_lm):
    """Detaches the preprocessor while `fit` runs on already tokenized arrays."""
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        yield causal_lm
    finally:
        causal_lm.preprocessor = preprocessor


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Returns the example order of one epoch: the same for the same (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype("int64")


def training_batches(source, batch_size: int, seed: int, first_epoch: int, epochs: int,
                     accumulation: int = 1):
    """Returns the batches of epochs first_epoch..epochs-1, ceil(N / batch) per epoch.

    `source`: a `data.TokenizedSplit` (in RAM) or a `token_cache.Windows` (on disk): either
    gives `len()` rows and `rows(idx) -> (x, y, w)`; only the rows of the next batches are read.
    With `accumulation` A > 1 each batch comes as A equal micro-batches in a row (an epoch's
    short last batch of r rows is filled to a multiple of A by repeating its own rows).
    """
    orders = np.stack([epoch_order(len(source), seed, e) for e in range(first_epoch, epochs)])
    length = source.rows(np.zeros(1, "int64"))[1].shape[1]

    def read(idx):
        x, y, w = source.rows(idx)
        return (x["token_ids"].astype("int32"), x["padding_mask"].astype("int32"),
                y.astype("int32"), w.astype("float32"))

    def batch(idx):
        parts = tf.numpy_function(read, [idx], [tf.int32, tf.int32, tf.int32, tf.float32],
                                  stateful=False)
        for part in parts:
            part.set_shape([None, length])
        ids, mask, y, w = parts
        return {"token_ids": ids, "padding_mask": mask}, y, w

    def micro_batches(idx):
        rows = tf.shape(idx)[0]
        per = -(-rows // accumulation)
        filled = tf.gather(idx, tf.range(per * accumulation) % rows)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(filled, [accumulation, per]))

    batches = (tf.data.Dataset.from_tensor_slices(orders)
               .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order)
                         .batch(batch_size)))
    if accumulation > 1:
        batches = batches.flat_map(micro_batches)
    return batches.map(batch).prefetch(2)


def evaluation_batches(split, batch_size: int):
    """Returns the rows of a `TokenizedSplit` in order, batched, repeating (Keras re-reads
    them each epoch)."""
    return (tf.data.Dataset.from_tensor_slices((split.x, split.y, split.w)).batch(batch_size)
            .repeat().prefetch(2))


def plan_steps(num_examples: int, batch_size: int, epochs: int, max_steps: int):
    """Returns (steps_per_epoch, epochs, total_steps) honouring `max_steps` (0 = none).

    With `max_steps`, training stops inside the last epoch (see `StopAtStep`).
    """
    steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
    total = steps_per_epoch * epochs
    if max_steps:
        total = min(total, max_steps)
        epochs = math.ceil(total / steps_per_epoch)
    return steps_per_epoch, epochs, total


def token_loss_sums(logits_fn, x: dict, y: np.ndarray, w: np.ndarray, batch_size: int):
    """Returns (sum of token cross-entropy, number of weighted tokens) over all examples."""
    total, count = 0.0, 0.0
    for start in range(0, len(y), batch_size):
        xb = {k: v[start:start + batch_size] for k, v in x.items()}
        logits = logits_fn(xb)
        ce = keras.losses.sparse_categorical_crossentropy(
            y[start:start + batch_size], ops.cast(logits, "float32"), from_logits=True
        )
        wb = w[start:start + batch_size].astype("float32")
        total += float(ops.sum(ce * wb))
        count += float(wb.sum())
    return total, count


def perplexity(causal_lm, x: dict, y: np.ndarray, w: np.ndarray, batch_size: int = 32) -> dict:
    """Returns {"loss", "perplexity"}: mean token cross-entropy over non-padding targets."""
    return loss_and_perplexity(*token_loss_sums(
        lambda xb: causal_lm(xb, training=False), x, y, w, batch_size))

