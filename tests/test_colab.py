"""Colab: the set-up cell installs requirements-colab.txt (none of the kernel's own packages,
resolvable for Colab's Python 3.12) and builds the verification runtime itself; then the three
notebooks run cell by cell in a Jupyter kernel, as Colab runs them."""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

# Packages of the running Jupyter kernel on Colab: installing a different version into the
# running kernel breaks it (and numpy, which Colab's kernel imports, needs a restart).
KERNEL_PACKAGES = {"ipykernel", "ipython", "jupyter-client", "jupyter-core", "jupyter-server",
                   "jupyterlab", "notebook", "tornado", "pyzmq", "traitlets", "comm", "debugpy",
                   "ipywidgets", "google-colab"}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "linux_x86_64"]


def _name(line: str) -> str:
    return line.split("==")[0].strip().lower().replace("_", "-")


def test_colab_requirements_resolve_for_python_3_12_without_kernel_packages(tmp_path):
    lines = [l for l in (ROOT / "requirements-colab.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert all("==" in l for l in lines), "every top-level package pinned"
    pinned = {l.split("==")[0].lower(): l for l in (ROOT / "requirements.txt").read_text()
              .splitlines() if "==" in l}
    assert all(pinned.get(l.split("==")[0].lower()) == l for l in lines), \
        "the versions requirements.txt pins"
    assert not {_name(l) for l in lines} & (KERNEL_PACKAGES | {"numpy"})
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
            "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
            *[a for p in PLATFORMS for a in ("--platform", p)], "--target", str(tmp_path / "t"),
            "--report", str(report), "-r", str(ROOT / "requirements-colab.txt")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower().replace("_", "-")
                for i in json.loads(report.read_text())["install"]}
    assert {"tensorflow", "keras-hub", "litert-lm-api", "safetensors"} <= resolved
    assert not resolved & KERNEL_PACKAGES, resolved & KERNEL_PACKAGES


def _project_copy(dest):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.mark.slow  # builds .venv-flex from requirements-flex.txt, then three notebooks
def test_colab_run_all_on_each_notebook(tmp_path, tiny_preset, kitchen_lines, monkeypatch):
    project = _project_copy(tmp_path / "gpt2-to-phone")
    assert not (project / ".venv-flex").exists()
    fake = tmp_path / "colab"  # `google.colab` importable in the kernel, as on Colab
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "colab" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    data = tmp_path / "my_text.txt"
    data.write_text("\n\n".join(kitchen_lines[:40]), encoding="utf-8")
    overrides = {"model": {"preset": str(tiny_preset)}, "data": {"path": str(data)}}
    run_dir = project / "runs" / "colab"
    for name in ("01_finetune", "02_distill", "03_export"):
        nb = nbformat.read(project / "notebooks" / f"{name}.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        params.source = (f"run_dir = {str(run_dir)!r}\nconfig_file = 'configs/tiny.yaml'\n"
                         f"overrides = {overrides!r}")  # what a user edits in that cell
        NotebookClient(nb, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(project / "notebooks")}}).execute()
        if name == "01_finetune":
            setup = "".join(o.get("text", "") for o in nb.cells[1].outputs)
            assert "Installing the notebooks' packages" in setup, setup
        if name == "03_export":
            setup = "".join(o.get("text", "") for o in nb.cells[1].outputs)
            assert "Building the verification runtime (TFLite 2.16.1" in setup, setup
    assert (project / ".venv-flex" / "bin" / "python").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finetune"]["after"]["val_perplexity"] < \
        metrics["finetune"]["before"]["val_perplexity"]
    assert set(metrics["distill"]["val_perplexity"]) == {"teacher", "student", "baseline"}
    text = metrics["export"]["teacher"]["text"]
    verified = json.loads((run_dir / "export" / "text" / "verification.json").read_text())
    assert verified["tensorflow"] == "2.16.1"  # verified in the runtime the set-up built
    assert text["verification"]["matches"] >= text["verification"]["prompts"] - 1
    assert metrics["export"]["student"]["litertlm"]["verification"]["tokenizer_identical"]
