"""The TFLite converter in a child process: SavedModel folder in, flatbuffer file out.

`TFLiteConverter.convert()` keeps memory after it returns, also after the converter is
deleted (tensorflow/tensorflow#122598), and an export converts up to four models in one
process (the teacher's and the student's text model and bundle). At GPT-2 medium that piled up
past Colab's 12 GB. In a child, each conversion's memory goes back to the system when the
child exits, and the exporting process never holds the converter's copies of the weights.

    python -m pipeline.export.convert_child SAVED_MODEL_DIR OUT_FILE builtins|select_tf
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config import PROJECT_ROOT
from pipeline.errors import PipelineError
from pipeline.export.build_child import cpu_only
from pipeline.heap import release_freed_memory


def convert_in_child(saved_model_dir, select_tf_ops: bool) -> bytes:
    """Returns the float32 TFLite flatbuffer of a SavedModel, converted by a child process.
    This process first hands back the heap it freed (the graph and weights it built to save
    the SavedModel: 1.5-3 GB at GPT-2 medium), so that it and the child are not both at peak."""
    release_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "float.tflite"
        child = subprocess.run(
            [sys.executable, "-m", "pipeline.export.convert_child", str(saved_model_dir),
             str(out), "select_tf" if select_tf_ops else "builtins"],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=cpu_only())
        if child.returncode != 0 or not out.is_file():
            why = ("was killed (out of memory?)" if child.returncode == -9 else
                   f"failed: {_last_line(child.stderr)}")
            raise PipelineError(f"the TFLite converter {why}")
        return out.read_bytes()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def main(argv: list[str]) -> int:
    from pipeline.export.tflite import convert_saved_model

    saved_model_dir, out, ops = argv
    Path(out).write_bytes(convert_saved_model(saved_model_dir, select_tf_ops=ops == "select_tf"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
