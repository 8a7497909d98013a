"""`python -m pipeline sweep SWEEP.yaml`: many runs of the same notebooks, one per point.

Each point is a normal run folder, `<output_dir>/<sweep name>/<point name>/`, executed by
`python -m pipeline run` (papermill) in its own process, its log and config in `points/`.
Points already finished with the same config are skipped when the sweep runs again; a failed
point is recorded with its one-line error and the sweep goes on. After every point the summary
(`summary.csv`, `summary.md`, `summary.png`) is rewritten.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time

import yaml

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.fsutil import write_text
from pipeline.report import read_metrics
from pipeline.run_folder import writable_folder
from pipeline.sweep.spec import Point, Sweep, finished, load_sweep, point_config
from pipeline.sweep.summary import metric_value, write_summary

def run_point(sweep: Sweep, point: Point) -> None:
    """Runs one point in its own `python -m pipeline run` process; fills status and metrics."""
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
        code = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config_file)],
                              stdout=log, stderr=subprocess.STDOUT).returncode
    point.seconds = time.time() - started
    if code == 0:
        point.status, point.metrics = "ok", read_metrics(sweep.folder / point.name)
    else:
        lines = [l for l in log_file.read_text(errors="replace").splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error:")]
        point.status = "failed"
        point.error = (errors or lines or [f"exit status {code}"])[-1] + f" (log: {log_file})"


def run_sweep(path, jobs: int = 1) -> Sweep:
    """Runs every point not finished before, `jobs` at a time; returns the sweep."""
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs} must be >= 1")
    sweep = load_sweep(path)
    writable_folder(sweep.folder.parent, "output_dir")
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
    total = len(todo)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for i, p in enumerate(todo, 1):
            print(f"[{i}/{total}] {p.name}: running (log: {sweep.folder / 'points'}/"
                  f"{p.name}.log)", flush=True)
            futures[pool.submit(run_point, sweep, p)] = p
        for future in concurrent.futures.as_completed(futures):
            p = futures[future]
            future.result()
            value = metric_value(p.metrics, sweep.metric)
            shown = f", {sweep.metric} {value:.4g}" if value is not None else ""
            print(f"{p.name}: {p.status} in {p.seconds:.0f}s{shown}"
                  + (f": {p.error}" if p.error else ""), flush=True)
            write_summary(sweep)
    write_summary(sweep)
    return sweep


def main(path, jobs: int = 1) -> int:
    """Runs the sweep; exit status 1 when a point failed (its error is in the summary)."""
    sweep = run_sweep(path, jobs)
    failed = [p for p in sweep.points if p.status == "failed"]
    print(f"Sweep {sweep.name}: {len(sweep.points) - len(failed)} ok, {len(failed)} failed; "
          f"summary: {sweep.folder / 'summary.md'}", file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
