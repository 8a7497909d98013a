"""Fine-tuning stage: a GPT-2 preset + the user's text -> a fine-tuned preset, with numbers.

Writes into `<run_dir>/finetune/` (paths: `RunFolder`):
  preset/            the fine-tuned model as a keras-hub preset folder (+ run_config.yaml)
  checkpoints/       weights + optimizer after each epoch; an interrupted run resumes here and
                     ends exactly where it would have; deleted at the end unless
                     finetune.keep_checkpoints
  tensorboard/       TensorBoard logs
  loss_curve.png     training and validation loss
  generations.json   greedy and sampled generations for the fixed prompts, before and after
and its metrics into `<run_dir>/metrics.json` under "finetune" (as each stage does).

Example:
    >>> result = finetune(load_config("configs/default.yaml"), "runs/default")
    >>> result.metrics["after"]["val_perplexity"] < result.metrics["before"]["val_perplexity"]
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.fsutil import write_json, write_text
from pipeline.train.presets import load_causal_lm, load_tokenizer, save_preset
from pipeline.report import plot_loss_curve, write_metrics
from pipeline.run_folder import RunFolder
from pipeline.train.checkpoints import (EpochCheckpoint, LossHistory, progress_bar,
                                        restore_checkpoint)
from pipeline.train.data import describe
from pipeline.train.distribution import Placement, place, policy
from pipeline.train.token_cache import open_corpus
from pipeline.train.evaluate import evaluate
from pipeline.train.loop import (TrainingStep, attach_optimizer, make_optimizer, perplexity,
                                 plan_steps, token_loss, training_batches)


@dataclass
class FinetuneResult:
    preset_dir: Path
    metrics: dict


def finetune(cfg: RunConfig, run_dir, verbose: bool = True) -> FinetuneResult:
    """Fine-tunes `cfg.model.preset` on `cfg.data` and returns the preset folder and metrics."""
    ft, ev = cfg.finetune, cfg.eval
    folder = RunFolder(run_dir)
    log = print if verbose else (lambda *a, **k: None)

    placement = place(ft.distribution, ft.batch_size)  # first: it sets up devices
    log(placement.line())
    # tokenized once into the token cache; bad data fails here, before any model is loaded
    corpus = open_corpus(cfg.data, load_tokenizer(cfg.model.preset), verbose)
    keras.utils.set_random_seed(ft.seed)
    with placement.strategy.scope():  # variables (model, LoRA, optimizer) on every replica
        causal_lm = load_causal_lm(cfg.model.preset, dtype=policy(ft.precision))
    _check_lengths(cfg, causal_lm.backbone.max_sequence_length)
    causal_lm.preprocessor.sequence_length = ft.sequence_length
    train = corpus.windows("train", ft.sequence_length, cfg.data.packing)  # read from disk
    val = corpus.windows("validation", ft.sequence_length, cfg.data.packing).sample(
        cfg.data.validation_tokens)
    log(describe("train", train.stats))
    log(describe("validation", val.stats))

    log("Evaluating before fine-tuning ...")
    before = evaluate(causal_lm, val, ev, ev.max_length)
    log(f"  validation perplexity {before['val_perplexity']:.2f}")

    started = time.time()
    with placement.strategy.scope():
        history = _train(causal_lm, train, val, cfg, folder, verbose, placement)
    train_seconds = time.time() - started

    log("Evaluating after fine-tuning ...")
    after = evaluate(causal_lm, val, ev, ev.max_length)
    log(f"  validation perplexity {after['val_perplexity']:.2f} "
        f"(before {before['val_perplexity']:.2f})")

    preset_dir = save_preset(causal_lm, folder.finetune_preset, cfg)
    plot_loss_curve(history, folder.finetune / "loss_curve.png")
    generations = {"prompts": list(ev.prompts), "max_length": ev.max_length,
                   "before": before.pop("generations"), "after": after.pop("generations")}
    write_json(folder.finetune / "generations.json", generations)
    if not ft.keep_checkpoints:
        shutil.rmtree(folder.checkpoints, ignore_errors=True)
    metrics = {
        "preset": cfg.model.preset,
        "parameters": int(causal_lm.backbone.count_params()),
        "data": {"train": train.stats, "validation": val.stats},
        "steps": int(causal_lm.optimizer.iterations.numpy()),
        "epochs": plan_steps(len(train), ft.batch_size, ft.epochs, ft.max_steps)[1],
        "lora_rank": ft.lora_rank,
        "distribution": placement.describe(),
        "precision": causal_lm.dtype_policy.name,
        "train_seconds": round(train_seconds, 1),
        "before": before,
        "after": after,
        "perplexity_reduction": 1.0 - after["val_perplexity"] / before["val_perplexity"],
        "generations": generations,
    }
    write_metrics(run_dir, "finetune", metrics)
    return FinetuneResult(preset_dir=preset_dir, metrics=metrics)


def _train(causal_lm, train, val, cfg: RunConfig, folder: RunFolder, verbose: bool,
           placement: Placement) -> dict:
    """Trains `causal_lm` in place, resuming from a checkpoint; returns the loss history.

    The one training loop (`loop.TrainingStep`) on every placement: one device, mirrored,
    multi-worker (where Keras 3's `fit` fails: tensorflow/tensorflow#72388) or TPU. After each
    epoch: validation loss, TensorBoard scalars and a checkpoint."""
    ft, ev = cfg.finetune, cfg.eval
    steps_per_epoch, epochs, total = plan_steps(len(train), ft.batch_size, ft.epochs,
                                                ft.max_steps)
    passes = config_lib.accumulation_steps(ft.micro_batch_size, ft.batch_size)
    checkpoints = _checkpoint_dir(folder.checkpoints, cfg)
    with placement.strategy.scope():  # adapters and optimizer state on every replica
        if ft.lora_rank:
            causal_lm.backbone.enable_lora(ft.lora_rank)
        attach_optimizer(causal_lm, make_optimizer(ft.learning_rate, total, ft.warmup_fraction,
                                                   ft.weight_decay, passes))
        first_epoch, state = restore_checkpoint(causal_lm, checkpoints)
    if first_epoch and verbose:
        print(f"Resuming from the checkpoint after epoch {first_epoch} in {checkpoints}")
    history = LossHistory(state)
    checkpoint = EpochCheckpoint(checkpoints, state=history.state)
    optimizer = causal_lm.optimizer
    done = int(optimizer.iterations.numpy())
    if first_epoch >= epochs or done >= total:
        return history.state()
    step = TrainingStep(token_loss(causal_lm), causal_lm.trainable_variables, optimizer,
                        training_batches(train, ft.batch_size, ft.seed, first_epoch, epochs,
                                         passes),
                        placement.strategy, passes, ft.jit_compile)
    board = tf.summary.create_file_writer(str(folder.finetune / "tensorboard"))
    bar = progress_bar(total=total, initial=done, desc="fine-tuning", unit="step",
                       mininterval=2.0, disable=not verbose)
    for epoch in range(first_epoch, epochs):
        for _ in range(steps_per_epoch):
            if done >= total:
                break
            loss = step()
            done = int(optimizer.iterations.numpy())
            history.step(done, loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        history.epoch(done, perplexity(causal_lm, val.x, val.y, val.w, ev.batch_size)["loss"])
        with board.as_default():
            tf.summary.scalar("loss", history.losses[-1], step=done)
            tf.summary.scalar("val_loss", history.val_losses[-1], step=done)
        checkpoint.save(causal_lm, epoch)
        if done >= total:
            break
    bar.close()
    step.close()
    return history.state()


def _check_lengths(cfg: RunConfig, limit: int) -> None:
    for name, value in (("finetune.sequence_length", cfg.finetune.sequence_length),
                        ("eval.max_length", cfg.eval.max_length)):
        if value > limit:
            raise ConfigError(f"{name}: {value} is above the model's position limit {limit}")


def _checkpoint_dir(directory: Path, cfg: RunConfig) -> Path:
    """Returns the checkpoint folder, emptied if it belongs to a different config."""
    key = config_lib.dump_yaml({"model": cfg.model, "data": cfg.data,
                                "finetune": {**config_lib.to_dict(cfg.finetune),
                                             "keep_checkpoints": None}})
    stamp = directory / "config.yaml"
    if directory.exists() and (not stamp.is_file() or stamp.read_text() != key):
        print(f"Checkpoints in {directory} come from another config: starting afresh")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(stamp, key)
    return directory
