"""Typed run configuration: frozen dataclasses hold every default, YAML holds overrides.

A YAML config mirrors `RunConfig`: top-level keys `name`, `output_dir` and one mapping per
section (`model`, `data`, `finetune`, `eval`). Unknown keys, wrong types and bad YAML are
rejected with the file and the key named.

Example:
    >>> cfg = load_config(None, {"finetune": {"epochs": 1}})
    >>> cfg.finetune.epochs
    1
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.choices import (Distribution, ExportTarget, Precision,  # noqa: F401
                              Quantization, Sampler, Sampling, choices)
from pipeline.errors import ConfigError
from pipeline.overrides import apply_overrides, read_yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelConfig:
    # "embedded" (small GPT-2 built here, offline) | a keras-hub preset name such as
    # "gpt2_base_en" | "hf://org/name" | "kaggle://owner/model/keras/variant" | a local preset folder
    preset: str = "embedded"


@dataclass(frozen=True)
class DataConfig:
    path: str = "configs/data/kitchen_notes.txt"  # a .txt/.jsonl/.csv file, a folder, or a glob
    format: str = "auto"  # auto | txt | jsonl | csv  (auto: from each file's extension)
    txt_mode: str = "auto"  # auto | line | paragraph  (auto: paragraph if the file has blank lines)
    field: str = "text"  # the JSONL field or CSV column that holds the text
    min_chars: int = 1  # examples shorter than this (after stripping) are dropped
    packing: bool = True  # true: examples joined by <|endoftext|>, cut into full windows (every
    #                       token trained on once); false: one example per row, padded or cut
    validation_fraction: float = 0.1  # share of examples held out, in (0, 1)
    validation_tokens: int = 131072  # perplexity reads at most this many (evenly spaced windows)
    seed: int = 1234  # seed of the train/validation split


@dataclass(frozen=True)
class FinetuneConfig:
    sequence_length: int = 192  # tokens per example incl. start/end token; <= the model's limit
    batch_size: int = 16
    micro_batch_size: int = 0  # 0 = batch_size; else rows per pass, gradients averaged per batch
    epochs: int = 8
    max_steps: int = 0  # 0 = no limit; else stop after this many optimizer steps
    learning_rate: float = 2e-3  # peak learning rate of AdamW
    warmup_fraction: float = 0.1  # share of steps with linear warm-up, then cosine decay
    weight_decay: float = 0.01
    lora_rank: int = 0  # 0 = full fine-tuning; > 0 = LoRA of that rank (merged when saved)
    # auto | none | mirrored | multi_worker | tpu (distill too)
    distribution: Distribution = Distribution.AUTO
    # float32 | mixed_float16 (GPU) | mixed_bfloat16 (TPU, Ampere+)
    precision: Precision = Precision.FLOAT32
    jit_compile: bool = True  # XLA step on one device (distill too); holds a 2nd training state
    keep_checkpoints: bool = False  # false: optimizer checkpoints are deleted once the stage ends
    seed: int = 42


@dataclass(frozen=True)
class EvalConfig:
    prompts: tuple[str, ...] = (
        "Tomato soup.",
        "Honey oat bread.",
        "Roast carrots with",
    )
    max_length: int = 64  # tokens of prompt + generation
    top_k: int = 10  # sampler for the "sampled" generations
    temperature: float = 0.8
    batch_size: int = 32  # batch size when computing validation loss
    seed: int = 7

    @property
    def sampling(self) -> Sampling:
        """The sampler of the "sampled" generations (greedy ones are made too)."""
        return Sampling(Sampler.TOP_K, top_k=self.top_k, temperature=self.temperature,
                        seed=self.seed)


@dataclass(frozen=True)
class DistillConfig:
    enabled: bool = False  # `python -m pipeline run` distills after fine-tuning when true
    student_layers: int = 0  # 0 = half the teacher's; initialised from every other teacher layer
    student_hidden_dim: int = 0  # 0 = the teacher's (weights copied); else smaller, random init
    temperature: float = 2.0  # T: softens both distributions in the KL term
    alpha: float = 0.5  # weight of T^2 * KL(teacher || student); 1 - alpha weighs the label loss
    epochs: int = 4
    max_steps: int = 0  # 0 = no limit
    batch_size: int = 16
    micro_batch_size: int = 0  # 0 = batch_size (as finetune.micro_batch_size)
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    speed_tokens: int = 48  # new tokens generated when timing Keras decode speed
    seed: int = 11


@dataclass(frozen=True)
class ExportConfig:
    enabled: bool = True  # `python -m pipeline run` exports after fine-tuning
    targets: tuple[ExportTarget, ...] = (ExportTarget.TEXT, ExportTarget.LITERTLM)  # text: one-shot .tflite; litertlm: streaming bundle
    preset: str = ""  # "" = the run's fine-tuned model; else any preset (see model.preset)
    quantization: Quantization = Quantization.INT8  # none (fp32) | fp16 | int8 | int4
    max_length: int = 64  # tokens of prompt + generation, fixed in the exported graph
    sampler: Sampler = Sampler.GREEDY  # greedy | top_k | top_p
    top_k: int = 40
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0  # sampling seed baked into the model (same prompt -> same text)
    prompts: tuple[str, ...] = ()  # verification prompts; () = eval.prompts plus edge cases
    verify: bool = True  # run the .tflite in the Flex interpreter and compare with Keras
    flex_python: str = ".venv-flex/bin/python"  # Python with TF 2.16.1 (stock Flex runtime)
    context: int = 0  # litertlm: KV cache length; 0 = the model's position limit
    prefill_lengths: tuple[int, ...] = (32, 128)  # litertlm: one prefill_<T> signature each
    threads: int = 2  # litertlm: CPU threads for verification and `generate`
    # litertlm: the bundle's perplexity reads at most this many of fine-tuning's validation
    # tokens (evenly spaced windows; all of them with the default data), one decode step each
    perplexity_tokens: int = 8192

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.sampler, top_k=self.top_k, top_p=self.top_p,
                        temperature=self.temperature, seed=self.seed)


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"  # run folder: <output_dir>/<name>
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_config(path=None, overrides: dict | None = None) -> RunConfig:
    """Returns the defaults, updated by the YAML file at `path`, then by `overrides`."""
    cfg = RunConfig()
    if path:
        cfg = apply_overrides(cfg, read_yaml(path), f"{path}:")
    if overrides:
        cfg = apply_overrides(cfg, overrides, "overrides:")
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Returns `cfg` with the data path and a local preset made absolute (notebooks run elsewhere)."""
    def local(preset):
        return os.path.abspath(preset) if preset and os.path.exists(preset) else preset

    return dataclasses.replace(
        cfg,
        output_dir=os.path.abspath(cfg.output_dir),
        data=dataclasses.replace(cfg.data, path=os.path.abspath(cfg.data.path)),
        model=dataclasses.replace(cfg.model, preset=local(cfg.model.preset)),
        export=dataclasses.replace(cfg.export, preset=local(cfg.export.preset)),
    )


