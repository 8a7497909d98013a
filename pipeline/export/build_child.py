"""A target's SavedModel built in a child process: preset in, SavedModel folder and facts out.

Loading the Keras model, generating the expected texts and building the TF graph leave
gigabytes resident in the process that did them, after both models are dropped (freed
tensors stay in the C heap; at GPT-2 medium the exporting process stayed at about 5 GB), and
the converter's child then comes on top (12.3-12.6 GB in all). Built in a child, that memory
goes back to the system when the child exits: the exporting process never holds a model
while the converter runs.

    python -m pipeline.export.build_child text|litertlm CONFIG_YAML PRESET SAVED_MODEL FACTS_JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline import errors
from pipeline.config import PROJECT_ROOT, RunConfig, absolute_paths, dump_yaml, load_config
from pipeline.fsutil import write_json, write_text


def cpu_only() -> dict:
    """A child's environment on the CPU, as the exported files run and are verified: a GPU
    the notebook's kernel holds (TensorFlow reserves its memory) stays the kernel's."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def build_in_child(target: str, cfg: RunConfig, source: str, saved_model_dir) -> dict:
    """Builds `target`'s SavedModel of preset `source` in `saved_model_dir` in a child
    process; returns the facts the child reports (JSON). The child's one-line errors
    (PipelineError and its kinds) are raised here as the same kind."""
    with tempfile.TemporaryDirectory() as tmp:
        config, facts = Path(tmp) / "config.yaml", Path(tmp) / "facts.json"
        write_text(config, dump_yaml(absolute_paths(cfg)))
        child = subprocess.run(
            [sys.executable, "-m", "pipeline.export.build_child", target, str(config), source,
             str(saved_model_dir), str(facts)],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=cpu_only())
        if child.returncode == 0 and facts.is_file():
            return json.loads(facts.read_text())
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no message"
        kind, _, message = last.partition(": ")
        if child.returncode == 2 and isinstance(getattr(errors, kind, None), type):
            raise getattr(errors, kind)(message)
        why = "was killed (out of memory?)" if child.returncode == -9 else f"failed: {last}"
        raise errors.PipelineError(f"building the {target} model {why}")


def main(argv: list[str]) -> int:
    target, config, source, saved_model_dir, facts = argv
    cfg = load_config(config)
    try:
        if target == "text":
            from pipeline.export.text import build_text_model as build
        else:
            from pipeline.export.litertlm import build_streaming_model as build
        write_json(facts, build(cfg, source, saved_model_dir))
    except errors.PipelineError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
