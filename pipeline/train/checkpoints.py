"""What the training loop keeps: the loss history, checkpoints after each epoch, progress bars.

A checkpoint holds the model weights, the optimizer state (both in one `.weights.h5`) and the
loss history; with the data order fixed per (seed, epoch) (`loop.training_batches`), a run
resumed from it ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


class LossHistory:
    """The training loss per optimizer step and the validation loss per epoch.

    `history` (from a checkpoint) is continued; `.state()` returns it as plain lists.
    """

    def __init__(self, history: dict | None = None):
        h = history or {}
        self.steps, self.losses = list(h.get("steps", [])), list(h.get("losses", []))
        self.epoch_steps = list(h.get("epoch_steps", []))
        self.val_losses = list(h.get("val_losses", []))

    def step(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def epoch(self, step: int, val_loss: float) -> None:
        self.epoch_steps.append(step)
        self.val_losses.append(val_loss)

    def state(self) -> dict:
        return {"steps": self.steps, "losses": self.losses,
                "epoch_steps": self.epoch_steps, "val_losses": self.val_losses}


class EpochCheckpoint:
    """Saves weights + optimizer state after each epoch, atomically.

    `checkpoint_dir/latest.json` names the newest complete checkpoint and holds `state()`;
    `restore_checkpoint()` loads it, so training resumes at the next epoch where it stopped.
    """

    def __init__(self, checkpoint_dir, state=None, keep: int = 1):
        self.directory = Path(checkpoint_dir)
        self.state = state
        self.keep = keep

    def save(self, model, epoch: int) -> None:
        """Saves the checkpoint after `epoch` (0-based)."""
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
