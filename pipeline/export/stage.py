"""Export stage: the run's models -> every target in `export.targets`, each verified.

The teacher (export.preset, else the run's fine-tuned model) goes to export/text and
export/litertlm; when the run distilled a student, it goes to export/student_text and
export/student_litertlm. Each model is loaded once and handed to each target. Every export
folder gets manifest.json and MODEL_CARD.md (`handoff`), written before the folder is
published: each folder appears, or replaces the one before it, whole in one rename.
"""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.export.handoff import write_handoff
from pipeline.export.litertlm import export_litertlm
from pipeline.export.text import export_text_model
from pipeline.train.presets import WEIGHTS_FILE, check_local_preset, load_causal_lm
from pipeline.report import read_metrics
from pipeline.fsutil import atomic_dir, renamed_paths
from pipeline.run_folder import EXPORT_TARGETS, RunFolder
from pipeline.train.data import validation_examples


def export_preset(cfg: RunConfig, run_dir, preset: str | None = None, student: bool = False,
                  verbose: bool = True) -> dict:
    """Exports one preset (default: export.preset, else the run's fine-tuned model) to every
    target in export.targets; returns {target: result}."""
    folder = RunFolder(run_dir)
    source = preset or cfg.export.preset or str(check_local_preset(folder.finetune_preset))
    causal_lm = load_causal_lm(source)
    own_model = student or not (preset or cfg.export.preset)  # trained in this run
    training = training_facts(cfg, folder, student) if own_model else {"base_preset": source}
    results = {}
    for target in [t for t in EXPORT_TARGETS if t in cfg.export.targets]:
        final = folder.export(target, student)
        with atomic_dir(final) as staging:  # the target's files, manifest and card, at once
            if target == "text":
                result = export_text_model(cfg, causal_lm, staging, source, verbose=verbose)
            else:
                val_text = validation_examples(cfg.data, 32)  # what verification reads
                result = export_litertlm(cfg, causal_lm, staging, val_text, source,
                                         verbose=verbose)
            write_handoff(staging, target, "student" if student else "teacher", causal_lm,
                          result.metrics, training)
        results[target] = renamed_paths(result, staging, final)
    return results


def training_facts(cfg: RunConfig, folder: RunFolder, student: bool) -> dict:
    """What the model card and manifest say about training, from the run's metrics.json."""
    metrics = read_metrics(folder.root)
    finetune, distill = metrics.get("finetune", {}), metrics.get("distill", {})
    facts = {"base_preset": cfg.model.preset, "data_path": cfg.data.path,
             "data": finetune.get("data", {}).get("train", {})}
    if student:
        facts["val_perplexity"] = distill.get("val_perplexity", {})
        facts["teacher_parameters"] = distill.get("parameters", {}).get("teacher")
    elif finetune:
        facts["val_perplexity"] = {"before fine-tuning": finetune["before"]["val_perplexity"],
                                   "after fine-tuning": finetune["after"]["val_perplexity"]}
    return facts


def export_run_models(cfg: RunConfig, run_dir, verbose: bool = True) -> dict:
    """Exports the run's models; returns {"teacher": {target: result}, "student": ...}."""
    folder = RunFolder(run_dir)
    results = {"teacher": export_preset(cfg, run_dir, verbose=verbose)}
    student = folder.student_preset
    if cfg.distill.enabled and not cfg.export.preset and (student / WEIGHTS_FILE).is_file():
        results["student"] = export_preset(cfg, run_dir, preset=str(student), student=True,
                                           verbose=verbose)
    return results
