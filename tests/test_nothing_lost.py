"""Nothing lost: a run never replaces what it did not make, resume is per stage, locks are
race-free and never follow a symbolic link, checkpoints are pruned by epoch number."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config as config_lib
from pipeline.errors import PipelineError
from pipeline.fsutil import LockHeld, UnsafeLockFile, file_lock, remove_leftovers, write_text
from pipeline.run import _prepare, fingerprints
from pipeline.run_folder import RunFolder, writable_folder

from conftest import ROOT


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_a_run_named_like_a_sweep_is_refused_and_the_sweep_survives(tmp_path):
    sweep = tmp_path / "runs" / "tiny"
    (sweep / "points").mkdir(parents=True)
    (sweep / "summary.md").write_text("a finished sweep")
    (sweep / "lr-0.001").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = cli("run", "configs/tiny.yaml", "--set", f"output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: name: {sweep} exists and is a sweep's folder; a run replaces only a run it "
        f"made: choose another name (--set name=...)")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (sweep / "summary.md").read_text() == "a finished sweep"


@pytest.mark.parametrize("name, says", [
    ("x.partial", "ends with .partial"), ("a\0b", "plain folder name"),
    (".hidden", "plain folder name"), ("a" * 201, "plain folder name")])
def test_names_that_collide_or_cannot_be_folders_are_refused(tmp_path, name, says):
    with pytest.raises(config_lib.ConfigError, match=says) as err:
        config_lib.load_config(None, {"name": name, "output_dir": str(tmp_path)})
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def _partial_after_export_failed(tmp_path, cfg):
    """A partial folder as a run leaves it when fine-tuning finished and export failed."""
    partial = RunFolder(tmp_path / "tiny.partial")
    _prepare(partial, config_lib.dump_yaml(cfg), fingerprints(cfg), fresh=False)
    weights = partial.finetune_preset / "model.weights.h5"
    write_text(weights, "fine-tuned weights")
    write_text(partial.metrics_file, json.dumps({"finetune": {"steps": 6}}))
    write_text(partial.root / "stages.json", json.dumps(
        {"finetune": fingerprints(cfg)["finetune"], "export": fingerprints(cfg)["export"]}))
    write_text(partial.export("text") / "half.tflite", "half an export")
    return partial, weights


def test_a_changed_export_setting_keeps_the_fine_tune(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("one note\n\nanother note\n")
    cfg = config_lib.load_config(None, {"name": "tiny", "data": {"path": str(data)},
                                        "distill": {"enabled": False}})
    partial, weights = _partial_after_export_failed(tmp_path, cfg)
    stamp = weights.stat().st_mtime_ns, weights.stat().st_ino
    changed = config_lib.load_config(None, {"name": "tiny", "data": {"path": str(data)},
                                            "distill": {"enabled": False},
                                            "export": {"quantization": "fp16"}})
    assert fingerprints(changed)["finetune"] == fingerprints(cfg)["finetune"]
    _prepare(partial, config_lib.dump_yaml(changed), fingerprints(changed), fresh=False)
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == stamp  # untouched
    assert json.loads(partial.metrics_file.read_text()) == {"finetune": {"steps": 6}}
    assert not (partial.root / "export").exists()  # the failed export's leftovers go
    assert "fp16" in partial.config_file.read_text()


def test_a_changed_data_file_re_runs_fine_tuning(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("one note\n\nanother note\n")
    cfg = config_lib.load_config(None, {"name": "tiny", "data": {"path": str(data)}})
    partial, weights = _partial_after_export_failed(tmp_path, cfg)
    data.write_text("one note\n\nanother, edited note\n")  # same path, same config
    assert fingerprints(cfg)["finetune"] != json.loads(
        (partial.root / "stages.json").read_text())["finetune"]
    _prepare(partial, config_lib.dump_yaml(cfg), fingerprints(cfg), fresh=False)
    assert not weights.exists() and not (partial.root / "finetune").exists()
    assert json.loads(partial.metrics_file.read_text()) == {}


def test_fresh_starts_over(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("one note\n")
    cfg = config_lib.load_config(None, {"name": "tiny", "data": {"path": str(data)}})
    partial, weights = _partial_after_export_failed(tmp_path, cfg)
    _prepare(partial, config_lib.dump_yaml(cfg), fingerprints(cfg), fresh=True)
    assert not weights.exists() and not partial.metrics_file.exists()


def test_a_symlinked_lock_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / ".x.lock").symlink_to(target)
    with pytest.raises(PipelineError, match=r"\.x\.lock is a symbolic link: remove it"):
        with RunFolder(tmp_path / "x").lock():
            pass
    assert target.read_text() == "keep me"


def test_the_write_probe_never_follows_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f".write-test-{os.getpid()}").symlink_to(target)
    with pytest.raises(PipelineError, match=r"output_dir: cannot write to .*out \(File exists\)"):
        writable_folder(tmp_path / "out", "output_dir")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("damage", ["", "{\"finetune\": ", "[1, 2]"])
def test_a_damaged_metrics_file_is_one_line(tmp_path, damage):
    """metrics.json empty or cut short (a power loss): one line naming the file, exit 2."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(damage)
    proc = cli("export", "configs/tiny.yaml", "--run-dir", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'metrics.json'} is damaged (not a JSON mapping): restore it, or start "
        "the run afresh (pipeline run --fresh, or a new --run-dir)")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]


