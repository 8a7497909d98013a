"""Distillation stage: the fine-tuned teacher -> a smaller student, with a no-teacher baseline.

The student is a `GPT2Backbone` with fewer layers, initialised from the teacher (`student.py`),
with the teacher's tokenizer and preprocessor.

Loss per target token, padding masked:
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels)
Teacher logits are computed in the same step for the same batch, so memory stays flat as the
corpus grows. The baseline is the same student architecture and initialisation trained for
the same steps with alpha = 0 (labels only).

On a CPU-only host the baseline trains first, in a child process (`baseline_child.py`), while
this process holds only the teacher and the untrained student: a training loop leaves
gigabytes resident after its models are gone (GPT-2 medium: this process stayed at 8.7 GB
after distilling, held by no Python object), so neither training adds to the other's
memory. On a GPU or TPU (the kernel holds the accelerator) and under multi_worker (the
worker's port is the kernel's) the baseline trains in process, after the student.

Writes `<run_dir>/distill/` (paths: `RunFolder`): preset/ (the student as a keras-hub preset,
+ run_config.yaml), perplexity.png, generations.json; its metrics go to metrics.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from pipeline.config import DistillConfig, Distribution, RunConfig, accumulation_steps
from pipeline.fsutil import write_json
from pipeline.heap import release_freed_memory
from pipeline.processes import run_config_child
from pipeline.train.presets import check_local_preset, load_causal_lm, save_preset
from pipeline.report import plot_perplexities, write_metrics
from pipeline.run_folder import RunFolder
from pipeline.train.checkpoints import progress_bar
from pipeline.train.distribution import place
from pipeline.train.token_cache import open_corpus
from pipeline.train.evaluate import decode_tokens_per_second, evaluate
from pipeline.train.student import build_student
from pipeline.train.loop import (TrainingStep, make_optimizer, perplexity, plan_steps,
                                 training_batches)


@dataclass
class DistillResult:
    preset_dir: Path
    metrics: dict


def distillation_loss(teacher_logits, student_logits, labels, weights, temperature: float,
                      alpha: float):
    """Returns the mean over weighted tokens of alpha*T^2*KL + (1-alpha)*CE.

    teacher_logits, student_logits: (B, T, V); labels: (B, T) int; weights: (B, T), 1 for
    real target tokens and 0 for padding.
    """
    weights = ops.cast(weights, "float32")
    student_logits = ops.cast(student_logits, "float32")
    ce = ops.sparse_categorical_crossentropy(labels, student_logits, from_logits=True)
    per_token = (1.0 - alpha) * ce
    if alpha > 0:
        t = float(temperature)
        log_p = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
        log_q = ops.log_softmax(student_logits / t, axis=-1)
        kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)  # (B, T)
        per_token = per_token + alpha * t * t * kl
    return ops.sum(per_token * weights) / ops.maximum(ops.sum(weights), 1.0)


def train_student(student_lm, teacher_lm, train, cfg: DistillConfig, alpha: float, desc: str,
                  verbose: bool, strategy=None, jit_compile: bool = True) -> list[float]:
    """Trains `student_lm` in place (under `strategy`, default one device) with the one
    training loop (`loop.TrainingStep`) on `distillation_loss`; returns the loss per step."""
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(cfg.seed)
    steps_per_epoch, epochs, total = plan_steps(len(train), cfg.batch_size, cfg.epochs,
                                                cfg.max_steps)
    passes = accumulation_steps(cfg.micro_batch_size, cfg.batch_size)
    with strategy.scope():
        optimizer = make_optimizer(cfg.learning_rate, total, cfg.warmup_fraction,
                                   cfg.weight_decay, passes)
        if student_lm.dtype_policy.name == "mixed_float16":  # as attach_optimizer does
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(student_lm.trainable_variables)

    def loss_fn(x, y, w):
        teacher_logits = teacher_lm(x, training=False) if alpha > 0 else None
        return distillation_loss(teacher_logits, student_lm(x, training=True), y, w,
                                 cfg.temperature, alpha)

    step = TrainingStep(loss_fn, student_lm.trainable_variables, optimizer,
                        training_batches(train, cfg.batch_size, cfg.seed, 0, epochs, passes),
                        strategy, passes, jit_compile)
    losses = []
    bar = progress_bar(total=total, desc=desc, unit="step", mininterval=2.0,
                       disable=not verbose)
    for _ in range(total):
        losses.append(step())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    # The traced step and the optimizer sit in reference cycles: free the optimizer's state
    # now, not after the baseline has built its own (GPT-2 medium's student: 3.2 GB each).
    step.close()
    del step, optimizer
    release_freed_memory()
    return losses


def verdict(ppl: dict) -> str:
    """Returns one line judging the distilled student against the baseline and the teacher."""
    vs_baseline = ppl["student"] / ppl["baseline"] - 1.0
    vs_teacher = ppl["student"] / ppl["teacher"] - 1.0
    if vs_baseline < 0:
        return (f"Distillation helped: the student's perplexity is {-vs_baseline:.1%} below the "
                f"labels-only baseline's and {vs_teacher:+.1%} against the teacher's.")
    hint = ("the baseline beats the teacher itself, so the teacher is under-trained: fine-tune "
            "it longer (finetune.epochs, finetune.learning_rate) before distilling"
            if ppl["baseline"] < ppl["teacher"] else
            "try alpha closer to 1, a smaller temperature, or more distill.epochs")
    return (f"Distillation did not help: the student's perplexity is {vs_baseline:.1%} above "
            f"the labels-only baseline's; {hint}.")


def distill(cfg: RunConfig, run_dir, teacher: str | None = None,
            verbose: bool = True) -> DistillResult:
    """Distills the teacher (default: the run's fine-tuned model) into a smaller student."""
    d = cfg.distill
    folder = RunFolder(run_dir)
    log = print if verbose else (lambda *a, **k: None)
    source = teacher or str(check_local_preset(folder.finetune_preset))
    placement = place(cfg.finetune.distribution, d.batch_size, "distill")
    log(placement.line())
    # Each model lives only in the call that uses it (a frame's locals can outlive `del`), so
    # that at most two are held at once (GPT-2 medium: teacher 1.4 GB, each student 0.8 GB,
    # a student's training state 3-4 GB more). On a CPU-only host the baseline trains first,
    # in its child, while this process holds the teacher and the untrained student only;
    # elsewhere it trains here afterwards, built from the student's initial weights on disk.
    in_child = baseline_in_child(placement)
    with tempfile.TemporaryDirectory(prefix="distill-init-") as tmp:
        initial = Path(tmp) / "student.weights.h5"
        s = _teacher_and_student(cfg, source, placement, initial, in_child, folder, log,
                                 verbose)
        release_freed_memory()
        baseline_losses, ppl_baseline, baseline_seconds = s["baseline"] or train_baseline(
            cfg, s["student_config"], s["preprocessor"], s["train"], s["val"], placement,
            initial, verbose)
    ppl = {**s["ppl"], "baseline": ppl_baseline}
    speed = s["speed"]
    params = {**s["params"], "baseline": s["params"]["student"]}
    log("validation perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))
    judged = verdict(ppl)
    log(judged)
    log(f"Keras decode: teacher {speed['teacher']:.1f} tokens/s, student "
        f"{speed['student']:.1f} tokens/s")

    plot_perplexities(ppl, params, folder.distill / "perplexity.png")
    write_json(folder.distill / "generations.json", {"prompts": list(cfg.eval.prompts),
                                                     "student": s["generations"]})
    student_losses = s["losses"]
    metrics = {
        "teacher": source,
        **s["shape"],
        "init": s["init"],
        "temperature": d.temperature, "alpha": d.alpha,
        "steps": len(student_losses),
        "distribution": placement.describe(),
        "parameters": params,
        "val_perplexity": ppl,
        "student_vs_teacher": ppl["student"] / ppl["teacher"] - 1.0,
        "student_vs_baseline": ppl["student"] / ppl["baseline"] - 1.0,
        "student_beats_baseline": ppl["student"] < ppl["baseline"],
        "verdict": judged,
        "loss_first_last": {"student": [student_losses[0], float(np.mean(student_losses[-5:]))],
                            "baseline": [baseline_losses[0],
                                         float(np.mean(baseline_losses[-5:]))]},
        "keras_decode_tokens_per_second": speed,
        "speedup": speed["student"] / speed["teacher"],
        "train_seconds": round(s["train_seconds"] + baseline_seconds, 1),
        "generations": s["generations"],
    }
    write_metrics(run_dir, "distill", metrics)
    return DistillResult(preset_dir=s["preset_dir"], metrics=metrics)


def _teacher_and_student(cfg: RunConfig, source: str, placement, initial: Path,
                         baseline_first: bool, folder: RunFolder, log, verbose: bool) -> dict:
    """Loads the teacher, builds the student (its initial weights saved to `initial`), with
    `baseline_first` trains the baseline in its child, measures the teacher, distills the
    student, measures and saves it; returns what the metrics need ("baseline": None unless
    `baseline_first`)."""
    d, ft = cfg.distill, cfg.finetune
    with placement.strategy.scope():
        teacher_lm = load_causal_lm(source)
    length = min(ft.sequence_length, teacher_lm.backbone.max_sequence_length)
    preprocessor = teacher_lm.preprocessor
    preprocessor.sequence_length = length
    train, val = training_windows(cfg, preprocessor.tokenizer, length, verbose)
    keras.utils.set_random_seed(d.seed)
    with placement.strategy.scope():
        student_backbone, init = build_student(teacher_lm.backbone, d)
        student_lm = keras_hub.models.GPT2CausalLM(student_backbone, preprocessor)
    log(f"Student: {student_backbone.num_layers} layers, {student_backbone.hidden_dim} wide, "
        f"{student_backbone.count_params():,} parameters ({init['init']}"
        f"{', teacher layers ' + str(init['teacher_layers']) if init['teacher_layers'] else ''})")
    student_backbone.save_weights(str(initial))  # the baseline's initialisation
    baseline = (_baseline_in_child(cfg, source, student_backbone.get_config(), initial, verbose)
                if baseline_first else None)
    prompt = cfg.eval.prompts[0] if cfg.eval.prompts else "The"
    ppl = {"teacher": perplexity(teacher_lm, val.x, val.y, val.w,
                                 cfg.eval.batch_size)["perplexity"]}
    speed = {"teacher": decode_tokens_per_second(teacher_lm, prompt, d.speed_tokens)}
    started = time.time()
    losses = train_student(student_lm, teacher_lm, train, d, d.alpha, "distilling", verbose,
                           placement.strategy, ft.jit_compile)
    train_seconds = time.time() - started
    ppl["student"] = perplexity(student_lm, val.x, val.y, val.w,
                                cfg.eval.batch_size)["perplexity"]
    speed["student"] = decode_tokens_per_second(student_lm, prompt, d.speed_tokens)
    return {
        "train": train, "val": val, "preprocessor": preprocessor,
        "student_config": student_backbone.get_config(), "init": init,
        "shape": {"student_layers": student_backbone.num_layers,
                  "student_hidden_dim": student_backbone.hidden_dim},
        "params": {"teacher": teacher_lm.backbone.count_params(),
                   "student": student_backbone.count_params()},
        "ppl": ppl, "speed": speed, "losses": losses, "train_seconds": train_seconds,
        "baseline": baseline,
        "generations": evaluate(student_lm, val, cfg.eval, cfg.eval.max_length)["generations"],
        "preset_dir": save_preset(student_lm, folder.student_preset, cfg),
    }


def training_windows(cfg: RunConfig, tokenizer, length: int, verbose: bool):
    """Returns the training windows and the validation sample at `length` (token cache)."""
    corpus = open_corpus(cfg.data, tokenizer, verbose)  # cached
    train = corpus.windows("train", length, cfg.data.packing)
    val = corpus.windows("validation", length, cfg.data.packing).sample(
        cfg.data.validation_tokens)
    return train, val


def baseline_in_child(placement) -> bool:
    """Whether the baseline trains in a child process: on one host's CPU (one device or
    logical CPU devices), not on a GPU or TPU and not under multi_worker."""
    return (placement.kind in (Distribution.NONE, Distribution.MIRRORED)
            and not tf.config.list_physical_devices("GPU"))


def train_baseline(cfg: RunConfig, student_config: dict, preprocessor, train, val, placement,
                   initial: Path, verbose: bool) -> tuple[list[float], float, float]:
    """Trains the labels-only baseline from the student's initial weights; returns its
    losses, its validation perplexity and the training seconds."""
    with placement.strategy.scope():
        backbone = keras_hub.models.GPT2Backbone.from_config(student_config)
        backbone.load_weights(str(initial))
        baseline_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    started = time.time()
    losses = train_student(baseline_lm, None, train, cfg.distill, 0.0,
                           "baseline (labels only)", verbose, placement.strategy,
                           cfg.finetune.jit_compile)
    seconds = time.time() - started
    ppl = perplexity(baseline_lm, val.x, val.y, val.w, cfg.eval.batch_size)["perplexity"]
    return losses, ppl, seconds


def _baseline_in_child(cfg: RunConfig, tokenizer_preset: str, student_config: dict,
                       initial: Path, verbose: bool) -> tuple[list[float], float, float]:
    """`train_baseline` in `baseline_child.py`, with the tokenizer of `tokenizer_preset`;
    its progress bar is passed through."""
    r = run_config_child("pipeline.train.baseline_child", cfg, tokenizer_preset,
                         json.dumps(student_config), str(initial), "1" if verbose else "0",
                         what="training the baseline", show_progress=verbose)
    return r["losses"], r["perplexity"], r["seconds"]
