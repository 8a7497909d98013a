"""`python -m pipeline run CONFIG`: execute the stage notebooks in order with papermill.

A run is built in `<output_dir>/<name>.partial/` and renamed to `<output_dir>/<name>/` only
when every stage succeeded, so a finished-looking run folder is always complete (its layout:
`RunFolder`). While it runs, a lock refuses a second run (or a sweep) of the same name; a
name whose folder is not a run's (a sweep's, say) is refused, never replaced.

Resume is per stage: each stage's fingerprint (`fingerprints`: its config sections, the data
files' contents, the fingerprints of the stages it reads) is recorded in `stages.json` when it
starts. Running again after a failure or an interruption reuses every finished stage whose
fingerprint is unchanged and resumes an unfinished fine-tune from its last checkpoint; a stage
whose fingerprint changed is run again, with every stage after it (so a changed
`export.quantization` re-runs only export, a changed data file everything). `fresh=True`
(`--fresh`) starts over. Stage times and the reused stages are recorded in metrics.json under
"run".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import papermill

from pipeline import config as config_lib
from pipeline.config import PROJECT_ROOT, RunConfig
from pipeline.errors import PipelineError
from pipeline.fsutil import renamed_paths, replace_dir, write_json, write_text
from pipeline.train.presets import resolve_preset
from pipeline.report import read_metrics, write_metrics
from pipeline.run_folder import RunFolder, writable_folder
from pipeline.runtime.flex import require_flex
from pipeline.train.data import check_data, find_files

NOTEBOOKS = PROJECT_ROOT / "notebooks"
STAGES = [("finetune", "01_finetune.ipynb"), ("distill", "02_distill.ipynb"),
          ("export", "03_export.ipynb")]


class StageFailed(PipelineError):
    """A notebook raised; the executed notebook keeps the traceback."""


def stages(cfg: RunConfig) -> list:
    """Returns the (stage, notebook) pairs this config runs, in order."""
    enabled = {"finetune": True, "distill": cfg.distill.enabled, "export": cfg.export.enabled}
    return [(s, nb) for s, nb in STAGES if enabled[s]]


def run(config_path, overrides: dict | None = None, fresh: bool = False) -> Path:
    """Runs every stage notebook for the config; returns the finished run folder."""
    cfg = config_lib.absolute_paths(config_lib.load_config(config_path, overrides))
    preflight(cfg)
    final = RunFolder(Path(cfg.output_dir) / cfg.name)
    partial = RunFolder(final.root.with_name(final.root.name + ".partial"))
    with final.lock():
        check_replaceable(final)
        times, reused = {}, []
        try:
            prints = fingerprints(cfg)
            _prepare(partial, config_lib.dump_yaml(cfg), prints, fresh)
            if cfg.model.preset == "embedded":  # built once, then cached
                from pipeline.train.embedded_base import embedded_preset  # loads TensorFlow

                started = time.time()
                embedded_preset()
                times["base"] = time.time() - started
            for stage, notebook in stages(cfg):
                if stage in read_metrics(partial.root):
                    print(f"== {stage}: finished in an earlier attempt with the same "
                          f"settings and data, reused", flush=True)
                    reused.append(stage)
                    continue
                _record_stage(partial, stage, prints[stage])
                times[stage] = _run_stage(stage, notebook, partial)
        except (PipelineError, OSError, KeyboardInterrupt):
            _keep_if_resumable(partial)
            raise
        times["total"] = sum(times.values())
        write_metrics(partial.root, "run", {"stage_seconds": {k: round(v, 1)
                                                              for k, v in times.items()},
                                            "reused_stages": reused})
        _finish(partial, final)
    print("Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()), flush=True)
    return final.root


def preflight(cfg: RunConfig) -> None:
    """Fails fast, before anything is written, on bad data, paths or an unreachable preset."""
    check_data(cfg.data)
    if cfg.model.preset != "embedded":  # the embedded base is built by `run` itself
        resolve_preset(cfg.model.preset)
    if cfg.export.enabled and cfg.export.preset:
        resolve_preset(cfg.export.preset)
    if cfg.export.enabled and cfg.export.verify:
        require_flex(cfg.export)
    writable_folder(cfg.output_dir, "output_dir")  # last: it creates the folder


def check_replaceable(final: RunFolder) -> None:
    """Refuses a name whose folder exists but is not a finished run's: a run replaces only
    what a run made (a sweep's folder, or any other, stays as it is)."""
    root = final.root
    if not root.exists() and not root.is_symlink():
        return
    made_by_a_run = (root.is_dir() and not root.is_symlink() and final.config_file.is_file()
                     and "run" in read_metrics(root) and not (root / "points").exists())
    if not made_by_a_run:
        kind = "a sweep's folder" if (root / "points").is_dir() else "not a run folder"
        raise PipelineError(f"name: {root} exists and is {kind}; a run replaces only a run "
                            f"it made: choose another name (--set name=...)")


STAGE_SECTIONS = {"finetune": ("model", "data", "finetune", "eval"),
                  "distill": ("distill",), "export": ("export",)}


def fingerprints(cfg: RunConfig) -> dict:
    """{stage: digest of what it depends on}: its config sections and the data files'
    contents, chained through the stages it reads (distill reads fine-tune's model; export
    reads both)."""
    data = [(str(p), _file_digest(p)) for p in find_files(cfg.data.path)]
    plain = config_lib.to_dict(cfg)
    prints, upstream = {}, data
    for stage, sections in STAGE_SECTIONS.items():
        upstream = _digest([upstream, {k: plain[k] for k in sections}])
        prints[stage] = upstream
    return prints


def _prepare(partial: RunFolder, resolved: str, prints: dict, fresh: bool) -> None:
    """Creates the partial folder, or keeps what an interrupted or failed attempt finished
    with the same fingerprints (stages whose fingerprint changed, and those after them, are
    removed: the run made them)."""
    root = partial.root
    if root.exists() and fresh:
        print(f"--fresh: starting over (removing {root})")
        shutil.rmtree(root)
    elif root.exists():
        recorded, done = _read_json(partial.root / "stages.json"), read_metrics(root)
        changed = False  # once a stage changed, every stage after it runs again
        for stage in STAGE_SECTIONS:
            if stage in recorded or stage in done:
                changed = changed or recorded.get(stage) != prints[stage]
                if changed:
                    _forget_stage(partial, stage)
        kept = [s for s in STAGE_SECTIONS if s in read_metrics(root)]
        print(f"Resuming the interrupted run in {root}"
              + (f" (reusing {', '.join(kept)})" if kept else ""))
    partial.notebooks.mkdir(parents=True, exist_ok=True)
    write_text(partial.config_file, resolved)


def _forget_stage(partial: RunFolder, stage: str) -> None:
    """Removes what stage `stage` wrote into the partial folder, its metrics and its print."""
    print(f"  {stage}: its settings, data or input changed: it runs again")
    shutil.rmtree(partial.root / stage, ignore_errors=True)
    metrics = read_metrics(partial.root)
    if stage in metrics:
        del metrics[stage]
        write_json(partial.metrics_file, metrics)
    recorded = _read_json(partial.root / "stages.json")
    recorded.pop(stage, None)
    write_json(partial.root / "stages.json", recorded)


def _record_stage(partial: RunFolder, stage: str, fingerprint: str) -> None:
    recorded = _read_json(partial.root / "stages.json")
    recorded[stage] = fingerprint
    write_json(partial.root / "stages.json", recorded)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_stage(stage: str, notebook: str, partial: RunFolder) -> float:
    """Executes one notebook into the run folder; seconds."""
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
    except (KeyboardInterrupt, PipelineError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 (nbclient's DeadKernelError, a timeout, ...)
        text = (str(e).strip().splitlines() or [""])[0]
        raise StageFailed(f"stage {stage} failed: the notebook's kernel stopped "
                          f"({type(e).__name__}{': ' + text if text else ''}; executed "
                          f"notebook: {out})") from None
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
        write_json(partial.metrics_file, renamed_paths(data, partial.root, final.root))
    check_replaceable(final)  # still a run's (or nothing) under the lock
    replace_dir(partial.root, final.root)
