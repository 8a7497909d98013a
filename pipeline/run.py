"""`python -m pipeline run CONFIG`: execute the stage notebooks in order with papermill.

A run is built in `<output_dir>/<name>.partial/` and renamed to `<output_dir>/<name>/` only
when every stage succeeded, so a finished-looking run folder is always complete (its layout:
`RunFolder`). While it runs, a lock refuses a second run of the same name. An interrupted or
failed run keeps the `.partial` folder only if it can resume from it (a finished stage or a
checkpoint); running the same config again skips finished stages and resumes the fine-tune
from its last epoch (a different config starts afresh). Stage times are printed at the end
and recorded in metrics.json under "run".
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import papermill

from pipeline import config as config_lib
from pipeline.train.embedded_base import embedded_preset
from pipeline.config import PROJECT_ROOT, RunConfig
from pipeline.errors import PipelineError
from pipeline.fsutil import replace_dir, write_json, write_text
from pipeline.train.presets import resolve_preset
from pipeline.report import read_metrics, write_metrics
from pipeline.run_folder import RunFolder, writable_folder
from pipeline.runtime.flex import require_flex
from pipeline.train.data import check_data

NOTEBOOKS = PROJECT_ROOT / "notebooks"
STAGES = [("finetune", "01_finetune.ipynb"), ("distill", "02_distill.ipynb"),
          ("export", "03_export.ipynb")]


class StageFailed(PipelineError):
    """A notebook raised; the executed notebook keeps the traceback."""


def stages(cfg: RunConfig) -> list:
    """Returns the (stage, notebook) pairs this config runs, in order."""
    enabled = {"finetune": True, "distill": cfg.distill.enabled, "export": cfg.export.enabled}
    return [(s, nb) for s, nb in STAGES if enabled[s]]


def run(config_path, overrides: dict | None = None) -> Path:
    """Runs every stage notebook for the config; returns the finished run folder."""
    cfg = config_lib.absolute_paths(config_lib.load_config(config_path, overrides))
    preflight(cfg)
    final = RunFolder(Path(cfg.output_dir) / cfg.name)
    partial = RunFolder(final.root.with_name(final.root.name + ".partial"))
    with final.lock():
        times = {}
        try:
            _prepare(partial, config_lib.dump_yaml(cfg))
            if cfg.model.preset == "embedded":  # built once, then cached
                started = time.time()
                embedded_preset()
                times["base"] = time.time() - started
            for stage, notebook in stages(cfg):
                times[stage] = _run_stage(stage, notebook, partial)
        except (PipelineError, OSError, KeyboardInterrupt):
            _keep_if_resumable(partial)
            raise
        times["total"] = sum(times.values())
        write_metrics(partial.root, "run", {"stage_seconds": {k: round(v, 1)
                                                              for k, v in times.items()}})
        _finish(partial, final)
    print("Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()), flush=True)
    return final.root


def preflight(cfg: RunConfig) -> None:
    """Fails fast, before anything is written, on bad data, paths or an unreachable preset."""
    check_data(cfg.data)
    writable_folder(cfg.output_dir, "output_dir")
    if cfg.model.preset != "embedded":  # the embedded base is built by `run` itself
        resolve_preset(cfg.model.preset)
    if cfg.export.enabled and cfg.export.preset:
        resolve_preset(cfg.export.preset)
    if cfg.export.enabled and cfg.export.verify:
        require_flex(cfg.export)


def _prepare(partial: RunFolder, resolved: str) -> None:
    """Creates the partial folder, or keeps an interrupted one made by the same config."""
    root = partial.root
    if root.exists() and (not partial.config_file.is_file()
                          or partial.config_file.read_text() != resolved):
        shutil.rmtree(root)
    elif root.exists():
        print(f"Resuming the interrupted run in {root}")
    partial.notebooks.mkdir(parents=True, exist_ok=True)
    write_text(partial.config_file, resolved)


def _run_stage(stage: str, notebook: str, partial: RunFolder) -> float:
    """Executes one notebook into the run folder (skipped if it finished before); seconds."""
    if stage in read_metrics(partial.root):
        print(f"== {stage}: finished in an earlier attempt, skipped", flush=True)
        return 0.0
    started = time.time()
    print(f"== {stage}: {notebook}", flush=True)
    out = partial.notebooks / notebook
    env_batch = os.environ.get("PIPELINE_BATCH")
    os.environ["PIPELINE_BATCH"] = "1"  # notebooks: plain progress output, no widgets
    try:
        papermill.execute_notebook(
            str(NOTEBOOKS / notebook), str(out),
            parameters={"run_dir": str(partial.root), "config_file": str(partial.config_file),
                        "overrides": {}},
            cwd=str(PROJECT_ROOT), kernel_name="python3",
            progress_bar=False, stdout_file=sys.stdout, stderr_file=sys.stderr,
        )
    except papermill.PapermillExecutionError as e:
        first = e.evalue.splitlines()[0] if e.evalue else ""
        raise StageFailed(f"stage {stage} failed: {e.ename}: {first} (executed notebook: {out})"
                          ) from None
    finally:
        if env_batch is None:
            os.environ.pop("PIPELINE_BATCH", None)
        else:
            os.environ["PIPELINE_BATCH"] = env_batch
    seconds = time.time() - started
    print(f"== {stage} done in {seconds:.0f}s", flush=True)
    return seconds


def _keep_if_resumable(partial: RunFolder) -> None:
    """Removes the partial folder unless a finished stage or a checkpoint is worth keeping."""
    root = partial.root
    if not root.exists():
        return
    resumable = bool(set(read_metrics(root)) - {"run"}) or \
        (partial.checkpoints / "latest.json").is_file()
    if resumable:
        print(f"The unfinished run stays in {root}: run the same command again to resume",
              file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


def _finish(partial: RunFolder, final: RunFolder) -> None:
    """Renames the partial folder to the final one; recorded paths follow it."""
    if partial.metrics_file.is_file():  # stages recorded their files under the temporary name
        data = json.loads(partial.metrics_file.read_text())
        write_json(partial.metrics_file, _renamed_paths(data, partial.root, final.root))
    replace_dir(partial.root, final.root)


def _renamed_paths(value, old: Path, new: Path):
    """Returns `value` (JSON data) with every path inside `old` moved to `new`."""
    if isinstance(value, dict):
        return {k: _renamed_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == str(old) or value.startswith(str(old) + os.sep)):
        return str(new) + value[len(str(old)):]
    return value
