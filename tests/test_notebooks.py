"""The stage notebooks: thin, clean, one parameters cell, metrics recorded last."""

import ast

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for node in ast.parse(tagged[0].source).body:  # literals only, each with a comment
        assert isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Dict,
                                                                         ast.List))
    assert all("#" in line for line in tagged[0].source.splitlines() if "=" in line)
    for c in code:
        tree = ast.parse("\n".join(l for l in c.source.splitlines() if not l.startswith(("!", "%"))))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert "write_metrics" in code[-1].source, "the last cell records metrics"
