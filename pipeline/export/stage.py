"""Export stage: the run's models -> every target in `export.targets`, each verified.

`export_stage(cfg, run_dir)` is the stage, called unchanged by notebook 03 and by
`python -m pipeline export`: the teacher (export.preset, else the run's fine-tuned model) goes
to export/text and export/litertlm; when the run distilled a student, it goes to
export/student_text and export/student_litertlm; the metrics go to metrics.json under
"export". Each target builds its graph from the preset in a child process (`build_child`),
so the exporting process holds no model while the converter's child runs (GPT-2 medium).
Every export folder gets manifest.json and MODEL_CARD.md (`handoff`), written before the
folder is published: each folder appears, or replaces the one before it, whole in one rename.
"""

from __future__ import annotations

from pipeline.choices import ExportTarget
from pipeline.config import RunConfig
from pipeline.export.handoff import ExportResult, write_handoff
from pipeline.export.litertlm import export_litertlm
from pipeline.export.text import export_text_model
from pipeline.fsutil import atomic_dir, renamed_paths
from pipeline.report import read_metrics, write_metrics
from pipeline.run_folder import RunFolder
from pipeline.train.presets import WEIGHTS_FILE, check_local_preset, resolve_preset

# The one registry of targets: each exporter is (cfg, preset, out_dir, verbose=) -> ExportResult.
EXPORTERS = {ExportTarget.TEXT: export_text_model, ExportTarget.LITERTLM: export_litertlm}


def export_stage(cfg: RunConfig, run_dir, verbose: bool = True) -> dict:
    """Exports the run's models, records them in metrics.json; returns the metrics,
    {"teacher": {target: metrics}, "student": {...}} (student only when the run distilled)."""
    folder = RunFolder(run_dir)
    results = {"teacher": export_preset(cfg, run_dir, verbose=verbose)}
    student = folder.student_preset
    if cfg.distill.enabled and not cfg.export.preset and (student / WEIGHTS_FILE).is_file():
        results["student"] = export_preset(cfg, run_dir, preset=str(student), student=True,
                                           verbose=verbose)
    metrics = {role: {target: r.metrics for target, r in targets.items()}
               for role, targets in results.items()}
    write_metrics(folder.root, "export", metrics)
    return metrics


def export_preset(cfg: RunConfig, run_dir, preset: str | None = None, student: bool = False,
                  verbose: bool = True) -> dict[str, ExportResult]:
    """Exports one preset (default: export.preset, else the run's fine-tuned model) to every
    target in export.targets; returns {target: result}."""
    folder = RunFolder(run_dir)
    source = preset or cfg.export.preset or str(check_local_preset(folder.finetune_preset))
    resolve_preset(source)  # a missing or broken preset fails here, before any folder exists
    own_model = student or not (preset or cfg.export.preset)  # trained in this run
    training = training_facts(cfg, folder, student) if own_model else {"base_preset": source}
    results = {}
    for target in [t for t in ExportTarget if t in cfg.export.targets]:  # registry order
        final = folder.export(target, student)
        with atomic_dir(final) as staging:  # the target's files, manifest and card, at once
            result = EXPORTERS[target](cfg, source, staging, verbose=verbose)
            write_handoff(staging, target, "student" if student else "teacher", result,
                          training)
        results[str(target)] = renamed_paths(result, staging, final)
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
