import os
import subprocess
import sys
import time

from pipeline.bench.chain_memory import markdown, tree_rss_mb


def test_tree_rss_counts_the_children():
    alone = tree_rss_mb(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 << 20); "
                              "print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        assert tree_rss_mb(os.getpid()) > alone + 280  # the child's 300 MB buffer counts
    finally:
        child.kill()
        child.wait()


def test_a_stage_over_the_target_is_marked():
    result = {"shape": "medium", "parameters": 354_823_168, "steps_per_stage": 2,
              "date": "2026-12-04", "exit_status": 0, "settings": [], "files": {},
              "rows": [{"stage": "finetune", "seconds": 160, "peak_rss_gb": 7.49},
                       {"stage": "distill", "seconds": 194, "peak_rss_gb": 13.58}]}
    table = markdown([result])
    assert "| medium (355 M) | finetune | 160 | 7.49 | yes |" in table
    assert "| medium (355 M) | distill | 194 | 13.58 | NO |" in table
