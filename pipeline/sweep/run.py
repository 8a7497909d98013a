"""`python -m pipeline sweep SWEEP.yaml`: many runs of the same notebooks, one per point.

Each point is a normal run folder, `<output_dir>/<sweep name>/<point name>/`, executed by
`python -m pipeline run` (papermill) in its own process, its log and config in `points/`.
Points already finished with the same config are skipped when the sweep runs again; a failed
point is recorded with its one-line error and the sweep goes on. After every point the summary
(`summary.csv`, `summary.md`, `summary.png`) is rewritten. A sweep holds its folder's lock (the
one a run of that name would take), so two sweeps of one file, or a run named like the sweep,
are refused while it runs.

Ctrl-C or SIGTERM stops the sweep: no further point starts, each running point is interrupted
(its run keeps its resumable `.partial` folder), the summary is rewritten and the exit status
is 130. A point's process dies with the sweep even if the sweep is killed (SIGKILL).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import yaml

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.fsutil import write_text
from pipeline.report import read_metrics
from pipeline.run_folder import folder_lock, writable_folder
from pipeline.signals import DIE_WITH
from pipeline.sweep.spec import Point, Sweep, finished, load_sweep, point_config
from pipeline.sweep.summary import metric_value, write_summary

STOP_GRACE_SECONDS = 20  # an interrupted point's run then gets SIGKILL (resume survives it)


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the sweep."""


class Points:
    """The running point processes, and the flag that stops new ones."""

    def __init__(self):
        self.stopping = threading.Event()
        self.running: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def start(self, name: str, args: list, log) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    env={**os.environ, DIE_WITH: str(os.getpid())})
            self.running[name] = proc
            return proc

    def finished(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)

    def stop(self) -> None:
        """No new point; SIGINT to each running one (a run keeps what it can resume), then
        SIGKILL to those still going after STOP_GRACE_SECONDS."""
        with self.lock:
            self.stopping.set()
            procs = list(self.running.values())
        for proc in procs:
            _signal_group(proc, signal.SIGINT)
        deadline = time.time() + STOP_GRACE_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the run and its notebook kernel
    except (ProcessLookupError, PermissionError):
        pass


def run_point(sweep: Sweep, point: Point, points: Points | None = None) -> None:
    """Runs one point in its own `python -m pipeline run` process; fills status and metrics."""
    points = points or Points()
    if points.stopping.is_set():
        return
    folder = sweep.folder / "points"
    config_file, log_file = folder / f"{point.name}.yaml", folder / f"{point.name}.log"
    started = time.time()
    try:
        config_lib.load_config(None, point_config(sweep, point))
    except ConfigError as e:  # a bad value: this point fails, the others go on
        point.status, point.error = "failed", str(e)
        return
    write_text(config_file, yaml.safe_dump(point_config(sweep, point), sort_keys=False))
    with open(log_file, "w", encoding="utf-8") as log:
        proc = points.start(point.name, [sys.executable, "-m", "pipeline", "run",
                                         str(config_file)], log)
        if proc is None:
            return
        try:
            code = proc.wait()
        finally:
            points.finished(point.name)
    point.seconds = time.time() - started
    if points.stopping.is_set() and code != 0:
        point.status, point.error = "interrupted", f"stopped by the sweep's interruption " \
            f"(run the sweep again to resume it; log: {log_file})"
    elif code == 0:
        point.status, point.metrics = "ok", read_metrics(sweep.folder / point.name)
    else:
        lines = [l for l in log_file.read_text(errors="replace").splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error:")]
        point.status = "failed"
        point.error = (errors or lines or [f"exit status {code}"])[-1] + f" (log: {log_file})"


def run_sweep(path, jobs: int = 1) -> Sweep:
    """Runs every point not finished before, `jobs` at a time; returns the sweep.
    Raises SweepInterrupted (after rewriting the summary) on Ctrl-C or SIGTERM."""
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs} must be >= 1")
    sweep = load_sweep(path)
    writable_folder(sweep.folder.parent, "output_dir")
    with folder_lock(sweep.folder, "a sweep or a run"):
        if sweep.folder.exists() and not sweep.folder.is_dir():
            raise ConfigError(f"name: {sweep.folder} exists and is not a folder: choose "
                              f"another sweep name")
        _run_points(sweep, jobs)
    return sweep


def _run_points(sweep: Sweep, jobs: int) -> None:
    todo = []
    for p in sweep.points:
        if finished(sweep, p):
            p.status, p.metrics = "ok", read_metrics(sweep.folder / p.name)
            print(f"{p.name}: finished before, skipped", flush=True)
        else:
            todo.append(p)
    if todo:
        (sweep.folder / "points").mkdir(parents=True, exist_ok=True)
    if jobs > 1 and todo and config_lib.load_config(None, sweep.base).model.preset == "embedded":
        from pipeline.train.embedded_base import embedded_preset  # loads TensorFlow: only here
        embedded_preset()  # once, before parallel points would each build it
    points, total, queue = Points(), len(todo), list(enumerate(todo, 1))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            running: dict = {}
            try:
                while queue or running:
                    while queue and len(running) < jobs:  # one point per free job, no queue
                        i, p = queue.pop(0)
                        print(f"[{i}/{total}] {p.name}: running (log: "
                              f"{sweep.folder / 'points'}/{p.name}.log)", flush=True)
                        running[pool.submit(run_point, sweep, p, points)] = p
                    done, _ = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        p = running.pop(future)
                        future.result()
                        _report(sweep, p)
                        write_summary(sweep)
            except KeyboardInterrupt:
                print("Interrupted: stopping the running points, starting no other",
                      file=sys.stderr, flush=True)
                points.stop()
                for future in running:
                    future.result()
                write_summary(sweep)
                raise SweepInterrupted() from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    write_summary(sweep)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report(sweep: Sweep, p: Point) -> None:
    value = metric_value(p.metrics, sweep.metric)
    shown = f", {sweep.metric} {value:.4g}" if value is not None else ""
    print(f"{p.name}: {p.status} in {p.seconds:.0f}s{shown}"
          + (f": {p.error}" if p.error else ""), flush=True)


def main(path, jobs: int = 1) -> int:
    """Runs the sweep; exit status 1 when a point failed (its error is in the summary), 130
    when interrupted."""
    try:
        sweep = run_sweep(path, jobs)
    except SweepInterrupted:
        sweep = load_sweep(path)
        print(f"Sweep {sweep.name} interrupted: run the same command again to resume; "
              f"summary: {sweep.folder / 'summary.md'}", file=sys.stderr)
        return 130
    failed = [p for p in sweep.points if p.status == "failed"]
    print(f"Sweep {sweep.name}: {len(sweep.points) - len(failed)} ok, {len(failed)} failed; "
          f"summary: {sweep.folder / 'summary.md'}", file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
