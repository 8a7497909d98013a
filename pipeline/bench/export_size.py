"""`python -m pipeline bench export`: the text model's size, export cost and speed.

For each quantization mode, exports the one-shot text model in a child process and records
file size against the target, export wall time and the child's peak RSS, then runs the file
once in the Flex interpreter. Then `text_speed.py` times the text model as an app calls it,
beside the bundle and llama.cpp (int8 and int4, 1 and 2 threads). Model: `gpt2_base.py`
(GPT-2 base shape, random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.bench import yardsticks
from pipeline.bench.gpt2_base import tokenizer_and_weights
from pipeline.bench.text_speed import bench_speed, markdown as speed_markdown
from pipeline.config import PROJECT_ROOT, ExportConfig
from pipeline.export.graph import GPT2Graph
from pipeline.export.text import save_text_model, text_model_tflite
from pipeline.export.text_graph import TextModel
from pipeline.report import write_benchmark
from pipeline.runtime.flex import run_in_flex

SIZE_TARGETS_MB = {"none": 505, "fp16": 255, "int8": 130, "int4": None}


def export_one(mode: str, out_file: str, preset: str | None, max_length: int) -> None:
    """Child process: builds the text model and writes `out_file`.tflite plus a .json."""
    started = time.time()
    tokenizer, weights = tokenizer_and_weights(preset)
    module = TextModel(tokenizer, GPT2Graph(weights), ExportConfig().sampling, max_length)
    with tempfile.TemporaryDirectory() as saved:
        save_text_model(module, saved)
        del module
        model_bytes, stored, _ = text_model_tflite(saved, weights.count(), mode)
    Path(out_file).write_bytes(model_bytes)
    Path(out_file + ".json").write_text(json.dumps({
        "parameters": weights.count(), "weight_bytes": stored,
        "seconds_in_child": time.time() - started}))


def bench_export(out_dir: Path, modes: list[str], preset: str | None, max_length: int,
                 flex_python: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in modes:
        path = out_dir / f"gpt2_text_{mode}.tflite"
        print(f"[{mode}] exporting ...", flush=True)
        started = time.time()
        child = subprocess.Popen([sys.executable, "-m", "pipeline.bench.export_size", mode,
                                  str(path), preset or "", str(max_length)])
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.time() - started
        if status != 0:
            raise SystemExit(f"export of {mode} failed (status {status})")
        info = json.loads(Path(str(path) + ".json").read_text())
        size = path.stat().st_size
        row = {"mode": mode, "size_mb": size / 1e6, "target_mb": SIZE_TARGETS_MB.get(mode),
               "parameters": info["parameters"], "weight_mb": info["weight_bytes"] / 1e6,
               "export_seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}
        row["meets_target"] = row["target_mb"] is None or row["size_mb"] <= row["target_mb"]
        if flex_python.exists():
            result = run_in_flex(path, ["The meaning of life is"],
                                 ExportConfig(flex_python=str(flex_python)))
            row["flex_runs"] = True
            row["flex_seconds_per_prompt"] = result["seconds"][0]
        path.unlink()  # the benchmark keeps numbers, not 500 MB files
        Path(str(path) + ".json").unlink()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": "GPT-2 base shape, random weights" if not preset else preset,
            "max_length": max_length, "rows": rows}


def markdown_table(result: dict) -> str:
    lines = [f"Text model export, {result['model']}, max_length {result['max_length']}", "",
             "| mode | file MB | target MB | meets | weights MB | export s | peak RSS MB | "
             "Flex run s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        target = "-" if r["target_mb"] is None else f"{r['target_mb']}"
        flex = f"{r['flex_seconds_per_prompt']:.1f}" if r.get("flex_runs") else "-"
        lines.append(f"| {r['mode']} | {r['size_mb']:.1f} | {target} | "
                     f"{'yes' if r['meets_target'] else 'NO'} | {r['weight_mb']:.1f} | "
                     f"{r['export_seconds']:.0f} | {r['peak_rss_mb']:.0f} | {flex} |")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench export")
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown")
    parser.add_argument("--modes", default="none,fp16,int8,int4")
    parser.add_argument("--preset", help="a real preset instead of random GPT-2-base weights")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--flex-python", default=".venv-flex/bin/python")
    parser.add_argument("--speed-modes", default="int8,int4",
                        help="modes timed beside the bundle and llama.cpp (empty: none)")
    parser.add_argument("--threads", default="1,2", help="thread counts for the speed table")
    yardsticks.add_llama_arguments(parser)
    args = parser.parse_args(argv)
    if yardsticks.llama_arguments_problem(parser, args):
        return 2
    flex = Path(args.flex_python)
    flex = flex if flex.is_absolute() else PROJECT_ROOT / flex
    modes = [m for m in args.modes.split(",") if m]
    result = bench_export(Path(args.out), modes, args.preset, args.max_length, flex) \
        if modes else {"rows": []}
    table = markdown_table(result) if modes else ""
    speed_modes = [m for m in args.speed_modes.split(",") if m]
    if speed_modes:
        threads = [int(t) for t in args.threads.split(",")]
        result["speed"] = bench_speed(Path(args.out), args.preset, speed_modes, threads, flex,
                                      args.llama_bench, args.gguf)
        table += "\n" + speed_markdown(result["speed"])
    write_benchmark(args.out, "export", result, table)
    return 0 if all(r["meets_target"] for r in result["rows"]) else 1


if __name__ == "__main__":  # one export: MODE OUT_FILE PRESET MAX_LENGTH [STEP_JSON]
    mode, out_file, preset, max_length = sys.argv[1:5]
    export_one(mode, out_file, preset or None, int(max_length))
    if len(sys.argv) > 5:  # as a child.json_step
        Path(sys.argv[5]).write_text(Path(out_file + ".json").read_text())