def validate(cfg: RunConfig) -> None:
    """Raises ConfigError for values that have the right type but an impossible value."""
    data, ft, ev, ex, ds = cfg.data, cfg.finetune, cfg.eval, cfg.export, cfg.distill
    checks = [
        (bool(cfg.name) and not set(cfg.name) & set("/\\\0") and len(cfg.name) <= 200
         and not cfg.name.startswith(".") and cfg.name.isprintable(),
         f"name: {cfg.name!r} must be a plain folder name (no /, no leading dot, printable, "
         f"at most 200 characters)"),
        (not cfg.name.endswith(".partial"),
         f"name: {cfg.name!r} ends with .partial, the suffix of an unfinished run's folder: "
         f"choose another name"),
        (data.format in ("auto", "txt", "jsonl", "csv"),
         f"data.format: {data.format!r} is not one of auto, txt, jsonl, csv"),
        (data.txt_mode in ("auto", "line", "paragraph"),
         f"data.txt_mode: {data.txt_mode!r} is not one of auto, line, paragraph"),
        (0.0 < data.validation_fraction < 1.0,
         f"data.validation_fraction: {data.validation_fraction} must be between 0 and 1"),
        (data.validation_tokens >= 1,
         f"data.validation_tokens: {data.validation_tokens} must be >= 1"),
        (ft.sequence_length >= 8, f"finetune.sequence_length: {ft.sequence_length} must be >= 8"),
        (ft.batch_size >= 1, f"finetune.batch_size: {ft.batch_size} must be >= 1"),
        _divides(ft.micro_batch_size, ft.batch_size, "finetune"),
        (ft.epochs >= 1, f"finetune.epochs: {ft.epochs} must be >= 1"),
        (ft.max_steps >= 0, f"finetune.max_steps: {ft.max_steps} must be >= 0 (0 = no limit)"),
        (ft.learning_rate > 0, f"finetune.learning_rate: {ft.learning_rate} must be > 0"),
        (0.0 <= ft.warmup_fraction < 1.0,
         f"finetune.warmup_fraction: {ft.warmup_fraction} must be in [0, 1)"),
        (ft.lora_rank >= 0, f"finetune.lora_rank: {ft.lora_rank} must be >= 0 (0 = off)"),
        (ft.distribution in set(Distribution),
         f"finetune.distribution: {ft.distribution!r} is not one of {choices(Distribution)}"),
        (ft.precision in set(Precision),
         f"finetune.precision: {ft.precision!r} is not one of {choices(Precision)}"),
        (ev.max_length >= 2, f"eval.max_length: {ev.max_length} must be >= 2"),
        (ev.top_k >= 1, f"eval.top_k: {ev.top_k} must be >= 1"),
        (ev.temperature > 0, f"eval.temperature: {ev.temperature} must be > 0"),
        (ds.student_layers >= 0, f"distill.student_layers: {ds.student_layers} must be >= 0 "
                                "(0 = half the teacher's)"),
        (ds.student_hidden_dim >= 0, f"distill.student_hidden_dim: {ds.student_hidden_dim} must "
                                    f"be >= 0 (0 = the teacher's)"),
        (ds.temperature > 0, f"distill.temperature: {ds.temperature} must be > 0"),
        (0.0 <= ds.alpha <= 1.0, f"distill.alpha: {ds.alpha} must be in [0, 1]"),
        (ds.epochs >= 1, f"distill.epochs: {ds.epochs} must be >= 1"),
        (ds.max_steps >= 0, f"distill.max_steps: {ds.max_steps} must be >= 0 (0 = no limit)"),
        (ds.batch_size >= 1, f"distill.batch_size: {ds.batch_size} must be >= 1"),
        _divides(ds.micro_batch_size, ds.batch_size, "distill"),
        (ds.learning_rate > 0, f"distill.learning_rate: {ds.learning_rate} must be > 0"),
        (ex.quantization in set(Quantization),
         f"export.quantization: {ex.quantization!r} is not one of {choices(Quantization)}"),
        (ex.sampler in set(Sampler),
         f"export.sampler: {ex.sampler!r} is not one of {choices(Sampler)}"),
        (set(ex.targets) <= set(ExportTarget),
         f"export.targets: {[str(t) for t in ex.targets]} may hold only "
         f"{choices(ExportTarget)}"),
        (ex.max_length >= 2, f"export.max_length: {ex.max_length} must be >= 2"),
        (ex.top_k >= 1, f"export.top_k: {ex.top_k} must be >= 1"),
        (0.0 < ex.top_p <= 1.0, f"export.top_p: {ex.top_p} must be in (0, 1]"),
        (ex.temperature > 0, f"export.temperature: {ex.temperature} must be > 0"),
        (ex.context >= 0, f"export.context: {ex.context} must be >= 0 (0 = position limit)"),
        (bool(ex.prefill_lengths) and min(ex.prefill_lengths) >= 1,
         f"export.prefill_lengths: {list(ex.prefill_lengths)} must be one or more lengths >= 1"),
        (ex.threads >= 1, f"export.threads: {ex.threads} must be >= 1"),
        (ex.perplexity_tokens >= 1,
         f"export.perplexity_tokens: {ex.perplexity_tokens} must be >= 1"),
    ]
    for section, values in (("data", data), ("finetune", ft), ("eval", ev), ("distill", ds),
                            ("export", ex)):
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                checks.append((False, f"{section}.{f.name}: {value} must be a finite number"))
            if f.name == "seed" and isinstance(value, int) and not 0 <= value < 2 ** 32:
                checks.append((False, f"{section}.{f.name}: {value} must be in [0, 2**32)"))
    checks += [
        (ev.batch_size >= 1, f"eval.batch_size: {ev.batch_size} must be >= 1"),
        (bool(ev.prompts) and all(p.strip() for p in ev.prompts),
         f"eval.prompts: {list(ev.prompts)} must be one or more non-empty prompts"),
        (all(p.strip() for p in ex.prompts),
         f"export.prompts: {list(ex.prompts)} must not hold an empty prompt (an empty list "
         f"means eval.prompts plus edge cases)"),
        (not ex.enabled or bool(ex.targets),
         "export.targets: [] names no target; give text, litertlm or both, or set "
         "export.enabled: false"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _divides(micro: int, batch: int, section: str) -> tuple[bool, str]:
    return (micro == 0 or (micro >= 1 and batch % micro == 0),
            f"{section}.micro_batch_size: {micro} must divide {section}.batch_size {batch} "
            f"(0 = the whole batch in one pass)")


def accumulation_steps(micro: int, batch: int) -> int:
    """Passes per optimizer step: batch_size / micro_batch_size (1 when micro is 0)."""
    return batch // micro if micro else 1


def to_dict(cfg) -> dict:
    """Returns the config as plain YAML-able data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return plain(dataclasses.asdict(v))
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
