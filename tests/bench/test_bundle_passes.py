"""Our own passes over a bundle: a child process holding the runtime only, filling the context."""

from pipeline.bench.child import json_step
from pipeline.bench.litertlm_speed import child_export


def test_passes_fill_the_context_in_a_process_without_tensorflow(tiny_preset, tmp_path):
    child_export(str(tmp_path), str(tiny_preset), "int8", 96, lengths=(8, 16))
    run = json_step("pipeline.bench.bundle_passes", [str(tmp_path), "2", "8", "96"], memory=True)
    assert set(run["passes"]) == {"8", "16"}, run
    for n, best in run["passes"].items():
        assert best["prefill_tokens"] == int(n) + 1  # + the start token
        assert 1 <= best["decode_tokens"] <= 8 and best["decode_tps"] > 0
    assert 94 <= run["full_context"]["tokens"] <= 96  # the whole context, not an early stop
    memory = run["memory_mb"]
    assert "packed_weights" in memory  # XNNPACK's cache file is mapped (40 kB for this model)
    assert memory["runtime_library"] > 10  # the library as loaded: nothing is released
    assert sum(memory.values()) <= run["peak_rss_mb"] + 1
    full = run["memory_peaks_mb"]  # each field's peak over the run, polled from outside
    assert full["private_mb"] > 0 and full["file_backed_mb"] > memory["packed_weights"]
    assert full["pss_mb"] <= full["rss_mb"] <= run["peak_rss_mb"] + 1
    # importing TensorFlow alone takes about 580 MB: this child must hold the runtime only
    assert run["peak_rss_mb"] < 250
    assert (tmp_path / "cache").is_dir() and run["first_token_s"] > run["init_s"] > 0
