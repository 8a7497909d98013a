"""Benchmark children: each step's peak RSS is its own, not its parent's."""

import json

import numpy as np
import pytest

from pipeline.bench.child import json_step, required_step


def test_a_child_step_reports_its_own_peak_rss_not_the_parents(tmp_path):
    held = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB resident in this (parent) process
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"rows": 3}))
    row = json_step("json.tool", [str(data)])  # python -m json.tool IN OUT: a tiny child
    assert row["rows"] == 3
    assert 0 < row["peak_rss_mb"] < 150, row  # ru_maxrss would report >= 300 MB here
    assert held.sum() == held.size
    assert json_step("json.tool", [str(tmp_path / "missing.json")]) == {
        "failed": "failed with exit status 2"}  # json.tool: no such file
    with pytest.raises(SystemExit, match="json.tool .*missing.json failed with exit status 2"):
        required_step("json.tool", [tmp_path / "missing.json"])
