"""Distillation stage: the fine-tuned teacher -> a smaller student, with a no-teacher baseline.

The student is a `GPT2Backbone` with fewer layers (default half), the teacher's tokenizer and
preprocessor, initialised from the teacher: embeddings and final LayerNorm copied, student
layer i copied from teacher layer round(i * L_teacher / L_student) (every other layer at
half depth), as DistilGPT2 did. With a smaller `student_hidden_dim` nothing can be copied and
the student starts from random weights (the report says so).

Loss per target token, padding masked:
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels)
Teacher logits are computed in the same step for the same batch, so memory stays flat as the
corpus grows. The baseline is the same student architecture and initialisation trained for
the same steps with alpha = 0 (labels only).

Writes `<run_dir>/distill/`: preset/ (the student as a keras-hub preset), perplexity.png,
generations.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DistillConfig, RunConfig
from pipeline.data import load_examples, split_examples, tokenize
from pipeline.errors import ConfigError
from pipeline.evaluate import evaluate
from pipeline.fsutil import atomic_file, write_json
from pipeline.presets import check_local_preset, load_causal_lm, save_preset
from pipeline.training import make_optimizer, perplexity, plan_steps


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
    from keras import ops

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


def student_layer_sources(teacher_layers: int, student_layers: int) -> list[int]:
    """Returns which teacher layer initialises each student layer (every other at half)."""
    return [min(teacher_layers - 1, round(i * teacher_layers / student_layers))
            for i in range(student_layers)]


def build_student(teacher_backbone, cfg: DistillConfig):
    """Returns (student backbone, init description) for the teacher and the config."""
    import keras_hub

    layers = cfg.student_layers or max(1, teacher_backbone.num_layers // 2)
    if layers > teacher_backbone.num_layers:
        raise ConfigError(f"distill.student_layers: {layers} is more than the teacher's "
                          f"{teacher_backbone.num_layers} layers")
    config = teacher_backbone.get_config()
    config.update(num_layers=layers)
    hidden = cfg.student_hidden_dim or teacher_backbone.hidden_dim
    if hidden > teacher_backbone.hidden_dim:
        raise ConfigError(f"distill.student_hidden_dim: {hidden} is wider than the teacher's "
                          f"{teacher_backbone.hidden_dim}")
    copied = hidden == teacher_backbone.hidden_dim
    if not copied:
        head_dim = teacher_backbone.hidden_dim // teacher_backbone.num_heads
        if hidden % head_dim:
            raise ConfigError(f"distill.student_hidden_dim: {hidden} is not a multiple of the "
                              f"head size {head_dim}")
        config.update(hidden_dim=hidden, num_heads=hidden // head_dim, intermediate_dim=4 * hidden)
    student = keras_hub.models.GPT2Backbone.from_config(config)
    if not copied:
        return student, {"init": "random (student_hidden_dim differs from the teacher's)",
                         "teacher_layers": []}
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        student.get_layer(name).set_weights(teacher_backbone.get_layer(name).get_weights())
    sources = student_layer_sources(teacher_backbone.num_layers, layers)
    for i, j in enumerate(sources):
        student.get_layer(f"transformer_layer_{i}").set_weights(
            teacher_backbone.get_layer(f"transformer_layer_{j}").get_weights())
    return student, {"init": "copied from the teacher", "teacher_layers": sources}


def train_student(student_lm, teacher_lm, train, cfg: DistillConfig, alpha: float, desc: str,
                  verbose: bool) -> list[float]:
    """Trains `student_lm` in place; returns the loss per step."""
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    from pipeline.training import batches

    keras.utils.set_random_seed(cfg.seed)
    steps_per_epoch, epochs, total = plan_steps(len(train.y), cfg.batch_size, cfg.epochs,
                                                cfg.max_steps)
    optimizer = make_optimizer(cfg.learning_rate, total, cfg.warmup_fraction, cfg.weight_decay)
    variables = student_lm.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=False)
    def step(x, y, w):
        teacher_logits = teacher_lm(x, training=False) if alpha > 0 else None
        with tf.GradientTape() as tape:
            logits = student_lm(x, training=True)
            loss = distillation_loss(teacher_logits, logits, y, w, cfg.temperature, alpha)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    data = iter(batches(train.x, train.y, train.w, cfg.batch_size, cfg.seed, shuffle=True))
    losses = []
    bar = tqdm(total=total, desc=desc, unit="step", mininterval=2.0, disable=not verbose)
    for _ in range(total):
        x, y, w = next(data)
        losses.append(float(step(x, y, w)))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return losses


def decode_tokens_per_second(causal_lm, prompt: str, new_tokens: int) -> float:
    """Returns Keras greedy decode speed (tokens/s), timed after a warm-up call."""
    import keras_hub

    causal_lm.sampler = keras_hub.samplers.GreedySampler()
    causal_lm.generate_function = None
    prompt_tokens = len(causal_lm.preprocessor.tokenizer(prompt)) + 1
    length = min(prompt_tokens + new_tokens, causal_lm.backbone.max_sequence_length)
    causal_lm.generate([prompt], max_length=length, stop_token_ids=None)  # trace + warm up
    started = time.perf_counter()
    causal_lm.generate([prompt], max_length=length, stop_token_ids=None)
    seconds = time.perf_counter() - started
    causal_lm.generate_function = None
    return (length - prompt_tokens) / seconds


def compare(ppl: dict) -> str:
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


def plot_perplexities(values: dict, params: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=["#777", "#2a7", "#c84"])
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.1f}\n{params[name] / 1e6:.2f}M params",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("validation perplexity")
    ax.set_ylim(0, max(values.values()) * 1.3)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def distill(cfg: RunConfig, run_dir, teacher: str | None = None,
            verbose: bool = True) -> DistillResult:
    """Distills the teacher (default: the run's fine-tuned model) into a smaller student."""
    import keras
    import keras_hub

    d, ft = cfg.distill, cfg.finetune
    stage_dir = Path(run_dir) / "distill"
    log = print if verbose else (lambda *a, **k: None)
    source = teacher or str(Path(run_dir) / "finetune" / "preset")
    if not teacher:
        check_local_preset(Path(source))
    examples = load_examples(cfg.data)
    train_text, val_text = split_examples(examples, cfg.data.validation_fraction, cfg.data.seed)
    teacher_lm = load_causal_lm(source)
    teacher_lm.preprocessor.sequence_length = min(ft.sequence_length,
                                                  teacher_lm.backbone.max_sequence_length)
    train = tokenize(train_text, teacher_lm.preprocessor)
    val = tokenize(val_text, teacher_lm.preprocessor)

    keras.utils.set_random_seed(d.seed)
    student_backbone, init = build_student(teacher_lm.backbone, d)
    baseline_backbone = keras_hub.models.GPT2Backbone.from_config(student_backbone.get_config())
    baseline_backbone.set_weights(student_backbone.get_weights())  # same initialisation
    student_lm = keras_hub.models.GPT2CausalLM(student_backbone, teacher_lm.preprocessor)
    baseline_lm = keras_hub.models.GPT2CausalLM(baseline_backbone, teacher_lm.preprocessor)
    log(f"Student: {student_backbone.num_layers} layers, {student_backbone.hidden_dim} wide, "
        f"{student_backbone.count_params():,} parameters ({init['init']}"
        f"{', teacher layers ' + str(init['teacher_layers']) if init['teacher_layers'] else ''})")

    started = time.time()
    student_losses = train_student(student_lm, teacher_lm, train, d, d.alpha, "distilling",
                                   verbose)
    baseline_losses = train_student(baseline_lm, teacher_lm, train, d, 0.0,
                                    "baseline (labels only)", verbose)
    train_seconds = time.time() - started

    ppl = {name: perplexity(lm, val.x, val.y, val.w, cfg.eval.batch_size)["perplexity"]
           for name, lm in (("teacher", teacher_lm), ("student", student_lm),
                            ("baseline", baseline_lm))}
    params = {"teacher": teacher_lm.backbone.count_params(),
              "student": student_backbone.count_params(),
              "baseline": baseline_backbone.count_params()}
    log("validation perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))
    verdict = compare(ppl)
    log(verdict)
    prompt = cfg.eval.prompts[0] if cfg.eval.prompts else "The"
    speed = {"teacher": decode_tokens_per_second(teacher_lm, prompt, d.speed_tokens),
             "student": decode_tokens_per_second(student_lm, prompt, d.speed_tokens)}
    log(f"Keras decode: teacher {speed['teacher']:.1f} tokens/s, student "
        f"{speed['student']:.1f} tokens/s")
    generations = evaluate(student_lm, val, cfg.eval, cfg.eval.max_length)["generations"]

    preset_dir = save_preset(student_lm, stage_dir / "preset")
    plot_perplexities(ppl, params, stage_dir / "perplexity.png")
    write_json(stage_dir / "generations.json", {"prompts": list(cfg.eval.prompts),
                                                "student": generations})
    metrics = {
        "teacher": source,
        "student_layers": student_backbone.num_layers,
        "student_hidden_dim": student_backbone.hidden_dim,
        "init": init,
        "temperature": d.temperature, "alpha": d.alpha,
        "steps": len(student_losses),
        "parameters": params,
        "val_perplexity": ppl,
        "student_vs_teacher": ppl["student"] / ppl["teacher"] - 1.0,
        "student_vs_baseline": ppl["student"] / ppl["baseline"] - 1.0,
        "student_beats_baseline": ppl["student"] < ppl["baseline"],
        "verdict": verdict,
        "loss_first_last": {"student": [student_losses[0], float(np.mean(student_losses[-5:]))],
                            "baseline": [baseline_losses[0],
                                         float(np.mean(baseline_losses[-5:]))]},
        "keras_decode_tokens_per_second": speed,
        "speedup": speed["student"] / speed["teacher"],
        "train_seconds": round(train_seconds, 1),
        "generations": generations,
    }
    return DistillResult(preset_dir=preset_dir, metrics=metrics)
