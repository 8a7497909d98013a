"""Running a text `.tflite` in TFLite's Flex interpreter, which lives in another environment.

The text model is verified in TFLite 2.16.1, the runtime of the newest stock select-TF-ops
library mobile teams install (`org.tensorflow:tensorflow-lite-select-tf-ops:2.16.1`): pip's
`tensorflow-cpu==2.16.1` links the Flex delegate into its Python interpreter. keras-hub needs
TF >= 2.20, so the file runs in `.venv-flex` (made by the Makefile) through
`pipeline/runtime/flex_child.py`, which imports nothing else of the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from pipeline.config import PROJECT_ROOT, ExportConfig
from pipeline.errors import PipelineError


def flex_python(export: ExportConfig) -> Path:
    path = Path(export.flex_python)
    return path if path.is_absolute() else PROJECT_ROOT / path


def require_flex(export: ExportConfig) -> Path:
    """Returns the Flex environment's Python, or raises a one-line set-up message."""
    python = flex_python(export)
    if not python.exists():
        raise PipelineError(
            f"export.verify needs a Python whose TFLite interpreter has the Flex delegate "
            f"(TF 2.16.1) at {python}: run `make flex-env` (in a notebook: run its set-up "
            f"cell, which builds it) or set export.verify: false"
        )
    return python


def run_in_flex(model_path: Path, prompts: list[str], export: ExportConfig,
                threads: int | None = None) -> dict:
    """Runs the .tflite on each prompt in the Flex interpreter (with `threads`, else TFLite's
    default); returns the child's report."""
    python = require_flex(export)
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file, out_file = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        prompts_file.write_text(json.dumps(prompts, ensure_ascii=False), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [str(python), "-m", "pipeline.runtime.flex_child", str(model_path),
             str(prompts_file), str(out_file), *([str(threads)] if threads else [])],
            capture_output=True, text=True, env=env, cwd=str(PROJECT_ROOT),
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"the Flex interpreter could not run {model_path.name}: {tail}")
        return json.loads(out_file.read_text(encoding="utf-8"))
