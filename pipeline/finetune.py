"""Fine-tuning stage: a GPT-2 preset + the user's text -> a fine-tuned preset, with numbers.

Writes into `<run_dir>/finetune/`:
  preset/            the fine-tuned model as a keras-hub preset folder
  checkpoints/       weights + optimizer after each epoch (an interrupted run resumes here)
  tensorboard/       TensorBoard logs
  loss_curve.png     training and validation loss
  generations.json   greedy and sampled generations for the fixed prompts, before and after

Example:
    >>> result = finetune(load_config("configs/default.yaml"), "runs/default")
    >>> result.metrics["after"]["val_perplexity"] < result.metrics["before"]["val_perplexity"]
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline import config as config_lib
from pipeline.config import RunConfig
from pipeline.data import describe, load_examples, split_examples, tokenize
from pipeline.errors import ConfigError
from pipeline.evaluate import evaluate
from pipeline.fsutil import write_json, write_text
from pipeline.presets import load_causal_lm, save_preset
from pipeline.report import plot_loss_curve
from pipeline.training import (EpochCheckpoint, ProgressBar, StepLossLogger, batches,
                               compile_lm, make_optimizer, plan_steps, preprocessor_detached,
                               restore_checkpoint)


@dataclass
class FinetuneResult:
    preset_dir: Path
    metrics: dict


def _set_precision(mixed: bool) -> None:
    import keras
    import tensorflow as tf

    if mixed and not tf.config.list_physical_devices("GPU"):
        warnings.warn("finetune.mixed_precision is on but no GPU is visible: using float32")
        mixed = False
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def _checkpoint_dir(stage_dir: Path, cfg: RunConfig) -> Path:
    """Returns the checkpoint folder, emptied if it belongs to a different config."""
    directory = stage_dir / "checkpoints"
    key = config_lib.dump_yaml({"model": cfg.model, "data": cfg.data, "finetune": cfg.finetune})
    stamp = directory / "config.yaml"
    if directory.exists() and (not stamp.is_file() or stamp.read_text() != key):
        print(f"Checkpoints in {directory} come from another config: starting afresh")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(stamp, key)
    return directory


def finetune(cfg: RunConfig, run_dir, verbose: bool = True) -> FinetuneResult:
    """Fine-tunes `cfg.model.preset` on `cfg.data` and returns the preset folder and metrics."""
    import keras

    ft, ev = cfg.finetune, cfg.eval
    stage_dir = Path(run_dir) / "finetune"
    log = print if verbose else (lambda *a, **k: None)

    examples = load_examples(cfg.data)  # fail on bad data before loading any model
    train_text, val_text = split_examples(examples, cfg.data.validation_fraction, cfg.data.seed)

    _set_precision(ft.mixed_precision)
    keras.utils.set_random_seed(ft.seed)
    causal_lm = load_causal_lm(cfg.model.preset)
    limit = causal_lm.backbone.max_sequence_length
    for name, value in (("finetune.sequence_length", ft.sequence_length),
                        ("eval.max_length", ev.max_length)):
        if value > limit:
            raise ConfigError(f"{name}: {value} is above the model's position limit {limit}")
    causal_lm.preprocessor.sequence_length = ft.sequence_length

    train = tokenize(train_text, causal_lm.preprocessor)
    val = tokenize(val_text, causal_lm.preprocessor)
    log(describe("train", train.stats))
    log(describe("validation", val.stats))

    log("Evaluating before fine-tuning ...")
    before = evaluate(causal_lm, val, ev, ev.max_length)
    log(f"  validation perplexity {before['val_perplexity']:.2f}")

    if ft.lora_rank:
        causal_lm.backbone.enable_lora(ft.lora_rank)
    steps_per_epoch, epochs, total = plan_steps(len(train.y), ft.batch_size, ft.epochs,
                                                ft.max_steps)
    compile_lm(causal_lm, make_optimizer(ft.learning_rate, total, ft.warmup_fraction,
                                         ft.weight_decay))
    checkpoints = _checkpoint_dir(stage_dir, cfg)
    done_epochs, history = restore_checkpoint(causal_lm, checkpoints)
    if done_epochs:
        log(f"Resuming from the checkpoint after epoch {done_epochs} in {checkpoints}")
    logger = StepLossLogger(history)
    callbacks = [
        logger,
        EpochCheckpoint(checkpoints, state=logger.state),
        keras.callbacks.TensorBoard(str(stage_dir / "tensorboard"), update_freq="epoch"),
    ]
    if verbose:
        callbacks.append(ProgressBar(total, "fine-tuning"))
    started = time.time()
    if done_epochs < epochs:
        with preprocessor_detached(causal_lm):
            causal_lm.fit(
                batches(train.x, train.y, train.w, ft.batch_size, ft.seed, shuffle=True),
                validation_data=batches(val.x, val.y, val.w, ev.batch_size, 0, shuffle=False),
                validation_steps=-(-len(val.y) // ev.batch_size),
                steps_per_epoch=steps_per_epoch, epochs=epochs, initial_epoch=done_epochs,
                callbacks=callbacks, verbose=0, shuffle=False,
            )
    train_seconds = time.time() - started

    log("Evaluating after fine-tuning ...")
    after = evaluate(causal_lm, val, ev, ev.max_length)
    log(f"  validation perplexity {after['val_perplexity']:.2f} "
        f"(before {before['val_perplexity']:.2f})")

    preset_dir = save_preset(causal_lm, stage_dir / "preset")
    plot_loss_curve(logger.state(), stage_dir / "loss_curve.png")
    generations = {"prompts": list(ev.prompts), "max_length": ev.max_length,
                   "before": before.pop("generations"), "after": after.pop("generations")}
    write_json(stage_dir / "generations.json", generations)
    metrics = {
        "preset": cfg.model.preset,
        "parameters": int(causal_lm.backbone.count_params()),
        "data": {"train": train.stats, "validation": val.stats},
        "steps": int(causal_lm.optimizer.iterations.numpy()),
        "epochs": epochs,
        "lora_rank": ft.lora_rank,
        "train_seconds": round(train_seconds, 1),
        "before": before,
        "after": after,
        "perplexity_reduction": 1.0 - after["val_perplexity"] / before["val_perplexity"],
        "generations": generations,
    }
    return FinetuneResult(preset_dir=preset_dir, metrics=metrics)
