"""The one way to run a stage's step in a child process: `run_child`.

A step that leaves gigabytes resident in the process that ran it (a training loop, a model
loaded and dropped, the TFLite converter) runs in a child, so that memory goes back to the
system when the child exits. Used by export (its build and converter children) and by
distillation (the labels-only baseline's training).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, NoReturn

from pipeline import errors
from pipeline.config import PROJECT_ROOT

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


def run_child(module: str, *args: str, what: str, cpu_only: bool = True,
              show_progress: bool = False) -> None:
    """Runs `python -m module args`; on the CPU when `cpu_only` (a GPU the parent holds,
    TensorFlow having reserved its memory, stays the parent's). With `show_progress` the
    child's stderr (its progress bars) is passed through to ours as it comes. A child's
    one-line error of a PipelineError kind (`child_main`: its last stderr line, `Kind:
    message`, exit 2) is raised here as that kind; any other failure as a PipelineError
    naming `what`."""
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu_only else {})}
    child = subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
