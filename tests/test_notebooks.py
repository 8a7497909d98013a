"""The stage notebooks: thin, clean, one parameters cell, metrics recorded last."""

import ast
import json
import subprocess
import sys

import nbformat
import papermill
import pytest

from pipeline.report import notebook_metrics

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for node in ast.parse(tagged[0].source).body:  # typed literals only, each with a comment
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, (ast.Constant, ast.Dict,
                                                                            ast.List))
    assert all("#" in line for line in tagged[0].source.splitlines() if "=" in line)
    for c in code:
        tree = ast.parse("\n".join(l for l in c.source.splitlines() if not l.startswith(("!", "%"))))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    # The stage records its metrics in metrics.json; the last cell records them in the notebook.
    assert "application/json" in code[-1].source and "write_metrics" not in "".join(
        c.source for c in code), "the stage, not the notebook, writes metrics.json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_help_names_every_parameter(path):
    params = papermill.inspect_notebook(str(path))  # what `papermill --help-notebook` prints
    assert list(params) == ["run_dir", "config_file", "overrides"]
    assert [p["inferred_type_name"] for p in params.values()] == ["str", "str", "dict"]
    assert all(p["help"] for p in params.values())
    assert "finetune, eval, distill, export" in params["overrides"]["help"]


def test_notebook_runs_under_papermill_directly(tmp_path, tiny_preset, kitchen_lines):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:30]), encoding="utf-8")
    overrides = {"model": {"preset": str(tiny_preset)}, "data": {"path": str(data)},
                 "finetune": {"sequence_length": 48, "max_steps": 2}, "eval": {"max_length": 16}}
    out, run_dir = tmp_path / "out.ipynb", tmp_path / "run"
    proc = subprocess.run(  # the command README: Notebooks shows
        [sys.executable, "-m", "papermill", "notebooks/01_finetune.ipynb", str(out),
         "-p", "run_dir", str(run_dir), "-y", json.dumps({"overrides": overrides})],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert recorded["finetune"]["steps"] == 2
    assert notebook_metrics(out) == recorded  # the executed notebook holds the same metrics
