"""RunFolder: one place for a run's paths; the lock that keeps two runs out of one folder."""

import errno
import subprocess
import sys
import time

import pytest

from pipeline import __main__ as cli
from pipeline.errors import PipelineError
from pipeline.run_folder import RunFolder, writable_folder

from conftest import ROOT


def test_paths():
    folder = RunFolder("runs/x")
    assert folder.finetune_preset.as_posix() == "runs/x/finetune/preset"
    assert folder.export("litertlm", student=True).as_posix() == "runs/x/export/student_litertlm"
    with pytest.raises(ValueError):
        folder.export("apk")


def test_second_holder_is_refused_and_the_lock_file_goes(tmp_path):
    folder = RunFolder(tmp_path / "x")
    with folder.lock():
        with pytest.raises(PipelineError, match=r"x is in use by a run still going \(pid \d+\)"):
            with RunFolder(tmp_path / "x.partial").lock():  # the same run, resumed
                pass
    assert not list(tmp_path.glob(".*lock"))
    with folder.lock():  # free again
        pass


def test_lock_of_a_killed_process_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from pipeline.run_folder import RunFolder\n"
        "with RunFolder(sys.argv[2]).lock():\n    print('held', flush=True); time.sleep(600)"),
        str(ROOT), str(tmp_path / "x")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(PipelineError, match="in use"):
        with RunFolder(tmp_path / "x").lock():
            pass
    holder.kill()  # SIGKILL: no clean-up code runs
    holder.wait(timeout=30)
    with RunFolder(tmp_path / "x").lock():  # the OS released the dead process's lock
        pass


def test_cli_refuses_a_run_folder_in_use(tmp_path):
    with RunFolder(tmp_path / "run").lock():
        proc = subprocess.run([sys.executable, "-m", "pipeline", "finetune", "--run-dir",
                               str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'run'} is in use by a run still going")


@pytest.mark.parametrize("where", ["/proc/nope", "/proc/nope/deeper", "file"])
def test_unwritable_folders(tmp_path, where):
    if where == "file":
        (tmp_path / "file").write_text("not a folder")
        where = str(tmp_path / "file")
    with pytest.raises(PipelineError, match=f"output_dir: cannot write to {where} "):
        writable_folder(where, "output_dir")


def test_disk_full_while_saving_is_one_line_and_leaves_no_preset(tiny_preset, tmp_path,
                                                                   kitchen_lines, monkeypatch,
                                                                   capsys):
    import keras_hub

    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:20]), encoding="utf-8")

    def full(self, folder):
        (__import__("pathlib").Path(folder) / "half.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(keras_hub.models.GPT2CausalLM, "save_to_preset", full)
    status = cli.main(["finetune", "--run-dir", str(tmp_path / "run"),
                       "--set", f"model.preset={tiny_preset}", "--set", f"data.path={data}",
                       "--set", "finetune.max_steps=1", "--set", "finetune.sequence_length=32",
                       "--set", "eval.max_length=12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("error: ") and err[-1].endswith(": No space left on device")
    stage = tmp_path / "run" / "finetune"
    assert not (stage / "preset").exists() and not list(stage.glob(".preset*"))
