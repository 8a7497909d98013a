"""`python -m pipeline run CONFIG`: execute the stage notebooks in order with papermill.

A run is built in `<output_dir>/<name>.partial/` and renamed to `<output_dir>/<name>/` only
when every stage succeeded, so a finished-looking run folder is always complete. An
interrupted run leaves the `.partial` folder; running the same config again resumes from its
checkpoints (a different config starts afresh).

Run folder:
  config.yaml         the resolved config (every default filled in)
  metrics.json        one section per stage
  notebooks/          the executed notebooks, with their outputs
  finetune/           the fine-tuned preset, checkpoints, TensorBoard logs, plots
  distill/            the student preset, perplexity chart, generations
  export/text/        the .tflite text model, its op list and verification
  export/student_text/  the same for the distilled student
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from pipeline import config as config_lib
from pipeline.config import PROJECT_ROOT, RunConfig
from pipeline.errors import PipelineError
from pipeline.fsutil import replace_dir, write_json, write_text

NOTEBOOKS = PROJECT_ROOT / "notebooks"
STAGES = [("finetune", "01_finetune.ipynb"), ("distill", "02_distill.ipynb"),
          ("export", "03_export.ipynb")]


def stages(cfg: RunConfig) -> list:
    """Returns the (stage, notebook) pairs this config runs, in order."""
    enabled = {"finetune": True, "distill": cfg.distill.enabled, "export": cfg.export.enabled}
    return [(s, nb) for s, nb in STAGES if enabled[s]]


class StageFailed(PipelineError):
    """A notebook raised; the executed notebook keeps the traceback."""


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Returns `cfg` with the data path and a local preset made absolute (notebooks run elsewhere)."""
    data_path = cfg.data.path
    if not os.path.isabs(data_path):
        data_path = os.path.abspath(data_path)
    def local(preset):
        return os.path.abspath(preset) if preset and os.path.exists(preset) else preset

    return dataclasses.replace(
        cfg,
        output_dir=os.path.abspath(cfg.output_dir),
        data=dataclasses.replace(cfg.data, path=data_path),
        model=dataclasses.replace(cfg.model, preset=local(cfg.model.preset)),
        export=dataclasses.replace(cfg.export, preset=local(cfg.export.preset)),
    )


def preflight(cfg: RunConfig) -> None:
    """Fails fast, before any notebook starts, on bad data or an unreachable preset."""
    from pipeline.data import load_examples, split_examples
    from pipeline.presets import resolve_preset

    split_examples(load_examples(cfg.data), cfg.data.validation_fraction, cfg.data.seed)
    if cfg.model.preset != "embedded":  # the embedded base is built by the first notebook
        resolve_preset(cfg.model.preset)
    if cfg.export.enabled and cfg.export.preset:
        resolve_preset(cfg.export.preset)
    if cfg.export.enabled and cfg.export.verify:
        from pipeline.export import require_flex

        require_flex(cfg.export)


def _renamed_paths(value, old: Path, new: Path):
    """Returns `value` (JSON data) with every path inside `old` moved to `new`."""
    if isinstance(value, dict):
        return {k: _renamed_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == str(old) or value.startswith(str(old) + os.sep)):
        return str(new) + value[len(str(old)):]
    return value


def run(config_path, overrides: dict | None = None) -> Path:
    """Runs every stage notebook for the config; returns the finished run folder."""
    import papermill

    cfg = absolute_paths(config_lib.load_config(config_path, overrides))
    preflight(cfg)
    final = Path(cfg.output_dir) / cfg.name
    partial = final.with_name(final.name + ".partial")
    resolved = config_lib.dump_yaml(cfg)
    config_file = partial / "config.yaml"
    if partial.exists() and (not config_file.is_file() or config_file.read_text() != resolved):
        shutil.rmtree(partial)
    elif partial.exists():
        print(f"Resuming the interrupted run in {partial}")
    (partial / "notebooks").mkdir(parents=True, exist_ok=True)
    write_text(config_file, resolved)

    env_batch = os.environ.get("PIPELINE_BATCH")
    os.environ["PIPELINE_BATCH"] = "1"  # notebooks: plain progress output, no widgets
    try:
        for stage, notebook in stages(cfg):
            started = time.time()
            print(f"== {stage}: {notebook}", flush=True)
            out = partial / "notebooks" / notebook
            try:
                papermill.execute_notebook(
                    str(NOTEBOOKS / notebook), str(out),
                    parameters={"run_dir": str(partial), "config_file": str(config_file),
                                "overrides": {}},
                    cwd=str(PROJECT_ROOT), kernel_name="python3",
                    progress_bar=False, stdout_file=sys.stdout, stderr_file=sys.stderr,
                )
            except papermill.PapermillExecutionError as e:
                raise StageFailed(
                    f"stage {stage} failed: {e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}"
                    f" (executed notebook: {out})"
                ) from None
            print(f"== {stage} done in {time.time() - started:.0f}s", flush=True)
    finally:
        if env_batch is None:
            os.environ.pop("PIPELINE_BATCH", None)
        else:
            os.environ["PIPELINE_BATCH"] = env_batch
    metrics = partial / "metrics.json"
    if metrics.is_file():  # stages recorded their files under the folder's temporary name
        write_json(metrics, _renamed_paths(json.loads(metrics.read_text()), partial, final))
    replace_dir(partial, final)
    return final
