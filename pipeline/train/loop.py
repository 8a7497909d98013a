"""The one training loop's parts, shared by pre-training, fine-tuning and distillation.

`TrainingStep` is the one training-step mechanism: every model this project trains (the
embedded base, fine-tuning on one device, mirrored, multi-worker or TPU, the distilled student
and its baseline) takes its optimizer steps through it; only the loss differs.

The data order is a pure function of (seed, epoch): a run resumed at epoch k sees exactly the
batches the uninterrupted run saw from epoch k on.
"""

from __future__ import annotations

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


def attach_optimizer(causal_lm, optimizer) -> None:
    """Makes `optimizer` the model's (so its checkpoints hold the optimizer state), wrapped in
    a LossScaleOptimizer under mixed_float16, as Keras's `compile` does."""
    causal_lm.compile(optimizer=optimizer, loss=None)


def token_loss(causal_lm):
    """Fine-tuning's and pre-training's loss, as Keras's `fit` reduces it: token cross-entropy
    times the target weights, summed over the batch's B x T positions, divided by B x T."""
    def loss_fn(x, y, w):
        logits = tf.cast(causal_lm(x, training=True), "float32")
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return tf.reduce_sum(ce * w) / tf.cast(tf.size(y), "float32")
    return loss_fn


def sharded_by_data(dataset):
    """Each worker reads the whole pipeline and keeps its share of every global batch (the
    batches come from memory or memory-mapped files, not from files tf.data can split)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class TrainingStep:
    """One optimizer step per call, over the next `passes` micro-batches of `dataset`
    (`training_batches`), under `strategy` (default: one device); returns its loss.

    Each micro-batch is `strategy.run` on every replica: `loss_fn(x, y, w)` is the replica's
    mean loss; its share of the global mean (/ replicas), scaled for mixed_float16
    (`optimizer.scale_loss`), is differentiated, and the optimizer all-reduces the gradients
    across replicas and hosts and accumulates the passes into one update (`make_optimizer`).

    `jit_compile`: XLA on one device, where it makes the step about 1.8x faster on CPU by
    fusing the many small elementwise ops. With several replicas an XLA-compiled step cannot
    all-reduce gradients: off there. Off for large models too (`finetune.jit_compile`): the
    compiled step writes new weights and optimizer slots beside the old ones before assigning
    them, a second copy of the training state (GPT-2 medium: 15.8 GB peak).
    """

    def __init__(self, loss_fn, variables, optimizer, dataset, strategy=None, passes: int = 1,
                 jit_compile: bool = True):
        strategy = strategy or tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        with strategy.scope():  # its slots beside each variable, before any step is traced
            if not optimizer.built:
                optimizer.build(variables)

        @tf.function(jit_compile=jit_compile and replicas == 1)
        def replica_step(x, y, w):
            with tf.GradientTape() as tape:
                loss = loss_fn(x, y, w) / replicas
                scaled = optimizer.scale_loss(loss)
            optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return loss

        @tf.function
        def step(batch):
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(replica_step, args=batch), axis=None)

        self._step, self.passes = step, passes
        self._batches = iter(strategy.experimental_distribute_dataset(sharded_by_data(dataset)))

    def __call__(self) -> float:
        return sum(float(self._step(next(self._batches))) for _ in range(self.passes)) / \
            self.passes

    def close(self) -> None:
        """Drops the traced step and the data iterator (they sit in reference cycles with
        the optimizer), so their memory can go back before the next model trains."""
        self._step = self._batches = None


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


def plan_steps(num_examples: int, batch_size: int, epochs: int, max_steps: int):
    """Returns (steps_per_epoch, epochs, total_steps) honouring `max_steps` (0 = none).

    With `max_steps`, training stops inside the last epoch.
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


LOGITS_BYTES = 256 * 2**20  # one forward's float32 logits at most (GPT-2, T 192: 6 rows)


def perplexity(causal_lm, x: dict, y: np.ndarray, w: np.ndarray, batch_size: int = 32) -> dict:
    """Returns {"loss", "perplexity"}: mean token cross-entropy over non-padding targets.
    Runs at most `batch_size` rows per forward, fewer where their logits would pass
    LOGITS_BYTES (at batch 32 and T 192 they are 1.2 GB, and the cross-entropy holds two
    more of that size: gigabytes beside a GPT-2 medium being distilled)."""
    row_bytes = 4 * y.shape[-1] * causal_lm.backbone.vocabulary_size
    rows = max(1, min(batch_size, LOGITS_BYTES // row_bytes))
    return loss_and_perplexity(*token_loss_sums(
        lambda xb: causal_lm(xb, training=False), x, y, w, rows))

