"""Training plumbing shared by pre-training, fine-tuning and distillation."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_file, write_json


def make_optimizer(learning_rate: float, total_steps: int, warmup_fraction: float,
                   weight_decay: float):
    """Returns AdamW with linear warm-up to `learning_rate`, then cosine decay to 0."""
    import keras

    warmup = int(total_steps * warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, global_clipnorm=1.0
    )
    # LayerNorm and biases are not decayed, as in GPT-2 training recipes.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_lm(causal_lm, optimizer) -> None:
    import keras

    causal_lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
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


def batches(x: dict, y: np.ndarray, w: np.ndarray, batch_size: int, seed: int, shuffle: bool):
    """Returns a repeating tf.data pipeline over numpy arrays, reshuffled each pass."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).repeat().prefetch(2)


def plan_steps(num_examples: int, batch_size: int, epochs: int, max_steps: int):
    """Returns (steps_per_epoch, epochs, total_steps) honouring `max_steps` (0 = none)."""
    steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
    total = steps_per_epoch * epochs
    if max_steps:
        total = min(total, max_steps)
        steps_per_epoch = min(steps_per_epoch, total)
        epochs = math.ceil(total / steps_per_epoch)
    return steps_per_epoch, epochs, total


def token_loss_sums(logits_fn, x: dict, y: np.ndarray, w: np.ndarray, batch_size: int):
    """Returns (sum of token cross-entropy, number of weighted tokens) over all examples."""
    import keras
    from keras import ops

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
    total, count = token_loss_sums(
        lambda xb: causal_lm(xb, training=False), x, y, w, batch_size
    )
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


class StepLossLogger:
    """Keras callback factory: records the training loss per step and validation loss per epoch.

    `history` (from a checkpoint) is continued; `.state()` returns it as plain lists.
    """

    def __new__(cls, history: dict | None = None):
        import keras

        class _Logger(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                h = history or {}
                self.steps, self.losses = list(h.get("steps", [])), list(h.get("losses", []))
                self.epoch_steps = list(h.get("epoch_steps", []))
                self.val_losses = list(h.get("val_losses", []))

            def on_train_batch_end(self, batch, logs=None):
                if logs and "loss" in logs:
                    self.steps.append(int(self.model.optimizer.iterations.numpy()))
                    self.losses.append(float(logs["loss"]))

            def on_epoch_end(self, epoch, logs=None):
                if logs and "val_loss" in logs:
                    self.epoch_steps.append(int(self.model.optimizer.iterations.numpy()))
                    self.val_losses.append(float(logs["val_loss"]))

            def state(self) -> dict:
                return {"steps": self.steps, "losses": self.losses,
                        "epoch_steps": self.epoch_steps, "val_losses": self.val_losses}

        return _Logger()


class EpochCheckpoint:
    """Keras callback factory: saves weights + optimizer state after each epoch, atomically.

    `checkpoint_dir/latest.json` names the newest complete checkpoint and holds `state()`;
    `restore_checkpoint()` loads it, so `fit(initial_epoch=...)` resumes where it stopped.
    """

    def __new__(cls, checkpoint_dir, state=None, keep: int = 1):
        import keras

        directory = Path(checkpoint_dir)

        class _Checkpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                directory.mkdir(parents=True, exist_ok=True)
                name = f"epoch-{epoch + 1:03d}.weights.h5"
                with atomic_file(directory / name, suffix=".weights.h5") as tmp:
                    self.model.save_weights(str(tmp))
                write_json(directory / "latest.json", {
                    "epoch": epoch + 1, "weights": name, "state": state() if state else {},
                })
                for old in sorted(directory.glob("epoch-*.weights.h5"))[:-keep]:
                    old.unlink()

        return _Checkpoint()


def restore_checkpoint(causal_lm, checkpoint_dir):
    """Loads the newest checkpoint into `causal_lm`; returns (epochs done, saved state)."""
    latest = Path(checkpoint_dir) / "latest.json"
    if not latest.is_file():
        return 0, {}
    meta = json.loads(latest.read_text())
    optimizer = causal_lm.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(causal_lm.trainable_variables)
    causal_lm.load_weights(str(Path(checkpoint_dir) / meta["weights"]))
    return int(meta["epoch"]), meta.get("state", {})


class ProgressBar:
    """Keras callback factory: a tqdm bar over optimizer steps, showing the loss."""

    def __new__(cls, total: int, desc: str):
        import os

        import keras

        if os.environ.get("PIPELINE_BATCH"):  # papermill/CI: plain text, fewer updates
            from tqdm.std import tqdm
        else:
            from tqdm.auto import tqdm

        class _Bar(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                done = int(self.model.optimizer.iterations.numpy())  # > 0 when resuming
                self.bar = tqdm(total=total, initial=done, desc=desc, unit="step",
                                mininterval=2.0)

            def on_train_batch_end(self, batch, logs=None):
                self.bar.update(1)
                if logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

            def on_train_end(self, logs=None):
                self.bar.close()

        return _Bar()
