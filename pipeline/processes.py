"""The one way to run a stage's step in a child process: `run_child` (and `run_config_child`
for a step that reads the run's config and reports a JSON result), with `child_main` /
`config_child_main` as the child's entry point.

A step that leaves gigabytes resident in the process that ran it (a training loop, a model
loaded and dropped, the TFLite converter) runs in a child, so that memory goes back to the
system when the child exits. Used by export (its build and converter children) and by
distillation (the labels-only baseline's training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn

from pipeline import errors
from pipeline.config import PROJECT_ROOT, RunConfig, absolute_paths, dump_yaml, load_config
from pipeline.fsutil import write_json, write_text

_TAIL = 4096  # bytes of the child's stderr kept for its error line


def child_main(step: Callable[[list[str]], None]) -> NoReturn:
    """A child's entry point: runs `step(sys.argv[1:])` and exits 0; a PipelineError is one
    stderr line `Kind: message` and exit status 2, which `run_child` raises again."""
    try:
        step(sys.argv[1:])
    except errors.PipelineError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


def config_child_main(step: Callable[..., dict]) -> NoReturn:
    """`child_main` for a child started by `run_config_child`: its arguments are CONFIG_YAML,
    the step's own, RESULT_JSON; runs `step(cfg, *own)` and writes what it returns."""
    def run(argv: list[str]) -> None:
        write_json(argv[-1], step(load_config(argv[0]), *argv[1:-1]))
    child_main(run)


def run_config_child(module: str, cfg: RunConfig, *args: str, what: str,
                     show_progress: bool = False) -> dict:
    """`run_child` of a `config_child_main` child with `cfg` (paths made absolute) and
    `args`; returns the JSON result it wrote."""
    with tempfile.TemporaryDirectory(prefix="child-") as tmp:
        config, result = Path(tmp) / "config.yaml", Path(tmp) / "result.json"
        write_text(config, dump_yaml(absolute_paths(cfg)))
        run_child(module, str(config), *args, str(result), what=what,
                  show_progress=show_progress)
        return json.loads(result.read_text())


def run_child(module: str, *args: str, what: str, show_progress: bool = False) -> None:
    """Runs `python -m module args` on the CPU (a GPU the parent holds, TensorFlow having
    reserved its memory, stays the parent's; the exported files run and are verified on the
    CPU, and the baseline's child runs only on CPU-only hosts). With `show_progress` the
    child's stderr (its progress bars) is passed through to ours as it comes. A child's
    one-line error of a PipelineError kind (`child_main`: its last stderr line, `Kind:
    message`, exit 2) is raised here as that kind; any other failure as a PipelineError
    naming `what`."""
    child = subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    tail = b""
    while chunk := os.read(child.stderr.fileno(), 65536):
        tail = (tail + chunk)[-_TAIL:]
        if show_progress:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
    returncode = child.wait()
    child.stderr.close()
    if returncode == 0:
        return
    lines = [line for line in tail.decode(errors="replace").strip().splitlines()
             if line.strip()]
    last = lines[-1] if lines else "no message"
    kind, _, message = last.partition(": ")
    if returncode == 2 and isinstance(getattr(errors, kind, None), type):
        raise getattr(errors, kind)(message)
    why = "was killed (out of memory?)" if returncode == -9 else f"failed: {last}"
    raise errors.PipelineError(f"{what} {why}")
