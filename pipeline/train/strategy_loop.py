"""Fine-tuning's own training loop, for MultiWorkerMirroredStrategy (several hosts).

Keras 3's `fit` fails under MultiWorkerMirroredStrategy (it reduces scalar step outputs along
axis 0: tensorflow/tensorflow#72388), so with `finetune.distribution: multi_worker` fine-tuning
runs this loop instead: `strategy.run` of one step per global batch, gradients all-reduced by
the optimizer, the same data order (`loop.training_batches`), validation loss after each epoch
and the same checkpoints as `fit` (`callbacks.EpochCheckpoint`), so resume works as it does on
one device. The loss is fit's: token cross-entropy times the weights, summed, over the
global batch's B x T positions (each replica divides its sum by the global count, so the
all-reduced gradient is the global mean's).

Every worker writes its own run folder (each host its own disk; on one machine give each
worker its own `output_dir`); the weights are identical on every worker after each step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pipeline.train.callbacks import EpochCheckpoint, StepLossLogger, progress_bar
from pipeline.train.loop import perplexity, training_batches


def sharded_by_data(dataset):
    """Each worker reads the whole pipeline and keeps its share of every global batch (the
    batches come from memory or memory-mapped files, not from files tf.data can split)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit_under_strategy(causal_lm, train, val, strategy, *, batch_size: int, accumulation: int,
                       seed: int,
                       eval_batch_size: int, first_epoch: int, epochs: int,
                       steps_per_epoch: int, total: int, checkpoint: EpochCheckpoint,
                       logger: StepLossLogger, verbose: bool) -> None:
    """Trains the compiled `causal_lm` in place from `first_epoch`; fills `logger` as `fit`'s
    callbacks do and saves `checkpoint` after each epoch. With `accumulation` A > 1 each
    step is A passes over micro-batches of batch_size / A (the optimizer accumulates)."""
    optimizer, variables = causal_lm.optimizer, causal_lm.trainable_variables
    length = train.rows([0])[1].shape[1]
    positions = float(batch_size // accumulation * length)

    @tf.function
    def replica_step(x, y, w):
        with tf.GradientTape() as tape:
            logits = tf.cast(causal_lm(x, training=True), "float32")
            ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.reduce_sum(ce * w) / positions
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def step(batch):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(replica_step, args=batch), axis=None)

    batches = iter(strategy.experimental_distribute_dataset(sharded_by_data(
        training_batches(train, batch_size, seed, first_epoch, epochs, accumulation))))
    done = int(optimizer.iterations.numpy())
    bar = progress_bar(total=total, initial=done, desc="fine-tuning", unit="step",
                       mininterval=2.0, disable=not verbose)
    for epoch in range(first_epoch, epochs):
        for _ in range(steps_per_epoch):
            if done >= total:
                break
            loss = sum(float(step(next(batches))) for _ in range(accumulation)) / accumulation
            done = int(optimizer.iterations.numpy())
            logger.steps.append(done)
            logger.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        logger.epoch_steps.append(done)
        logger.val_losses.append(perplexity(causal_lm, val.x, val.y, val.w,
                                            eval_batch_size)["loss"])
        checkpoint.save(causal_lm, epoch)
        if done >= total:
            break
    bar.close()
