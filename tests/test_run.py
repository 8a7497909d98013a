"""`python -m pipeline run`: the notebooks under papermill, the run folder, failures, the lock."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT


@pytest.mark.slow  # the whole chain: three notebooks under papermill, Flex verification
def test_run_executes_notebooks_with_papermill(tiny_preset, tmp_path, kitchen_lines):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:40]), encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text((ROOT / "configs" / "tiny.yaml").read_text() + (
        f"output_dir: {tmp_path / 'runs'}\nmodel:\n  preset: {tiny_preset}\n"
        f"data:\n  path: {data}\n"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]  # no .partial left
    metrics = json.loads((run / "metrics.json").read_text())["finetune"]
    assert metrics["steps"] == 6
    assert metrics["after"]["val_perplexity"] < metrics["before"]["val_perplexity"]
    assert metrics["data"]["train"]["examples"] == 36
    executed = nbformat.read(run / "notebooks" / "01_finetune.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "config_file" in injected[0].source
    assert (run / "config.yaml").is_file() and (run / "finetune" / "preset" / "model.weights.h5").is_file()
    exports = json.loads((run / "metrics.json").read_text())["export"]["teacher"]
    exported = exports["text"]
    assert exported["quantization"] == "int8" and exported["max_length"] == 24
    assert exported["verification"]["prompts"] >= 7 and exported["verification"]["matches"] >= 1
    assert (run / "export" / "text" / "gpt2_text_int8.tflite").stat().st_size == exported["size_bytes"]
    assert (run / "notebooks" / "03_export.ipynb").is_file()
    distilled = json.loads((run / "metrics.json").read_text())["distill"]
    assert distilled["steps"] == 4 and distilled["student_layers"] == 1
    assert set(distilled["val_perplexity"]) == {"teacher", "student", "baseline"}
    assert (run / "notebooks" / "02_distill.ipynb").is_file()
    assert (run / "distill" / "perplexity.png").is_file()
    student = json.loads((run / "metrics.json").read_text())["export"]["student"]
    assert student["text"]["parameters"] < exported["parameters"]
    assert (run / "export" / "student_litertlm" / "gpt2_int8.litertlm").is_file()
    bundle = exports["litertlm"]
    assert bundle["verification"]["tokenizer_identical"] == "13/13"
    assert abs(bundle["verification"]["perplexity"]["relative_difference"]) <= 0.03
    # one perplexity: the bundle is checked on the windows fine-tuning's metric was computed on
    assert bundle["verification"]["perplexity"]["keras_fp32"] == pytest.approx(
        metrics["after"]["val_perplexity"], rel=1e-5)
    assert (run / "export" / "litertlm" / "gpt2_int8.litertlm").stat().st_size == bundle["size_bytes"]
    assert Path(bundle["file"]) == run / "export" / "litertlm" / "gpt2_int8.litertlm"
    assert ".partial" not in (run / "metrics.json").read_text()  # paths name the final folder

    # `pipeline export` on the same distilled run writes the folders notebook 03 wrote.
    again = tmp_path / "again"
    for stage in ("finetune", "distill"):
        shutil.copytree(run / stage, again / stage)
    done = json.loads((run / "metrics.json").read_text())
    (again / "metrics.json").write_text(json.dumps({k: done[k] for k in ("finetune", "distill")}))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "export", str(config), "--run-dir",
                           str(again), "--set", "export.verify=false"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted(p.name for p in (run / "export").iterdir())
    assert folders == ["litertlm", "student_litertlm", "student_text", "text"]
    assert sorted(p.name for p in (again / "export").iterdir()) == folders
    cli = json.loads((again / "metrics.json").read_text())["export"]
    assert set(cli) == {"teacher", "student"} and set(cli["student"]) == {"text", "litertlm"}
    assert cli["student"]["text"]["parameters"] == student["text"]["parameters"]


def test_run_with_bad_data_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\ndata:\n  path: {empty}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {empty}: file is empty"
    assert not (tmp_path / "runs").exists()


def test_paths_move_with_the_renamed_run_folder():
    from pipeline.fsutil import renamed_paths

    old, new = Path("/r/default.partial"), Path("/r/default")
    data = {"a": ["/r/default.partial/x.tflite", "/r/default.partialX/y", "/r/default.partial"],
            "n": 1, "b": {"c": "default.partial/z"}}
    assert renamed_paths(data, old, new) == {
        "a": ["/r/default/x.tflite", "/r/default.partialX/y", "/r/default"],
        "n": 1, "b": {"c": "default.partial/z"}}


@pytest.mark.parametrize("output_dir", ["/proc/nope", "{tmp}/a_file"])
def test_unwritable_output_dir_is_one_line_and_writes_nothing(tmp_path, output_dir):
    (tmp_path / "a_file").write_text("")
    output_dir = output_dir.format(tmp=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/tiny.yaml",
                           "--set", f"output_dir={output_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: output_dir: cannot write to {output_dir} ("), last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_the_run_driver_holds_no_tensorflow():
    """`pipeline run` only drives the notebooks (each stage's kernel loads the model): its
    process, resident beside every stage, imports neither TensorFlow nor Keras."""
    code = ("import sys, pipeline.__main__, pipeline.run, pipeline.sweep.run; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_kernel_that_dies_is_a_one_line_stage_failure(tmp_path, monkeypatch):
    """A notebook's kernel killed mid-stage (out of memory, say) ends the stage with one line
    naming the stage and the executed notebook, not nbclient's traceback."""
    from pipeline import run as run_mod
    from pipeline.run_folder import RunFolder

    cells = [nbformat.v4.new_code_cell("run_dir = ''\nconfig_file = ''\noverrides = {}",
                                       metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "01_finetune.ipynb")
    monkeypatch.setattr(run_mod, "NOTEBOOKS", tmp_path / "notebooks")
    partial = RunFolder(tmp_path / "run")
    partial.notebooks.mkdir(parents=True)
    with pytest.raises(run_mod.StageFailed) as failed:
        run_mod._run_stage("finetune", "01_finetune.ipynb", partial)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(
        "stage finetune failed: the notebook's kernel stopped (DeadKernelError"), message
    assert str(partial.notebooks / "01_finetune.ipynb") in message
