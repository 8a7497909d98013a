"""Benchmark steps in child processes, so that each step's time and memory are its own.

Peak RSS is the child's own VmHWM, polled from /proc while it runs. The kernel's `ru_maxrss`
(from `wait4`, or `getrusage` inside the child) would count the parent's RSS at fork time as
well: a step started from a 1 GB parent would report at least 1 GB.

Example:
    >>> out, status, peak_mb = run_measured(["llama-bench", "-m", "model.gguf"])
    >>> row = json_step("pipeline.bench.corpus_scale", ["tokenize", spec_json])
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.bench.smaps import peaks, rollup
from pipeline.config import PROJECT_ROOT


def run_measured(args: list[str], capture: bool = True, env: dict | None = None,
                 memory: list | None = None) -> tuple[str, int, float]:
    """Runs `args` from the project folder; returns (stdout, exit status, peak RSS MB). With
    `capture` false the child prints to this process's output and "" is returned; with a
    `memory` list, each poll appends the child's `smaps.rollup` to it."""
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(args, stdout=out if capture else None,
                                 stderr=subprocess.DEVNULL if capture else None, text=True,
                                 cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _vm_hwm_mb(child.pid))
            if memory is not None:
                memory.append(rollup(child.pid))
            time.sleep(0.05)
        out.seek(0)
        return out.read(), child.returncode, peak


def json_step(module: str, args: list[str], env: dict | None = None,
              memory: bool = False) -> dict:
    """Runs `python -m MODULE ARGS... OUT_FILE`; returns the JSON object the step wrote there
    plus its "peak_rss_mb" (polled, unless the step wrote its own), or {"failed": why} (a
    step killed for memory is reported, not raised, so that one row the machine cannot hold
    does not end the benchmark). With `memory`, also "memory_peaks_mb": each field of
    `smaps.rollup` (private, file-backed, PSS) at its peak over the step, polled."""
    samples: list | None = [] if memory else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        _, status, peak = run_measured([sys.executable, "-m", module, *args, str(out)],
                                       capture=False, env=env, memory=samples)
        if status == 0 and out.is_file():  # a step may report its own VmHWM at exit: polling
            result = {"peak_rss_mb": peak, **json.loads(out.read_text())}  # misses a last burst
            if memory:
                result["memory_peaks_mb"] = peaks(samples)
            return result
    return {"failed": "killed (out of memory?)" if status == -9 else
            f"failed with exit status {status}"}


def required_step(module: str, args: list[str], memory: bool = False) -> dict:
    """`json_step` for a step the benchmark cannot go on without: a failure ends it."""
    result = json_step(module, [str(a) for a in args], memory=memory)
    if "failed" in result:
        raise SystemExit(f"benchmark step {module} {args[0]} {result['failed']}")
    return result


def own_peak_rss_mb() -> float:
    """This process's peak RSS so far (VmHWM): what a step reports just before it exits."""
    return _vm_hwm_mb(os.getpid())


def _vm_hwm_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited between poll and read
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0
