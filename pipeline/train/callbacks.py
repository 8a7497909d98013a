"""Keras callbacks of the training stages: loss history, progress bar, checkpoints, step limit.

A checkpoint holds the model weights, the optimizer state (both in one `.weights.h5`) and the
loss history; with the data order fixed per (seed, epoch) (`loop.training_batches`), a run
resumed from it ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

from pipeline.errors import PipelineError
from pipeline.fsutil import atomic_file, write_json


def progress_bar(*args, **kwargs):
    """A progress bar: notebook widgets, except under `pipeline run` (PIPELINE_BATCH, set
    around papermill: plain text), read when the bar is made, not at import."""
    if os.environ.get("PIPELINE_BATCH"):
        from tqdm.std import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)


class StepLossLogger(keras.callbacks.Callback):
    """Records the training loss per step and the validation loss per epoch.

    `history` (from a checkpoint) is continued; `.state()` returns it as plain lists.
    """

    def __init__(self, history: dict | None = None):
        super().__init__()
        h = history or {}
        self.steps, self.losses = list(h.get("steps", [])), list(h.get("losses", []))
        self.epoch_steps = list(h.get("epoch_steps", []))
        self.val_losses = list(h.get("val_losses", []))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())  # micro-batches: once per update
        if logs and "loss" in logs and (not self.steps or step != self.steps[-1]):
            self.steps.append(step)
            self.losses.append(float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            self.epoch_steps.append(int(self.model.optimizer.iterations.numpy()))
            self.val_losses.append(float(logs["val_loss"]))

    def state(self) -> dict:
        return {"steps": self.steps, "losses": self.losses,
                "epoch_steps": self.epoch_steps, "val_losses": self.val_losses}


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the optimizer has taken `total` steps (`max_steps`)."""

    def __init__(self, total: int):
        super().__init__()
        self.total = total

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.total:
            self.model.stop_training = True


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state after each epoch, atomically.

    `checkpoint_dir/latest.json` names the newest complete checkpoint and holds `state()`;
    `restore_checkpoint()` loads it, so `fit(initial_epoch=...)` resumes where it stopped.
    """

    def __init__(self, checkpoint_dir, state=None, keep: int = 1):
        super().__init__()
        self.directory = Path(checkpoint_dir)
        self.state = state
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        self.save(self.model, epoch)

    def save(self, model, epoch: int) -> None:
        """Saves the checkpoint after `epoch` (0-based); also called by `strategy_loop`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:03d}.weights.h5"
        with atomic_file(self.directory / name, suffix=".weights.h5") as tmp:
            model.save_weights(str(tmp))
        write_json(self.directory / "latest.json", {
            "epoch": epoch + 1, "weights": name, "state": self.state() if self.state else {},
        })
        for old in checkpoints_by_epoch(self.directory)[:-self.keep]:
            old.unlink()


def checkpoints_by_epoch(directory) -> list[Path]:
    """The checkpoint files, oldest first, by epoch number (epoch-1000 comes after epoch-999)."""
    found = []
    for p in Path(directory).glob("epoch-*.weights.h5"):
        number = p.name.removeprefix("epoch-").removesuffix(".weights.h5")
        if number.isdigit():
            found.append((int(number), p))
    return [p for _, p in sorted(found)]


def restore_checkpoint(causal_lm, checkpoint_dir):
    """Loads the newest checkpoint into `causal_lm`; returns (epochs done, saved state)."""
    latest = Path(checkpoint_dir) / "latest.json"
    if not latest.is_file():
        return 0, {}
    try:
        meta = json.loads(latest.read_text())
        epoch, weights = int(meta["epoch"]), Path(checkpoint_dir) / meta["weights"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PipelineError(f"{latest} is damaged: delete {checkpoint_dir} to train this stage "
                            f"from its start (or pipeline run --fresh)") from None
    optimizer = causal_lm.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(causal_lm.trainable_variables)
    causal_lm.load_weights(str(weights))
    return epoch, meta.get("state", {})


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar over optimizer steps, showing the loss."""

    def __init__(self, total: int, desc: str):
        super().__init__()
        self.total, self.desc = total, desc

    def on_train_begin(self, logs=None):
        done = int(self.model.optimizer.iterations.numpy())  # > 0 when resuming
        self.bar = progress_bar(total=self.total, initial=done, desc=self.desc, unit="step",
                                mininterval=2.0)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(int(self.model.optimizer.iterations.numpy()) - self.bar.n)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    def on_train_end(self, logs=None):
        self.bar.close()
