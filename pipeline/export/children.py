"""Export's child processes, started here: the build child (`build_child.py`: a target's
graph from the preset, saved as a SavedModel) and the converter child (`convert_child.py`:
SavedModel to flatbuffer). Each exits before the next starts, so its memory goes back to the
system and the exporting process holds neither a model nor the converter's copies.

Children are named by module path, not imported (`build_child` imports the targets, which
import this). They run on the CPU (`processes.run_child`), as the exported files run and
are verified: a GPU the notebook's kernel holds (TensorFlow reserves its memory) stays the
kernel's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline import errors
from pipeline.config import RunConfig
from pipeline.heap import release_freed_memory
from pipeline.processes import run_child, run_config_child


def build_in_child(target: str, cfg: RunConfig, source: str, saved_model_dir) -> dict:
    """Builds `target`'s SavedModel of preset `source` in `saved_model_dir` in the build
    child; returns the facts it reports (prompts, expected texts, model facts, ...)."""
    return run_config_child("pipeline.export.build_child", cfg, target, source,
                            str(saved_model_dir), what=f"building the {target} model")


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
