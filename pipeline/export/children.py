"""Export's child processes, started here: the build child (`build_child.py`: a target's
graph from the preset, saved as a SavedModel) and the converter child (`convert_child.py`:
SavedModel to flatbuffer). Each exits before the next starts, so its memory goes back to the
system and the exporting process holds neither a model nor the converter's copies.

Children are named by module path, not imported (`build_child` imports the targets, which
import this). They run on the CPU, as the exported files run and are verified: a GPU the
notebook's kernel holds (TensorFlow reserves its memory) stays the kernel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline import errors
from pipeline.config import PROJECT_ROOT, RunConfig, absolute_paths, dump_yaml
from pipeline.fsutil import write_text
from pipeline.heap import release_freed_memory


def run_child(module: str, *args: str, what: str) -> None:
    """Runs `python -m module args` on the CPU. A child's one-line error of a PipelineError
    kind (its last stderr line, `Kind: message`, exit 2) is raised here as that kind; any
    other failure as a PipelineError naming `what`."""
    child = subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if child.returncode == 0:
        return
    lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no message"
    kind, _, message = last.partition(": ")
    if child.returncode == 2 and isinstance(getattr(errors, kind, None), type):
        raise getattr(errors, kind)(message)
    why = "was killed (out of memory?)" if child.returncode == -9 else f"failed: {last}"
    raise errors.PipelineError(f"{what} {why}")


def build_in_child(target: str, cfg: RunConfig, source: str, saved_model_dir) -> dict:
    """Builds `target`'s SavedModel of preset `source` in `saved_model_dir` in the build
    child; returns the facts it reports (prompts, expected texts, model facts, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        config, facts = Path(tmp) / "config.yaml", Path(tmp) / "facts.json"
        write_text(config, dump_yaml(absolute_paths(cfg)))
        run_child("pipeline.export.build_child", target, str(config), source,
                  str(saved_model_dir), str(facts), what=f"building the {target} model")
        return json.loads(facts.read_text())


def convert_in_child(saved_model_dir, select_tf_ops: bool) -> bytes:
    """Returns the float32 TFLite flatbuffer of a SavedModel, converted by the converter
    child. This process first hands back the heap it freed, so that it and the child are not
    both at their peak."""
    release_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "float.tflite"
        run_child("pipeline.export.convert_child", str(saved_model_dir), str(out),
                  "select_tf" if select_tf_ops else "builtins", what="the TFLite converter")
        if not out.is_file():
            raise errors.PipelineError("the TFLite converter wrote no model")
        return out.read_bytes()