def test_a_damaged_checkpoint_pointer_is_one_line(tmp_path):
    from pipeline.train.checkpoints import restore_checkpoint

    (tmp_path / "latest.json").write_text('{"epoch": 2, "weig')  # cut short
    with pytest.raises(PipelineError, match=r"latest.json is damaged: delete .* to train this "
                                            r"stage from its start"):
        restore_checkpoint(None, tmp_path)


def test_a_lock_removed_by_its_previous_holder_is_not_held_twice(tmp_path, monkeypatch):
    """The three-process interleaving: we opened the lock file; its holder then released it
    (removing the file) and a third process created and locked a new one; our flock then
    succeeds on the removed file. The lock must notice and take the file at the path."""
    import pipeline.fsutil as fsutil

    path = tmp_path / ".x.lock"
    real_flock, calls = fsutil.fcntl.flock, []

    def flock(fd, flags):
        if not calls:  # between our open and our flock: release by the old holder
            calls.append(fd)
            os.unlink(path)
            path.write_text("pid 999999\n")  # the third process's new lock file (unlocked)
        return real_flock(fd, flags)

    monkeypatch.setattr(fsutil.fcntl, "flock", flock)
    with file_lock(path):
        monkeypatch.setattr(fsutil.fcntl, "flock", real_flock)
        with pytest.raises(LockHeld):  # what a fourth process sees: the path's file is held
            with file_lock(path):
                pass
    assert not path.exists()


def test_leftover_temporary_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".file-a.tmp-{dead}-abc123").mkdir()
    (tmp_path / f".file-b.tmp-{os.getpid()}-abc123").mkdir()  # ours: in use
    (tmp_path / "file-c").mkdir()
    removed = remove_leftovers(tmp_path)
    assert [p.name for p in removed] == [f".file-a.tmp-{dead}-abc123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".file-b.tmp-{os.getpid()}-abc123",
                                                          "file-c"]


def test_checkpoints_are_pruned_by_epoch_number(tmp_path):
    from pipeline.train.checkpoints import checkpoints_by_epoch

    for epoch in (999, 1000, 2, 10):
        (tmp_path / f"epoch-{epoch:03d}.weights.h5").write_text("")
    assert [p.name for p in checkpoints_by_epoch(tmp_path)] == [
        "epoch-002.weights.h5", "epoch-010.weights.h5", "epoch-999.weights.h5",
        "epoch-1000.weights.h5"]
