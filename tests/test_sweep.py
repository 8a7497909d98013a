"""`python -m pipeline sweep`: points as run folders, resume, failures, summary, YAML errors."""

import csv
import json
import subprocess
import sys

import pytest

from pipeline.errors import ConfigError
from pipeline.sweep.spec import load_sweep, point_name

from conftest import ROOT


def sweep_cli(sweep_file, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "pipeline", "sweep", str(sweep_file), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def write_sweep(tmp_path, tiny_preset, kitchen_lines, grid: str, base="", name="s"):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:30]), encoding="utf-8")
    config = tmp_path / "base.yaml"
    config.write_text(base + f"output_dir: {tmp_path / 'runs'}\nmodel:\n  preset: {tiny_preset}\n"
                      f"data:\n  path: {data}\n")
    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(f"name: {name}\nconfig: base.yaml\n" + grid)
    return sweep


def summary_rows(folder):
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("grid, message", [
    ("grid:\n  finetune.learnin_rate: [1.0e-3]\n", "grid: finetune.learnin_rate: unknown key"),
    ("grid: {}\n", "grid: empty"),
    ("grid:\n  finetune.epochs: 3\n", "grid: finetune.epochs: expected a non-empty list"),
    ("grid:\n  finetune: [1]\n", "grid: finetune: names a whole section"),
    ("points: []\n", "points: expected a non-empty list"),
    ("grid:\n  finetune.epochs: [1]\nmetric: nope.x\n", "metric: 'nope.x' must be a path"),
    ("config: 3\ngrid:\n  finetune.epochs: [1]\n", "config: expected the path of a config file"),
    # a later point's value is checked before the first point runs
    ("grid:\n  finetune.epochs: [1, [2, 3]]\n", "finetune.epochs: expected an integer, got"),
    ("points:\n- {export.quantization: int8}\n- {export.quantization: 8}\n",
     "export.quantization: expected one of none, fp16, int8, int4, got 8"),
])
def test_sweep_file_errors_are_one_line_and_write_nothing(tmp_path, grid, message):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(f"overrides:\n  output_dir: {tmp_path / 'runs'}\n" + grid)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_sweep(sweep)
    if message == "grid: empty":  # and through the command line
        proc = sweep_cli(sweep, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"error: {sweep}: grid: empty; give settings "
                                                    "with lists of values, e.g. "
                                                    "finetune.learning_rate: [3.0e-4, 1.0e-3]"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_point_names_are_folder_names():
    assert point_name({"finetune.learning_rate": 3e-4, "finetune.lora_rank": 8}) == \
        "learning_rate-0.0003_lora_rank-8"
    assert point_name({"finetune.learning_rate": 1e-3, "distill.learning_rate": 1e-3}) == \
        "finetune.learning_rate-0.001_distill.learning_rate-0.001"
    assert point_name({"data.path": "my data/a.txt"}) == "path-my-data-a.txt"


def test_sweep_runs_points_records_failures_and_skips_finished(tmp_path, tiny_preset,
                                                               kitchen_lines):
    sweep = write_sweep(tmp_path, tiny_preset, kitchen_lines, base=(
        "finetune:\n  sequence_length: 48\n  epochs: 1\neval:\n  max_length: 16\n"
        "distill:\n  enabled: false\nexport:\n  enabled: false\n"),
        grid="grid:\n  finetune.max_steps: [2, 1]\n  finetune.learning_rate: [3.0e-3, -1.0]\n")
    proc = sweep_cli(sweep)
    assert proc.returncode == 1, proc.stderr[-3000:]  # two points failed, two finished
    folder = tmp_path / "runs" / "s"
    ok = ["max_steps-2_learning_rate-0.003", "max_steps-1_learning_rate-0.003"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ok + ["points", "summary.csv", "summary.md", "summary.png"])
    rows = {r["point"]: r for r in summary_rows(folder)}
    assert len(rows) == 4
    for name in ok:
        metrics = json.loads((folder / name / "metrics.json").read_text())
        assert str(metrics["finetune"]["steps"]) == rows[name]["finetune.max_steps"]
        assert rows[name]["status"] == "ok"
        assert float(rows[name]["val_ppl_after"]) == round(
            metrics["finetune"]["after"]["val_perplexity"], 4)
        assert float(rows[name]["finetune.after.val_perplexity"]) == float(
            rows[name]["val_ppl_after"])
    bad = rows["max_steps-2_learning_rate--1"]
    assert bad["status"] == "failed"
    assert bad["error"] == "finetune.learning_rate: -1.0 must be > 0"
    metric = [r["finetune.after.val_perplexity"] for r in summary_rows(folder)]
    assert [float(v) for v in metric[:2]] == sorted(float(v) for v in metric[:2])  # sorted
    assert metric[2:] == ["", ""]  # failed points last
    assert "| point |" in (folder / "summary.md").read_text()

    again = sweep_cli(sweep)  # finished points are skipped; only the bad ones run (and fail)
    assert again.returncode == 1
    for name in ok:
        assert f"{name}: finished before, skipped" in again.stdout
    assert again.stdout.count("running") == 2
    assert [r["point"] for r in summary_rows(folder)] == list(rows)  # same rows, same order


def test_sigint_stops_a_sweep_and_leaves_a_resumable_point(tmp_path, tiny_preset,
                                                          kitchen_lines):
    import signal
    import time

    sweep = write_sweep(tmp_path, tiny_preset, kitchen_lines, base=(
        "finetune:\n  sequence_length: 48\n  epochs: 40\neval:\n  max_length: 16\n"
        "distill:\n  enabled: false\nexport:\n  enabled: false\n"),
        grid="grid:\n  finetune.learning_rate: [1.0e-3, 2.0e-3, 3.0e-3]\n")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", str(sweep)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "runs" / "s" / "learning_rate-0.001.partial"
    deadline = time.time() + 300
    while not (first / "finetune" / "checkpoints" / "latest.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stopped = time.time()
    out, err = proc.communicate(timeout=60)
    assert time.time() - stopped < 30
    assert proc.returncode == 130, err[-3000:]
    assert "[2/3]" not in out and "[3/3]" not in out  # no later point started
    assert (first / "finetune" / "checkpoints" / "latest.json").is_file()  # resumable
    rows = summary_rows(tmp_path / "runs" / "s")
    assert [(r["point"], r["status"]) for r in rows] == [("learning_rate-0.001", "interrupted")]
    assert "interrupted: run the same command again to resume" in err
    assert not list((tmp_path / "runs").glob(".*.lock"))  # the sweep's lock is released
    # no process of the point is left running: the point's run lock is free
    from pipeline.run_folder import RunFolder
    with RunFolder(tmp_path / "runs" / "s" / "learning_rate-0.001").lock():
        pass


@pytest.mark.slow  # four runs of configs/tiny.yaml (fine-tune and distil) under papermill
def test_two_by_two_sweep_on_the_tiny_config(tmp_path, tiny_preset, kitchen_lines):
    sweep = write_sweep(tmp_path, tiny_preset, kitchen_lines,
                        base=(ROOT / "configs" / "tiny.yaml").read_text()
                        + "export:\n  enabled: false\n",
                        grid="grid:\n  finetune.learning_rate: [1.0e-3, 3.0e-3]\n"
                             "  finetune.lora_rank: [0, 4]\nmetric: distill.val_perplexity.student\n",
                        name="lr-lora")
    proc = sweep_cli(sweep, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "runs" / "lr-lora"
    rows = summary_rows(folder)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        metrics = json.loads((folder / r["point"] / "metrics.json").read_text())
        assert metrics["finetune"]["lora_rank"] == int(r["finetune.lora_rank"])
        assert float(r["student_ppl"]) == round(metrics["distill"]["val_perplexity"]["student"], 4)
        assert float(r["baseline_ppl"]) == round(
            metrics["distill"]["val_perplexity"]["baseline"], 4)
    students = [float(r["student_ppl"]) for r in rows]
    assert students == sorted(students)
    assert (folder / "summary.png").stat().st_size > 1000
    again = sweep_cli(sweep, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == 4
